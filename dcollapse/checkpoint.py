"""The checkpoint format: one ``torch.save`` file of plain data, read with ``weights_only=True``.

    {"format": "dcollapse.checkpoint", "version": 1, "config": {...}, "meta": {...},
     "state_dict": {...}, "history": [...], "data": {"path": str, "hash": str}, ...}

Extra top-level keys (e.g. ``"test"`` metrics, ``"kind"``) are allowed; the five above are required.
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
    return obj
