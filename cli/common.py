"""Shared CLI plumbing: consoles, the error-to-exit-code wrapper, JSON output, progress bars."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from dcollapse.cli import signals
from dcollapse.errors import CheckFailed, Notice, UserError

# Tables and reports on stdout. Piped into a file or a CI log there is no terminal width; Rich would then cut the
# tables at 80 columns, so use a wide page unless COLUMNS says otherwise.
PIPED_WIDTH = 160
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH)
err = Console(stderr=True)  # progress, messages and errors: stderr

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Turn errors into the CLI contract (see :func:`exit_code_of`): one line on stderr, then the exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signals.command_started()
        try:
            with notices_on_stderr():
                return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # stdout closed by the reader (`| head`): Typer exits quietly
        except (UserError, CheckFailed, OSError, KeyboardInterrupt) as exc:
            raise typer.Exit(report(exc)) from None
        finally:
            signals.command_finished()

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def notices_on_stderr() -> Iterator[None]:
    """While the block runs, the library's notices (:class:`Notice`) print as one line on stderr, every time;
    other warnings go where they went before."""
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, Notice):
            say("note:", str(message), "yellow")
        else:
            previous(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", Notice)
        warnings.showwarning = show
        yield


def report(exc: UserError | CheckFailed | OSError | KeyboardInterrupt) -> int:
    """Print the one line for ``exc`` on stderr and return its exit code: UserError and any OSError (a path the
    user gave that cannot be read or written) -> 2, CheckFailed -> 1, Ctrl-C -> 130. User text is printed as it
    is, never read as Rich markup."""
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted", highlight=False)
        return 130
    if isinstance(exc, CheckFailed):
        say("check failed:", str(exc))
        return 1
    say("error:", os_error_line(exc) if isinstance(exc, OSError) else str(exc))
    return 2


def say(prefix: str, text: str, style: str = "bold red") -> None:
    """One line on stderr: ``prefix`` in ``style``, then ``text`` verbatim (brackets in a path or a cell stay)."""
    err.print(Text.assemble((prefix, style), " ", text), highlight=False, soft_wrap=True)


def os_error_line(exc: OSError) -> str:
    """``path: reason`` of an OSError (``path -> other: reason`` for a rename or a link)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {reason}"


def print_json(document: Any) -> None:
    """Write one JSON document to stdout (and nothing else there)."""
    sys.stdout.write(json.dumps(document, indent=2, default=_jsonable) + "\n")
    sys.stdout.flush()


def emit(document: Any, as_json: bool, render: Callable[[Any], None], plot: Path | None = None) -> None:
    """Print ``document`` as one JSON document (``--json``) or as tables through ``render``; then, when a plot was
    written, name it on stderr."""
    if as_json:
        print_json(document)
    else:
        render(document)
    if plot is not None:
        err.print(f"wrote {plot}", highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def progress(transient: bool = True) -> Progress:
    """A Rich progress bar on stderr."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
        transient=transient,
        disable=transient and not err.is_terminal,  # no terminal: nothing to redraw, and no blank line left behind
    )
