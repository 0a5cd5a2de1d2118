"""Correctness cases for scripts/gpu_check.sh that the test suite's tiny shapes do not reach, one JSON line each.

- ragged batches (B = 1, 37, 4097, 65537; F = 39, d = 16): fused FM, fused dot and the lookup, forward and table
  gradient against float64 PyTorch on the same device; the in-backward lazy Adam against the reference path;
- a table of more than 2^31 elements (134,250,000 x 16 fp32, 8.6 GB): rows at the top read and updated (int64
  addressing in the gather and the segment reduction);
- bitwise repeatability: three training steps of FM and DeepFM (dense Adam, and the fused update) run twice from
  the same seed give identical weights.

    python scripts/gpu_check_cases.py --out results.jsonl           # on CUDA
    python scripts/gpu_check_cases.py --out results.jsonl --small   # CPU dry run (interpreter): tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback

import torch

from dcollapse.kernels import RowOptimizer, fused_bi_interaction, fused_pairwise_dot, lookup
from dcollapse.kernels.dot import pairwise_dot_reference
from dcollapse.kernels.fm import bi_interaction_reference


@contextlib.contextmanager
def kernels_mode(mode: str):
    """Run the ops with ``DCOLLAPSE_KERNELS=mode`` (auto: Triton on CUDA; reference: the PyTorch path)."""
    old = os.environ.get("DCOLLAPSE_KERNELS")
    os.environ["DCOLLAPSE_KERNELS"] = mode
    try:
        yield
    finally:
        os.environ.pop("DCOLLAPSE_KERNELS") if old is None else os.environ.__setitem__("DCOLLAPSE_KERNELS", old)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def inputs(B: int, F: int, d: int, vocab: int, device: torch.device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    table = torch.randn(F * vocab, d, device=device, generator=gen)
    ids = torch.randint(0, vocab, (B, F), device=device, generator=gen, dtype=torch.int32)
    ids[:, 0] = 1  # a hot row read by every sample: a long run
    return table, ids, torch.arange(F, device=device) * vocab


def ragged(device: torch.device, small: bool) -> dict:
    """Max relative error over ops and batches, forward and table gradient, against float64 on the device."""
    worst = {}
    F, d, vocab = (13, 16, 7) if small else (39, 16, 10_000)
    for B in (1, 37) if small else (1, 37, 4097, 65537):
        table, ids, offsets = inputs(B, F, d, vocab, device, B)
        for name, op, ref in (
            ("lookup", lookup, lambda E: E),
            ("fm", fused_bi_interaction, bi_interaction_reference),
            ("dot", fused_pairwise_dot, pairwise_dot_reference),
        ):
            t = table.clone().requires_grad_()
            out = op(t, ids, offsets)
            t64 = table.double().requires_grad_()
            out64 = ref(t64[(ids.long() + offsets)])
            upstream = torch.randn_like(out64)
            (out * upstream.to(out.dtype)).sum().backward()
            (out64 * upstream).sum().backward()
            worst[f"{name} forward"] = max(worst.get(f"{name} forward", 0.0), rel_err(out, out64))
            worst[f"{name} table grad"] = max(worst.get(f"{name} table grad", 0.0), rel_err(t.grad, t64.grad))
        # in-backward lazy Adam, Triton vs the reference path (same semantics)
        tables = []
        for mode in (os.environ.get("DCOLLAPSE_KERNELS", "auto"), "reference"):  # Triton (on CUDA), then PyTorch
            t = table.clone().requires_grad_()
            with kernels_mode(mode):
                fused_bi_interaction(t, ids, offsets, update=RowOptimizer(t, "lazy_adam", 1e-2)).pow(2).sum().backward()
            tables.append(t.detach())
        worst["fm lazy adam vs reference"] = max(worst.get("fm lazy adam vs reference", 0.0),
                                                 rel_err(tables[0] - table, tables[1] - table))  # fmt: skip
    return {"max_rel_err": worst, "ok": all(v < 1e-4 for v in worst.values())}


def huge_table(device: torch.device, small: bool) -> dict:
    """Rows past element 2^31 gathered and updated exactly (int64 addressing)."""
    if small:
        return {"skipped": "dry run (needs 8.6 GB)"}
    V, d = 134_250_000, 16  # V * d = 2.148e9 > 2^31
    table = torch.randn(V, d, device=device, requires_grad=True)
    ids = torch.tensor([[V - 1], [V - 2], [V - 1], [5]], device=device, dtype=torch.int64)  # one field of V ids
    offsets = torch.zeros(1, dtype=torch.int64, device=device)
    rows = ids.reshape(-1)
    E = lookup(table, ids, offsets)
    gather_ok = torch.equal(E.reshape(-1, d), table.detach()[rows])
    before = table.detach()[rows].clone()
    update = RowOptimizer(table, "sgd", 1.0)
    E = lookup(table, ids, offsets, update=update)
    E.backward(torch.ones_like(E))
    counts = torch.tensor([2.0, 1.0, 2.0, 1.0], device=device)  # V-1 read twice
    update_ok = torch.allclose(table.detach()[rows], before - counts[:, None], rtol=0, atol=1e-6)
    return {"elements": V * d, "gather_ok": gather_ok, "update_ok": bool(update_ok), "ok": gather_ok and update_ok}


def repeatability(device: torch.device, small: bool) -> dict:
    """Three training steps twice from one seed: bitwise equal weights (deterministic kernels, no atomics)."""
    from dcollapse.config import full_config
    from dcollapse.models import build_model
    from dcollapse.optim import make_optimizer

    sizes = [20] * 4 if small else [60] * 13 + [100_000] * 26
    meta = {"fields": [{"name": f"c{i}", "vocab_size": v, "offset": sum(sizes[:i])} for i, v in enumerate(sizes)]}
    B = 16 if small else 4096
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, v, (3 * B,), generator=gen) for v in sizes], 1).to(device, torch.int32)
    ids[:, 0] = 0
    labels = (torch.rand(3 * B, generator=gen) < 0.25).float().to(device)
    out = {}
    dnn = [8] if small else [400, 400, 400]
    for name, config in {"FM": {"model": "fm"}, "DeepFM": {"model": "fm", "arch": "parallel", "dnn": dnn}}.items():
        for fused in (False, True):
            states = []
            for _ in range(2):
                torch.manual_seed(0)
                cfg = full_config({**config, "emb_dim": 16, "lr": 1e-3, "optimizer": "adam", "fused_update": fused})
                model = build_model(cfg, meta).to(device)
                optimizer = make_optimizer(model, cfg)
                for step in range(3):
                    rows = slice(step * B, (step + 1) * B)
                    optimizer.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids[rows]), labels[rows])
                    loss.backward()
                    optimizer.step()
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
            out[f"{name} {'fused update' if fused else 'dense adam'}"] = same
    return {"bitwise_equal": out, "ok": all(out.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON lines file to append one result per case to")
    parser.add_argument("--small", action="store_true", help="tiny sizes (the CPU dry run)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for case in (ragged, huge_table, repeatability):
        start = time.perf_counter()
        try:
            result = case(device, args.small)
        except Exception as exc:  # a failing case is a result too; the next one still runs
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
        result = {"case": case.__name__, "device": str(device), "seconds": round(time.perf_counter() - start, 2),
                  **result}  # fmt: skip
        with open(args.out, "a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
