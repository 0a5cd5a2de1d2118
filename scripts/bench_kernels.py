"""Benchmark the kernel core against PyTorch eager and torch.compile, measured in the same run.

    python scripts/bench_kernels.py                 # the full grid on the available device
    python scripts/bench_kernels.py --quick         # smaller grid (a quick look)
    python scripts/bench_kernels.py --json out.json # also write every row as JSON

On a GPU it times the Triton kernels (``triton.testing.do_bench``, median of its repetitions) against
  * eager: per-field ``F.embedding`` gathers + stack + the interaction in plain PyTorch ops (bmm + triu for dots),
  * reference: the package's PyTorch reference (one gather from the concatenated table + the same math),
  * compile: ``torch.compile`` of the eager function;
for B in {4096, 65536}, F = 39, d in {16, 64}, fp32, forward and forward+backward, and reports useful bytes / time
(GB/s) and its fraction of the device's copy bandwidth, measured here with ``dst.copy_(src)`` on 1 GiB.
Ids are uniform over each field's vocabulary (``--vocab`` rows per field).

Useful bytes (fp32 = 4 B, ids int32): forward = ids + the B*F gathered rows + the output; backward adds the
output gradient, the ids, the B*F rows read again and the B*F row gradients written. The dense table gradient
(zeroed by every provider alike) is not counted.

Spectrum: every field of a table with ``--spectrum-rows`` total rows at d = 64 in one segmented float64 Gram
pass + eigvalsh against a per-field loop of float64 ``torch.linalg.svdvals``, with the accuracy of the normalized
singular values (max relative error where s / s_1 >= 1e-3).

Without a GPU it runs the CPU branch: the PyTorch reference path against eager at smaller sizes, every row labelled
"cpu". Interpreter timings (TRITON_INTERPRET=1) are not kernel speed, so the script refuses to run under it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.nn import functional

from dcollapse.kernels import cross_layer, fused_bi_interaction, fused_pairwise_dot, gram_spectra, scatter_rows
from dcollapse.kernels.cross import cross_layer_reference
from dcollapse.kernels.dot import pair_indices, pairwise_dot_reference
from dcollapse.kernels.fm import bi_interaction_reference
from dcollapse.kernels.lookup import lookup_reference

F = 39


def timer(device: torch.device, reps: int):
    """ms per call of fn (median): do_bench on CUDA, perf_counter repetitions on CPU."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=max(reps * 10, 50), quantiles=[0.5, 0.2, 0.8])[0]

    def cpu_time(fn) -> float:
        fn()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return cpu_time


def copy_bandwidth(device: torch.device, measure) -> float:
    """GB/s of dst.copy_(src) over 1 GiB (read + write counted)."""
    n = (1 << 30) // 4 if device.type == "cuda" else (1 << 26) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / measure(lambda: dst.copy_(src)) / 1e6


def eager_fm(tables, ids):
    E = torch.stack([functional.embedding(ids[:, f], t) for f, t in enumerate(tables)], dim=1)
    s = E.sum(dim=1)
    return 0.5 * (s * s - (E * E).sum(dim=1))


def eager_dot(tables, ids):
    E = torch.stack([functional.embedding(ids[:, f], t) for f, t in enumerate(tables)], dim=1)
    rows, cols = pair_indices(E.shape[1], E.device)
    return torch.bmm(E, E.transpose(1, 2))[:, rows, cols]


