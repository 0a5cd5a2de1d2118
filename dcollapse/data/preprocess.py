"""Raw CTR files -> a preprocessed dataset directory (see :mod:`dcollapse.data.dataset` for the contract)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from dcollapse.data import formats
from dcollapse.data.dataset import FIRST_KEPT_ID, OOV_ID, write_dataset
from dcollapse.data.formats import BAD, LINE
from dcollapse.data.scan import InputScan, polars_job
from dcollapse.data.vocabulary import (
    SCALAR_LEVELS,
    Codes,
    bin_keys,
    build_vocab,
    count_query,
    scalar_id,
    scalar_range,
)
from dcollapse.errors import UserError
from dcollapse.io import make_parent, output_lock, recover_replaced, scratch

# ------------------------------------------------------------------------------------------------ the preprocess job

FORMATS = formats.FORMATS
VOCAB_FILE = "vocab.parquet"
TRANSFORM_FILE = "transform.json"
SPLIT = "__split"
FILE = "__file"
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
OOV_WARN_SHARE = 0.2  # a field whose valid/test rows map to the OOV id more often than this gets a warning note
MAX_COUNT = 2**63 - 1  # counts are int64


@dataclass
class Options:
    """Every option of ``dcollapse preprocess`` (stored verbatim in ``meta.json["options"]``)."""

    format: str | None = None
    label: str | None = None
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    positive: str | None = None
    numeric_bins: str = "log"
    numeric_as: str = "bins"  # bins: one id per bin (--numeric-bins); scalar: one vector per field x the value
    separator: str = ","
    header: bool = True
    columns: list[str] = field(default_factory=list)
    min_count: int = 1
    valid_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    split_files: bool = False
    apply: str | None = None
    bad_rows: str = "error"
    field_map: str | None = None  # libfm: a 'field:value<TAB>index' file naming the fields


def preprocess(
    inputs: list[str | Path],
    out_dir: str | Path,
    options: Options,
    *,
    overwrite: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole job: read ``inputs``, validate rows, build (or apply) vocabularies, split, write ``out_dir``.

    The raw input is parsed exactly once, streamed into a scratch Parquet file beside ``out_dir`` in which every
    categorical token is already an integer (its code in a per-field ``pl.Categories``); vocabulary counts are then
    integer group-bys and the encoding one array lookup per value. Returns the ``meta.json`` dict.
    Raises :class:`UserError` (nothing written) on bad input.
    """
    stage = on_stage or (lambda _: None)
    opts = _validated(options)
    out_dir = Path(out_dir)
    recover_replaced(out_dir)  # a .out.old left by an interrupted --overwrite: restored (no out) or removed
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    paths = _existing(inputs)
    transform = _load_transform(Path(opts.apply)) if opts.apply else None
    notes = []
    read_as: dict[str, Any] = {}
    if transform is not None:
        if opts.format not in (None, transform["options"]["format"]):
            raise UserError(f"--format {opts.format} differs from the format of --apply {opts.apply}")
        saved_as = transform["options"].get("numeric_as", "bins")
        if opts.numeric_as != "bins" and opts.numeric_as != saved_as:
            raise UserError(f"--numeric-as {opts.numeric_as} differs from the dataset in --apply {opts.apply} "
                            f"({saved_as})")  # fmt: skip
        kept = ("format", "label", "categorical", "numeric", "drop", "positive", "numeric_bins", "numeric_as",
                "separator")  # fmt: skip
        for key in (*kept, "field_map"):
            setattr(opts, key, transform["options"].get(key, getattr(Options(), key)))
        read_as = {"fields": {f["name"]: f["kind"] for f in transform["fields"]}}
        read_as["label_rule"] = transform.get("label_rule")
    elif opts.format is None:
        opts.format, separator, why = formats.guess_format(paths)
        if separator is not None and opts.separator == ",":
            opts.separator = separator
        notes.append(f"format: {opts.format} (from {why}; --format sets it)")
    assert opts.format is not None  # from --apply's dataset, --format or guessed above
    source = formats.read(opts.format, paths, asdict(opts) | read_as)
    notes += source.notes
    names = [name for name, _ in source.fields]
    if transform is not None and names != [f["name"] for f in transform["fields"]]:
        raise UserError(f"{paths[0]}: fields differ from the dataset in --apply {opts.apply}")
    scalar = [n for n, kind in source.fields if kind == formats.NUMERIC] if opts.numeric_as == "scalar" else []
    if opts.numeric_as == "scalar" and not scalar:
        hint = " (csv/parquet: name them with --numeric)" if opts.format in ("csv", "parquet") else ""
        raise UserError(f"--numeric-as scalar: --format {opts.format} input has no numeric field{hint}")
    make_parent(out_dir)
    scan = InputScan(source.files, counted=b"\t\r" if opts.format == "criteo" else b"")
    with output_lock(out_dir), scan, scratch(out_dir) as work:  # one writer of out_dir; scratch removed after
        stage("parsing and checking rows")
        rows_file = Path(work) / "rows.parquet"
        codes, per_file, bad = _parse_fast(source, opts, rows_file, scan) or _parse_checked(source, opts, rows_file)
        frame = pl.scan_parquet(rows_file)
        present = set(per_file[FILE].to_list())
        for k, path in enumerate(source.files):
            if k not in present:
                raise UserError(f"{path}: empty file (no data rows)")
        skipped = int(bad["bad"][0])
        if skipped and opts.bad_rows == "error":
            k, line = int(bad[FILE][0]), int(bad[LINE][0])
            problem = polars_job(lambda: source.explain(k, line, int(bad[BAD][0])), source.files)
            raise UserError(f"{source.files[k]}, {'row' if opts.format == 'parquet' else 'line'} {line}: {problem}")
        good = frame.filter(pl.col(BAD).is_null())
        stage("building vocabularies")
        if transform is not None:
            numeric_edges, vocab, fields_meta = transform["numeric_edges"], transform["vocab"], transform["fields"]
            keys = bin_keys(good, source, numeric_edges, scalar)
        else:
            numeric_edges = _numeric_edges(good, source, opts)
            keys = bin_keys(good, source, numeric_edges, scalar)
            # One streaming query per field (each reads one column): together they took 4x the memory at 1e7 rows.
            train = keys.filter(pl.col(SPLIT) == 0)
            counted = [n for n in names if n not in scalar]
            counts = polars_job(lambda: [count_query(train, n).collect(engine="streaming") for n in counted], [])
            vocab = build_vocab(counted, [codes.with_tokens(n, c) for n, c in zip(counted, counts, strict=True)],
                                 opts.min_count)  # fmt: skip
            size_of = dict(vocab.group_by("field").agg(pl.col("id").max()).iter_rows())
            fields_meta = [{"name": n, "kind": kind, "vocab_size": size_of.get(n, 1) + 1} for n, kind in source.fields]
            scales = _scalar_scales(train, scalar)
            for f in fields_meta:
                if f["name"] in scales:
                    f |= {"vocab_size": SCALAR_LEVELS + 1 + FIRST_KEPT_ID, "encoding": "scalar",
                          "scalar": scales[f["name"]]}  # fmt: skip
        scale_of = {f["name"]: f["scalar"] for f in fields_meta if f.get("encoding") == "scalar"}
        stage("encoding and writing splits")
        encoded = keys.select(
            *[scalar_id(pl.col(n), scale_of[n]).alias(n) if n in scale_of
              else codes.ids(n, vocab.filter(pl.col("field") == n)) for n in names],
            pl.col(formats.LABEL),
            pl.col(SPLIT),
        )  # fmt: skip
        parts = {s: encoded.filter(pl.col(SPLIT) == SPLIT_CODES[s]) for s in _split_names(opts)}
        transform_doc = {
            "options": asdict(opts),
            "numeric_edges": numeric_edges,
            "fields": [
                {k: f[k] for k in ("name", "kind", "vocab_size", "encoding", "scalar") if k in f} for f in fields_meta
            ],  # fmt: skip
            "label_rule": source.label_rule,
        }
        vocabulary = {}  # --apply: whose vocabularies these are (reports then know it is the training dataset's)
        if transform is not None:
            transform_doc["vocabulary_hash"] = transform["vocabulary_hash"]
            vocabulary = {"vocabulary": {"from": opts.apply, "input_hash": transform["vocabulary_hash"]}}
        return polars_job(
            lambda: write_dataset(
                out_dir,
                parts,
                fields_meta,
                name=out_dir.name,
                options=asdict(opts),
                input_hash=scan.input_hash(),
                skipped_rows=skipped,
                overwrite=overwrite,
                extra_files={
                    VOCAB_FILE: lambda p: vocab.select("field", "token", "id", "count").write_parquet(p),
                    TRANSFORM_FILE: lambda p: p.write_text(json.dumps(transform_doc, indent=2) + "\n"),
                },
                drop_empty=True,
                queries=[_field_checks(encoded, names)],  # read with the splits, not in a pass of its own
                extra=lambda results: {
                    "columns": [asdict(c) for c in source.columns],
                    **_field_notes(results[0], names, notes),
                    **vocabulary,
                },  # fmt: skip
            ),
            source.files,
            out_dir,
        )


