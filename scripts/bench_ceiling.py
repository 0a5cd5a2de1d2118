"""How close DeepFM / DCNv2 training steps come to the matrix-product ceiling of their shapes, and where
``--sparse-emb`` / ``--fused-update`` pay on the FM step.

**ceiling** mode. The ceiling of a model at batch B is the time of its GEMMs alone: for every linear map with
weight [out, in] of the DNN and the cross network (the head, [1, H], is left out: a matrix-vector product), the
three products of one training step, timed as a plain loop of

    torch.mm(x, w.t())    # forward,        [B, in] x [in, out]
    torch.mm(g, w)        # input gradient, [B, out] x [out, in]
    torch.mm(g.t(), x)    # weight gradient, [out, B] x [B, in]

on random operands of those shapes. Every variant below is timed against it; "fraction" = ceiling ms / variant
ms (1.0: the variant does nothing but those products, at the loop's speed):

- ``mlp``: the model's DNN alone, forward + backward from a fixed input [B, F * d] that needs a gradient;
- ``dense``: the whole network after the embedding lookup, ``forward_from_embeddings`` on a fixed E [B, F, d]
  that needs a gradient, BCE, backward, the dense optimizer's step (fused Adam) and ``zero_grad``;
- ``ceiling + elementwise floor``: the ceiling plus the elementwise passes an eager step cannot avoid (ReLU
  forward and backward, bias gradients, the FM interaction, the cross layers' products), each timed alone as one
  op (:func:`floor_step`): the best fraction an eager step can reach;
- ``step``: the full training step of ``dcollapse.train.train_step`` (lookup, network, table gradient and
  update included) on Criteo-shaped ids with ``--rows-per-field`` rows in each of the 26 large fields.

**tables** mode: FM training steps (``train_step``) with the default dense Adam, ``--sparse-emb`` and
``--fused-update``, across total table sizes (39 fields: 13 of 60 rows, the rest of the total split evenly
over 26 fields, Zipf(1.2) ids), ms per step and the ratio to the default.

Variants are timed in ``--rounds`` interleaved rounds of ``--steps`` steps each; each keeps its fastest step.
Times are CPU seconds of the calling thread (``time.thread_time``; with ``--threads 1`` torch runs every op on
it), so other jobs on a shared machine stretch the wall clock but hardly these figures (they still share the
caches and memory bandwidth).
``--profile NAME`` prints torch.profiler's table of one variant's steps instead.

    python scripts/bench_ceiling.py ceiling --batch 4096,1024
    python scripts/bench_ceiling.py tables --total-rows 1e4,1e5,1e6,1e7
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_train import criteo_shaped  # scripts/ is on sys.path when a script runs
from torch import nn
from torch.nn import functional

from dcollapse.config import full_config
from dcollapse.models import CTRModel, build_model
from dcollapse.models.interactions import CrossNet
from dcollapse.optim import make_optimizer
from dcollapse.train import train_step

MODELS = {
    "DeepFM": {"model": "fm", "arch": "parallel", "dnn": [400, 400, 400]},
    "DCNv2": {"model": "crossnet", "arch": "stacked", "dnn": [400, 400, 400], "cross_layers": 3},
}
TABLE_VARIANTS = {"dense": {}, "sparse-emb": {"sparse_emb": True}, "fused-update": {"fused_update": True}}
FIELDS = 39  # Criteo's: 13 numeric + 26 categorical


def load() -> str:
    """The 1/5/15-minute load averages."""
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def gemm_shapes(model: CTRModel, mlp_only: bool = False) -> list[tuple[int, int]]:
    """(in, out) of every linear map of the DNN and (unless ``mlp_only``) the cross network: the ceiling's
    products."""
    shapes = [(lin.in_features, lin.out_features) for lin in model.mlp_linears()]
    if isinstance(model.interaction, CrossNet) and not mlp_only:
        K = model.interaction.out_dim
        shapes += [(K, K)] * sum(len(layers) for layers in model.interaction.sets)  # full rank: W [K, K]
    return shapes


def ceiling_step(shapes: list[tuple[int, int]], batch: int) -> Callable[[], None]:
    """One step of the ceiling: the 3 products per linear map, on random operands."""
    operands = [(torch.randn(batch, i), torch.randn(o, i), torch.randn(batch, o)) for i, o in shapes]

    def run() -> None:
        for x, w, g in operands:
            torch.mm(x, w.t())
            torch.mm(g, w)
            torch.mm(g.t(), x)

    return run


def floor_step(model: CTRModel, batch: int) -> Callable[[], None]:
    """The elementwise passes no eager PyTorch step of the model avoids, each as one op on its shapes: per DNN
    layer [B, out] the ReLU forward, its backward and the bias gradient; FM (DeepFM) the bi-interaction's forward
    sums and one-pass backward over E [B, F, d] and the sum of E's two gradients (FM and DNN branches); per cross
    layer [B, K] its addcmul forward, the two products of its backward, the bias gradient and the accumulation of
    x0's gradient."""
    ops: list[Callable[[], object]] = []
    for lin in model.mlp_linears():
        z, g = torch.randn(batch, lin.out_features), torch.randn(batch, lin.out_features)
        ops += [lambda z=z: torch.relu(z), lambda z=z, g=g: torch.ops.aten.threshold_backward(g, z, 0.0)]
        ops += [lambda g=g: g.sum(0)]
    if isinstance(model.interaction, CrossNet):
        K = model.interaction.out_dim
        a, b, c = torch.randn(batch, K), torch.randn(batch, K), torch.randn(batch, K)
        for _ in range(sum(len(layers) for layers in model.interaction.sets)):
            ops += [lambda: torch.addcmul(a, b, c), lambda: a * b, lambda: a * c, lambda: a.sum(0), lambda: b + c]
    else:
        E, g = torch.randn(batch, FIELDS, model.embedding.d_total), torch.randn(batch, model.embedding.d_total)
        s = E.sum(1)
        ops += [lambda: E.sum(1), lambda: (E * E).sum(1), lambda: torch.addcmul((s * g)[:, None], E, g[:, None])]
        ops += [lambda: E + E]

    def run() -> None:
        for op in ops:
            op()

    return run


