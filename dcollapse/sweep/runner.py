"""Running a sweep: the plan of runs (grid x seeds), their files in RUNS_DIR, training the runs still to do
(resumable, one failed run does not stop the others) and the result document of each finished run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dcollapse import checkpoint
from dcollapse.config import Options, full_config, merged
from dcollapse.data.dataset import load_meta
from dcollapse.errors import UserError
from dcollapse.io import atomic_path
from dcollapse.metrics import collapse
from dcollapse.models import load_model
from dcollapse.reports import verdict
from dcollapse.reports.runs import best_entry, headline_metrics, load_fixed_batch
from dcollapse.train import train

FIXED_BATCH_SPLIT = "valid"  # the split of the fixed batch every run's RankMe and spectrum is measured on


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: grid entry ``group`` trained with ``seed``, saved as ``RUNS_DIR/<name>.pt``."""

    name: str
    group: str
    seed: int
    config: dict[str, Any]


def run_name(group: str, seed: int) -> str:
    return f"{group}-s{seed}"


def plan(
    grid: Mapping[str, Mapping[str, Any]], seeds: int, overrides: Mapping[str, Any] | None = None
) -> list[RunSpec]:
    """Expand ``grid`` into runs for seeds 0..seeds-1 (``overrides`` replace options of every entry), configs
    completed and validated; a bad entry raises a UserError naming it."""
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, not {seeds}")
    specs = []
    for group, options in grid.items():
        if not group or any(ch in group for ch in "/\\") or group.startswith("."):
            raise UserError(f"grid entry {group!r}: names must be plain file names")
        if "seed" in options:
            raise UserError(f"grid entry {group}: 'seed' is set by --seeds, remove it from the grid")
        for seed in range(seeds):
            try:
                run_config = full_config(merged(options, overrides or {}, {"seed": seed}))
            except UserError as exc:  # options from a grid file are named by file, line and key already
                raise exc if isinstance(options, Options) else UserError(f"grid entry {group}: {exc}") from None
            specs.append(RunSpec(run_name(group, seed), group, seed, run_config))
    return specs


def result_path(runs_dir: Path, spec: RunSpec) -> Path:
    return runs_dir / f"{spec.name}.json"


def checkpoint_path(runs_dir: Path, spec: RunSpec) -> Path:
    return runs_dir / f"{spec.name}.pt"


