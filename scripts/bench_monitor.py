"""Cost of one CollapseMonitor measurement (``monitor.measure()``: every field's IA / RankMe of the current weights).

Two layouts of the same rows: one table per field (DeepCTR-Torch / FuxiCTR style) and one concatenated table
split by ``field_dims`` (torchfm / dcollapse style). Prints the median wall time of ``--repeats`` calls after one
warm-up call, and the same per 1M table rows.

    python scripts/bench_monitor.py                              # 1M rows, 26 fields, d = 16 and 64, CPU
    python scripts/bench_monitor.py --rows 4000000 --device cuda
"""

import argparse
import statistics
import time

import torch
from torch import nn

from dcollapse.monitor import CollapseMonitor


def per_field(sizes: list[int], dim: int) -> nn.Module:
    model = nn.Module()
    model.embedding_dict = nn.ModuleDict({f"C{i}": nn.Embedding(n, dim) for i, n in enumerate(sizes)})
    return model


def concatenated(sizes: list[int], dim: int) -> nn.Module:
    model = nn.Module()
    model.embedding = nn.Module()
    model.embedding.embedding = nn.Embedding(sum(sizes), dim)
    return model


def median_ms(monitor: CollapseMonitor, repeats: int, device: torch.device) -> float:
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        monitor.measure()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up (kernel compilation, allocator)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="table rows in all")
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--dims", default="16,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [args.rows // args.fields] * args.fields
    sizes[-1] += args.rows - sum(sizes)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.rows:,} rows in {args.fields} fields")
    print(f"{'layout':<14} {'d':>4} {'ms/call':>9} {'ms per 1M rows':>15}")
    for dim in (int(d) for d in args.dims.split(",")):
        for name, build, options in (
            ("per-field", per_field, {}),
            ("concatenated", concatenated, {"field_dims": sizes}),
        ):
            model = build(sizes, dim).to(device)
            ms = median_ms(CollapseMonitor(model, **options), args.repeats, device)
            print(f"{name:<14} {dim:>4} {ms:>9.1f} {ms * 1e6 / args.rows:>15.1f}")


if __name__ == "__main__":
    main()
