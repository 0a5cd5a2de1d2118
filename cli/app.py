"""The ``dcollapse`` Typer application: each subcommand lives in its own module with a ``register(app)``."""

from __future__ import annotations

from dcollapse.cli import signals

_previous = signals.starting()  # Ctrl-C while the command modules import (torch takes seconds): exit at once

import importlib  # noqa: E402

import typer  # noqa: E402

from dcollapse import __version__  # noqa: E402
from dcollapse.cli.options import CommandGroup  # noqa: E402

app = typer.Typer(
    name="dcollapse",
    help="Measure dimensional collapse of embeddings in feature-interaction models, and whether DNNs help.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=CommandGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcollapse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Measure dimensional collapse of embeddings in feature-interaction models, and whether DNNs help."""


# One module per subcommand (group), each with ``register(app)``; the order here is the order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "preprocess", "synth", "train", "report", "sweep", "agop", "richness", "interactions", "hierarchy",
)  # fmt: skip


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"dcollapse.cli.{name}").register(app)


_register_all()
signals.restore(_previous)


def main() -> None:
    signals.starting()  # until the command starts (see dcollapse.cli.signals)
    app()
