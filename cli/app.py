"""The ``dcollapse`` Typer application: each subcommand lives in its own module with a ``register(app)``."""

from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C (or SIGTERM) while the command modules import (torch takes seconds): nothing is written yet, so
    leave at once with the exit code of an interrupted command."""
    sys.stderr.write("interrupted\n")
    os._exit(130)


# Until the commands are registered (end of this module); then both signals raise KeyboardInterrupt in the command,
# which removes its temporary outputs and exits 130 through the error boundary (cli/common.py).
_SIGNALS = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
_previous = {sig: signal.signal(sig, _interrupted_while_starting) for sig in _SIGNALS}

import importlib  # noqa: E402

import typer  # noqa: E402

from dcollapse import __version__  # noqa: E402

app = typer.Typer(
    name="dcollapse",
    help="Measure dimensional collapse of embeddings in feature-interaction models, and whether DNNs help.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
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
for _sig, _handler in _previous.items():
    signal.signal(_sig, _handler)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command as Ctrl-C does: temporary outputs removed, exit 130


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    app()
