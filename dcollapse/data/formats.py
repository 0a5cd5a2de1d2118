"""Readers: each raw format -> one lazy Polars frame per input file, in a common shape.

Every reader returns a :class:`Source`: per input file a ``LazyFrame`` with the columns

- ``__line`` (UInt64): the 1-based line (text formats) or row (Parquet) in that file, for error messages;
- ``__bad`` (Int16): ``None`` for a good row, otherwise the index of the first failing check (the message is built
  only for the row that gets reported, see :meth:`Source.explain`);
- ``label`` (Int8, 0/1) and one column per field: String tokens for categorical fields, Float64 values for numeric
  fields (binned later); ``None`` = missing.

Text formats are read line by line with ``polars.scan_lines`` and split with vectorised string expressions, so a
malformed row is detected and located exactly (wrong column count, non-numeric value, bad label) without a Python
loop over rows. Limitation: CSV fields that contain the separator inside quotes are not supported (such a row is
reported as having the wrong number of columns); surrounding double quotes are removed from values.

A well-formed Criteo file can also be read by :func:`criteo_native` (Polars' multi-threaded CSV reader, categorical
columns straight into ``pl.Categorical``); the caller falls back to :func:`read` for any file it cannot prove good
(:func:`criteo_bytes_ok`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dcollapse.errors import UserError

LABEL = "label"
LINE = "__line"
BAD = "__bad"
CATEGORICAL = "categorical"
NUMERIC = "numeric"

CRITEO_NUMERIC = [f"I{k}" for k in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{k}" for k in range(1, 27)]
AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
MOVIELENS_GENRES = 19


Check = tuple[pl.Expr, pl.Expr]  # (condition that marks a bad row, message expression for that row)


@dataclass
class Source:
    """Parsed input: ``frames`` [one LazyFrame per file], ``fields`` [(name, kind)] in output order, ``files``.

    ``raw[k]`` is file k's frame before the final projection and ``messages[k][code]`` the message expression of
    check ``code`` on it.
    """

    frames: list[pl.LazyFrame]
    fields: list[tuple[str, str]]
    files: list[Path]
    raw: list[pl.LazyFrame]
    messages: list[list[pl.Expr]]

    def explain(self, file: int, line: int, code: int) -> str:
        """The problem with row ``line`` of file ``file`` whose first failing check is ``code``."""
        row = self.raw[file].filter(pl.col(LINE) == line).select(self.messages[file][code].alias("m")).collect()
        return str(row["m"][0]) if row.height else "malformed row"


def read(fmt: str, paths: list[Path], opts: dict[str, Any]) -> Source:
    """Parse ``paths`` in format ``fmt``; ``opts``: label, categorical, numeric, separator, header."""
    if fmt == "movielens":
        if len(paths) != 1 or not paths[0].is_dir():
            raise UserError(
                f"{paths[0]}: --format movielens expects one MovieLens-100K folder (u.data, u.user, u.item)"
            )
        return _movielens(paths[0])
    for p in paths:
        if p.is_dir():
            raise UserError(f"{p}: is a directory, expected a {fmt} file")
    reader = {"criteo": _criteo, "avazu": _avazu, "csv": _csv, "libfm": _libfm, "parquet": _parquet}[fmt]
    return reader(paths, opts)


# ----------------------------------------------------------------------------------------------------------- helpers


def _lines(path: Path, skip_first: bool) -> pl.LazyFrame:
    """Non-blank lines of ``path`` as column ``line`` with the 1-based line number ``__line`` (CRLF tolerated, a
    UTF-8 byte order mark at the start ignored, as Polars' CSV reader does)."""
    line = pl.col("line").str.strip_suffix("\r")
    lf = pl.scan_lines(path, row_index_name=LINE, row_index_offset=1).with_columns(
        pl.col(LINE).cast(pl.UInt64),
        pl.when(pl.col(LINE) == 1).then(line.str.strip_prefix("\ufeff")).otherwise(line).alias("line"),
    )
    if skip_first:
        lf = lf.filter(pl.col(LINE) > 1)
    return lf.filter(pl.col("line") != "")


def _split(lf: pl.LazyFrame, sep: str, names: list[str], unquote: bool = False) -> tuple[pl.LazyFrame, Check]:
    """Split ``line`` on ``sep`` into String columns ``names`` (empty -> None); also the column-count check."""
    lf = lf.with_columns(pl.col("line").str.split(sep).alias("__parts")).with_columns(
        pl.col("__parts").list.len().alias("__n")
    )
    cols = []
    for i, name in enumerate(names):
        value = pl.col("__parts").list.get(i, null_on_oob=True)
        if unquote:
            value = value.str.strip_chars(" ").str.strip_prefix('"').str.strip_suffix('"')
        cols.append(pl.when(value == "").then(None).otherwise(value).alias(name))
    n = pl.col("__n")
    check = (n != len(names), pl.format(f"expected {len(names)} columns, found {{}}", n))
    return lf.select(pl.col(LINE), n, *cols), check


def _with_checks(lf: pl.LazyFrame, checks: list[Check]) -> tuple[pl.LazyFrame, list[pl.Expr]]:
    """Add ``__bad`` = index of the first failing check (None if all pass); return the frame and the messages."""
    codes = [pl.when(cond.fill_null(True)).then(pl.lit(k, dtype=pl.Int16)) for k, (cond, _) in enumerate(checks)]
    return lf.with_columns(pl.coalesce(codes).alias(BAD)), [msg for _, msg in checks]


def _label_01(raw: str) -> tuple[pl.Expr, Check]:
    """(Int8 label, check) for a String column that must hold 0 or 1."""
    col = pl.col(raw)
    ok = col.is_in(["0", "1"])
    msg = (
        pl.when(col.is_null())
        .then(pl.lit("label is missing"))
        .otherwise(pl.format("label must be 0 or 1, got '{}'", col))
    )
    return pl.when(ok).then(col.cast(pl.Int8, strict=False)).alias(LABEL), (~ok, msg)


def _numbers(names: list[str]) -> tuple[list[pl.Expr], list[Check]]:
    """(Float64 values, checks) for String columns that must be numeric when present (a blank value is
    missing, as in Polars' CSV reader)."""
    values, checks = [], []
    for name in names:
        col = pl.col(name)
        text = col.str.strip_chars()
        num = text.cast(pl.Float64, strict=False)
        values.append(num.alias(name))
        bad = col.is_not_null() & (text != "") & num.is_null()
        checks.append((bad, pl.format(f"{name}: not a number: '{{}}'", col)))
    return values, checks


def _header(path: Path, sep: str) -> list[str]:
    """Column names from the first line of ``path``."""
    try:
        with path.open("rb") as fh:
            first = fh.readline()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not first.strip():
        raise UserError(f"{path}: empty file (expected a header line)")
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"{path}, line 1: header is not valid UTF-8 text") from None
    names = [c.strip().strip('"') for c in text.split(sep)]
    if len(set(names)) != len(names) or "" in names:
        raise UserError(f"{path}, line 1: header has empty or duplicate column names")
    return names


