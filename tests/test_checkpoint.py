"""Any file that is not a dcollapse checkpoint is refused with one UserError line, never a traceback."""

import io

import pytest
import torch
from _ctr_fixtures import make_meta
from hypothesis import given, settings
from hypothesis import strategies as st

from dcollapse import checkpoint
from dcollapse.errors import UserError


def valid_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": {}, "meta": {}, "state_dict": {},
                "history": []}, buffer)  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello\n", b"\x80\x02}q\x00.", valid_bytes()[:200], b"PK\x03\x04" + b"\x00" * 64],
    ids=["empty", "text", "legacy-pickle-dict", "truncated", "zip-header"],
)
def test_junk_is_a_user_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="junk.pt"):
        checkpoint.load(path)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError):
        checkpoint.load(path)


def test_round_trip(tmp_path):
    path = tmp_path / "run.pt"
    meta = make_meta([3, 4], {"train": 1})
    checkpoint.save(path, {"config": {"model": "fm"}, "meta": meta, "state_dict": {"w": torch.ones(2)}, "history": []})
    loaded = checkpoint.load(path)
    assert loaded["format"] == checkpoint.FORMAT and loaded["config"] == {"model": "fm"}
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="is a directory, not a checkpoint file"):
        checkpoint.load(tmp_path)