def interaction_rows(B: int, d: int, vocab: int, device: torch.device, measure, providers) -> list[dict]:
    """FM and dot, forward and forward+backward, every provider."""
    gen = torch.Generator(device=device).manual_seed(0)
    table = torch.randn(F * vocab, d, device=device, generator=gen).requires_grad_()
    tables = [table.detach()[f * vocab : (f + 1) * vocab].clone().requires_grad_() for f in range(F)]
    offsets = torch.arange(F, device=device) * vocab
    ids = torch.randint(0, vocab, (B, F), device=device, generator=gen, dtype=torch.int32)
    ids_long = ids.long()
    ops = {
        "fm": {
            "eager": lambda: eager_fm(tables, ids_long),
            "reference": lambda: bi_interaction_reference(lookup_reference(table, ids, offsets)),
            "triton": lambda: fused_bi_interaction(table, ids, offsets),
            "out": d,
        },
        "dot": {
            "eager": lambda: eager_dot(tables, ids_long),
            "reference": lambda: pairwise_dot_reference(lookup_reference(table, ids, offsets)),
            "triton": lambda: fused_pairwise_dot(table, ids, offsets),
            "out": F * (F - 1) // 2,
        },
    }
    result = []
    for op, fns in ops.items():
        if "compile" in providers:
            fns["compile"] = torch.compile(fns["eager"])
        grad_out = torch.randn(B, fns["out"], device=device, generator=gen)
        fwd_bytes = 4 * (B * F + B * F * d + B * fns["out"])
        bwd_bytes = 4 * (B * fns["out"] + B * F + 2 * B * F * d)
        for provider in providers:
            fn = fns[provider]

            def fwd_bwd(fn=fn, grad_out=grad_out):
                table.grad = None
                for t in tables:
                    t.grad = None
                fn().backward(grad_out)

            with torch.no_grad():
                fwd_ms = measure(fn)
            both_ms = measure(fwd_bwd)
            for mode, ms, nbytes in (
                ("forward", fwd_ms, fwd_bytes),
                ("forward+backward", both_ms, fwd_bytes + bwd_bytes),
            ):
                result.append(
                    {"op": op, "B": B, "d": d, "provider": provider, "mode": mode, "ms": ms, "GB/s": nbytes / ms / 1e6}
                )
    return result


def cross_rows(B: int, K: int, device: torch.device, measure, providers) -> list[dict]:
    """One DCNv2 cross layer [B, K], forward and forward+backward."""
    gen = torch.Generator(device=device).manual_seed(1)
    x0, x = (torch.randn(B, K, device=device, generator=gen).requires_grad_() for _ in range(2))
    weight = (torch.randn(K, K, device=device, generator=gen) / K**0.5).requires_grad_()
    bias = torch.randn(K, device=device, generator=gen).requires_grad_()
    fns = {
        "eager": lambda: cross_layer_reference(x0, x, weight, bias),
        "reference": None,
        "triton": lambda: cross_layer(x0, x, weight, bias),
    }
    if "compile" in providers:
        fns["compile"] = torch.compile(fns["eager"])
    grad_out = torch.randn(B, K, device=device, generator=gen)
    result = []
    for provider in providers:
        fn = fns[provider]
        if fn is None:  # the reference is the eager expression itself
            continue

        def fwd_bwd(fn=fn):
            for t in (x0, x, weight, bias):
                t.grad = None
            fn().backward(grad_out)

        with torch.no_grad():
            fwd_ms = measure(fn)
        both_ms = measure(fwd_bwd)
        for mode, ms, flops in (("forward", fwd_ms, 2 * B * K * K), ("forward+backward", both_ms, 6 * B * K * K)):
            result.append(
                {
                    "op": "cross",
                    "B": B,
                    "d": K,
                    "provider": provider,
                    "mode": mode,
                    "ms": ms,
                    "GFLOP/s": flops / ms / 1e6,
                }
            )
    return result


def scatter_rows_bench(B: int, d: int, vocab: int, device: torch.device, measure) -> list[dict]:
    """Table-gradient scatter of B*F row gradients: sorted segments vs atomics (uniform ids and one hot row)."""
    gen = torch.Generator(device=device).manual_seed(2)
    grad = torch.randn(B * F, d, device=device, generator=gen)
    result = []
    for ids in ("uniform", "hot"):
        rows = torch.randint(0, F * vocab, (B * F,), device=device, generator=gen)
        if ids == "hot":
            rows[::2] = 1  # half of all lookups hit one row (the missing id of field 0)
        for method in ("sorted", "atomic"):
            ms = measure(lambda method=method, rows=rows: scatter_rows(grad, rows, F * vocab, method=method))
            result.append(
                {
                    "op": f"scatter ({ids} ids)",
                    "B": B,
                    "d": d,
                    "provider": method,
                    "mode": "backward",
                    "ms": ms,
                    "GB/s": 2 * grad.numel() * 4 / ms / 1e6,
                }
            )
    return result