def _select_columns(path: Path, header: list[str], label: str, opts: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Validate the requested columns against ``header``; default: every non-label column is categorical."""
    categorical, numeric = list(opts.get("categorical") or []), list(opts.get("numeric") or [])
    for col in [label, *categorical, *numeric]:
        if col not in header:
            raise UserError(f"{path}: missing column '{col}' (have: {', '.join(header)})")
    if not categorical and not numeric:
        categorical = [c for c in header if c != label]
    overlap = (set(categorical) & set(numeric)) | ({label} & (set(categorical) | set(numeric)))
    if overlap:
        raise UserError(f"{path}: column(s) {', '.join(sorted(overlap))} given more than one role")
    if not categorical and not numeric:
        raise UserError(f"{path}: no feature columns besides the label '{label}'")
    _check_field_names(path, [*categorical, *numeric])
    return categorical, numeric


def _check_field_names(path: Path, names: list[str]) -> None:
    for name in names:
        if name == LABEL or name.startswith("__"):
            raise UserError(f"{path}: a feature column may not be named '{name}' (reserved)")


# ----------------------------------------------------------------------------------------------------------- formats


class _Builder:
    """Collects the per-file frames of a reader into a :class:`Source`."""

    def __init__(self) -> None:
        self.frames: list[pl.LazyFrame] = []
        self.raw: list[pl.LazyFrame] = []
        self.messages: list[list[pl.Expr]] = []

    def add(self, lf: pl.LazyFrame, checks: list[Check], columns: list[pl.Expr | str]) -> None:
        """Add one file: ``lf`` with the string columns, its row ``checks`` and the output ``columns``."""
        raw, messages = _with_checks(lf, checks)
        self.raw.append(raw)
        self.messages.append(messages)
        self.frames.append(raw.select(LINE, BAD, *columns))

    def source(self, fields: list[tuple[str, str]], files: list[Path]) -> Source:
        first = self.frames[0].collect_schema().names()
        for lf, path in zip(self.frames[1:], files[1:], strict=False):
            if lf.collect_schema().names() != first:
                raise UserError(f"{path}: columns differ from {files[0]}")
        return Source(self.frames, fields, files, self.raw, self.messages)


def _criteo(paths: list[Path], opts: dict[str, Any]) -> Source:
    raw = ["__label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
    out = _Builder()
    for path in paths:
        lf, count_check = _split(_lines(path, skip_first=False), "\t", raw)
        label, label_check = _label_01("__label")
        values, checks = _numbers(CRITEO_NUMERIC)
        out.add(lf, [count_check, label_check, *checks], [label, *values, *CRITEO_CATEGORICAL])
    fields = [(n, NUMERIC) for n in CRITEO_NUMERIC] + [(n, CATEGORICAL) for n in CRITEO_CATEGORICAL]
    return out.source(fields, paths)


def criteo_native(path: Path, categories: Mapping[str, pl.Categories]) -> pl.LazyFrame:
    """Fast reader of a well-formed Criteo file: Polars' native multi-threaded CSV reader, categorical columns read
    straight into ``pl.Categorical(categories[name])``; the same columns (and line numbers) as :func:`read`.

    It proves less than :func:`read`: a row with more than 40 fields or a field it cannot parse is an error, a bad
    label sets ``__bad``, but a short row reads as missing values and a CR stays in the last token. The caller
    checks the byte counts (:func:`criteo_bytes_ok`) and uses :func:`read` for any file that fails either.
    """
    label = pl.col("__label")
    schema = {
        "__label": pl.String,
        **dict.fromkeys(CRITEO_NUMERIC, pl.Float64),
        **{c: pl.Categorical(categories[c]) for c in CRITEO_CATEGORICAL},
    }
    lf = pl.scan_csv(
        path, separator="\t", has_header=False, schema=schema, quote_char=None, row_index_name=LINE, row_index_offset=1
    )
    bad = pl.when(label.is_in(["0", "1"]).fill_null(False).not_()).then(pl.lit(0, dtype=pl.Int16)).alias(BAD)
    columns = [label.cast(pl.Int8, strict=False).alias(LABEL), *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
    return lf.select(pl.col(LINE).cast(pl.UInt64), bad, *columns)


def criteo_bytes_ok(counts: Mapping[bytes, int], lines: int, rows: int) -> bool:
    """Whether a file that :func:`criteo_native` read as ``rows`` rows is plain Criteo: ``counts`` of its tab, LF and
    CR bytes, ``lines`` its number of lines. No CR, and 39 tabs per line on average: as no line has more (the
    reader's error), every line has exactly 39, so none is short or blank, and row k is line k."""
    return counts[b"\r"] == 0 and counts[b"\t"] == 39 * lines and rows == lines


def _avazu(paths: list[Path], opts: dict[str, Any]) -> Source:
    header = bool(opts.get("header", True))
    out = _Builder()
    rest: list[str] = []
    for path in paths:
        columns = _header(path, ",") if header else AVAZU_COLUMNS
        for col in ("id", "click", "hour"):
            if col not in columns:
                raise UserError(f"{path}: missing column '{col}' (Avazu files have id,click,hour,...)")
        rest = [c for c in columns if c not in ("id", "click", "hour")]
        _check_field_names(path, rest)
        lf, count_check = _split(_lines(path, skip_first=header), ",", columns, unquote=True)
        label, label_check = _label_01("click")
        hour = pl.col("hour")
        date = hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False)
        hh = hour.str.slice(6, 2).cast(pl.Int32, strict=False)
        hour_ok = (hour.str.len_chars() == 8) & date.is_not_null() & hh.is_between(0, 23)
        hour_check = (~hour_ok, pl.format("hour: expected YYMMDDHH, got '{}'", hour))
        columns_out = [
            label,
            hh.cast(pl.String).alias("hour_of_day"),
            date.dt.weekday().cast(pl.String).alias("weekday"),
            *rest,
        ]
        out.add(lf, [count_check, label_check, hour_check], columns_out)
    fields = [("hour_of_day", CATEGORICAL), ("weekday", CATEGORICAL)] + [(c, CATEGORICAL) for c in rest]
    return out.source(fields, paths)


def _csv(paths: list[Path], opts: dict[str, Any]) -> Source:
    sep = opts.get("separator") or ","
    label_col = opts.get("label") or LABEL
    out = _Builder()
    categorical: list[str] = []
    numeric: list[str] = []
    for path in paths:
        header = _header(path, sep)
        categorical, numeric = _select_columns(path, header, label_col, opts)
        lf, count_check = _split(_lines(path, skip_first=True), sep, header, unquote=True)
        checks, columns = _table_columns(label_col, categorical, numeric)
        out.add(lf, [count_check, *checks], columns)
    fields = [(c, CATEGORICAL) for c in categorical] + [(c, NUMERIC) for c in numeric]
    return out.source(fields, paths)


def _table_columns(label_col: str, categorical: list[str], numeric: list[str]) -> tuple[list[Check], list[pl.Expr]]:
    """Checks and output columns shared by csv/parquet: label 0/1, categorical strings, numeric floats."""
    raw = pl.col(label_col)
    value = raw.str.strip_chars().cast(pl.Float64, strict=False)
    ok = value.is_in([0.0, 1.0])
    msg = (
        pl.when(raw.is_null())
        .then(pl.lit("label is missing"))
        .otherwise(pl.format(f"label column '{label_col}' must be 0 or 1, got '{{}}'", raw))
    )
    values, checks = _numbers(numeric)
    label = pl.when(ok).then(value.cast(pl.Int8)).alias(LABEL)
    return [(~ok, msg), *checks], [label, *categorical, *values]


def _parquet(paths: list[Path], opts: dict[str, Any]) -> Source:
    label_col = opts.get("label") or LABEL
    out = _Builder()
    categorical: list[str] = []
    numeric: list[str] = []
    for path in paths:
        try:
            schema = pl.scan_parquet(path).collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        categorical, numeric = _select_columns(path, schema.names(), label_col, opts)
        cols = [label_col, *categorical, *numeric]
        lf = pl.scan_parquet(path, row_index_name=LINE, row_index_offset=1).select(
            pl.col(LINE).cast(pl.UInt64), *[_as_string(c, schema[c]) for c in cols]
        )
        checks, columns = _table_columns(label_col, categorical, numeric)
        out.add(lf, checks, columns)
    fields = [(c, CATEGORICAL) for c in categorical] + [(c, NUMERIC) for c in numeric]
    return out.source(fields, paths)


def _as_string(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.Boolean:
        col = col.cast(pl.Int8)
    elif dtype.is_float():  # 1.0 -> "1" so that labels and integral floats read like their CSV spelling
        # (NaN, inf and integral values beyond int64 keep their float spelling: they are values, not missing)
        integral = pl.when(col == col.round(0)).then(col.cast(pl.Int64, strict=False).cast(pl.String))
        col = pl.coalesce(integral, col.cast(pl.String))
    col = col.cast(pl.String)
    return pl.when(col == "").then(None).otherwise(col).alias(name)


def _libfm(paths: list[Path], opts: dict[str, Any]) -> Source:
    n_fields = 0
    out = _Builder()
    for path in paths:
        lines = _lines(path, skip_first=False).with_columns(
            pl.col("line").str.replace_all(r"\s+", " ").str.strip_chars(" ")
        )
        if not n_fields:
            try:
                first = lines.select("line").head(1).collect()
            except pl.exceptions.PolarsError as exc:
                raise UserError(f"{path}: cannot read ({first_line(exc)})") from None
            if first.height == 0:
                raise UserError(f"{path}: empty file (no data rows)")
            n_fields = len(first.item().split(" ")) - 1
            if n_fields < 1:
                raise UserError(f"{path}, line 1: expected 'label idx:val idx:val ...'")
        names = ["__label"] + [f"f{k}" for k in range(1, n_fields + 1)]
        lf, count_check = _split(lines, " ", names)
        raw = pl.col("__label")
        value = raw.cast(pl.Float64, strict=False)
        checks = [
            count_check,
            (~value.is_in([-1.0, 0.0, 1.0]), pl.format("label must be -1, 0 or 1, got '{}'", raw)),
            *[
                (
                    ~pl.col(n).str.contains(r"^[0-9]+:[-+0-9.eE]+$"),
                    pl.format(f"token {k}: expected 'idx:val', got '{{}}'", pl.col(n)),
                )
                for k, n in enumerate(names[1:], start=1)
            ],
        ]
        out.add(lf, checks, [(value > 0).cast(pl.Int8).alias(LABEL), *names[1:]])
    return out.source([(f"f{k}", CATEGORICAL) for k in range(1, n_fields + 1)], paths)


def _movielens(folder: Path) -> Source:
    files = {name: folder / name for name in ("u.data", "u.user", "u.item")}
    for path in files.values():
        if not path.is_file():
            raise UserError(f"{path}: missing (a MovieLens-100K folder has u.data, u.user and u.item)")
    data, count_check = _split(_lines(files["u.data"], skip_first=False), "\t", ["user", "item", "rating", "timestamp"])
    rating = pl.col("rating").cast(pl.Int32, strict=False)
    ts = pl.col("timestamp").cast(pl.Int64, strict=False)
    checks = [
        count_check,
        (pl.col("user").is_null() | pl.col("item").is_null(), pl.lit("user or item id is missing")),
        (~rating.is_between(1, 5), pl.format("rating must be 1..5, got '{}'", "rating")),
        (ts.is_null(), pl.format("timestamp: not an integer: '{}'", "timestamp")),
    ]
    users = _lookup_table(files["u.user"], ["user", "age", "gender", "occupation", "zip"])
    genre_cols = [f"g{k}" for k in range(MOVIELENS_GENRES)]
    items = _lookup_table(files["u.item"], ["item", "title", "release", "video", "url", *genre_cols])
    first_genre = pl.coalesce([pl.when(pl.col(g) == "1").then(pl.lit(str(k))) for k, g in enumerate(genre_cols)])
    items = items.select("item", first_genre.alias("genre"), pl.col("release").str.slice(-4, 4).alias("release_year"))
    age = pl.col("age").cast(pl.Int32, strict=False)
    age_bucket = pl.when(age.is_not_null()).then(pl.lit("56+"))
    for upper, name in [(56, "50-55"), (50, "45-49"), (45, "35-44"), (35, "25-34"), (25, "18-24"), (18, "<18")]:
        age_bucket = pl.when(age < upper).then(pl.lit(name)).otherwise(age_bucket)
    users = users.select("user", age_bucket.alias("age"), "gender", "occupation", pl.col("zip").str.slice(0, 2))
    names = ["user", "item", "age", "gender", "occupation", "zip", "genre", "release_year", "hour"]
    raw, messages = _with_checks(data, checks)
    lf = (
        raw.join(users, on="user", how="left", maintain_order="left")
        .join(items, on="item", how="left", maintain_order="left")
        .select(
            LINE,
            BAD,
            (rating >= 4).cast(pl.Int8).alias(LABEL),
            *names[:-1],
            pl.from_epoch(ts, time_unit="s").dt.hour().cast(pl.String).alias("hour"),
        )
    )
    return Source([lf], [(n, CATEGORICAL) for n in names], [files["u.data"]], [raw], [messages])


def _lookup_table(path: Path, names: list[str]) -> pl.LazyFrame:
    """A small '|'-separated MovieLens side table (Latin-1 text); a malformed line is an error."""
    text = path.read_bytes().decode("latin-1").splitlines()
    lines = pl.LazyFrame({LINE: pl.int_range(1, len(text) + 1, eager=True, dtype=pl.UInt64), "line": text})
    lf, (cond, msg) = _split(lines.filter(pl.col("line") != ""), "|", names)
    try:
        bad = lf.filter(cond).select(LINE, msg.alias("m")).head(1).collect()
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{path}: cannot read ({first_line(exc)})") from None
    if bad.height:
        raise UserError(f"{path}, line {bad[LINE][0]}: {bad['m'][0]}")
    return lf.drop(LINE, "__n").unique(subset=names[0], keep="first")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Compressed files by their first bytes (the name may say nothing): refused with the command that unpacks them.
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
         b"PK\x03\x04": "zip", b"\x04\x22\x4d\x18": "lz4"}  # fmt: skip
UNPACK = {"gzip": "gunzip -k", "bzip2": "bunzip2 -k", "xz": "unxz -k", "zstd": "unzstd", "zip": "unzip",
          "lz4": "unlz4"}  # fmt: skip


def compression(path: Path) -> str | None:
    """The compression format of the file at ``path`` by its magic bytes (gzip, bzip2, xz, zstd, zip, lz4), or None."""
    with path.open("rb") as fh:
        head = fh.read(6)
    return next((name for magic, name in MAGIC.items() if head.startswith(magic)), None)
