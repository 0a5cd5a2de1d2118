"""Where computation runs: ``--device auto | cpu | cuda`` for training and the reports alike."""

from __future__ import annotations

import torch

from dcollapse.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a CUDA device is a one-line UserError."""
    if name not in DEVICES:
        raise UserError(f"--device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
