"""Regenerate docs/results.md end to end: preprocess the data, run the sweeps, write the tables and plots.

    .venv/bin/python scripts/run_experiment.py            # everything (finished runs are skipped: sweeps resume)
    .venv/bin/python scripts/run_experiment.py --docs-only  # only rewrite docs/results.md from runs/experiment

    .venv/bin/python scripts/run_experiment.py --datasets criteo-scalar  # some datasets only

Data: the Criteo 10k sample (numeric fields binned, and as scalars), MovieLens-100K and the iPinYou sample from
$DCOLLAPSE_SHARED_DATA (default: ../shared/data beside the repository), preprocessed into runs/experiment/data
(git-ignored, never committed), plus a synthetic dataset with a planted rank-4 pairwise interaction. Every dataset
runs the paper grid with both recipes (`--recipe default` and `--recipe paper`). Every step is a `dcollapse`
command; the commands are listed in the document. The sweep chains run side by side, each with one torch thread;
runs/experiment/timing.json records each sweep's wall time, load average and commit.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("runs/experiment")  # relative to ROOT; git-ignored
DATA = WORK / "data"
DOCS = Path("docs")
IMG = DOCS / "img"
DCOLLAPSE = [str(Path(sys.executable).with_name("dcollapse"))]


def shared_data() -> Path:
    return Path(os.environ.get("DCOLLAPSE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def preprocess_commands(movielens_utf8: Path) -> dict[str, list[str]]:
    """The command that makes each dataset, by dataset name."""
    raw = shared_data()
    criteo = [
        "dcollapse",
        "preprocess",
        str(raw / "criteo-sample-10k/train.txt"),
        str(raw / "criteo-sample-10k/test.txt"),
        "--format",
        "criteo",
        "--split-files",
        "--min-count",
        "2",
    ]
    ipinyou = raw / "ipinyou"
    return {
        "criteo": [*criteo, "--out", str(DATA / "criteo")],
        # the paper's code embeds Criteo's numeric fields as one vector per field scaled by the value
        "criteo-scalar": [*criteo, "--numeric-as", "scalar", "--out", str(DATA / "criteo-scalar")],
        "movielens": ["dcollapse", "preprocess", str(movielens_utf8), "--format", "movielens",
                      "--out", str(DATA / "movielens")],
        "synth": ["dcollapse", "synth", "ctr", "--preprocessed", "--out", str(DATA / "synth"), "--rows", "30000",
                  "--fields", "12", "--rank", "4", "--seed", "0"],
        # Both files pooled and split at random: the test file is another slice of the logs, in which most values
        # of several fields never occur in the train file (see docs/results.md). Few clicks: a larger test split.
        "ipinyou": ["dcollapse", "preprocess", str(ipinyou / "train.fm.txt"), str(ipinyou / "test.fm.txt"),
                    "--format", "libfm", "--field-map", str(ipinyou / "featindex.fm.txt"),
                    "--valid-frac", "0.15", "--test-frac", "0.25", "--out", str(DATA / "ipinyou")],
    }  # fmt: skip


def sweep_name(dataset: str, grid: str, recipe: str) -> str:
    return f"{dataset}-{grid}-{recipe}"


def sweep_command(dataset: str, grid: str, recipe: str, seeds: int) -> list[str]:
    return ["dcollapse", "sweep", str(DATA / dataset), "--grid", grid, "--recipe", recipe, "--seeds", str(seeds),
            "--threads", "1", "--out", str(WORK / sweep_name(dataset, grid, recipe)),
            "--title", f"{grid} grid, {recipe} recipe, {dataset}"]  # fmt: skip


# Chains of sweeps (dataset, grid, recipe, seeds), run side by side; within a chain, one after another (balanced
# by the measured run times of each dataset). The Criteo scalar-numeric dataset runs the paper recipe only (the
# recipe it belongs to); the ablation runs on the Criteo sample with the default recipe.
CHAINS = [
    [("criteo", "paper", "default", 3), ("criteo", "paper", "paper", 3), ("ipinyou", "paper", "default", 3),
     ("ipinyou", "paper", "paper", 3), ("criteo-scalar", "paper", "paper", 3), ("criteo", "ablation", "default", 2)],
    [("movielens", "paper", "default", 3), ("movielens", "paper", "paper", 3), ("synth", "paper", "default", 3),
     ("synth", "paper", "paper", 3)],
]  # fmt: skip
DATASETS = list(dict.fromkeys(sweep[0] for chain in CHAINS for sweep in chain))


def shown(command: list[str]) -> str:
    """The command as a line that runs when pasted into a shell (arguments quoted where needed)."""
    return shlex.join(command).replace(str(shared_data()), "$DCOLLAPSE_SHARED_DATA")


def run(command: list[str], log: Path | None = None) -> subprocess.Popen:
    exe = [*DCOLLAPSE, *command[1:]] if command[0] == "dcollapse" else command
    handle = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(exe, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)


def prepare_data(datasets: list[str]) -> dict[str, str]:
    """Make ``datasets`` (skipped when present); returns every dataset's command as shown in the document."""
    with tempfile.TemporaryDirectory() as tmp:
        # MovieLens' u.item is Latin-1; the preprocessor reads UTF-8, so the three files go through a UTF-8 copy.
        utf8 = Path(tmp) / "ml-100k"
        utf8.mkdir()
        source = shared_data() / "movielens-100k"
        for name in ("u.data", "u.user"):
            shutil.copy(source / name, utf8 / name)
        (utf8 / "u.item").write_text((source / "u.item").read_text(encoding="latin-1"), encoding="utf-8")
        commands = preprocess_commands(utf8)
        for name in datasets:
            command = commands[name]
            if not (ROOT / command[command.index("--out") + 1] / "meta.json").exists():
                if run(command).wait() != 0:
                    raise SystemExit(f"failed: {shown(command)}")
    shown_commands = {name: shown(c).replace(str(utf8), "ml-100k-utf8") for name, c in commands.items()}
    shown_commands["movielens"] = (
        "mkdir ml-100k-utf8 && cp $DCOLLAPSE_SHARED_DATA/movielens-100k/u.{data,user} ml-100k-utf8/ && "
        "iconv -f latin1 -t utf-8 $DCOLLAPSE_SHARED_DATA/movielens-100k/u.item > ml-100k-utf8/u.item\n"
        + shown_commands["movielens"]
    )
    return shown_commands