def training(spec: dict, meta: dict, **options) -> tuple[CTRModel, object]:
    config = full_config({**spec, "emb_dim": 16, "lr": 1e-3, "optimizer": "adam", "l2_emb": 0.0, **options})
    torch.manual_seed(0)
    model = build_model(config, meta)
    return model, make_optimizer(model, config)


def train_steps(model: CTRModel, optimizer, ids: torch.Tensor, labels: torch.Tensor, batch: int):
    """A callable running :func:`dcollapse.train.train_step` on the next batch of ``ids`` (cycling)."""
    starts = itertools.cycle(range(0, len(ids) - batch + 1, batch))

    def run() -> None:
        s = next(starts)
        train_step(model, optimizer, ids[s : s + batch], labels[s : s + batch])

    return run


def dense_steps(model: CTRModel, optimizer, batch: int) -> Callable[[], None]:
    """The network after the lookup: forward from a fixed E that needs a gradient, BCE, backward, step."""
    E = torch.randn(batch, FIELDS, model.embedding.d_total).mul_(1e-2).requires_grad_()
    labels = (torch.rand(batch) < 0.25).float()

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        E.grad = None
        functional.binary_cross_entropy_with_logits(model.forward_from_embeddings(E), labels).backward()
        optimizer.step()

    return run


def mlp_steps(mlp: nn.Module, in_dim: int, batch: int) -> Callable[[], None]:
    """The DNN alone, forward + backward from a fixed input [B, in_dim] that needs a gradient."""
    x = torch.randn(batch, in_dim, requires_grad=True)

    def run() -> None:
        x.grad = None
        for p in mlp.parameters():
            p.grad = None
        mlp(x).sum().backward()

    return run


def best_times(variants: dict[str, Callable[[], None]], steps: int, rounds: int, warmup: int = 2) -> dict[str, float]:
    """CPU seconds per step of each variant: the fastest single step of ``rounds`` interleaved rounds of
    ``steps`` steps each."""
    for run in variants.values():
        for _ in range(warmup):
            run()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, run in variants.items():
            for _ in range(steps):
                begin = time.thread_time()
                run()
                best[name] = min(best[name], time.thread_time() - begin)
    return best


