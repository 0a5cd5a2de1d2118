"""Signals of the ``dcollapse`` process (imports nothing heavy: it is the first module the CLI loads).

Until a command starts (Python and torch importing, options parsing) and after it ends, Ctrl-C and SIGTERM end the
process at once with one line and exit 130: nothing is being written then. Inside a command both raise
KeyboardInterrupt, so the command's temporary outputs are removed on the way out and the error boundary
(cli/common.py) prints one line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_at_once(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted\n")
    os._exit(130)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def starting() -> dict[int, Any]:
    """Install :func:`exit_at_once` for SIGINT and SIGTERM (main thread only); returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, exit_at_once) for sig in SIGNALS}


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def command_started() -> None:
    """Where :func:`starting` is in force (the CLI process, not a library or test process), from now on SIGINT and
    SIGTERM raise KeyboardInterrupt (until the matching :func:`command_finished`; commands may nest)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _depth.append(None)
    for sig in SIGNALS:
        if signal.getsignal(sig) is exit_at_once:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else interrupt)
            _switched.add(sig)


def command_finished() -> None:
    """After the outermost command (its outputs complete or removed): back to :func:`exit_at_once` for what
    :func:`command_started` switched, so a signal while the program winds down is one line, not a traceback."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _depth:
        _depth.pop()
    while _switched and not _depth:
        signal.signal(_switched.pop(), exit_at_once)


_switched: set[int] = set()  # the signals command_started took over from exit_at_once
_depth: list[None] = []  # commands running (one entry each)
