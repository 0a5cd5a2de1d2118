"""Regenerate docs/results.md end to end: preprocess the data, run the sweeps, write the tables and plots.

    .venv/bin/python scripts/run_experiment.py            # everything (finished runs are skipped: sweeps resume)
    .venv/bin/python scripts/run_experiment.py --docs-only  # only rewrite docs/results.md from runs/experiment

Data: the Criteo 10k sample and MovieLens-100K from $DCOLLAPSE_SHARED_DATA (default: ../shared/data beside the
repository), preprocessed into runs/experiment/data (git-ignored, never committed), plus a synthetic dataset with a
planted rank-4 pairwise interaction. Every step is a `dcollapse` command; the commands are listed in the document.
The sweep chains run side by side, each with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("runs/experiment")  # relative to ROOT; git-ignored
DATA = WORK / "data"
DOCS = Path("docs")
IMG = DOCS / "img"
DCOLLAPSE = [str(Path(sys.executable).with_name("dcollapse"))]


def shared_data() -> Path:
    return Path(os.environ.get("DCOLLAPSE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def preprocess_commands(movielens_utf8: Path) -> list[list[str]]:
    raw = shared_data()
    return [
        ["dcollapse", "preprocess", str(raw / "criteo-sample-10k/train.txt"), str(raw / "criteo-sample-10k/test.txt"),
         "--format", "criteo", "--split-files", "--min-count", "2", "--out", str(DATA / "criteo")],
        ["dcollapse", "preprocess", str(movielens_utf8), "--format", "movielens", "--out", str(DATA / "movielens")],
        ["dcollapse", "synth", "ctr", "--preprocessed", "--out", str(DATA / "synth"), "--rows", "30000",
         "--fields", "12", "--rank", "4", "--seed", "0"],
    ]  # fmt: skip


def sweep_command(dataset: str, grid: str, seeds: int) -> list[str]:
    return ["dcollapse", "sweep", str(DATA / dataset), "--grid", grid, "--seeds", str(seeds), "--threads", "1",
            "--out", str(WORK / f"{dataset}-{grid}"), "--title", f"{grid} grid, {dataset}"]  # fmt: skip


# Chains of sweeps (dataset, grid, seeds), run side by side; within a chain, one after another. The synthetic
# ablation runs 2 seeds to fit the time budget.
CHAINS = [
    [("criteo", "paper", 3), ("criteo", "ablation", 3)],
    [("synth", "paper", 3), ("synth", "ablation", 2)],
    [("movielens", "paper", 3)],
]


def shown(command: list[str]) -> str:
    """The command as a line that runs when pasted into a shell (arguments quoted where needed)."""
    return shlex.join(command).replace(str(shared_data()), "$DCOLLAPSE_SHARED_DATA")


def run(command: list[str], log: Path | None = None) -> subprocess.Popen:
    exe = [*DCOLLAPSE, *command[1:]] if command[0] == "dcollapse" else command
    handle = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(exe, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)


def prepare_data() -> list[str]:
    """Preprocess the three datasets (skipped when present); returns the commands as shown in the document."""
    with tempfile.TemporaryDirectory() as tmp:
        # MovieLens' u.item is Latin-1; the preprocessor reads UTF-8, so the three files go through a UTF-8 copy.
        utf8 = Path(tmp) / "ml-100k"
        utf8.mkdir()
        source = shared_data() / "movielens-100k"
        for name in ("u.data", "u.user"):
            shutil.copy(source / name, utf8 / name)
        (utf8 / "u.item").write_text((source / "u.item").read_text(encoding="latin-1"), encoding="utf-8")
        commands = preprocess_commands(utf8)
        for command in commands:
            if not (ROOT / command[command.index("--out") + 1] / "meta.json").exists():
                if run(command).wait() != 0:
                    raise SystemExit(f"failed: {shown(command)}")
    shown_commands = [shown(c) for c in commands]
    shown_commands[1] = shown_commands[1].replace(str(utf8), "ml-100k-utf8")
    return [
        "mkdir ml-100k-utf8 && cp $DCOLLAPSE_SHARED_DATA/movielens-100k/u.{data,user} ml-100k-utf8/ && "
        "iconv -f latin1 -t utf-8 $DCOLLAPSE_SHARED_DATA/movielens-100k/u.item > ml-100k-utf8/u.item",
        *shown_commands,
    ]


def run_sweeps() -> float:
    """The chains side by side; returns the wall time in seconds."""
    start = time.time()
    chains = [list(chain) for chain in CHAINS]
    running: list[tuple[subprocess.Popen, list[tuple[str, str, int]]]] = []
    for chain in chains:
        dataset, grid, seeds = chain.pop(0)
        running.append((run(sweep_command(dataset, grid, seeds), WORK / f"{dataset}-{grid}.log"), chain))
    while running:
        time.sleep(5)
        for item in list(running):
            process, chain = item
            if process.poll() is None:
                continue
            running.remove(item)
            if chain:
                dataset, grid, seeds = chain.pop(0)
                running.append((run(sweep_command(dataset, grid, seeds), WORK / f"{dataset}-{grid}.log"), chain))
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs-only", action="store_true", help="Only rewrite docs/results.md from finished runs.")
    args = parser.parse_args()
    os.chdir(ROOT)
    WORK.mkdir(parents=True, exist_ok=True)
    timing_path = WORK / "timing.json"
    if not args.docs_only:
        data_commands = prepare_data()
        seconds = run_sweeps()
        timing_path.write_text(json.dumps({"sweep_wall_s": seconds, "data_commands": data_commands}))
    from results_doc import write_results  # scripts/results_doc.py: the document from the sweeps' summaries

    timing = json.loads(timing_path.read_text())
    sweeps = [(d, grid, shown(sweep_command(d, grid, seeds))) for chain in CHAINS for d, grid, seeds in chain]
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU, torch {torch.__version__}"
    write_results(ROOT, WORK, DOCS, IMG, sweeps, timing, machine, len(CHAINS))


if __name__ == "__main__":
    main()
