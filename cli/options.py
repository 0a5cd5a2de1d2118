"""Options shared by several commands: one declaration, one help text each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import typer.core

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


TYPE_METAVARS = {"int": "INT", "float": "FLOAT", "path": "PATH", "str": "TEXT"}


class CommandGroup(typer.core.TyperGroup):
    """The app's command groups: in ``--help``, flags show no type and other options a plain INT / FLOAT / PATH /
    TEXT unless they name their own metavar (instead of typer's ``<bool>``, ``<int>`` on every line)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            return None
        help_option = command.get_help_option(ctx) if ctx is not None else None  # no context: not for --help
        for param in [*command.params, help_option]:
            if isinstance(param, typer.core.TyperOption) and param.metavar is None:
                param.metavar = "" if param.is_flag else plain_metavar(param)
        return command

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option


def plain_metavar(option: typer.core.TyperOption) -> str | None:
    """INT / FLOAT / PATH / TEXT for typer's ``<int>``-style type labels (None: keep typer's own)."""
    bare = getattr(option, "bare_type", None)  # typer >= 0.24 labels types itself; older releases say INTEGER etc.
    if bare is None:
        return None
    name = str(bare()).lower()
    return TYPE_METAVARS.get(name, name.upper())
