"""Tiny hand-written CTR datasets (meta.json + Parquet per split) for the model and training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

TIMING = ("seconds", "samples_per_s")  # history keys that depend on the machine's speed


def make_meta(vocab_sizes: list[int], splits: dict[str, int] | None = None) -> dict:
    """A meta.json dict for fields f0..f{F-1} with the given vocabulary sizes."""
    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).tolist()
    fields = [
        {"name": f"f{i}", "kind": "categorical", "vocab_size": int(v), "offset": int(o)}
        for i, (v, o) in enumerate(zip(vocab_sizes, offsets, strict=True))
    ]
    splits = splits or {}
    return {
        "format": "dcollapse.dataset",
        "version": 1,
        "name": "tiny",
        "label": "label",
        "fields": fields,
        "splits": {name: {"file": f"{name}.parquet", "rows": rows, "positives": 0} for name, rows in splits.items()},
        "options": {},
        "input_hash": "test-hash",
        "dcollapse_version": "0.1.0",
        "skipped_rows": 0,
    }


def write_dataset(
    directory: Path,
    vocab_sizes: list[int],
    rows: dict[str, int],
    seed: int = 0,
    pair_strength: float = 2.0,
) -> dict:
    """Write a dataset whose labels follow a planted pairwise interaction between fields 0 and 1 plus a
    first-order effect of field 2; returns the meta dict. Probabilities: sigmoid(a[x0] * b[x1] + c[x2])."""
    rng = np.random.default_rng(seed)
    F = len(vocab_sizes)
    a = rng.normal(0, pair_strength, vocab_sizes[0])
    b = rng.normal(0, 1.0, vocab_sizes[1])
    c = rng.normal(0, 0.5, vocab_sizes[2]) if F > 2 else None
    directory.mkdir(parents=True, exist_ok=True)
    meta = make_meta(vocab_sizes, rows)
    for split, n in rows.items():
        ids = np.stack([rng.integers(0, v, n) for v in vocab_sizes], axis=1).astype(np.int32)
        logit = a[ids[:, 0]] * b[ids[:, 1]] + (c[ids[:, 2]] if c is not None else 0.0)
        labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        frame = pl.DataFrame({f"f{i}": ids[:, i] for i in range(F)} | {"label": labels})
        frame.write_parquet(directory / f"{split}.parquet")
        meta["splits"][split]["positives"] = int(labels.sum())
    (directory / "meta.json").write_text(json.dumps(meta))
    return meta


def write_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-field dataset with train/valid/test splits (1500/500/500 rows), for a module-scoped ``tiny`` fixture."""
    directory = tmp_path_factory.mktemp("tiny")
    write_dataset(directory, [6, 5, 4, 7], {"train": 1500, "valid": 500, "test": 500})
    return directory


def untimed(history: list[dict]) -> list[dict]:
    """A run's history without the timing keys (what must repeat exactly across runs)."""
    return [{k: v for k, v in entry.items() if k not in TIMING} for entry in history]
