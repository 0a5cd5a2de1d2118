"""``dcollapse preprocess``: raw CTR files -> a dataset directory (meta.json + one Parquet file per split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from dcollapse.cli.common import emit, handles_errors, out, progress
from dcollapse.cli.options import JsonOpt
from dcollapse.data.preprocess import FORMATS, Options, preprocess


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess_command)


@handles_errors
def preprocess_command(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help="Input file(s), or the MovieLens-100K folder."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help=f"Input format: {', '.join(FORMATS)}. Default: guessed from the name or first line (.csv, .tsv, "
        ".parquet, a MovieLens folder, Criteo/Avazu/libFM lines), taken from the dataset with --apply.",
    ),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output dataset directory (must not exist)."),
    label: str | None = typer.Option(
        None, "--label", help="csv/parquet: label column (0/1, -1/1 or true/false; default 'label')."
    ),
    positive: str | None = typer.Option(
        None,
        "--positive",
        metavar="VALUE",
        help="csv/parquet: the label value that means positive (e.g. '>50K'); others are 0.",
    ),
    categorical: list[str] = typer.Option(
        [],
        "--categorical",
        metavar="COLS",
        help="csv/parquet: columns read as categorical (comma-separated or repeated). Every column not given a "
        "role is used too: integers and strings categorical, floats numeric.",
    ),
    numeric: list[str] = typer.Option(
        [],
        "--numeric",
        metavar="COLS",
        help="csv/parquet: columns read as numeric and binned (comma-separated or repeated).",
    ),
    drop: list[str] = typer.Option(
        [], "--drop", metavar="COLS", help="csv/parquet: columns to leave out (comma-separated)."
    ),
    columns: list[str] = typer.Option(
        [], "--columns", metavar="NAMES", help="csv: column names of inputs without a header line (comma-separated)."
    ),
    numeric_bins: str = typer.Option(
        "log", "--numeric-bins", help="Numeric binning: 'log' (v > 2 -> int(ln(v)^2)) or N quantile bins."
    ),
    numeric_as: str = typer.Option(
        "bins",
        "--numeric-as",
        help="Numeric fields as 'bins' (one learned vector per bin, --numeric-bins) or 'scalar' (one learned vector "
        "per field times the value log1p(max(v, 0)), min-max scaled on train to [0, 1] and stored to 1e-3; "
        "missing -> 0). Criteo, and csv/parquet numeric columns; taken from the dataset with --apply.",
    ),
    separator: str = typer.Option(",", "--separator", help="csv: column separator."),
    no_header: bool = typer.Option(
        False,
        "--no-header",
        help="csv/avazu: no input has a header line (default: per input, a first line that looks like data is "
        "read as data).",
    ),
    min_count: int = typer.Option(1, "--min-count", help="Values seen fewer times in train map to the OOV id 0."),
    valid_frac: float = typer.Option(0.1, "--valid-frac", help="Fraction of rows for the validation split."),
    test_frac: float = typer.Option(0.1, "--test-frac", help="Fraction of rows for the test split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    split_files: bool = typer.Option(
        False, "--split-files", help="Inputs are the splits: train test (valid carved from train) or train valid test."
    ),
    apply: Path | None = typer.Option(
        None, "--apply", help="Reuse the vocabularies of this existing dataset (new rows go to a 'test' split)."
    ),
    bad_rows: str = typer.Option("error", "--bad-rows", help="Malformed rows: 'error' (stop) or 'skip' (count them)."),
    field_map: Path | None = typer.Option(
        None,
        "--field-map",
        metavar="FILE",
        help="libFM: name the fields from a 'field:value<TAB>index' file (e.g. iPinYou's featindex.fm.txt) instead "
        "of f1, f2, ...",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    as_json: bool = JsonOpt,
) -> None:
    """Preprocess raw CTR data into integer ids per field, with saved vocabularies and train/valid/test splits.

    Example: dcollapse preprocess raw/train.txt --format criteo --out data/criteo
    """
    options = Options(
        format=fmt,
        label=label,
        categorical=list(categorical),
        numeric=list(numeric),
        drop=list(drop),
        positive=positive,
        columns=list(columns),
        numeric_bins=numeric_bins,
        numeric_as=numeric_as,
        separator=separator,
        header=not no_header,
        min_count=min_count,
        valid_frac=valid_frac,
        test_frac=test_frac,
        seed=seed,
        split_files=split_files,
        apply=str(apply) if apply is not None else None,
        bad_rows=bad_rows,
        field_map=str(field_map) if field_map is not None else None,
    )
    with progress() as bar:
        task = bar.add_task("preprocess", total=3, status="")

        def on_stage(name: str) -> None:
            if bar.tasks[task].fields["status"]:
                bar.advance(task)
            bar.update(task, status=name)

        meta = preprocess([str(p) for p in inputs], out_dir, options, overwrite=overwrite, on_stage=on_stage)
        bar.update(task, completed=3)
    emit(meta, as_json, lambda doc: render_summary(doc, out_dir))


def render_summary(meta: dict[str, Any], out_dir: Path) -> None:
    out.print(summary_table(meta, out_dir))
    for note in meta.get("notes", []):
        out.print(f"note: {note}", highlight=False, soft_wrap=True)


def summary_table(meta: dict[str, Any], out_dir: Path) -> Table:
    """Rows and positive rate per split, then every field's kind and vocabulary size, and (csv/parquet) how every
    input column was used and why."""
    table = Table(title=escape(f"dataset {out_dir}"), show_lines=False)
    table.add_column("item")
    table.add_column("kind / rows", justify="right")
    table.add_column("vocab / positive rate", justify="right")
    for name, split in meta["splits"].items():
        rate = split["positives"] / split["rows"] if split["rows"] else 0.0
        table.add_row(f"split {name}", f"{split['rows']:,}", f"{rate:.4f}")
    if meta.get("skipped_rows"):
        table.add_row("skipped rows", f"{meta['skipped_rows']:,}", "")
    why = {c["name"]: c["why"] for c in meta.get("columns", [])}
    for f in meta["fields"]:
        kind = f"{f['kind']} ({why[f['name']]})" if f["name"] in why else f["kind"]
        kind += " (scalar: one vector x value)" if f.get("encoding") == "scalar" else ""
        table.add_row(escape(f"field {f['name']}"), escape(kind), f"{f['vocab_size']:,}")  # names as they are
    for c in meta.get("columns", []):
        if c["kind"] in ("label", None):
            table.add_row(escape(f"column {c['name']}"), "label" if c["kind"] else "dropped", escape(c["why"]))
    return table
