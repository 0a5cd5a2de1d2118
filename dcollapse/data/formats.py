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

A well-formed Criteo file can also be read by :func:`criteo_native` (Polars' multi-threaded CSV reader); the caller
falls back to :func:`read` for any file it cannot prove good
(:func:`criteo_bytes_ok`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
FORMATS = ("criteo", "avazu", "csv", "parquet", "libfm", "movielens")


Check = tuple[pl.Expr, pl.Expr]  # (condition that marks a bad row, message expression for that row)

SAMPLE_ROWS = 1000  # csv/parquet: column kinds and the label's spelling are read from this many first rows
LABEL_RULES = {"01": "0 or 1", "pm1": "-1 or 1", "bool": "true or false"}  # (--positive: "positive")


@dataclass
class Column:
    """How one csv/parquet input column was used: ``kind`` categorical | numeric | label, or None (dropped)."""

    name: str
    kind: str | None
    why: str


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
    columns: list[Column] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_rule: str = "01"

    def explain(self, file: int, line: int, code: int) -> str:
        """The problem with row ``line`` of file ``file`` whose first failing check is ``code``."""
        row = self.raw[file].filter(pl.col(LINE) == line).select(self.messages[file][code].alias("m")).collect()
        return str(row["m"][0]) if row.height else "malformed row"


def guess_format(paths: list[Path]) -> tuple[str, str | None, str]:
    """(format, separator or None, why) for inputs given without ``--format``: from the first input's name or first
    line where that is unambiguous; else a one-line error listing the formats."""
    first = paths[0]
    if first.is_dir():
        if (first / "u.data").is_file():
            return "movielens", None, "a folder with u.data"
    else:
        suffixes = {Path(p.name.lower().removesuffix(".gz").removesuffix(".zst")).suffix for p in paths}
        if suffixes == {".parquet"}:
            return "parquet", None, "the .parquet extension"
        line = _peek(first)
        if len(line.split("\t")) == 40 and line.split("\t")[0] in ("0", "1"):
            return "criteo", None, "40 tab-separated columns, the first 0 or 1"
        if line.startswith("id,click,hour,"):
            return "avazu", None, "the Avazu header id,click,hour,..."
        tokens = line.split()
        if len(tokens) > 1 and all(re.fullmatch(r"\d+:[-+0-9.eE]+", t) for t in tokens[1:]):
            return "libfm", None, "'label idx:val ...' lines"
        if suffixes == {".csv"}:
            return "csv", None, "the .csv extension"
        if suffixes == {".tsv"}:
            return "csv", "\t", "the .tsv extension (tab-separated)"
    raise UserError(f"{first}: cannot tell the input format: pass --format (one of {', '.join(FORMATS)})")


def _peek(path: Path) -> str:
    """The first line of ``path`` (at most 64 KiB of it) as text, undecodable bytes replaced; "" if unreadable."""
    try:
        with path.open("rb") as fh:
            return fh.readline(1 << 16).decode("utf-8-sig", errors="replace").rstrip("\r\n")
    except OSError:
        return ""


def read(fmt: str, paths: list[Path], opts: dict[str, Any]) -> Source:
    """Parse ``paths`` in format ``fmt``; ``opts``: the :class:`~dcollapse.data.preprocess.Options` as a dict (label,
    categorical, numeric, drop, positive, columns, separator, header), plus ``fields`` ({name: kind}) and
    ``label_rule`` when the columns must be read as in an existing dataset (--apply)."""
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


def _numbers(names: list[str], hints: Mapping[str, str] | None = None) -> tuple[list[pl.Expr], list[Check]]:
    """(Float64 values, checks) for String columns that must be numeric when present (a blank value is
    missing, as in Polars' CSV reader); ``hints`` adds a note per name to its message."""
    values, checks = [], []
    for name in names:
        col = pl.col(name)
        text = col.str.strip_chars()
        num = text.cast(pl.Float64, strict=False)
        values.append(num.alias(name))
        bad = col.is_not_null() & (text != "") & num.is_null()
        checks.append((bad, pl.format(f"{name}: not a number: '{{}}'{(hints or {}).get(name, '')}", col)))
    return values, checks


def _first_line(path: Path, sep: str) -> list[str]:
    """The first line of ``path`` split on ``sep`` (values stripped of blanks and surrounding double quotes)."""
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
        raise UserError(f"{path}, line 1: not valid UTF-8 text") from None
    return [c.strip().strip('"') for c in text.split(sep)]


def _valid_names(path: Path | str, names: list[str]) -> list[str]:
    if len(set(names)) != len(names) or "" in names:
        raise UserError(f"{path}, line 1: header has empty or duplicate column names")
    return names


def _header(path: Path, sep: str) -> list[str]:
    """Column names from the first line of ``path``."""
    return _valid_names(path, _first_line(path, sep))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _data_like(first: list[str], header: list[str] | None, label: str) -> bool:
    """Whether a first line looks like a data row rather than a header: it lacks the label column and has a number
    among its values, or has as many values as the known ``header``."""
    if label in first:
        return False
    return any(_NUMBER.fullmatch(v) for v in first) or (header is not None and len(first) == len(header))


def _show(names: list[str], most: int = 8) -> str:
    """A short listing of column names or values for a message (long names cut, at most ``most`` shown)."""
    cut = [(n if len(n) <= 30 else n[:27] + "...").replace("\t", "\\t") for n in names[:most]]
    return ", ".join(cut) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _separator_hint(names: list[str], sep: str) -> str:
    """A hint when a header read with ``sep`` is one column that holds another common separator."""
    if len(names) != 1:
        return ""
    for other, spelling in (("\t", "$'\\t'"), (";", "';'"), ("|", "'|'"), (",", "','")):
        if other != sep and other in names[0]:
            extra = " or --format criteo for Criteo files" if other == "\t" else ""
            return f"; the first line is one column with {spelling} in it: pass --separator {spelling}{extra}"
    return ""


def _csv_header(
    paths: list[Path], sep: str, label: str, opts: dict[str, Any]
) -> tuple[list[str], list[bool], list[str]]:
    """(column names, per file whether its first line is the header, notes) for csv inputs.

    Header handling is per input: a file whose first line is the header is read after it, one whose first line looks
    like data is read from line 1 with the same columns. The names come from ``--columns``, else from the first
    file with a header line; ``--no-header``: no file has one (names from ``--columns``, else col1..colN).
    """
    firsts = [_first_line(p, sep) for p in paths]
    given = list(opts.get("columns") or [])
    if given:
        _valid_names("--columns", given)
    if not opts.get("header", True):
        return given or [f"col{k}" for k in range(1, len(firsts[0]) + 1)], [False] * len(paths), []
    source = "--columns" if given else None
    header = given or None
    for path, first in zip(paths, firsts, strict=True):
        if header is None and not _data_like(first, None, label):
            header, source = _valid_names(path, first), str(path)
    if header is None:
        raise UserError(
            f"{paths[0]}, line 1 looks like data, not a header ({_show(firsts[0])}): name the columns with "
            "--columns NAME,NAME,... (or pass --no-header for col1..colN)"
        )
    has_header, notes = [], []
    for path, first in zip(paths, firsts, strict=True):
        if first == header:
            has_header.append(True)
        elif _data_like(first, header, label):
            has_header.append(False)
            notes.append(f"{path}: no header line (line 1 is data), read with the columns of {source}")
        else:
            hint = _separator_hint(first, sep)
            raise UserError(f"{path}, line 1: header differs from {source} (have: {_show(first)}){hint}")
    return header, has_header, notes


def _infer_text(sample: pl.DataFrame, names: list[str]) -> dict[str, tuple[str, str]]:
    """Kind of each text column from its values in ``sample``: every value a number and some not an integer ->
    numeric; otherwise categorical (integers, strings)."""
    kinds = {}
    rows = f"the first {sample.height:,} rows"
    for name in names:
        values = sample[name].drop_nulls().str.strip_chars()
        values = values.filter(values != "")
        if values.len() == 0:
            kinds[name] = (CATEGORICAL, f"no values in {rows}")
        elif values.cast(pl.Float64, strict=False).null_count():
            kinds[name] = (CATEGORICAL, f"strings in {rows}")
        elif values.str.contains(r"^[+-]?\d+$").all():
            kinds[name] = (CATEGORICAL, f"integers in {rows}")
        else:
            kinds[name] = (NUMERIC, f"floats in {rows}")
    return kinds


def _infer_dtype(dtype: pl.DataType) -> tuple[str | None, str]:
    """Kind of a Parquet column from its type: floats numeric; integers, strings, booleans categorical."""
    if dtype.is_float() or dtype.is_decimal():
        return NUMERIC, f"type {dtype}"
    if dtype.is_integer() or dtype in (pl.String, pl.Boolean) or isinstance(dtype, pl.Categorical | pl.Enum):
        return CATEGORICAL, f"type {dtype}"
    return None, f"type {dtype} is not read by default (--categorical NAME reads its text)"


def _plan(
    path: Path, header: list[str], label: str, opts: dict[str, Any], inferred: Mapping[str, tuple[str | None, str]]
) -> list[Column]:
    """The role of every column: the label; ``--drop``; ``--categorical`` / ``--numeric`` as given; every other
    column as ``inferred``. With ``opts["fields"]`` ({name: kind}, from --apply) exactly those fields."""
    categorical, numeric = list(opts.get("categorical") or []), list(opts.get("numeric") or [])
    drop, exact = list(opts.get("drop") or []), opts.get("fields")
    sep = opts.get("separator") or ","
    for col in [label, *categorical, *numeric, *drop, *(exact or {})]:
        if col not in header:
            raise UserError(f"{path}: missing column '{col}' (have: {_show(header)}){_separator_hint(header, sep)}")
    overlap = {c for c in [*categorical, *numeric, *drop] if [*categorical, *numeric, *drop].count(c) > 1}
    if overlap or label in [*categorical, *numeric, *drop]:
        raise UserError(f"{path}: column(s) {', '.join(sorted(overlap | {label}))} given more than one role")
    _check_field_names(path, [*categorical, *numeric])
    columns = []
    for name in header:
        if name == label:
            columns.append(Column(name, "label", "--label" if opts.get("label") else "the default label column"))
        elif exact is not None:
            kind = exact.get(name)
            columns.append(Column(name, kind, "as in the --apply dataset" if kind else "not in the --apply dataset"))
        elif name in drop:
            columns.append(Column(name, None, "--drop"))
        elif name in categorical or name in numeric:
            kind = CATEGORICAL if name in categorical else NUMERIC
            columns.append(Column(name, kind, f"--{kind}"))
        elif name == LABEL or name.startswith("__"):
            columns.append(Column(name, None, "reserved name"))
        else:
            columns.append(Column(name, *inferred[name]))
    if not any(c.kind in (CATEGORICAL, NUMERIC) for c in columns):
        raise UserError(f"{path}: no feature columns besides the label '{label}'")
    return columns


def _kinds(columns: list[Column]) -> tuple[list[str], list[str]]:
    """(categorical, numeric) field names in column order."""
    return [c.name for c in columns if c.kind == CATEGORICAL], [c.name for c in columns if c.kind == NUMERIC]


def _label_rule(path: Path, label: str, values: pl.Series, positive: str | None) -> str:
    """How the label column's text reads as 0/1, from its ``values`` in the first rows: "positive" (``--positive``),
    "01", "pm1" (-1 = 0) or "bool"; a one-line error listing the values when none fits."""
    if positive is not None:
        return "positive"
    distinct = values.drop_nulls().str.strip_chars().unique().sort()
    distinct = distinct.filter(distinct != "")
    numbers = distinct.cast(pl.Float64, strict=False)
    if not numbers.null_count():
        seen = set(numbers.to_list())
        for rule, allowed in (("01", {0.0, 1.0}), ("pm1", {-1.0, 1.0})):
            if seen <= allowed:
                return rule
    elif set(distinct.str.to_lowercase().to_list()) <= {"true", "false"}:
        return "bool"
    shown = _show([f"'{v}'" for v in distinct.to_list()])
    raise UserError(
        f"{path}: label column '{label}' must be 0/1, -1/1 or true/false, but its first rows hold {shown}: "
        "pass --positive VALUE (the value that means positive)"
    )


def _label(label: str, rule: str, positive: str | None) -> tuple[pl.Expr, Check]:
    """(Int8 label, check) for the String label column ``label`` read by ``rule`` (see :func:`_label_rule`)."""
    raw = pl.col(label)
    text = raw.str.strip_chars()
    if rule == "positive":
        ok, value = raw.is_not_null(), (text == positive)
    elif rule == "bool":
        ok, value = text.str.to_lowercase().is_in(["true", "false"]), text.str.to_lowercase() == "true"
    else:
        number = text.cast(pl.Float64, strict=False)
        ok, value = number.is_in([0.0, 1.0] if rule == "01" else [-1.0, 1.0]), number > 0
    expected = f"label column '{label}' must be {LABEL_RULES.get(rule)} (as in its first rows), got '{{}}'"
    msg = pl.when(raw.is_null()).then(pl.lit("label is missing")).otherwise(pl.format(expected, raw))
    return pl.when(ok).then(value.cast(pl.Int8)).alias(LABEL), (~ok, msg)


def _check_positive(path: Path, label: str, positive: str | None, frames: list[pl.LazyFrame]) -> None:
    """``--positive`` must be a value of the label column (a misspelt one would make every row a negative)."""
    if positive is None:
        return
    for lf in frames:
        if lf.filter(pl.col(label).str.strip_chars() == positive).select(label).head(1).collect().height:
            return
    values = pl.concat([lf.select(pl.col(label).str.strip_chars()).head(SAMPLE_ROWS).collect() for lf in frames])
    shown = _show([f"'{v}'" for v in values[label].drop_nulls().unique().sort().to_list()])
    raise UserError(f"{path}: --positive {positive!r} is no value of the label column '{label}' (it holds {shown})")


def _sample(lf: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """The first :data:`SAMPLE_ROWS` rows of a parsed file (an unreadable file is a one-line error)."""
    try:
        return lf.head(SAMPLE_ROWS).collect()
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{path}: cannot read ({first_line(exc)})") from None


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


def criteo_native(path: Path) -> pl.LazyFrame:
    """Fast reader of a well-formed Criteo file: Polars' native multi-threaded CSV reader; the same columns (and line
    numbers) as :func:`read`. Categorical columns are read as String: the caller hashes the text, then casts it to
    ``pl.Categorical`` (reading them as ``pl.Categorical`` and casting back to String to hash made the whole parse
    pass 1.15-1.5x slower at 1e6 rows, two runs).

    It proves less than :func:`read`: a row with more than 40 fields or a field it cannot parse is an error, a bad
    label sets ``__bad``, but a short row reads as missing values and a CR stays in the last token. The caller
    checks the byte counts (:func:`criteo_bytes_ok`) and uses :func:`read` for any file that fails either.
    """
    label = pl.col("__label")
    schema: dict[str, pl.DataType] = {
        "__label": pl.String(),
        **dict.fromkeys(CRITEO_NUMERIC, pl.Float64()),
        **dict.fromkeys(CRITEO_CATEGORICAL, pl.String()),
    }
    lf = pl.scan_csv(
        path, separator="\t", has_header=False, schema=schema, quote_char=None, row_index_name=LINE, row_index_offset=1
    )
    bad = pl.when(label.is_in(["0", "1"]).fill_null(False).not_()).then(pl.lit(0, dtype=pl.Int16)).alias(BAD)
    label_out = label.cast(pl.Int8, strict=False).alias(LABEL)
    return lf.select(pl.col(LINE).cast(pl.UInt64), bad, label_out, *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)


def criteo_bytes_ok(counts: Mapping[bytes, int], lines: int, rows: int) -> bool:
    """Whether a file that :func:`criteo_native` read as ``rows`` rows is plain Criteo: ``counts`` of its tab, LF and
    CR bytes, ``lines`` its number of lines. No CR, and 39 tabs per line on average: as no line has more (the
    reader's error), every line has exactly 39, so none is short or blank, and row k is line k."""
    return counts[b"\r"] == 0 and counts[b"\t"] == 39 * lines and rows == lines


def _avazu(paths: list[Path], opts: dict[str, Any]) -> Source:
    header = bool(opts.get("header", True))
    out = _Builder()
    rest: list[str] = []
    notes = []
    for path in paths:
        first = _first_line(path, ",")
        has_header = header and not _data_like(first, AVAZU_COLUMNS, "click")
        if header and not has_header:
            notes.append(f"{path}: no header line (line 1 is data), read with the Avazu columns")
        columns = _valid_names(path, first) if has_header else AVAZU_COLUMNS
        for col in ("id", "click", "hour"):
            if col not in columns:
                raise UserError(f"{path}: missing column '{col}' (Avazu files have id,click,hour,...)")
        rest = [c for c in columns if c not in ("id", "click", "hour")]
        _check_field_names(path, rest)
        lf, count_check = _split(_lines(path, skip_first=has_header), ",", columns, unquote=True)
        label, label_check = _label_01("click")
        hour = pl.col("hour")
        date = hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False)
        hh = hour.str.slice(6, 2).cast(pl.Int32, strict=False)
        hour_ok = (hour.str.len_chars() == 8) & date.is_not_null() & hh.is_between(0, 23)
        hour_check = (~hour_ok, pl.format("hour: expected YYMMDDHH, got '{}'", hour))
        columns_out: list[pl.Expr | str] = [
            label,
            hh.cast(pl.String).alias("hour_of_day"),
            date.dt.weekday().cast(pl.String).alias("weekday"),
            date.dt.weekday().is_in([6, 7]).cast(pl.Int8).cast(pl.String).alias("weekend"),  # FuxiCTR's Avazu_x4
            *rest,
        ]
        out.add(lf, [count_check, label_check, hour_check], columns_out)
    fields = [(name, CATEGORICAL) for name in ("hour_of_day", "weekday", "weekend")] + [(c, CATEGORICAL) for c in rest]
    source = out.source(fields, paths)
    source.notes = notes
    return source


def _csv(paths: list[Path], opts: dict[str, Any]) -> Source:
    sep = opts.get("separator") or ","
    label_col = opts.get("label") or LABEL
    names, has_header, notes = _csv_header(paths, sep, label_col, opts)
    parsed = [_split(_lines(p, skip_first=h), sep, names, unquote=True) for p, h in zip(paths, has_header, strict=True)]
    sample = _sample(parsed[0][0], paths[0])
    columns = _plan(paths[0], names, label_col, opts, _infer_text(sample, names))
    return _table_source(paths, opts, label_col, columns, sample, parsed, notes)


def _table_source(
    paths: list[Path],
    opts: dict[str, Any],
    label_col: str,
    columns: list[Column],
    sample: pl.DataFrame,
    parsed: Sequence[tuple[pl.LazyFrame, Check | None]],
    notes: list[str],
) -> Source:
    """The csv/parquet :class:`Source`: per file its String columns (and column-count check), read per ``columns``."""
    positive = opts.get("positive")
    rule = opts.get("label_rule") or _label_rule(paths[0], label_col, sample[label_col], positive)
    if not opts.get("label_rule"):  # (with --apply, the training dataset's value)
        _check_positive(paths[0], label_col, positive, [lf for lf, _ in parsed])
    for c in columns:
        if c.kind == "label":
            c.why += f", {'1 = ' + repr(positive) if rule == 'positive' else 'values ' + LABEL_RULES[rule]}"
    categorical, numeric = _kinds(columns)
    hints = {c.name: f" (read as numeric from {c.why}; --categorical {c.name} reads it as tokens)"
             for c in columns if c.kind == NUMERIC and not c.why.startswith("-")}  # fmt: skip
    label, label_check = _label(label_col, rule, positive)
    values, number_checks = _numbers(numeric, hints)
    out = _Builder()
    for lf, count_check in parsed:
        checks = [label_check, *number_checks] if count_check is None else [count_check, label_check, *number_checks]
        out.add(lf, checks, [label, *categorical, *values])
    fields = [(c, CATEGORICAL) for c in categorical] + [(c, NUMERIC) for c in numeric]
    source = out.source(fields, paths)
    source.columns, source.notes, source.label_rule = columns, notes, rule
    return source


def _parquet(paths: list[Path], opts: dict[str, Any]) -> Source:
    label_col = opts.get("label") or LABEL
    schemas = []
    for path in paths:
        try:
            schemas.append(pl.scan_parquet(path).collect_schema())
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    first = schemas[0]
    columns = _plan(paths[0], first.names(), label_col, opts, {n: _infer_dtype(t) for n, t in first.items()})
    used = [c.name for c in columns if c.kind is not None]
    parsed = []
    for path, schema in zip(paths, schemas, strict=True):
        for col in used:
            if col not in schema:
                raise UserError(f"{path}: missing column '{col}' (have: {_show(schema.names())})")
        lf = pl.scan_parquet(path, row_index_name=LINE, row_index_offset=1).select(
            pl.col(LINE).cast(pl.UInt64), *[_as_string(c, schema[c]) for c in used]
        )
        parsed.append((lf, None))
    return _table_source(paths, opts, label_col, columns, _sample(parsed[0][0], paths[0]), parsed, [])


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
            fields = [f"f{k}" for k in range(1, n_fields + 1)]
            if opts.get("field_map"):
                fields = libfm_field_names(Path(opts["field_map"]), first.item().split(" ")[1:], path)
        names = ["__label", *fields]
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
    return out.source([(name, CATEGORICAL) for name in fields], paths)


def libfm_field_names(field_map: Path, tokens: list[str], data: Path) -> list[str]:
    """The field name of each position of a libFM row: the ``field`` of the ``field:value<TAB>index`` line of
    ``field_map`` whose index is the one of that position's ``idx:val`` token in ``tokens`` (the first row of
    ``data``)."""
    try:
        table = pl.read_csv(field_map, separator="\t", has_header=False, new_columns=["key", "index"], quote_char=None,
                            schema_overrides={"key": pl.String, "index": pl.Int64})  # fmt: skip
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise UserError(f"{field_map}: cannot read as 'field:value<TAB>index' lines ({first_line(exc)})") from None
    if table.width != 2 or table.height == 0:
        raise UserError(f"{field_map}: expected 'field:value<TAB>index' lines")
    field_of = dict(table.select(pl.col("index"), pl.col("key").str.split(":").list.first()).iter_rows())
    names = []
    for k, token in enumerate(tokens, start=1):
        index = int(token.split(":")[0]) if token.split(":")[0].isdigit() else None
        if index not in field_of:
            raise UserError(f"{data}, line 1, token {k}: index {token.split(':')[0]!r} is not in {field_map}")
        names.append(field_of[index])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{field_map}: several positions of {data} belong to field(s) {', '.join(repeated)}")
    return names


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
    age_bucket: pl.Expr = pl.when(age.is_not_null()).then(pl.lit("56+"))
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
