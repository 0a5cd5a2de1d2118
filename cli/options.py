"""Options shared by several commands: one declaration, one help text each."""

from __future__ import annotations

from pathlib import Path

import typer

from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")
DataOpt = typer.Option(
    None, "--data", metavar="DATA_DIR", help="Dataset directory; default: the path stored in the checkpoint."
)
SplitOpt = typer.Option("valid", "--split", help="Split the fixed batch is drawn from.")
BatchOpt = typer.Option(DEFAULT_BATCH_ROWS, "--batch", min=1, help="Rows in the fixed batch (all if fewer).")
SeedOpt = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the fixed batch's row sample.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda.")


def plot_option(what: str) -> Path | None:
    """``--plot FILE``: write ``what`` to FILE (.png, .pdf or .svg by its extension)."""
    return typer.Option(None, "--plot", metavar="FILE", help=f"Write {what} to FILE (.png, .pdf or .svg).")