def load_average() -> float:
    return os.getloadavg()[0]


def run_sweeps(datasets: list[str], timing: dict[str, Any], save: Callable[[], None]) -> None:
    """The chains side by side (only the sweeps of ``datasets``); records each sweep's wall time and the load
    average at its start and end in ``timing["sweeps"]``."""
    chains = [[sweep for sweep in chain if sweep[0] in datasets] for chain in CHAINS]
    running: list[tuple[subprocess.Popen, tuple[str, str, str, int], float, float, list]] = []

    def start(chain: list[tuple[str, str, str, int]]) -> None:
        if chain:
            sweep = chain.pop(0)
            log = WORK / f"{sweep_name(*sweep[:3])}.log"
            running.append((run(sweep_command(*sweep), log), sweep, time.time(), load_average(), chain))

    for chain in chains:
        start(chain)
    while running:
        time.sleep(5)
        for item in list(running):
            process, sweep, began, load, chain = item
            if process.poll() is None:
                continue
            running.remove(item)
            timing["sweeps"][sweep_name(*sweep[:3])] = {
                "wall_s": time.time() - began, "started": began, "ended": time.time(),
                "load_start": load, "load_end": load_average(),
                "exit": process.returncode, "commit": commit(),
            }  # fmt: skip
            save()
            start(chain)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs-only", action="store_true", help="Only rewrite docs/results.md from finished runs.")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=DATASETS, help="Run these only.")
    args = parser.parse_args()
    os.chdir(ROOT)
    WORK.mkdir(parents=True, exist_ok=True)
    timing_path = WORK / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"sweeps": {}}

    def save() -> None:
        timing_path.write_text(json.dumps(timing, indent=1))

    if not args.docs_only:
        timing["data_commands"] = prepare_data(args.datasets)
        save()
        run_sweeps(args.datasets, timing, save)
    from results_doc import write_results  # scripts/results_doc.py: the document from the sweeps' summaries

    sweeps = [
        (d, grid, recipe, shown(sweep_command(d, grid, recipe, seeds)))
        for chain in CHAINS for d, grid, recipe, seeds in chain
    ]  # fmt: skip
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU, torch {torch.__version__}"
    write_results(ROOT, WORK, DOCS, IMG, sweeps, timing, machine)


if __name__ == "__main__":
    main()
