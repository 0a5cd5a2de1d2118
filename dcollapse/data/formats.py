"""Readers: each raw format -> one lazy Polars frame per input file, in a common shape.

Every reader returns a :class:`Source`: per input file a ``LazyFrame`` with the columns

- ``__line`` (UInt64): the 1-based line (text formats) or row (Parquet) in that file, for error messages;
- ``__bad`` (String): ``None`` for a good row, otherwise the problem with the row in a few words;
- ``label`` (Int8, 0/1) and one column per field: String tokens for categorical fields, Float64 values for numeric
  fields (binned later); ``None`` = missing.

Text formats are read line by line with ``polars.scan_lines`` and split with vectorised string expressions, so a
malformed row is detected and located exactly (wrong column count, non-numeric value, bad label) without a Python
loop over rows. Limitation: CSV fields that contain the separator inside quotes are not supported (such a row is
reported as having the wrong number of columns); surrounding double quotes are removed from values.
"""

from __future__ import annotations

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


@dataclass
class Source:
    """Parsed input: ``frames`` [one LazyFrame per file], ``fields`` [(name, kind)] in output order, ``files``."""

    frames: list[pl.LazyFrame]
    fields: list[tuple[str, str]]
    files: list[Path]


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
    """Non-blank lines of ``path`` as column ``line`` with the 1-based line number ``__line`` (CRLF tolerated)."""
    lf = pl.scan_lines(path, row_index_name=LINE, row_index_offset=1).with_columns(
        pl.col(LINE).cast(pl.UInt64), pl.col("line").str.strip_suffix("\r")
    )
    if skip_first:
        lf = lf.filter(pl.col(LINE) > 1)
    return lf.filter(pl.col("line").str.strip_chars() != "")


def _split(lf: pl.LazyFrame, sep: str, names: list[str], unquote: bool = False) -> pl.LazyFrame:
    """Split ``line`` on ``sep`` into String columns ``names`` (empty -> None) and flag wrong column counts."""
    parts = pl.col("line").str.split(sep)
    n = pl.col("line").str.count_matches(sep, literal=True) + 1
    cols = []
    for i, name in enumerate(names):
        value = parts.list.get(i, null_on_oob=True)
        if unquote:
            value = value.str.strip_chars(" ").str.strip_prefix('"').str.strip_suffix('"')
        cols.append(pl.when(value == "").then(None).otherwise(value).alias(name))
    bad = pl.when(n != len(names)).then(pl.format(f"expected {len(names)} columns, found {{}}", n))
    return lf.select(pl.col(LINE), bad.alias(BAD), *cols)


def _with_checks(lf: pl.LazyFrame, checks: list[pl.Expr]) -> pl.LazyFrame:
    """``__bad`` = the first failing check (checks are ``when(cond).then(message)`` expressions, in order)."""
    return lf.with_columns(pl.coalesce([pl.col(BAD), *checks]).alias(BAD))


def _label_01(raw: str) -> tuple[pl.Expr, pl.Expr]:
    """(Int8 label, check) for a String column that must hold 0 or 1."""
    col = pl.col(raw)
    ok = col.is_in(["0", "1"])
    check = (
        pl.when(col.is_null())
        .then(pl.lit("label is missing"))
        .when(~ok)
        .then(pl.format("label must be 0 or 1, got '{}'", col))
    )
    return pl.when(ok).then(col.cast(pl.Int8, strict=False)).alias(LABEL), check


def _numbers(names: list[str]) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """(Float64 values, checks) for String columns that must be numeric when present."""
    values, checks = [], []
    for name in names:
        col = pl.col(name)
        num = col.str.strip_chars().cast(pl.Float64, strict=False)
        values.append(num.alias(name))
        checks.append(pl.when(col.is_not_null() & num.is_null()).then(pl.format(f"{name}: not a number: '{{}}'", col)))
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
        text = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"{path}, line 1: header is not valid UTF-8 text") from None
    names = [c.strip().strip('"') for c in text.split(sep)]
    if len(set(names)) != len(names) or "" in names:
        raise UserError(f"{path}, line 1: header has empty or duplicate column names")
    return names


def _select_columns(
    path: Path, header: list[str], label: str, categorical: list[str], numeric: list[str]
) -> tuple[list[str], list[str]]:
    """Validate the requested columns against ``header``; default: every non-label column is categorical."""
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
    return categorical, numeric


def _check_field_names(path: Path, names: list[str]) -> None:
    for name in names:
        if name == LABEL or name.startswith("__"):
            raise UserError(f"{path}: a feature column may not be named '{name}' (reserved)")


# ----------------------------------------------------------------------------------------------------------- formats