def _field_checks(encoded: pl.LazyFrame, names: list[str]) -> pl.LazyFrame:
    """Per split code: the share of each field's rows with the OOV id (``oov <name>``) and its smallest and largest
    id (``min <name>``, ``max <name>``; ids are never null, so one id iff they agree; n_unique took longer)."""
    return encoded.group_by(SPLIT).agg(
        *[(pl.col(n) == OOV_ID).mean().alias(f"oov {n}") for n in names],
        *[pl.col(n).min().alias(f"min {n}") for n in names],
        *[pl.col(n).max().alias(f"max {n}") for n in names],
    )


def _field_notes(by_split: pl.DataFrame, names: list[str], notes: list[str]) -> dict[str, Any]:
    """``notes`` and ``oov_share`` of ``meta.json`` from :func:`_field_checks`' result: ``{split: {field: share of
    its rows with the OOV id}}`` for valid and test, and a warning note for a field with one id in train or a high
    OOV share."""
    rows = {row[SPLIT]: row for row in by_split.iter_rows(named=True)}
    oov = {split: {n: float(rows[code][f"oov {n}"]) for n in names}
           for split, code in SPLIT_CODES.items() if split != "train" and code in rows}  # fmt: skip
    train = rows.get(SPLIT_CODES["train"])
    constant = [n for n in names if train is not None and train[f"min {n}"] == train[f"max {n}"]]
    warnings = [f"warning: field {n} is constant in the train split (one id): it cannot tell rows apart"
                for n in constant]  # fmt: skip
    high = [f"{n} {share:.0%} ({split})" for split, shares in oov.items() for n, share in shares.items()
            if share > OOV_WARN_SHARE]  # fmt: skip
    if high:
        warnings.append(
            f"warning: over {OOV_WARN_SHARE:.0%} of the rows map to the OOV id (unseen in train, or rarer than "
            f"--min-count there; they all share one embedding row) in: {', '.join(high)}"
        )
    return {"notes": notes + warnings, "oov_share": oov}


