"""Raw CTR files -> a preprocessed dataset directory (see :mod:`dcollapse.data.dataset` for the contract)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from dcollapse import __version__
from dcollapse.data.dataset import FORMAT
from dcollapse.io import atomic_path

LABEL = "label"


def write_dataset(
    out_dir: str | Path,
    splits: Mapping[str, pl.DataFrame | pl.LazyFrame],
    fields: list[dict[str, Any]],
    *,
    name: str,
    options: dict[str, Any],
    input_hash: str,
    skipped_rows: int = 0,
    overwrite: bool = False,
    extra_files: Mapping[str, Callable[[Path], Any]] | None = None,
) -> dict[str, Any]:
    """Write ``splits`` (frames with an int32 column per field and a ``label`` column) as a dataset dir, atomically.

    ``fields``: ``[{"name", "kind", "vocab_size"}, ...]`` in column order (offsets are added here);
    ``extra_files``: ``{file name: writer(path)}`` for additional files inside the directory.
    Returns the ``meta.json`` dict.
    """
    names = [f["name"] for f in fields]
    with atomic_path(out_dir, directory=True, overwrite=overwrite) as tmp:
        sinks = []
        for split, frame in splits.items():
            lazy = frame.lazy().select([pl.col(n).cast(pl.Int32) for n in names] + [pl.col(LABEL).cast(pl.Int8)])
            sinks.append(lazy.sink_parquet(tmp / f"{split}.parquet", lazy=True))
        pl.collect_all(sinks, engine="streaming")
        split_meta = {}
        for split in splits:
            counts = pl.scan_parquet(tmp / f"{split}.parquet").select(
                pl.len().alias("rows"), pl.col(LABEL).cast(pl.Int64).sum().alias("positives")
            )
            row = counts.collect().row(0, named=True)
            split_meta[split] = {
                "file": f"{split}.parquet",
                "rows": int(row["rows"]),
                "positives": int(row["positives"] or 0),
            }
        offset = 0
        field_meta = []
        for f in fields:
            field_meta.append(
                {"name": f["name"], "kind": f["kind"], "vocab_size": int(f["vocab_size"]), "offset": offset}
            )
            offset += int(f["vocab_size"])
        meta = {
            "format": FORMAT,
            "version": 1,
            "name": name,
            "label": LABEL,
            "fields": field_meta,
            "splits": split_meta,
            "options": options,
            "input_hash": input_hash,
            "dcollapse_version": __version__,
            "skipped_rows": int(skipped_rows),
        }
        for file_name, writer in (extra_files or {}).items():
            writer(tmp / file_name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