def _criteo(paths: list[Path], opts: dict[str, Any]) -> Source:
    raw = ["__label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
    frames = []
    for path in paths:
        lf = _split(_lines(path, skip_first=False), "\t", raw)
        label, label_check = _label_01("__label")
        values, checks = _numbers(CRITEO_NUMERIC)
        lf = _with_checks(lf, [label_check, *checks])
        frames.append(lf.select(LINE, BAD, label, *values, *CRITEO_CATEGORICAL))
    fields = [(n, NUMERIC) for n in CRITEO_NUMERIC] + [(n, CATEGORICAL) for n in CRITEO_CATEGORICAL]
    return Source(frames, fields, paths)


def _avazu(paths: list[Path], opts: dict[str, Any]) -> Source:
    header = bool(opts.get("header", True))
    frames = []
    columns = AVAZU_COLUMNS
    for path in paths:
        columns = _header(path, ",") if header else AVAZU_COLUMNS
        for col in ("id", "click", "hour"):
            if col not in columns:
                raise UserError(f"{path}: missing column '{col}' (Avazu files have id,click,hour,...)")
        lf = _split(_lines(path, skip_first=header), ",", columns, unquote=True)
        label, label_check = _label_01("click")
        hour = pl.col("hour")
        date = hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False)
        hh = hour.str.slice(6, 2).cast(pl.Int32, strict=False)
        hour_ok = (hour.str.len_chars() == 8) & date.is_not_null() & hh.is_between(0, 23)
        hour_check = pl.when(~hour_ok.fill_null(False)).then(pl.format("hour: expected YYMMDDHH, got '{}'", hour))
        lf = _with_checks(lf, [label_check, hour_check])
        rest = [c for c in columns if c not in ("id", "click", "hour")]
        frames.append(
            lf.select(
                LINE,
                BAD,
                label,
                hh.cast(pl.String).alias("hour_of_day"),
                date.dt.weekday().cast(pl.String).alias("weekday"),
                *rest,
            )
        )
    rest = [c for c in columns if c not in ("id", "click", "hour")]
    _check_field_names(paths[0], rest)
    fields = [("hour_of_day", CATEGORICAL), ("weekday", CATEGORICAL)] + [(c, CATEGORICAL) for c in rest]
    _same_columns(frames, paths)
    return Source(frames, fields, paths)


def _same_columns(frames: list[pl.LazyFrame], paths: list[Path]) -> None:
    first = frames[0].collect_schema().names()
    for lf, path in zip(frames[1:], paths[1:], strict=True):
        if lf.collect_schema().names() != first:
            raise UserError(f"{path}: columns differ from {paths[0]}")


def _csv(paths: list[Path], opts: dict[str, Any]) -> Source:
    sep = opts.get("separator") or ","
    label_col = opts.get("label") or LABEL
    frames = []
    categorical, numeric = [], []
    for path in paths:
        header = _header(path, sep)
        categorical, numeric = _select_columns(
            path, header, label_col, list(opts.get("categorical") or []), list(opts.get("numeric") or [])
        )
        _check_field_names(path, [*categorical, *numeric])
        lf = _split(_lines(path, skip_first=True), sep, header, unquote=True)
        frames.append(_table_columns(lf, label_col, categorical, numeric))
    _same_columns(frames, paths)
    fields = [(c, CATEGORICAL) for c in categorical] + [(c, NUMERIC) for c in numeric]
    return Source(frames, fields, paths)


def _table_columns(lf: pl.LazyFrame, label_col: str, categorical: list[str], numeric: list[str]) -> pl.LazyFrame:
    """Common tail of the csv/parquet readers: label + categorical strings + numeric floats, with checks."""
    raw = pl.col(label_col)
    value = raw.str.strip_chars().cast(pl.Float64, strict=False)
    ok = value.is_in([0.0, 1.0])
    label_check = (
        pl.when(raw.is_null())
        .then(pl.lit("label is missing"))
        .when(~ok.fill_null(False))
        .then(pl.format(f"label column '{label_col}' must be 0 or 1, got '{{}}'", raw))
    )
    values, checks = _numbers(numeric)
    lf = _with_checks(lf, [label_check, *checks])
    label = pl.when(ok).then(value.cast(pl.Int8)).alias(LABEL)
    return lf.select(LINE, BAD, label, *categorical, *values)


def _parquet(paths: list[Path], opts: dict[str, Any]) -> Source:
    label_col = opts.get("label") or LABEL
    frames = []
    categorical, numeric = [], []
    for path in paths:
        try:
            schema = pl.scan_parquet(path).collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        categorical, numeric = _select_columns(
            path, schema.names(), label_col, list(opts.get("categorical") or []), list(opts.get("numeric") or [])
        )
        _check_field_names(path, [*categorical, *numeric])
        cols = [label_col, *categorical, *numeric]
        lf = (
            pl.scan_parquet(path, row_index_name=LINE, row_index_offset=1)
            .select(pl.col(LINE).cast(pl.UInt64), *[_as_string(c, schema[c]) for c in cols])
            .with_columns(pl.lit(None, dtype=pl.String).alias(BAD))
        )
        frames.append(_table_columns(lf, label_col, categorical, numeric))
    _same_columns(frames, paths)
    fields = [(c, CATEGORICAL) for c in categorical] + [(c, NUMERIC) for c in numeric]
    return Source(frames, fields, paths)


