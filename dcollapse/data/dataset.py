"""Reading a preprocessed dataset directory: ``meta.json`` plus one Parquet file per split.

``meta.json`` (written by :mod:`dcollapse.data.preprocess`)::

    {"format": "dcollapse.dataset", "version": 1, "name": str, "label": "label",
     "fields": [{"name": str, "kind": "categorical" | "numeric", "vocab_size": int, "offset": int,
                 "encoding": "bins" | "scalar", "scalar": {...}}, ...],
     "splits": {"train": {"file": "train.parquet", "rows": int, "positives": int}, "valid": {...}, ...},
     "options": {...}, "input_hash": str, "dcollapse_version": str, "skipped_rows": int}

Each split file holds one int32 column per field (local ids in ``[0, vocab_size)``; id 0 = rare/unknown,
id 1 = missing) and an int8 label column. ``offset`` places each field in one concatenated table.

``encoding`` (absent = ``"bins"``): how a numeric field's values became ids. ``"bins"``: each bin is a token with
its own id, like a categorical value. ``"scalar"`` (``preprocess --numeric-as scalar``): the id is the field's
scaled value on a grid of ``levels`` steps, ``id = FIRST_KEPT_ID + round(x * levels)`` with
``x = (log1p(max(v, 0)) - min) / (max - min)`` clipped to [0, 1] (``min``/``max`` from the train split), and the
model embeds it as one learned vector per field times the value (:func:`scalar_values`); ids 0 and 1 have value 0.
The block: ``"scalar": {"levels": int, "transform": "log1p", "min": float, "max": float}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from dcollapse import __version__
from dcollapse.data.formats import LABEL, first_line
from dcollapse.errors import UserError
from dcollapse.io import atomic_path, read_description

if TYPE_CHECKING:
    import torch

FORMAT = "dcollapse.dataset"
VERSION = 1
OOV_ID = 0
MISSING_ID = 1
FIRST_KEPT_ID = 2  # the first id of a kept value (a token by count, or a scalar field's value 0)
KINDS = ("categorical", "numeric")
ENCODINGS = ("bins", "scalar")
SCALAR_TRANSFORMS = ("log1p",)
MAX_TABLE_ROWS = 2**31 - 1  # ids are int32: every field's vocabulary, and all of them together, fit below this


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/meta.json`` and check it against the schema above (:func:`check_meta`), and that every split file
    is a Parquet file inside ``DIR`` with the declared columns and row count. Any problem is one
    :class:`UserError` naming the file and what is wrong."""
    meta = read_description(data_dir, "meta.json", FORMAT, "dcollapse dataset", "run `dcollapse preprocess` first")
    check_meta(meta, Path(data_dir) / "meta.json")
    for name in meta["splits"]:
        check_split_file(data_dir, meta, name)
    return meta