def spectrum_rows(total_rows: int, device: torch.device, measure) -> list[dict]:
    """All fields' spectra: one segmented Gram pass vs a per-field float64 svdvals loop."""
    gen = torch.Generator(device=device).manual_seed(3)
    sizes = torch.linspace(1.0, 20.0, F).double()  # skewed field sizes
    sizes = (sizes / sizes.sum() * total_rows).long().clamp(min=64)
    offsets = (torch.cumsum(sizes, 0) - sizes).to(device)
    decay = torch.logspace(0, -3, 64, device=device)  # a collapsed spectrum down to 1e-3
    table = torch.randn(int(sizes.sum()), 64, device=device, generator=gen) * decay
    ends = [*offsets.tolist()[1:], table.shape[0]]

    def loop():
        return [torch.linalg.svdvals(table[b:e].double()) for b, e in zip(offsets.tolist(), ends, strict=True)]

    gram_ms = measure(lambda: gram_spectra(table, offsets))
    loop_ms = measure(loop)
    gram = gram_spectra(table, offsets).cpu()
    ref = torch.stack(loop()).cpu()
    gram_n, ref_n = gram / gram[:, :1], ref / ref[:, :1]
    err = float(((gram_n - ref_n).abs() / ref_n)[ref_n >= 1e-3].max())
    gram_name = "gram (triton)" if device.type == "cuda" else "gram (reference, float64 torch)"
    return [
        {
            "op": "field spectra",
            "B": int(sizes.sum()),
            "d": 64,
            "provider": gram_name,
            "mode": "forward",
            "ms": gram_ms,
            "GB/s": table.numel() * 4 / gram_ms / 1e6,
            "max rel err": err,
        },
        {
            "op": "field spectra",
            "B": int(sizes.sum()),
            "d": 64,
            "provider": "svdvals loop (float64)",
            "mode": "forward",
            "ms": loop_ms,
            "GB/s": table.numel() * 4 / loop_ms / 1e6,
        },
    ]


def add_ratios(rows: list[dict], copy_gbs: float) -> None:
    """Speedup of every provider over eager (and over compile) of the same op/shape/mode; fraction of copy BW."""
    key = lambda r: (r["op"], r["B"], r["d"], r["mode"])  # noqa: E731
    by_key = {(key(r), r["provider"]): r["ms"] for r in rows}
    for r in rows:
        for base in ("eager", "compile"):
            if (key(r), base) in by_key and r["provider"] != base:
                r[f"x {base}"] = by_key[(key(r), base)] / r["ms"]
        if "GB/s" in r:
            r["% copy BW"] = 100 * r["GB/s"] / copy_gbs


def markdown(rows: list[dict]) -> str:
    columns = [
        "op",
        "B",
        "d",
        "mode",
        "provider",
        "ms",
        "GB/s",
        "% copy BW",
        "GFLOP/s",
        "x eager",
        "x compile",
        "max rel err",
    ]
    columns = [c for c in columns if any(c in r for r in rows)]

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grid")
    parser.add_argument("--vocab", type=int, default=10_000, help="rows per field in the interaction benchmarks")
    parser.add_argument("--spectrum-rows", type=int, default=None, help="total table rows (GPU 10M, CPU 400k)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (CPU branch)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("TRITON_INTERPRET is set: interpreter timings are not kernel speed; unset it to benchmark")
    os.environ["DCOLLAPSE_KERNELS"] = "auto"  # CUDA tensors -> Triton, CPU tensors -> reference

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    measure = timer(device, reps=5 if args.quick else 20)
    if gpu:
        name = torch.cuda.get_device_name()
        providers = ["eager", "reference", "compile", "triton"]
        batches, dims = ((4096,), (16, 64)) if args.quick else ((4096, 65536), (16, 64))
        spectrum_total = args.spectrum_rows or (1_000_000 if args.quick else 10_000_000)
    else:
        torch.set_num_threads(args.threads)
        load = os.getloadavg()[0]
        name = (
            f"CPU ({os.cpu_count()} cores, {platform.machine()}, {args.threads} torch thread(s), "
            f"load average {load:.1f}); PyTorch reference path, no Triton"
        )
        providers = ["eager", "reference"]
        batches, dims = ((1024,), (16,)) if args.quick else ((4096,), (16, 64))
        spectrum_total = args.spectrum_rows or (100_000 if args.quick else 400_000)
    copy_gbs = copy_bandwidth(device, measure)
    rows = []
    for B in batches:
        for d in dims:
            rows += interaction_rows(B, d, args.vocab, device, measure, providers)
        if gpu:  # on the CPU both would time the same PyTorch code twice
            rows += cross_rows(B, F * 16, device, measure, [p for p in providers if p != "reference"])
            rows += scatter_rows_bench(B, 64, args.vocab, device, measure)
    rows += spectrum_rows(spectrum_total, device, measure)
    add_ratios(rows, copy_gbs)
    print(f"device: {name}; torch {torch.__version__}; copy bandwidth {copy_gbs:.0f} GB/s")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "copy_GB/s": copy_gbs, "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
