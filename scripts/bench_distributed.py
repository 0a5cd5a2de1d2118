"""Data-parallel training throughput: ``dcollapse train`` on 1 process vs ``--nproc N`` gloo ranks on this machine.

Each run is the real command on a synthetic dataset (``dcollapse.data.synth.write_ctr_dataset``); samples/s is the
training throughput the run records per epoch (train rows / seconds of the epoch's steps, all ranks together;
evaluation and process start-up excluded), the median over the epochs after the first (warm-up). A run is
``PxT``: P processes of T torch threads each (``OMP_NUM_THREADS``), so one process on all cores, one process on
one core and N single-core ranks can be told apart. Two table sizes show what DDP costs: every step all-reduces
the dense gradient of the whole embedding table.

    python scripts/bench_distributed.py                          # 1x2, 1x1 and 2x1 on a 2-core machine
    python scripts/bench_distributed.py --runs 1x8,2x4,4x2,8x1 --rows 400000 --epochs 4
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dcollapse import checkpoint
from dcollapse.data.synth import write_ctr_dataset

TABLES = {  # name -> per-field vocabulary sizes (synth adds 2 ids per field: OOV, missing)
    "small table (20 fields x 100)": [100] * 20,
    "large table (10 x 100 + 10 x 50,000)": [100] * 10 + [50_000] * 10,
}
MODELS = {
    "FM": ["--model", "fm", "--arch", "none"],
    "DeepFM (MLP 400-400-400)": ["--model", "fm", "--arch", "parallel", "--dnn", "400,400,400"],
}


def samples_per_s(data: Path, out: Path, flags: list[str], run: str, args: argparse.Namespace) -> float:
    """Median training samples/s over epochs 2.. of one ``dcollapse train`` run of ``run`` = "PxT"."""
    nproc, threads = run.split("x")
    command = [sys.executable, "-m", "dcollapse", "train", str(data), "--out", str(out), *flags]
    command += ["--epochs", str(args.epochs), "--patience", "0", "--batch-size", str(args.batch_size)]
    command += ["--emb-dim", "16", "--snapshot-rows", "2000", "--device", "cpu", "--nproc", nproc, "--overwrite"]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    return statistics.median(h["samples_per_s"] for h in checkpoint.load(out)["history"][1:])


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=f"1x{cores},1x1,2x{max(1, cores // 2)}", help="comma-separated PxT")
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows (80%% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096, help="global batch")
    args = parser.parse_args()
    runs = args.runs.split(",")

    print(f"| table | model | {' | '.join(f'{run} samples/s' for run in runs)} |")
    print(f"|---|---|{'---|' * len(runs)}")
    with tempfile.TemporaryDirectory() as tmp:
        for table, vocab in TABLES.items():
            data = Path(tmp) / "data"
            write_ctr_dataset(data, args.rows, len(vocab), 0, vocab_sizes=vocab, pairs=len(vocab))
            for model, flags in MODELS.items():
                rates = [samples_per_s(data, Path(tmp) / "run.pt", flags, run, args) for run in runs]
                print(f"| {table} | {model} | {' | '.join(f'{rate:,.0f}' for rate in rates)} |", flush=True)


if __name__ == "__main__":
    main()