def check_meta(meta: Any, where: str | Path) -> None:
    """Check a ``meta.json`` document (from a dataset directory or a checkpoint; ``where`` names it in the error):
    the keys and types of the schema, vocabulary sizes in [1, 2^31 - 1] and together below 2^31, offsets the
    running sums of the sizes, unique field names, split files named relative to the directory and inside it."""

    def fail(what: str) -> None:
        raise UserError(f"{where}: {what}")

    if not isinstance(meta, dict):
        fail(f"expected an object, got {_shown(meta)}")
    if meta.get("version", VERSION) != VERSION:
        fail(f"version {meta.get('version')!r} is not one this dcollapse reads ({VERSION})")
    if not _text(meta.get("label")):
        fail(f"'label' must be the label column's name, got {_shown(meta.get('label'))}")
    fields = meta.get("fields")
    if not isinstance(fields, list) or not fields:
        fail(f"'fields' must be a non-empty list, got {_shown(fields)}")
    offset, names = 0, set()
    for i, f in enumerate(fields):
        if not isinstance(f, dict):
            fail(f"fields[{i}] must be an object, got {_shown(f)}")
        if not _text(f.get("name")):
            fail(f"fields[{i}].name must be a non-empty string, got {_shown(f.get('name'))}")
        if f["name"] in names or f["name"] == meta["label"]:
            fail(f"fields[{i}].name {f['name']!r} is used twice (fields and label need distinct names)")
        names.add(f["name"])
        if f.get("kind") not in KINDS:
            fail(f"fields[{i}].kind must be one of {', '.join(KINDS)}, got {_shown(f.get('kind'))}")
        size = f.get("vocab_size")
        if not _integer(size, 1, MAX_TABLE_ROWS):
            fail(f"fields[{i}].vocab_size must be an integer in [1, {MAX_TABLE_ROWS}], got {_shown(size)}")
        if f.get("offset") != offset or not _integer(f.get("offset"), 0, MAX_TABLE_ROWS):
            fail(f"fields[{i}].offset must be {offset} (the sum of the vocabulary sizes before it), "
                 f"got {_shown(f.get('offset'))}")  # fmt: skip
        problem = _encoding_problem(f)
        if problem:
            fail(f"fields[{i}] ({f['name']}): {problem}")
        offset += size
    if offset > MAX_TABLE_ROWS:
        fail(f"the vocabulary sizes add up to {offset:,}, more than the {MAX_TABLE_ROWS:,} rows ids can address")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        fail(f"'splits' must be a non-empty object of split name -> file, got {_shown(splits)}")
    for name, split in splits.items():
        key = f"splits.{name}" if name.isprintable() and name.strip() == name and name else f"splits[{_shown(name)}]"
        if not isinstance(split, dict):
            fail(f"{key} must be an object, got {_shown(split)}")
        file = split.get("file")
        if not _text(file) or Path(file).is_absolute() or ".." in Path(file).parts or "\\" in file:
            fail(f"{key}.file must be a file name inside the dataset directory, got {_shown(file)}")
        rows = split.get("rows")
        if not _integer(rows, 0, 2**63 - 1):
            fail(f"{key}.rows must be an integer >= 0, got {_shown(rows)}")
        if not _integer(split.get("positives", 0), 0, rows):
            fail(f"{key}.positives must be an integer in [0, rows], got {_shown(split.get('positives'))}")
    if not isinstance(meta.get("input_hash", ""), str | None):
        fail(f"'input_hash' must be a string, got {_shown(meta.get('input_hash'))}")


def _encoding_problem(f: dict[str, Any]) -> str | None:
    """What is wrong with a field's ``encoding`` / ``scalar`` keys (None: nothing)."""
    encoding = f.get("encoding", "bins")
    if encoding not in ENCODINGS:
        return f"encoding must be one of {', '.join(ENCODINGS)}, got {_shown(encoding)}"
    if encoding == "bins":
        return None if "scalar" not in f else "a 'scalar' block needs encoding 'scalar'"
    if f.get("kind") != "numeric":
        return f"encoding 'scalar' is for numeric fields, this one is {f.get('kind')}"
    block = f.get("scalar")
    if not isinstance(block, dict):
        return f"encoding 'scalar' needs a 'scalar' object (levels, transform, min, max), got {_shown(block)}"
    levels: Any = block.get("levels")
    low: Any = block.get("min")
    high: Any = block.get("max")
    if not _integer(levels, 1, MAX_TABLE_ROWS - FIRST_KEPT_ID - 1):
        return f"scalar.levels must be an integer >= 1, got {_shown(levels)}"
    if block.get("transform") not in SCALAR_TRANSFORMS:
        return f"scalar.transform must be one of {', '.join(SCALAR_TRANSFORMS)}, got {_shown(block.get('transform'))}"
    if not (_number(low) and _number(high) and low <= high):
        return f"scalar.min and scalar.max must be finite numbers with min <= max, got {_shown(low)}, {_shown(high)}"
    want = levels + 1 + FIRST_KEPT_ID
    if f.get("vocab_size") != want:
        return f"vocab_size must be scalar.levels + {1 + FIRST_KEPT_ID} = {want}, got {_shown(f.get('vocab_size'))}"
    return None


