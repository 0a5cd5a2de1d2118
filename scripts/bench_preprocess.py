"""Benchmark `dcollapse preprocess --format criteo`: throughput (rows/s) and peak RSS against the number of rows.

Generates synthetic Criteo-format files (tab-separated, no header: label, I1..I13, C1..C26; empty = missing) with
Zipf-distributed categorical values of bounded cardinality (10 .. 100k values per field), then runs the real CLI
in a child process per size and reads that child's peak RSS from ``os.wait4``.

Each round times Polars' parse of the file alone (:func:`parse_only`) and then the job (and a ``--baseline`` tree's
job), so that a changing machine load hits both alike; the ratio of the job's rate to the parse alone is printed per
round.

Usage:
    python scripts/bench_preprocess.py --rows 100000 1000000 [10000000] [--workdir DIR] [--rounds N]
        [--baseline TREE] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

BLOCK = 500_000


def write_criteo(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic Criteo rows to ``path`` (generated in blocks, so memory stays small)."""
    rng = np.random.default_rng(seed)
    cards = np.geomspace(10, 100_000, 26).astype(np.int64)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        for start in range(0, rows, BLOCK):
            n = min(BLOCK, rows - start)
            cols: dict[str, pl.Series] = {"label": pl.Series((rng.random(n) < 0.25).astype(np.int8))}
            for k in range(13):
                value = np.floor(rng.pareto(1.0, n) * 3).astype(np.int64) - 1
                cols[f"I{k + 1}"] = pl.Series(value).set(pl.Series(rng.random(n) < 0.2), None)
            for k in range(26):
                value = (rng.zipf(1.3, n) % cards[k]) * 2654435761 % 2**32 + k
                cols[f"C{k + 1}"] = pl.Series(value).set(pl.Series(rng.random(n) < 0.1), None)
            pl.DataFrame(cols).write_csv(fh, separator="\t", include_header=False, null_value="", quote_style="never")
    tmp.rename(path)


def parse_only(src: Path) -> tuple[float, float]:
    """Wall and CPU seconds (this process's threads, user + system) for Polars' native CSV reader alone to parse
    ``src`` into typed columns (label and the 13 integer columns as Float64, the 26 categorical ones as String) and
    count the non-null values of each, in a streaming query: the ceiling of any Polars-based preprocessing of this
    file on this machine ("parse alone").

    Counting every column makes the reader parse every field (``select(pl.len())`` parses none: 0.1 s against 5 s at
    1e6 rows); nothing is hashed, encoded or written, and memory stays flat (a full ``collect`` would hold the
    file, and a ``sink_parquet`` would add Parquet encoding and writing, which is not parsing)."""
    names = ["label", *(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))]
    schema = {n: pl.Float64 if n[0] != "C" else pl.String for n in names}
    lf = pl.scan_csv(src, separator="\t", has_header=False, schema=schema, quote_char=None)
    start, cpu = time.perf_counter(), time.process_time()
    lf.select(pl.all().count()).collect(engine="streaming")
    return time.perf_counter() - start, time.process_time() - cpu


def run_preprocess(src: Path, out: Path, tree: Path | None = None) -> dict:
    """Run the CLI on ``src`` (with the ``dcollapse`` package of source ``tree`` when given); return wall and CPU
    seconds, peak RSS (MiB) of that child process, its meta.json."""
    cmd = [sys.executable, "-m", "dcollapse", "preprocess", str(src), "--format", "criteo", "--out", str(out)]
    cmd += ["--overwrite", "--json"]
    # `-m` puts the working directory first on sys.path: the child runs in ``tree`` to import its package.
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree is not None else None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tree or None)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"preprocess failed on {src} (exit {os.waitstatus_to_exitcode(status)})")
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": usage.ru_maxrss / 1024, "meta": json.loads(stdout)}


def same_files(a: Path, b: Path) -> bool:
    """Whether dataset directories ``a`` and ``b`` hold the same files, byte for byte."""
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1e5, 1e6], help="Row counts to benchmark.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where input files are generated (and reused).")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds per size.")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="A source tree of dcollapse (e.g. from `git worktree add`) whose preprocess runs in "
                             "each round too; its datasets are compared with this one's byte for byte.")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="Print a Markdown table for docs/benchmarks.md.")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    if args.baseline is not None and not (args.baseline / "dcollapse" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no dcollapse/__init__.py there")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="dcollapse-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = {"this": None} | ({"baseline": args.baseline.resolve()} if args.baseline is not None else {})
    results = []
    for rows in (int(r) for r in args.rows):
        src = workdir / f"criteo_{rows}.txt"
        if not src.exists():
            t = time.perf_counter()
            write_criteo(src, rows)
            print(f"generated {src} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        for round_ in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            result = {"rows": rows, "round": round_, "input_mib": src.stat().st_size / 2**20}
            parse_s, parse_cpu_s = parse_only(src)
            result |= {"parse_alone_rows_per_s": rows / parse_s, "parse_alone_cpu_s": parse_cpu_s}
            for job, tree in jobs.items():
                r = run_preprocess(src, workdir / job / f"out_{rows}", tree)
                written = sum(s["rows"] for s in r["meta"]["splits"].values())
                assert written == rows, f"{written} rows written, expected {rows}"
                result[job] = {
                    "seconds": r["seconds"],
                    "rows_per_s": rows / r["seconds"],
                    "of_parse_alone": rows / r["seconds"] / result["parse_alone_rows_per_s"],
                    "cpu_s": r["cpu_s"],
                    "cpu_of_parse_alone": parse_cpu_s / r["cpu_s"],
                    "peak_rss_mib": r["peak_rss_mib"],
                    "vocab_total": sum(f["vocab_size"] for f in r["meta"]["fields"]),
                }
            if "baseline" in jobs:
                result["identical_to_baseline"] = same_files(workdir / "this" / f"out_{rows}",
                                                             workdir / "baseline" / f"out_{rows}")  # fmt: skip
            result["load"] = [load, os.getloadavg()[0]]
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    if args.markdown:
        columns = ["rows", "round", "load (start, end)", "parse alone (rows/s)", "parse alone CPU (s)", "job",
                   "wall (s)", "rows/s", "of parse alone (wall)", "CPU (s)", "of parse alone (CPU)",
                   "peak RSS (MiB)"]  # fmt: skip
        print("| " + " | ".join(columns) + " |")
        print("|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            for job in jobs:
                j = r[job]
                print(
                    f"| {r['rows']:,} | {r['round']} | {r['load'][0]:.1f}, {r['load'][1]:.1f} "
                    f"| {r['parse_alone_rows_per_s']:,.0f} | {r['parse_alone_cpu_s']:.1f} | {job} | {j['seconds']:.1f} "
                    f"| {j['rows_per_s']:,.0f} | {j['of_parse_alone']:.1%} | {j['cpu_s']:.1f} "
                    f"| {j['cpu_of_parse_alone']:.1%} | {j['peak_rss_mib']:,.0f} |"
                )
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
