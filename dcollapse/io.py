"""Atomic output: a crash or a bad input never leaves a half-written file or directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcollapse.errors import UserError


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
    if target.exists():
        if not overwrite:
            raise UserError(f"{target}: already exists (pass --overwrite to replace it)")
        if target.is_dir() != directory:
            found, wanted = ("a directory", "a file") if target.is_dir() else ("a file", "a directory")
            raise UserError(f"{target}: is {found}; the output here is {wanted} (choose another path)")
        if directory and replaces and any(target.iterdir()) and not (target / replaces).is_file():
            raise UserError(f"{target}: not an earlier output (no {replaces}); refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a one-line :class:`UserError` (``kind``: its role)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such {kind} file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def read_description(data_dir: str | Path, name: str, tag: str, kind: str, hint: str) -> dict[str, Any]:
    """The JSON object ``data_dir/name`` carrying ``"format": tag``, the description file of a ``kind`` directory.

    A missing file, invalid JSON or a missing tag is a one-line :class:`UserError` (``hint``: how to make one).
    """
    path = Path(data_dir) / name
    if not path.is_file():
        raise UserError(f"{data_dir}: not a {kind} (no {name}; {hint})")
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
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