def profile(run: Callable[[], None], steps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(2):
        run()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def ceiling_mode(args) -> list[dict]:
    results = []
    for batch in args.batch:
        meta, ids, labels = criteo_shaped(16 * batch, FIELDS, 0, table_rows=args.rows_per_field * 26)
        variants: dict[str, Callable[[], None]] = {}
        flops, mlp_flops = {}, {}
        for name in args.models:
            model, optimizer = training(MODELS[name], meta, fused_update=args.fused_update)
            shapes = gemm_shapes(model)
            flops[name] = sum(6 * batch * i * o for i, o in shapes)
            mlp_flops[name] = sum(6 * batch * i * o for i, o in gemm_shapes(model, mlp_only=True))
            variants[f"{name} ceiling"] = ceiling_step(shapes, batch)
            variants[f"{name} mlp ceiling"] = ceiling_step(gemm_shapes(model, mlp_only=True), batch)
            variants[f"{name} floor"] = floor_step(model, batch)
            assert model.mlp is not None
            variants[f"{name} mlp"] = mlp_steps(model.mlp, model.mlp_linears()[0].in_features, batch)
            variants[f"{name} dense"] = dense_steps(model, optimizer, batch)
            variants[f"{name} step"] = train_steps(model, optimizer, ids, labels, batch)
        if args.profile:
            profile(variants[args.profile], args.steps)
            return []
        before = load()
        times = best_times(variants, args.steps, args.rounds)
        print(f"\n# batch {batch}, {sum(f['vocab_size'] for f in meta['fields']):,} table rows, "
              f"fused_update={args.fused_update}, load {before} -> {load()}")  # fmt: skip
        print("| model | variant | ms/step | GEMM GFLOP/s | fraction of ceiling |")
        print("|---|---|---:|---:|---:|")
        for name in args.models:
            floor = times[f"{name} floor"]
            bound = times[f"{name} ceiling"] / (times[f"{name} ceiling"] + floor)
            print(f"| {name} | ceiling + elementwise floor | {(times[f'{name} ceiling'] + floor) * 1e3:.1f} "
                  f"| {flops[name] / (times[f'{name} ceiling'] + floor) / 1e9:.1f} | {bound:.2f} |")  # fmt: skip
            results.append({"mode": "ceiling", "batch": batch, "model": name, "variant": "bound", "fraction": bound})
            for part in ("ceiling", "dense", "step", "mlp ceiling", "mlp"):
                t = times[f"{name} {part}"]
                ceiling = times[f"{name} mlp ceiling" if part.startswith("mlp") else f"{name} ceiling"]
                work = mlp_flops[name] if part.startswith("mlp") else flops[name]
                print(f"| {name} | {part} | {t * 1e3:.1f} | {work / t / 1e9:.1f} | {ceiling / t:.2f} |")
                results.append({"mode": "ceiling", "batch": batch, "model": name, "variant": part, "ms": t * 1e3,
                                "fraction": ceiling / t, "load": before})  # fmt: skip
    return results


def tables_mode(args) -> list[dict]:
    spec = {"model": "fm", "arch": "none"}
    results = []
    for total in args.total_rows:
        meta, ids, labels = criteo_shaped(16 * args.batch[0], FIELDS, 0, table_rows=int(total))
        variants = {}
        for name, options in TABLE_VARIANTS.items():
            model, optimizer = training(spec, meta, **options)
            variants[name] = train_steps(model, optimizer, ids, labels, args.batch[0])
        if args.profile:
            profile(variants[args.profile], args.steps)
            continue
        before = load()
        times = best_times(variants, args.steps, args.rounds)
        rows = sum(f["vocab_size"] for f in meta["fields"])
        distinct = len(torch.unique(ids[: args.batch[0]].long() + torch.tensor([f["offset"] for f in meta["fields"]])))
        cells = " | ".join(f"{times[n] * 1e3:.1f} ({times['dense'] / times[n]:.2f}x)" for n in variants)
        print(f"| {rows:,} | {distinct:,} | {cells} | {before} -> {load()} |", flush=True)
        results += [{"mode": "tables", "table_rows": rows, "variant": n, "ms": t * 1e3, "load": before}
                    for n, t in times.items()]  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("ceiling", "tables"))
    parser.add_argument("--batch", default="4096", help="comma list (tables mode: the first)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rows-per-field", type=int, default=10_000, help="ceiling mode: rows of each large field")
    parser.add_argument("--fused-update", action="store_true", help="ceiling mode: the full step with --fused-update")
    parser.add_argument("--total-rows", default="1e4,1e5,1e6,1e7", help="tables mode: comma list of table sizes")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", default=None, help="print the profile of this variant (e.g. 'DeepFM dense')")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",")]
    args.models = args.models.split(",")
    args.total_rows = [float(r) for r in args.total_rows.split(",")]
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds of {args.steps} steps")
    if args.mode == "tables":
        print(f"\nFM, batch {args.batch[0]}: ms per step (x the default dense Adam)\n")
        print("| table rows | distinct rows / batch | dense Adam | --sparse-emb | --fused-update | load |")
        print("|---:|---:|---:|---:|---:|---|")
    results = ceiling_mode(args) if args.mode == "ceiling" else tables_mode(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
