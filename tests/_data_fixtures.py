"""Small raw-data files for the preprocessing tests (written into a test's tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

CRITEO_COLUMNS = 40


def criteo_row(label: str = "0", ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    """One Criteo line: label, 13 integer columns, 26 categorical columns (empty string = missing)."""
    ints = (ints or []) + [""] * (13 - len(ints or []))
    cats = (cats or []) + [""] * (26 - len(cats or []))
    return "\t".join([label, *ints, *cats])


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def shared_data() -> Path | None:
    """The folder of real data samples (never part of the repository), or None when absent."""
    env = os.environ.get("DCOLLAPSE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