def _parse_checked(source: formats.Source, opts: Options, rows_file: Path) -> tuple[Codes, pl.DataFrame, pl.DataFrame]:
    """Parse with the line readers of :mod:`dcollapse.data.formats`, which check and locate every bad row."""
    codes = Codes(source)
    return codes, *polars_job(lambda: _parse(codes.encode(_combine(source, opts)), rows_file), source.files, rows_file)


def _parse_fast(
    source: formats.Source, opts: Options, rows_file: Path, scan: InputScan
) -> tuple[Codes, pl.DataFrame, pl.DataFrame] | None:
    """Criteo files read by Polars' native CSV reader (20% less CPU for the whole job at 1e7 rows) when well formed;
    None (nothing kept) when any row is not, so that :func:`_parse_checked` explains or skips it."""
    if opts.format != "criteo":
        return None
    codes = Codes(source)
    native = replace(source, frames=[formats.criteo_native(path) for path in source.files])
    try:
        per_file, bad = _parse(codes.encode(_combine(native, opts)), rows_file)
    except pl.exceptions.PolarsError:  # a field the native reader cannot parse, or a row with too many fields
        return None
    rows = dict(per_file.iter_rows())
    files = scan.result()
    if int(bad["bad"][0]) or not all(
        formats.criteo_bytes_ok(f.counts, f.lines, rows.get(k, 0)) for k, f in enumerate(files)
    ):
        return None
    return codes, per_file, bad


