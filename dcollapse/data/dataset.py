"""Reading a preprocessed dataset directory: ``meta.json`` plus one Parquet file per split.

``meta.json`` (written by :mod:`dcollapse.data.preprocess`)::

    {"format": "dcollapse.dataset", "version": 1, "name": str, "label": "label",
     "fields": [{"name": str, "kind": "categorical" | "numeric", "vocab_size": int, "offset": int}, ...],
     "splits": {"train": {"file": "train.parquet", "rows": int, "positives": int}, "valid": {...}, ...},
     "options": {...}, "input_hash": str, "dcollapse_version": str, "skipped_rows": int}

Each split file holds one int32 column per field (local ids in ``[0, vocab_size)``; id 0 = rare/unknown,
id 1 = missing) and an int8 label column. ``offset`` places each field in one concatenated table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from dcollapse.errors import UserError
from dcollapse.io import read_description

if TYPE_CHECKING:
    import torch

FORMAT = "dcollapse.dataset"
OOV_ID = 0
MISSING_ID = 1


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``DIR/meta.json``."""
    return read_description(data_dir, "meta.json", FORMAT, "dcollapse dataset", "run `dcollapse preprocess` first")


@dataclass
class Split:
    """One split in memory: ``ids`` int32 [N, F] local ids, ``labels`` float32 [N] in {0, 1}."""

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(data_dir: str | Path, split: str, meta: dict[str, Any] | None = None) -> Split:
    """Load ``split`` of a preprocessed dataset into tensors (field order as in ``meta["fields"]``)."""
    import torch  # here, not at module level: preprocessing reads this module and needs no torch

    meta = meta if meta is not None else load_meta(data_dir)
    if split not in meta["splits"]:
        raise UserError(f"{data_dir}: no split {split!r} (have: {', '.join(meta['splits'])})")
    path = Path(data_dir) / meta["splits"][split]["file"]
    if not path.is_file():
        raise UserError(f"{path}: split file missing")
    names = [f["name"] for f in meta["fields"]]
    frame = pl.read_parquet(path, columns=[*names, meta["label"]])
    ids = frame.select(names).to_numpy().astype(np.int32, copy=False)
    labels = frame[meta["label"]].to_numpy().astype(np.float32)
    vocab = np.array([f["vocab_size"] for f in meta["fields"]])
    if ids.size and ((ids < 0) | (ids >= vocab)).any():
        raise UserError(f"{path}: ids outside the vocabulary sizes in meta.json")
    return Split(torch.from_numpy(np.ascontiguousarray(ids)), torch.from_numpy(labels))


def field_offsets(meta: dict[str, Any]) -> torch.Tensor:
    """int64 [F]: where each field's rows start in the one concatenated table."""
    import torch

    return torch.tensor([f["offset"] for f in meta["fields"]], dtype=torch.int64)
