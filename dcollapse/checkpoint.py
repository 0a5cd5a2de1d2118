"""The checkpoint format: one ``torch.save`` file of plain data, read with ``weights_only=True``.

    {"format": "dcollapse.checkpoint", "version": 1, "config": {...}, "meta": {...},
     "state_dict": {...}, "history": [...], "data": {"path": str, "hash": str}, ...}

Extra top-level keys (e.g. ``"test"`` metrics, ``"kind"``) are allowed; the five above are required.
:func:`load` checks the types of what it reads: weights are finite tensors, a CTR checkpoint's ``meta`` passes the
dataset schema (:func:`dcollapse.data.dataset.check_meta`), and a ``"resume"`` state holds weights of the same names
and shapes as ``state_dict``, an optimizer state and the run's progress counters.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from dcollapse.errors import UserError
from dcollapse.io import atomic_path

FORMAT = "dcollapse.checkpoint"
VERSION = 1
REQUIRED = ("config", "meta", "state_dict", "history")


def ctr_run(
    config: dict[str, Any],
    meta: dict[str, Any],
    weights: dict[str, torch.Tensor],
    history: list[dict[str, Any]],
    data_dir: str | Path,
    best_epoch: int,
    test: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What a ``dcollapse train`` checkpoint holds besides its resume state: the best epoch's ``weights``, the
    per-epoch ``history``, the full config, the dataset's meta.json and where it was read from, the test metrics."""
    return {
        "config": config,
        "meta": meta,
        "state_dict": weights,
        "history": history,
        "data": {"path": str(data_dir), "hash": meta.get("input_hash")},
        "test": test,
        "best_epoch": best_epoch,
        "kind": "ctr",
    }


def with_resume(run: dict[str, Any], weights: dict[str, torch.Tensor], optimizer: dict[str, Any],
                progress: dict[str, Any], **options: Any) -> dict[str, Any]:  # fmt: skip
    """``run`` (:func:`ctr_run`) plus the state ``--resume`` continues from: the last epoch's ``weights``, the
    optimizer state, the progress counters and the run ``options`` a resume keeps (save_every_epoch, ...)."""
    return run | {"resume": {"state_dict": weights, "optimizer": optimizer, "progress": progress, **options}}


def save(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (format and version added) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **checkpoint}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; any foreign or unsafe file raises a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a checkpoint file (checkpoints come from `dcollapse train`)")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused to load: not a dcollapse checkpoint (holds more than plain data)") from None
    except Exception as exc:  # noqa: BLE001  any other bytes: the legacy unpickler fails in many ways (KeyError, ...)
        raise UserError(f"{path}: not a dcollapse checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path}: not a dcollapse checkpoint (no format tag {FORMAT!r})")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path}: checkpoint version {version!r} is newer than this dcollapse reads ({VERSION})")
    missing = [key for key in REQUIRED if key not in obj]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}")
    problem = contents_problem(obj)
    if problem:
        raise UserError(f"{path}: damaged checkpoint: {problem}")
    return obj


def contents_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with the contents of a checkpoint dict (types, non-finite weights, a resume state that does
    not fit its weights), or None."""
    from dcollapse.data.dataset import check_meta

    for key, kind in (("config", dict), ("meta", dict), ("state_dict", dict), ("history", list)):
        if not isinstance(obj[key], kind):
            return f"{key} is {type(obj[key]).__name__}, expected {kind.__name__}"
    problem = weights_problem(obj["state_dict"], "state_dict")
    if problem:
        return problem
    if not all(isinstance(entry, dict) for entry in obj["history"]):
        return "history holds a non-object entry"
    if not isinstance(obj.get("kind", "ctr"), str):
        return f"kind is {obj['kind']!r}, expected a name"
    data = obj.get("data", {})
    if not (isinstance(data, dict) and isinstance(data.get("path", ""), str)
            and isinstance(data.get("hash"), str | None)):  # fmt: skip
        return "data must be {path: str, hash: str}"
    if obj.get("kind", "ctr") == "ctr":
        from dcollapse.models import model_config

        for i, entry in enumerate(obj["history"]):
            if not all(isinstance(entry.get(key), int | float) for key in EPOCH_KEYS):
                return f"history[{i}] lacks a number for one of {', '.join(EPOCH_KEYS)}"
        try:
            check_meta(obj["meta"], "meta")
            model_config(obj["config"])
        except UserError as exc:
            return str(exc)
    best = obj.get("best_epoch", 0)
    if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best <= len(obj["history"]):
        return f"best_epoch {best!r} is not an epoch of its history ({len(obj['history'])} epochs)"
    if "resume" in obj:
        return resume_problem(obj["resume"], obj["state_dict"])
    return None


def weights_problem(state: dict[str, Any], name: str) -> str | None:
    """A non-tensor entry or a tensor with NaN/inf values in the state dict ``state``, or None."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"{name}[{key!r}] is {type(value).__name__}, expected a tensor"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{name}[{key!r}] holds NaN or infinite values"
    return None


EPOCH_KEYS = ("epoch", "train_loss", "valid_auc", "valid_logloss")  # in every history entry of a CTR run
PROGRESS = {"epoch": int, "best_auc": float, "best_epoch": int, "bad_epochs": int}
MONITOR_PROGRESS = {"best_score": float}  # the best epoch's --monitor value; absent in checkpoints written before it


def resume_problem(resume: Any, weights: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a ``"resume"`` state: ``{"state_dict", "optimizer": {...},
    "progress": {"epoch", "best_auc", "best_epoch", "bad_epochs"}}`` with weights shaped as ``weights``."""
    if not isinstance(resume, dict) or not {"state_dict", "optimizer", "progress"} <= set(resume):
        return "resume must hold state_dict, optimizer and progress"
    state, optimizer, progress = resume["state_dict"], resume["optimizer"], resume["progress"]
    if not isinstance(state, dict):
        return f"resume.state_dict is {type(state).__name__}, expected dict"
    problem = weights_problem(state, "resume.state_dict")
    if problem:
        return problem
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    if {key: tuple(value.shape) for key, value in state.items()} != shapes:
        return "resume.state_dict does not have the names and shapes of state_dict"
    if isinstance(optimizer, dict) and set(optimizer) == {"tables", "dense"}:  # --sparse-emb / --fused-update runs
        optimizer = optimizer["dense"]  # (their tables' state is checked when the optimizer loads it)
    if not isinstance(optimizer, dict):  # its layout depends on the optimizer; restoring it checks the rest
        return f"resume.optimizer is {type(optimizer).__name__}, expected an optimizer state"
    if not isinstance(progress, dict) or set(progress) - set(MONITOR_PROGRESS) != set(PROGRESS):
        return f"resume.progress must hold exactly {', '.join(PROGRESS)} (and optionally best_score)"
    for key, kind in (PROGRESS | MONITOR_PROGRESS).items():
        if key not in progress:
            continue
        value = progress[key]
        negative = isinstance(value, int) and value < 0
        if isinstance(value, bool) or not isinstance(value, kind | int) or (kind is int and negative):
            return f"resume.progress.{key} is {value!r}, expected {'an integer >= 0' if kind is int else 'a number'}"
        if kind is float and value != value:
            return f"resume.progress.{key} is NaN"
    return None
