"""Atomic output: a crash or a bad input never leaves a half-written file or directory.

Temporary files and scratch folders beside a target are named ``.NAME.HOST-PID.XXXX.tmp`` (or ``.work``): the
next run that writes NAME removes those whose process is gone (:func:`remove_stale`), and restores or removes a
``.NAME.old`` left by a replacement that was interrupted. :func:`output_lock` lets one run at a time write NAME.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcollapse.errors import Notice, UserError


@contextlib.contextmanager
def atomic_path(
    target: str | Path, *, directory: bool = False, overwrite: bool = True, replaces: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    On any exception the temporary file or directory is removed and ``target`` is untouched.
    With ``directory=True`` the yielded path is an empty directory. Refused with a :class:`UserError` before
    anything is written: an existing target when ``overwrite=False``; a directory where a file goes or the reverse;
    with ``replaces`` (a file name, e.g. ``"meta.json"``), a non-empty directory without that file — so only an
    earlier output of the same kind is ever replaced, never an unrelated directory.
    """
    target = Path(target)
    remove_stale(target)
    if directory:
        recover_replaced(target)
    if target.exists():
        if not overwrite:
            raise UserError(f"{target}: already exists (pass --overwrite to replace it)")
        if target.is_dir() != directory:
            found, wanted = ("a directory", "a file") if target.is_dir() else ("a file", "a directory")
            raise UserError(f"{target}: is {found}; the output here is {wanted} (choose another path)")
        if directory and replaces and any(target.iterdir()) and not (target / replaces).is_file():
            raise UserError(f"{target}: not an earlier output (no {replaces}); refusing to replace it")
    make_parent(target)
    if directory:
        tmp = scratch_dir(target, ".tmp")
    else:
        fd, name = tempfile.mkstemp(prefix=scratch_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    tmp.chmod((0o777 if directory else 0o666) & ~_umask())  # mkstemp/mkdtemp create private (0600/0700) paths
    if directory and target.exists():
        old = target.with_name(f".{target.name}.old")
        _remove(old)
        target.rename(old)
        tmp.rename(target)
        _remove(old)
    else:
        os.replace(tmp, target)


def scratch_prefix(target: Path) -> str:
    """``.NAME.HOST-PID.``: the start of the names of this process's temporary paths beside ``target``."""
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def scratch_dir(target: Path, suffix: str = ".work") -> Path:
    """A new empty private directory beside ``target`` named for this process (see :func:`remove_stale`)."""
    return Path(tempfile.mkdtemp(prefix=scratch_prefix(target), suffix=suffix, dir=target.parent))


@contextlib.contextmanager
def scratch(target: str | Path) -> Iterator[Path]:
    """A scratch directory beside ``target`` for the duration of the block (removed after it, however it ends);
    stale ones of killed runs are removed first (:func:`remove_stale`)."""
    target = Path(target)
    remove_stale(target)
    path = scratch_dir(target)
    try:
        yield path
    finally:
        _remove(path)


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files and scratch folders beside ``target`` that a run of this tool on this host left
    when it was killed (named by :func:`scratch_prefix`, their process gone); returns them. Paths of a live
    process, of another host or named otherwise are never touched."""
    target, host = Path(target), socket.gethostname()
    start = f".{target.name}."
    removed = []
    with contextlib.suppress(OSError):  # a parent that does not exist (yet) or cannot be listed: nothing of ours
        for path in target.parent.iterdir():
            name = path.name
            if not (name.startswith(start) and name.endswith((".tmp", ".work"))):
                continue
            owner = name[len(start) :].rpartition(".")[0].rpartition(".")[0]  # HOST-PID
            owner_host, _, pid = owner.rpartition("-")
            if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                _remove(path)
                removed.append(path)
    if removed:
        warnings.warn(f"removed {len(removed)} temporary path(s) of killed runs beside {target}", Notice, stacklevel=2)
    return removed


def recover_replaced(target: Path) -> None:
    """Finish a directory replacement that was interrupted between its two renames (see :func:`atomic_path`):
    ``.NAME.old`` without NAME is the previous output, renamed back; beside a NAME it is a leftover, removed."""
    old = target.with_name(f".{target.name}.old")
    if not old.is_dir():
        return
    if target.exists():
        _remove(old)
        warnings.warn(f"removed {old}, left by an interrupted replacement of {target}", Notice, stacklevel=2)
    else:
        old.rename(target)
        warnings.warn(f"restored {target} from {old} (its replacement was interrupted)", Notice, stacklevel=2)


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Hold the lock of ``target`` (an flock on ``.NAME.lock`` beside it, released if the process dies) while the
    block writes it; another holder is a :class:`UserError`. Also proves the place writable before a long job."""
    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    make_parent(target)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"{target}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(
                f"{target}: another run is writing it now (it holds {lock}); wait for it or choose another path"
            ) from None
        try:  # the lock file may have been removed by the holder we waited for: lock the current one
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def make_parent(target: Path) -> None:
    """Create the folder of ``target``; a path below a file, or a place without permission, is a UserError."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{target}: cannot create its folder {target.parent} ({exc.strerror})") from None
    if not target.parent.is_dir():
        raise UserError(f"{target}: {target.parent} is not a folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a one-line :class:`UserError` (``kind``: its role)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {kind} file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a {kind} file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a TOML {kind} file (not UTF-8 text: byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid TOML (nested too deeply)") from None


def read_description(data_dir: str | Path, name: str, tag: str, kind: str, hint: str) -> dict[str, Any]:
    """The JSON object ``data_dir/name`` carrying ``"format": tag``, the description file of a ``kind`` directory.

    A missing file, invalid JSON or a missing tag is a one-line :class:`UserError` (``hint``: how to make one).
    """
    path = Path(data_dir) / name
    if not path.is_file():
        raise UserError(f"{data_dir}: not a {kind} (no {name}; {hint})")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not JSON text (not UTF-8: byte {exc.start})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(description, dict) or description.get("format") != tag:
        raise UserError(f"{path}: not a {kind} description (format tag {tag!r} missing)")
    return description


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