def read_result(runs_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The finished result of ``spec`` in ``runs_dir``, or None; a result with another config raises a UserError."""
    path = result_path(runs_dir, spec)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not a valid result file (delete it to redo the run)") from None
    if result.get("config") != spec.config:
        raise UserError(
            f"{path}: this run was made with other settings; use another --out or the same grid and options"
        )
    return result


def resume_state(runs_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The checkpoint of an interrupted run of ``spec`` to continue from, or None to start afresh."""
    path = checkpoint_path(runs_dir, spec)
    if not path.is_file():
        return None
    ckpt = checkpoint.load(path)
    if ckpt.get("config") != spec.config:
        raise UserError(f"{path}: a checkpoint with other settings; use another --out or the same grid and options")
    return ckpt if "resume" in ckpt else None


def run_result(spec: RunSpec, ckpt: dict[str, Any], ids: Any, seconds: float) -> dict[str, Any]:
    """The result document of a finished run: metrics of the best epoch's weights and the spectra of its fixed
    batch Z = flat embeddings [B, F*d] of ``ids`` [B, F]."""
    model = load_model(ckpt)
    batch = collapse.batch_spectra(model, ids, FIXED_BATCH_SPLIT, collapse.DEFAULT_SEED)
    best = best_entry(ckpt)
    auc, logloss, split = headline_metrics(ckpt)
    return {
        "name": spec.name,
        "group": spec.group,
        "seed": spec.seed,
        "status": "ok",
        "config": spec.config,
        "dataset": {"name": ckpt["meta"].get("name"), "path": ckpt["data"]["path"], "hash": ckpt["data"]["hash"]},
        "auc": auc,
        "logloss": logloss,
        "metrics_split": split,
        "valid_auc": best["valid_auc"],
        "rankme": batch.z.rankme,
        "mean_ia": best["mean_ia"],
        "field_ia": best["field_ia"],
        "best_epoch": ckpt["best_epoch"],
        "epochs_run": len(ckpt["history"]),
        "seconds": seconds,
        "batch_rows": batch.rows,
        "cov_spectrum": [float(v) for v in batch.covariance.normalized],
        "flags": verdict.run_flags(ckpt),
        "history": [{key: h.get(key) for key in HISTORY_KEYS} for h in ckpt["history"]],
    }


HISTORY_KEYS = ("epoch", "valid_auc", "valid_logloss", "rankme", "mean_ia")  # per epoch, kept in a run's result


def fixed_batch_ids(data_dir: Path) -> Any:
    """ids int32 [B, F]: the fixed validation batch every run's RankMe and spectrum is measured on (the rows
    ``dcollapse compare`` draws by default)."""
    if FIXED_BATCH_SPLIT not in load_meta(data_dir)["splits"]:
        raise UserError(f"{data_dir}: a sweep needs a {FIXED_BATCH_SPLIT} split")
    return load_fixed_batch(data_dir, FIXED_BATCH_SPLIT).ids


Event = Callable[[str, RunSpec, dict[str, Any] | None], None]


def run_sweep(
    data_dir: str | Path,
    specs: list[RunSpec],
    runs_dir: str | Path,
    *,
    on_event: Event | None = None,
    on_epoch: Callable[[RunSpec, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every run of ``specs`` not finished in ``runs_dir``, one after another; returns one result per spec.

    ``on_event(kind, spec, result)`` reports "skip" (finished earlier), "start", "done" and "fail" (the result then
    has status "failed" and a one-line "error"); ``on_epoch(spec, history_entry)`` reports training progress.
    Every existing result and checkpoint is checked against its config before anything runs. A KeyboardInterrupt
    stops the sweep (the interrupted run resumes from its last epoch next time); any other exception fails one run.
    """
    data_dir, runs_dir = Path(data_dir).resolve(), Path(runs_dir)
    data_hash = load_meta(data_dir).get("input_hash")  # a bad dataset fails the whole sweep, not each run
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: exists and is not a directory")
    runs_dir.mkdir(parents=True, exist_ok=True)
    finished = {spec.name: read_result(runs_dir, spec) for spec in specs}
    for spec in specs:
        done = finished[spec.name]
        if done is not None and done["dataset"]["hash"] != data_hash:
            raise UserError(f"{result_path(runs_dir, spec)}: trained on another dataset; use another --out")
    resumes = {spec.name: resume_state(runs_dir, spec) for spec in specs if finished[spec.name] is None}
    ids = fixed_batch_ids(data_dir)
    emit: Event = on_event or (lambda kind, spec, result: None)
    results = []
    for spec in specs:
        result = finished[spec.name]
        if result is not None:
            emit("skip", spec, result)
            results.append(result)
            continue
        emit("start", spec, None)
        start = time.perf_counter()
        try:
            ckpt = train(
                data_dir,
                spec.config,
                checkpoint_path(runs_dir, spec),
                resume=resumes[spec.name],
                on_epoch=None if on_epoch is None else partial(on_epoch, spec),
            )
            result = run_result(spec, ckpt, ids, time.perf_counter() - start)
            with atomic_path(result_path(runs_dir, spec)) as tmp:
                tmp.write_text(json.dumps(result, indent=1))
        except Exception as exc:  # one failed run must not stop the sweep
            message = (str(exc).strip().splitlines() or [""])[0]
            result = {
                "name": spec.name,
                "group": spec.group,
                "seed": spec.seed,
                "status": "failed",
                "config": spec.config,
                "error": f"{type(exc).__name__}: {message}",
            }
            emit("fail", spec, result)
        else:
            emit("done", spec, result)
        results.append(result)
    return results