def scalar_values(f: dict[str, Any]) -> np.ndarray:
    """float64 [vocab_size]: the value of every local id of a field with encoding ``scalar`` (a checked meta.json
    field): 0 for the OOV and missing ids, ``(id - FIRST_KEPT_ID) / levels`` in [0, 1] for the others."""
    levels = int(f["scalar"]["levels"])
    return np.concatenate([np.zeros(FIRST_KEPT_ID), np.arange(levels + 1, dtype=np.float64) / levels])


def is_scalar(f: dict[str, Any]) -> bool:
    """Whether a meta.json field is embedded as one vector times its value (encoding ``scalar``)."""
    return f.get("encoding") == "scalar"


def split_path(data_dir: str | Path, meta: dict[str, Any], split: str) -> Path:
    """The file of ``split`` (checked to lie inside ``data_dir``, symbolic links resolved)."""
    root = Path(data_dir)
    if split not in meta["splits"]:
        raise UserError(f"{root}: no split {split!r} (have: {', '.join(meta['splits'])})")
    path = root / meta["splits"][split]["file"]
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{root / 'meta.json'}: splits.{split}.file {path} lies outside the dataset directory")
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a split file (meta.json: splits.{split}.file)")
    if not path.is_file():
        raise UserError(f"{path}: split file missing")
    return path


def check_split_file(data_dir: str | Path, meta: dict[str, Any], split: str) -> Path:
    """The file of ``split``, checked: a Parquet file inside ``data_dir`` with an integer column for every field
    and the label, and as many rows as ``meta.json`` says (read from the file's footer only)."""
    path = split_path(data_dir, meta, split)
    try:
        schema = pl.read_parquet_schema(path)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    for name in [f["name"] for f in meta["fields"]] + [meta["label"]]:
        if name not in schema:
            raise UserError(f"{path}: no column {name!r} (meta.json declares it)")
        if not (schema[name].is_integer() or schema[name] == pl.Boolean):
            raise UserError(f"{path}: column {name!r} holds {schema[name]}, expected integer ids/labels")
    if rows != meta["splits"][split]["rows"]:
        raise UserError(f"{path}: {rows} rows, meta.json says {meta['splits'][split]['rows']}")
    return path


@dataclass
class Split:
    """One split in memory: ``ids`` int32 [N, F] local ids, ``labels`` float32 [N] in {0, 1}."""

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(data_dir: str | Path, split: str, meta: dict[str, Any] | None = None) -> Split:
    """Load ``split`` of a preprocessed dataset into tensors (field order as in ``meta["fields"]``)."""
    meta = meta if meta is not None else load_meta(data_dir)
    path = check_split_file(data_dir, meta, split)
    try:
        frame = pl.read_parquet(path, columns=[*(f["name"] for f in meta["fields"]), meta["label"]])
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return split_tensors(frame, meta, path)


