"""Atomic outputs: a failure never leaves a half-written file or directory, and never harms what was there."""

import os
import stat

import pytest

from dcollapse.errors import UserError
from dcollapse.io import atomic_path


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_directory_is_replaced_whole_on_success(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "stale.parquet").write_text("stale")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_existing_target_without_overwrite(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(UserError, match="already exists"), atomic_path(target, directory=True, overwrite=False):
        pass


def test_outputs_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", directory=True):
            pass
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_never_replaces_an_unrelated_directory_or_the_wrong_kind_of_path(tmp_path):
    notes = tmp_path / "important"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier output"), atomic_path(notes, directory=True, replaces="m.json"):
        pass
    assert (notes / "notes.txt").read_text() == "keep me"
    data_file = tmp_path / "in.csv"
    data_file.write_text("a,b\n")
    with pytest.raises(UserError, match="is a file"), atomic_path(data_file, directory=True):
        pass
    with pytest.raises(UserError, match="is a directory"), atomic_path(notes):
        pass
    assert data_file.read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir()) == ["important", "in.csv"]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "m.json").write_text("{}")
    with atomic_path(earlier, directory=True, replaces="m.json") as tmp:
        (tmp / "m.json").write_text('{"new": 1}')
    assert (earlier / "m.json").read_text() == '{"new": 1}'