def _as_string(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.Boolean:
        col = col.cast(pl.Int8)
    elif dtype.is_float():  # 1.0 -> "1" so that labels and integral floats read like their CSV spelling
        col = (
            pl.when(col == col.round(0))
            .then(col.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(col.cast(pl.String))
        )
    col = col.cast(pl.String)
    return pl.when(col == "").then(None).otherwise(col).alias(name)


def _libfm(paths: list[Path], opts: dict[str, Any]) -> Source:
    n_fields = None
    frames = []
    for path in paths:
        lines = _lines(path, skip_first=False).with_columns(
            pl.col("line").str.replace_all(r"\s+", " ").str.strip_chars(" ")
        )
        if n_fields is None:
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
        lf = _split(lines, " ", names)
        raw = pl.col("__label")
        value = raw.cast(pl.Float64, strict=False)
        ok = value.is_in([-1.0, 0.0, 1.0])
        checks = [
            pl.when(~ok.fill_null(False)).then(pl.format("label must be -1, 0 or 1, got '{}'", raw)),
            *[
                pl.when(~pl.col(n).str.contains(r"^[0-9]+:[-+0-9.eE]+$").fill_null(False)).then(
                    pl.format(f"token {k}: expected 'idx:val', got '{{}}'", pl.col(n))
                )
                for k, n in enumerate(names[1:], start=1)
            ],
        ]
        lf = _with_checks(lf, checks)
        frames.append(lf.select(LINE, BAD, (value > 0).cast(pl.Int8).alias(LABEL), *names[1:]))
    fields = [(f"f{k}", CATEGORICAL) for k in range(1, (n_fields or 0) + 1)]
    return Source(frames, fields, paths)


def _movielens(folder: Path) -> Source:
    files = {name: folder / name for name in ("u.data", "u.user", "u.item")}
    for path in files.values():
        if not path.is_file():
            raise UserError(f"{path}: missing (a MovieLens-100K folder has u.data, u.user and u.item)")
    data = _split(_lines(files["u.data"], skip_first=False), "\t", ["user", "item", "rating", "timestamp"])
    rating = pl.col("rating").cast(pl.Int32, strict=False)
    ts = pl.col("timestamp").cast(pl.Int64, strict=False)
    data = _with_checks(
        data,
        [
            pl.when(~rating.is_between(1, 5).fill_null(False)).then(
                pl.format("rating must be 1..5, got '{}'", "rating")
            ),
            pl.when(ts.is_null()).then(pl.format("timestamp: not an integer: '{}'", "timestamp")),
            pl.when(pl.col("user").is_null() | pl.col("item").is_null()).then(pl.lit("user or item id is missing")),
        ],
    ).with_columns(rating.alias("rating"), ts.alias("timestamp"))
    users = _lookup_table(files["u.user"], ["user", "age", "gender", "occupation", "zip"])
    items = _lookup_table(files["u.item"], ["item", "title", "release", "video", "url"] + [f"g{k}" for k in range(19)])
    genre_cols = [f"g{k}" for k in range(MOVIELENS_GENRES)]
    first_genre = pl.coalesce([pl.when(pl.col(g) == "1").then(pl.lit(str(k))) for k, g in enumerate(genre_cols)])
    items = items.select(
        "item",
        first_genre.alias("genre"),
        pl.col("release").str.slice(-4, 4).alias("release_year"),
    )
    age = pl.col("age").cast(pl.Int32, strict=False)
    age_bucket = (
        pl.when(age < 18)
        .then(pl.lit("<18"))
        .when(age < 25)
        .then(pl.lit("18-24"))
        .when(age < 35)
        .then(pl.lit("25-34"))
        .when(age < 45)
        .then(pl.lit("35-44"))
        .when(age < 50)
        .then(pl.lit("45-49"))
        .when(age < 56)
        .then(pl.lit("50-55"))
        .when(age.is_not_null())
        .then(pl.lit("56+"))
    )
    users = users.select("user", age_bucket.alias("age"), "gender", "occupation", pl.col("zip").str.slice(0, 2))
    lf = (
        data.join(users, on="user", how="left", maintain_order="left")
        .join(items, on="item", how="left", maintain_order="left")
        .select(
            LINE,
            BAD,
            (pl.col("rating") >= 4).cast(pl.Int8).alias(LABEL),
            "user",
            "item",
            "age",
            "gender",
            "occupation",
            "zip",
            "genre",
            "release_year",
            pl.from_epoch("timestamp", time_unit="s").dt.hour().cast(pl.String).alias("hour"),
        )
    )
    names = ["user", "item", "age", "gender", "occupation", "zip", "genre", "release_year", "hour"]
    return Source([lf], [(n, CATEGORICAL) for n in names], [files["u.data"], files["u.user"], files["u.item"]])


def _lookup_table(path: Path, names: list[str]) -> pl.LazyFrame:
    """A '|'-separated MovieLens side table; malformed lines are an error (they would silently drop features)."""
    lf = _split(_lines(path, skip_first=False), "|", names)
    try:
        bad = lf.filter(pl.col(BAD).is_not_null()).select(LINE, BAD).head(1).collect()
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{path}: cannot read ({first_line(exc)})") from None
    if bad.height:
        raise UserError(f"{path}, line {bad[LINE][0]}: {bad[BAD][0]}")
    return lf.drop(LINE, BAD).unique(subset=names[0], keep="first")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