def _parse(rows: pl.LazyFrame, rows_file: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stream the parsed ``rows`` into ``rows_file``; return the rows per file and the bad rows (count, and file,
    line and check code of the first)."""
    # Scratch file, read back a few times: lz4 and no statistics (zstd and statistics cost CPU for no gain here).
    sink = rows.sink_parquet(
        rows_file, compression="lz4", statistics=False, row_group_size=65536, engine="streaming", lazy=True
    )
    # The counts in the same streaming run as the sink (the input is parsed once), not read back from the file.
    _, per_file, bad = pl.collect_all(
        [
            sink,
            rows.group_by(FILE).agg(pl.len().alias("rows")),
            rows.filter(pl.col(BAD).is_not_null()).select(
                pl.len().alias("bad"), pl.col(FILE).first(), pl.col(LINE).first(), pl.col(BAD).first()
            ),
        ],
        engine="streaming",
    )
    return per_file, bad


def _validated(options: Options) -> Options:
    opts = replace(
        options,
        categorical=_comma_list(options.categorical),
        numeric=_comma_list(options.numeric),
        drop=_comma_list(options.drop),
        columns=_comma_list(options.columns),
    )
    if opts.apply is None and opts.format is not None and opts.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {opts.format!r})")
    if opts.bad_rows not in ("error", "skip"):
        raise UserError(f"--bad-rows must be 'error' or 'skip' (got {opts.bad_rows!r})")
    if opts.seed < 0:
        raise UserError(f"--seed must be >= 0 (got {opts.seed})")
    if not 1 <= opts.min_count <= MAX_COUNT:
        raise UserError(f"--min-count must be in [1, {MAX_COUNT}] (got {opts.min_count})")
    if not (0 <= opts.valid_frac < 1 and 0 <= opts.test_frac < 1 and opts.valid_frac + opts.test_frac < 1):
        raise UserError(f"--valid-frac/--test-frac must be >= 0 with sum < 1 (got {opts.valid_frac}, {opts.test_frac})")
    if opts.numeric_bins != "log" and not (opts.numeric_bins.isdigit() and int(opts.numeric_bins) >= 2):
        raise UserError(f"--numeric-bins must be 'log' or an integer >= 2 (got {opts.numeric_bins!r})")
    if opts.numeric_as not in ("bins", "scalar"):
        raise UserError(f"--numeric-as must be 'bins' or 'scalar' (got {opts.numeric_as!r})")
    if opts.numeric_as == "scalar" and opts.numeric_bins != "log":
        raise UserError("--numeric-bins is for --numeric-as bins (scalar fields are scaled, not binned)")
    if len(opts.separator) != 1:
        raise UserError(f"--separator must be one character (got {opts.separator!r})")
    table_only = {"--drop": opts.drop, "--positive": opts.positive, "--columns": opts.columns}
    for flag, value in table_only.items():
        if value and opts.format not in (None, "csv", "parquet") and opts.apply is None:
            raise UserError(f"{flag} is for csv/parquet input (got --format {opts.format})")
    return opts


def _comma_list(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _existing(inputs: list[str | Path]) -> list[Path]:
    if not inputs:
        raise UserError("no input files given")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        if not (p.is_file() or p.is_dir()):
            raise UserError(f"{p}: not a regular file (a pipe or a device?); preprocess reads its input more than "
                            "once: save it to a file first")  # fmt: skip
        if p.is_file() and p.stat().st_size == 0:
            raise UserError(f"{p}: empty file (no data rows)")
        if p.is_file() and (packed := formats.compression(p)):
            raise UserError(f"{p}: {packed}-compressed; decompress it first (e.g. {formats.UNPACK[packed]} {p})")
    return paths


def _combine(source: formats.Source, opts: Options) -> pl.LazyFrame:
    """Concatenate the per-file frames with ``__file`` and the split code ``__split`` (0 train, 1 valid, 2 test)."""
    frames = [lf.with_columns(pl.lit(k, dtype=pl.UInt32).alias(FILE)) for k, lf in enumerate(source.frames)]
    lf = pl.concat(frames, how="vertical")
    u = (_row_hash(source, opts.seed) % 1_000_003).cast(pl.Float64) / 1_000_003
    if opts.apply and not opts.split_files:
        split = pl.lit(SPLIT_CODES["test"], dtype=pl.Int8)
    elif opts.split_files:
        n = len(source.frames)
        if n not in (2, 3):
            raise UserError(f"--split-files needs 2 (train, test) or 3 (train, valid, test) inputs, got {n}")
        codes = [0, 2] if n == 2 else [0, 1, 2]
        by_file = pl.lit(codes[0], dtype=pl.Int8)
        for k, code in enumerate(codes[1:], start=1):
            by_file = pl.when(pl.col(FILE) == k).then(pl.lit(code, dtype=pl.Int8)).otherwise(by_file)
        # With two files, the validation split is carved from the train file with --valid-frac.
        carve = (pl.col(FILE) == 0) & (u < opts.valid_frac) if n == 2 else pl.lit(False)
        split = pl.when(carve).then(pl.lit(1, dtype=pl.Int8)).otherwise(by_file)
    else:
        split = (
            pl.when(u < opts.valid_frac)
            .then(pl.lit(1, dtype=pl.Int8))
            .when(u < opts.valid_frac + opts.test_frac)
            .then(pl.lit(2, dtype=pl.Int8))
            .otherwise(pl.lit(0, dtype=pl.Int8))
        )
    return lf.with_columns(split.alias(SPLIT))


def _row_hash(source: formats.Source, seed: int) -> pl.Expr:
    """A seeded UInt64 hash of a row's content: its label and every field's value, numbers as Float64 and tokens as
    text, so the fast and the checked readers of one row agree. One hash per column (seeded by the split seed and
    the column's position), combined by xor: ~3x cheaper than hashing a struct of the columns.

    Hashing content rather than (file, line) makes the split of a row independent of its position: the same rows
    with or without a header line, in another order or in other files get the same splits, and duplicated rows
    never straddle two splits. Stable under streaming and independent of chunking (for a given Polars version).
    """
    columns = [pl.col(formats.LABEL).cast(pl.Int8)] + [
        pl.col(name).cast(pl.Float64 if kind == formats.NUMERIC else pl.String) for name, kind in source.fields
    ]
    combined = columns[0].hash(seed << 20)
    for k, column in enumerate(columns[1:], start=1):
        combined = combined ^ column.hash((seed << 20) + k)
    return combined


def _split_names(opts: Options) -> list[str]:
    if opts.apply and not opts.split_files:
        return ["test"]
    return ["train", "valid", "test"]


def _scalar_scales(train: pl.LazyFrame, names: list[str]) -> dict[str, dict[str, Any]]:
    """The ``scalar`` block of each field in ``names`` (``--numeric-as scalar``): the range of log1p(max(v, 0)) over
    the good training rows (0 to 0 for a field with no finite value there)."""
    if not names:
        return {}
    row = polars_job(lambda: scalar_range(train, names).collect(engine="streaming"), []).row(0, named=True)
    return {
        n: {"levels": SCALAR_LEVELS, "transform": "log1p", "min": float(row[f"min|{n}"] or 0.0),
            "max": float(row[f"max|{n}"] or 0.0)}
        for n in names
    }  # fmt: skip


def _numeric_edges(good: pl.LazyFrame, source: formats.Source, opts: Options) -> dict[str, list[float]]:
    """Quantile bin edges per numeric field from the good training rows (only with an integer --numeric-bins)."""
    numeric = [n for n, kind in source.fields if kind == formats.NUMERIC]
    if opts.format == "criteo" or opts.numeric_bins == "log" or not numeric:
        return {}
    bins = int(opts.numeric_bins)
    qs = [k / bins for k in range(1, bins)]
    query = good.filter(pl.col(SPLIT) == 0).select(
        [pl.col(n).quantile(q).alias(f"{n}|{i}") for n in numeric for i, q in enumerate(qs)]
    )
    row = polars_job(lambda: query.collect(engine="streaming"), []).row(0, named=True)
    edges = {}
    for n in numeric:
        values = [row[f"{n}|{i}"] for i in range(len(qs))]
        edges[n] = sorted({float(v) for v in values if v is not None and v == v})
    return edges


def _load_transform(data_dir: Path) -> dict[str, Any]:
    """The saved vocabularies and options of an existing dataset, for ``--apply``."""
    path = data_dir / TRANSFORM_FILE
    if not (data_dir / "meta.json").is_file() or not path.is_file() or not (data_dir / VOCAB_FILE).is_file():
        raise UserError(
            f"{data_dir}: not a dataset written by `dcollapse preprocess` (no {TRANSFORM_FILE}/{VOCAB_FILE})"
        )
    try:
        doc = json.loads(path.read_text())
        vocab = pl.read_parquet(data_dir / VOCAB_FILE)
        input_hash = json.loads((data_dir / "meta.json").read_text()).get("input_hash")
    except (json.JSONDecodeError, pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: unreadable saved transform ({formats.first_line(exc)})") from None
    doc["vocab"] = vocab
    doc.setdefault("vocabulary_hash", input_hash)  # the input the vocabularies were counted on
    return doc