def split_tensors(frame: pl.DataFrame, meta: dict[str, Any], path: Path, first_row: int = 0) -> Split:
    """``frame`` (rows of a split file from row ``first_row`` on) as tensors, checked: no missing values, ids in
    ``[0, vocab_size)`` of each field, labels 0 or 1. ``path`` names the file in the error."""
    import torch  # here, not at module level: preprocessing reads this module and needs no torch

    names = [f["name"] for f in meta["fields"]]
    for name in [*names, meta["label"]]:
        if frame[name].null_count():
            row = first_row + int(frame[name].is_null().arg_max())
            raise UserError(f"{path}, row {row}: column {name!r} has a missing value")
    ids = frame.select(names).to_numpy().astype(np.int64, copy=False)
    vocab = np.array([f["vocab_size"] for f in meta["fields"]])
    outside = (ids < 0) | (ids >= vocab)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise UserError(
            f"{path}, row {first_row + row}: id {ids[row, col]} of field {names[col]!r} is outside "
            f"[0, {vocab[col]}) (the vocabulary size in meta.json)"
        )
    labels = frame[meta["label"]].cast(pl.Int64).to_numpy()
    wrong = (labels != 0) & (labels != 1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise UserError(f"{path}, row {first_row + row}: label {labels[row]} is not 0 or 1")
    ids32 = np.ascontiguousarray(ids, dtype=np.int32)
    return Split(torch.from_numpy(ids32), torch.from_numpy(labels.astype(np.float32)))


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _shown(value: Any) -> str:
    """A value from the file, shortened for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_offsets(meta: dict[str, Any]) -> torch.Tensor:
    """int64 [F]: where each field's rows start in the one concatenated table."""
    import torch

    return torch.tensor([f["offset"] for f in meta["fields"]], dtype=torch.int64)


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
    drop_empty: bool = False,
    extra: Mapping[str, Any] | Callable[[list[pl.DataFrame]], Mapping[str, Any]] | None = None,
    queries: Sequence[pl.LazyFrame] = (),
) -> dict[str, Any]:
    """Write ``splits`` (frames with an int32 column per field and a ``label`` column) as a dataset dir, atomically.

    ``fields``: ``[{"name", "kind", "vocab_size"}, ...]`` in column order (offsets are added here; a field's
    ``encoding`` and ``scalar`` keys are kept);
    ``extra_files``: ``{file name: writer(path)}`` for additional files inside the directory; ``drop_empty``: leave out
    splits without rows (a missing or empty ``train`` split is then an error); ``extra``: more ``meta.json`` keys (the
    preprocess job adds ``columns``, how each csv/parquet input column was used, and ``notes``), or a function of the
    results of ``queries``: more lazy queries collected in the same streaming run as the splits (an input they share
    with the splits is read once).
    Returns the ``meta.json`` dict.
    """
    names = [f["name"] for f in fields]
    with atomic_path(out_dir, directory=True, overwrite=overwrite, replaces="meta.json") as tmp:
        # One streaming query writes every split (a shared input is read once); memory stays flat.
        sinks = [
            frame.lazy()
            .select([pl.col(n).cast(pl.Int32) for n in names] + [pl.col(LABEL).cast(pl.Int8)])
            .sink_parquet(tmp / f"{split}.parquet", row_group_size=65536, engine="streaming", lazy=True)
            for split, frame in splits.items()
        ]
        results = pl.collect_all([*sinks, *queries], engine="streaming")[len(sinks) :]
        split_meta = {}
        for split in splits:
            counts = pl.scan_parquet(tmp / f"{split}.parquet").select(
                pl.len().alias("rows"), pl.col(LABEL).cast(pl.Int64).sum().alias("positives")
            )
            row = counts.collect().row(0, named=True)
            if drop_empty and row["rows"] == 0:
                (tmp / f"{split}.parquet").unlink()
                continue
            split_meta[split] = {
                "file": f"{split}.parquet",
                "rows": int(row["rows"]),
                "positives": int(row["positives"] or 0),
            }
        if drop_empty and "train" in splits and "train" not in split_meta:
            raise UserError(f"{out_dir}: no training rows (all rows were skipped or went to other splits)")
        if not split_meta:
            raise UserError(f"{out_dir}: no rows to write")
        offset = 0
        field_meta: list[dict[str, Any]] = []
        for f in fields:
            field_meta.append({
                "name": f["name"], "kind": f["kind"], "vocab_size": int(f["vocab_size"]), "offset": offset,
                **{key: f[key] for key in ("encoding", "scalar") if key in f},
            })  # fmt: skip
            offset += int(f["vocab_size"])
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "name": name,
            "label": LABEL,
            "fields": field_meta,
            "splits": split_meta,
            "options": options,
            "input_hash": input_hash,
            "dcollapse_version": __version__,
            "skipped_rows": int(skipped_rows),
            **(extra(results) if callable(extra) else extra or {}),
        }
        for file_name, writer in (extra_files or {}).items():
            writer(tmp / file_name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
