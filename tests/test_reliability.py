"""Reliability: every class of bad input, OS error, signal and concurrent run ends in one line and the documented
exit code, with nothing left behind (docs/reliability.md lists the classes and the test of each)."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import typer
from _ctr_fixtures import make_meta, write_dataset
from _data_fixtures import criteo_row, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dcollapse import checkpoint, io
from dcollapse.cli import common, signals
from dcollapse.cli.app import app
from dcollapse.cli.launch import command_line
from dcollapse.data import scan
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.errors import UserError

runner = CliRunner()
TRAIN = ["--epochs", "1", "--emb-dim", "4", "--dnn", "8", "--batch-size", "256"]
SCRATCH = (".tmp", ".work", ".lock", ".old")


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def refused(result, *names: str, code: int = 2) -> str:
    """Assert one line on stderr naming each of ``names`` and exit ``code``, no traceback; return the line."""
    lines = lines_of(result.stderr)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary paths (temp files, scratch folders, locks, replaced outputs) in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(SCRATCH))


def criteo_file(path: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` Criteo lines with a few values per field (a planted label)."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(0, 50, (rows, 13)).astype(str)
    cats = np.char.add("c", rng.integers(0, 20, (rows, 26)).astype(str))
    labels = rng.integers(0, 2, rows).astype(str)
    return write_lines(path, [criteo_row(lab, list(i), list(c)) for lab, i, c in zip(labels, ints, cats, strict=True)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    write_dataset(directory, [6, 5, 4, 7], {"train": 300, "valid": 100, "test": 100})
    return directory


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """A checkpoint of one epoch on ``tiny`` (with a resume state)."""
    out = tmp_path_factory.mktemp("run") / "run.pt"
    result = runner.invoke(app, ["train", str(tiny), *TRAIN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def copy_dataset(tiny: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    return data


# ---------------------------------------------------------------------- class 1: the dataset directory is checked


def _set(path: tuple, value):
    def mutate(meta: dict) -> None:
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return mutate


def _pop(path: tuple):
    def mutate(meta: dict) -> None:
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj.pop(path[-1])

    return mutate


META_CASES = {
    "field without name": (_pop(("fields", 0, "name")), "fields[0].name"),
    "fields an object": (_set(("fields",), {"f0": 6}), "'fields'"),
    "splits a list": (_set(("splits",), ["train"]), "'splits'"),
    "vocab_size text": (_set(("fields", 1, "vocab_size"), "abc"), "fields[1].vocab_size"),
    "vocab_size 1e13": (_set(("fields", 0, "vocab_size"), 10**13), "fields[0].vocab_size"),
    "vocab_size float": (_set(("fields", 0, "vocab_size"), 6.0), "fields[0].vocab_size"),
    "vocab_size bool": (_set(("fields", 0, "vocab_size"), True), "fields[0].vocab_size"),
    "offset not running sum": (_set(("fields", 2, "offset"), 3), "fields[2].offset"),
    "duplicate field": (_set(("fields", 1, "name"), "f0"), "used twice"),
    "unknown kind": (_set(("fields", 0, "kind"), "weird"), "fields[0].kind"),
    "label column missing": (_set(("label",), "click"), "'click'"),
    "field not in parquet": (_set(("fields", 3, "name"), "zz"), "'zz'"),
    "split outside (..)": (_set(("splits", "train", "file"), "../other/train.parquet"), "splits.train.file"),
    "split absolute": (_set(("splits", "train", "file"), "/etc/passwd"), "splits.train.file"),
    "split ../../etc/passwd": (_set(("splits", "train", "file"), "../../etc/passwd"), "splits.train.file"),
    "rows differ": (_set(("splits", "valid", "rows"), 99), "valid.parquet"),
    "version 9": (_set(("version",), 9), "version"),
}


@pytest.mark.parametrize(
    "content, named",
    [(b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"\xff\xfe{}", "not UTF-8"), (b"{", "invalid JSON")],
    ids=["deeply nested", "not utf-8", "not json"],
)
def test_unparsable_meta_json_is_one_line(tiny, tmp_path, content, named):
    data = copy_dataset(tiny, tmp_path)
    (data / "meta.json").write_bytes(content)
    refused(runner.invoke(app, ["train", str(data), *TRAIN, "--out", str(tmp_path / "r.pt")]), "meta.json", named)
    config = tmp_path / "deep.toml"
    config.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="deep.toml: invalid TOML"):
        io.read_toml(config, "config")


@pytest.mark.parametrize("case", list(META_CASES), ids=list(META_CASES))
def test_bad_meta_json_is_one_line_naming_it(tiny, tmp_path, case):
    mutate, named = META_CASES[case]
    data = copy_dataset(tiny, tmp_path)
    meta = json.loads((data / "meta.json").read_text())
    mutate(meta)
    (data / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "runs" / "run.pt"
    line = refused(runner.invoke(app, ["train", str(data), *TRAIN, "--out", str(out)]), named)
    assert str(data) in line
    assert not out.exists() and leftovers(out.parent) == []


def _labels(value: int):
    return lambda f: f.with_columns(pl.lit(value, dtype=pl.Int8).alias("label"))


SPLIT_CASES = {
    "labels outside {0,1} (train)": ("train", _labels(7), "label 7"),
    "labels outside {0,1} (valid)": ("valid", _labels(-1), "label -1"),
    "missing label": ("train", lambda f: f.with_columns(pl.lit(None, dtype=pl.Int8).alias("label")), "missing"),
    "id beyond vocab": ("train", lambda f: f.with_columns(pl.lit(6, dtype=pl.Int32).alias("f0")), "'f0'"),
    "negative id": ("valid", lambda f: f.with_columns(pl.lit(-3, dtype=pl.Int32).alias("f2")), "'f2'"),
    "text ids": ("train", lambda f: f.with_columns(pl.col("f1").cast(pl.String)), "'f1'"),
    "float ids": ("train", lambda f: f.with_columns(pl.col("f1").cast(pl.Float64)), "'f1'"),
    "column dropped": ("test", lambda f: f.drop("f3"), "'f3'"),
    "truncated file": ("train", b"truncate", "not a readable Parquet"),
    "garbage file": ("valid", b"garbage!" * 40, "not a readable Parquet"),
    "empty file": ("train", b"", "not a readable Parquet"),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES), ids=list(SPLIT_CASES))
def test_bad_split_file_is_one_line_naming_it(tiny, tmp_path, case):
    split, change, named = SPLIT_CASES[case]
    data = copy_dataset(tiny, tmp_path)
    path = data / f"{split}.parquet"
    if change == b"truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif isinstance(change, bytes):
        path.write_bytes(change)
    else:
        change(pl.read_parquet(path)).write_parquet(path)
    out = tmp_path / "run.pt"
    line = refused(runner.invoke(app, ["train", str(data), *TRAIN, "--out", str(out)]), named)
    assert path.name in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_streamed_train_chunks_are_checked_too(tiny, tmp_path):
    data = copy_dataset(tiny, tmp_path)
    path = data / "train.parquet"
    frame = pl.read_parquet(path)
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 250).then(2).otherwise(pl.col("label")).alias("label")
                       ).write_parquet(path)  # fmt: skip
    result = runner.invoke(app, ["train", str(data), *TRAIN, "--chunk-rows", "100", "--out", str(tmp_path / "r.pt")])
    assert "row 250" in refused(result, "train.parquet", "label 2")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
KEYS = [("label",), ("fields",), ("splits",), ("version",), ("input_hash",), ("fields", 0), ("fields", 1, "name"),
        ("fields", 0, "vocab_size"), ("fields", 1, "offset"), ("fields", 2, "kind"), ("splits", "train"),
        ("splits", "valid", "file"), ("splits", "train", "rows"), ("splits", "test", "positives")]  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=JSON)
def test_fuzzed_meta_json_is_accepted_whole_or_refused_in_one_line(tiny, tmp_path_factory, key, value):
    """Any JSON value at any key of a valid meta.json: opening the dataset and loading every split either works
    (and then gives ids inside the vocabulary) or raises UserError naming the directory; never another error."""
    data = tmp_path_factory.mktemp("fuzz")
    for name in ("train", "valid", "test"):
        os.link(tiny / f"{name}.parquet", data / f"{name}.parquet")
    meta = json.loads((tiny / "meta.json").read_text())
    _set(key, value)(meta)
    (data / "meta.json").write_text(json.dumps(meta))
    try:
        opened = load_meta(data)
        for name in opened["splits"]:
            split = load_split(data, name, opened)
            vocab = torch.tensor([f["vocab_size"] for f in opened["fields"]])
            assert bool(((split.ids >= 0) & (split.ids < vocab)).all())
            assert set(split.labels.unique().tolist()) <= {0.0, 1.0}
    except UserError as exc:
        assert str(data) in str(exc) and "\n" not in str(exc)


# -------------------------------------------------------------------- class 3: OS errors on outputs, one boundary


def test_outputs_below_a_file_or_onto_a_directory_are_one_line(tiny, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    raw = criteo_file(tmp_path / "raw.txt", 50)
    cases = [
        (["preprocess", str(raw), "--format", "criteo", "--out", str(blocker / "ds")], "file.txt"),
        (["train", str(tiny), *TRAIN, "--out", str(blocker / "run.pt")], "file.txt"),
        (["train", str(tiny), *TRAIN, "--out", str(tmp_path / "adir")], "adir"),
    ]
    (tmp_path / "adir").mkdir()
    for args, named in cases:
        refused(runner.invoke(app, args), named)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "file.txt", "raw.txt"]
    assert not any((tmp_path / "adir").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_the_job(tiny, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(runner.invoke(app, ["train", str(tiny), *TRAIN, "--out", str(locked / "run.pt")]), "run.pt")
    finally:
        locked.chmod(0o755)


def test_any_os_error_reaching_the_boundary_is_path_and_reason(capsys):
    @common.handles_errors
    def command() -> None:
        raise PermissionError(13, "Permission denied", "/some/where[/]odd")

    with pytest.raises(typer.Exit) as stop:
        command()
    assert stop.value.exit_code == 2
    assert lines_of(capsys.readouterr().err) == ["error: /some/where[/]odd: Permission denied"]
    assert common.os_error_line(OSError(18, "Invalid cross-device link", "a", None, "b")) == (
        "a -> b: Invalid cross-device link"
    )


# ------------------------------------------------------------------------------ class 4: signals, FIFO input


def run_cli(args: list[str], cwd: Path, signal_after: float | None = None, sig: int = signal.SIGINT):
    """Run ``python -m dcollapse ARGS`` in ``cwd``; optionally send ``sig`` after ``signal_after`` seconds.
    Returns (exit code, stderr lines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "dcollapse", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, lines_of(stderr)


def assert_interrupted_or_done(code: int, lines: list[str], out: Path, done) -> None:
    """Exit 130 with one 'interrupted' line and no output, or (the signal came after the end) a finished output.
    A signal that lands before the interpreter has installed its handlers or after it has removed them (its first
    and last instants) kills it silently (a negative return code; a shell shows 128 + signal)."""
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    if code == 0:
        assert done(out)
    elif code < 0:  # the interpreter's first or last instants: no output or a complete one
        assert code in (-signal.SIGINT, -signal.SIGTERM) and lines in ([], ["interrupted"]), (code, lines)
        assert not out.exists() or done(out)
    else:
        assert code == 130 and len([ln for ln in lines if not ln.startswith("epoch")]) == 1, (code, lines)
        assert lines[-1].startswith("interrupted")
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_sigint_and_sigterm_at_random_times_during_preprocess(tmp_path):
    raw = criteo_file(tmp_path / "raw.txt", 40_000)
    rng = random.Random(17)  # times from the start of Python (imports: about the first 2 s) to the end of the job
    for k, (sig, after) in enumerate([(signal.SIGINT, rng.uniform(0.05, 3.0)) for _ in range(2)]
                                     + [(signal.SIGTERM, rng.uniform(0.05, 3.0)) for _ in range(2)]):  # fmt: skip
        out = tmp_path / f"ds{k}"
        code, lines = run_cli(["preprocess", "raw.txt", "--format", "criteo", "--out", out.name], tmp_path, after, sig)
        assert_interrupted_or_done(code, lines, out, lambda o: (o / "meta.json").is_file())
        if code == 130:
            assert not out.exists()
    assert raw.exists()


@pytest.mark.slow
def test_sigint_at_random_times_in_the_first_seconds_of_train(tiny, tmp_path):
    rng = random.Random(5)
    for k in range(3):
        out = tmp_path / f"run{k}.pt"
        args = ["train", str(tiny), *TRAIN, "--epochs", "30", "--patience", "0", "--out", out.name]
        code, lines = run_cli(args, tmp_path, rng.uniform(0.05, 4.0))
        assert_interrupted_or_done(code, lines, out, lambda o: checkpoint.load(o)["history"])
        if out.exists():  # interrupted after an epoch: the last good checkpoint, loadable
            assert checkpoint.load(out)["history"]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread only")
def test_signal_handlers_switch_around_a_command(capsys):
    """Quick exit before and after the command; KeyboardInterrupt for both signals inside it (nested too)."""
    previous = signals.starting()
    try:
        assert signal.getsignal(signal.SIGINT) is signals.exit_at_once

        @common.handles_errors
        def inner() -> None:
            assert signal.getsignal(signal.SIGTERM) is signals.interrupt

        @common.handles_errors
        def command() -> None:
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            inner()
            assert signal.getsignal(signal.SIGTERM) is signals.interrupt  # still inside the outer command
            raise KeyboardInterrupt

        with pytest.raises(typer.Exit) as stop:
            command()
        assert stop.value.exit_code == 130 and lines_of(capsys.readouterr().err) == ["interrupted"]
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is signals.exit_at_once
    finally:
        signals.restore(previous)


def test_fifo_and_devices_as_input_are_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for source in (fifo, Path("/dev/null")):
        result = runner.invoke(app, ["preprocess", str(source), "--format", "criteo", "--out", str(tmp_path / "ds")])
        refused(result, str(source), "not a regular file")
    assert leftovers(tmp_path) == [] and not (tmp_path / "ds").exists()


# ----------------------------------------------------------------------- class 5: concurrent and crashed writers


def test_a_second_writer_of_the_same_output_is_refused(tiny, tmp_path):
    out = tmp_path / "run.pt"
    raw = criteo_file(tmp_path / "raw.txt", 50)
    with io.output_lock(out), io.output_lock(tmp_path / "ds"):
        refused(runner.invoke(app, ["train", str(tiny), *TRAIN, "--out", str(out)]), "run.pt", "another run")
        result = runner.invoke(app, ["preprocess", str(raw), "--format", "criteo", "--out", str(tmp_path / "ds")])
        refused(result, "ds", "another run")
    assert not out.exists() and not (tmp_path / "ds").exists()
    assert leftovers(tmp_path) == []  # the lock files went with the locks
    assert runner.invoke(app, ["train", str(tiny), *TRAIN, "--out", str(out)]).exit_code == 0


@pytest.mark.slow
def test_two_trainings_started_together_on_one_out_one_is_refused(tiny, tmp_path):
    args = [sys.executable, "-m", "dcollapse", "train", str(tiny), *TRAIN, "--out", "run.pt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # Both may succeed only one after the other; then the second found the first's checkpoint and refused it.
    assert codes == [0, 2], results
    assert any("another run" in err or "already exists" in err for _, err in results)
    assert checkpoint.load(tmp_path / "run.pt")["history"] and leftovers(tmp_path) == []


def test_an_interrupted_overwrite_is_recovered_and_said(tmp_path):
    raw = criteo_file(tmp_path / "raw.txt", 80)
    out = tmp_path / "ds"
    args = ["preprocess", str(raw), "--format", "criteo", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    old = tmp_path / ".ds.old"
    out.rename(old)  # the crash: the old output moved aside, the new one not yet in place
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2 and "already exists" in result.stderr  # restored first, so not silently redone
    assert "restored" in result.stderr and (out / "meta.json").is_file() and not old.exists()
    shutil.copytree(out, old)  # a leftover beside a good output: removed and said
    result = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert result.exit_code == 0 and "removed" in result.stderr and leftovers(tmp_path) == []


# ------------------------------------------------------------------------ class 6: odd but plausible input


@pytest.mark.parametrize("packer", ["gzip", "zstd-magic", "bzip2-magic"])
def test_compressed_input_is_detected_by_its_bytes_and_refused(tmp_path, packer):
    raw = criteo_file(tmp_path / "raw.txt", 40).read_bytes()
    packed = tmp_path / "train.txt"  # the name says nothing
    magic = {"gzip": None, "zstd-magic": b"\x28\xb5\x2f\xfd", "bzip2-magic": b"BZh9"}[packer]
    packed.write_bytes(gzip.compress(raw) if magic is None else magic + raw)
    result = runner.invoke(app, ["preprocess", str(packed), "--format", "criteo", "--out", str(tmp_path / "ds")])
    refused(result, "train.txt", f"{packer.split('-')[0]}-compressed")
    assert not (tmp_path / "ds").exists() and leftovers(tmp_path) == []


def test_min_count_beyond_int64_is_refused(tmp_path):
    raw = criteo_file(tmp_path / "raw.txt", 40)
    for value in (str(10**30), "0"):
        result = runner.invoke(app, ["preprocess", str(raw), "--format", "criteo", "--out", str(tmp_path / "ds"),
                                     "--min-count", value])  # fmt: skip
        refused(result, "--min-count")
    assert leftovers(tmp_path) == [] and not (tmp_path / "ds").exists()


CKPT_CASES = {
    "resume a string": (("resume",), "garbage"),
    "resume weights a string": (("resume", "state_dict"), "x"),
    "resume optimizer a number": (("resume", "optimizer"), 5),
    "resume optimizer groups wrong": (("resume", "optimizer", "param_groups"), [{"params": [0]}]),
    "resume progress wrong keys": (("resume", "progress"), {"epoch": "a"}),
    "resume best_auc NaN": (("resume", "progress", "best_auc"), math.nan),
    "resume weight shape": (("resume", "state_dict", "embedding.table"), torch.zeros(3)),
    "weights NaN": (("state_dict", "embedding.table"), torch.full((22, 4), math.nan)),
    "weights a string": (("state_dict",), "abc"),
    "config a string": (("config",), "abc"),
    "emb_dim 1e12": (("config", "emb_dim"), 10**12),
    "meta vocab 1e13": (("meta", "fields", 0, "vocab_size"), 10**13),
    "history entry wrong": (("history",), [{"epoch": "x"}]),
    "data a string": (("data",), "x"),
    "best_epoch beyond history": (("best_epoch",), 99),
}


@pytest.mark.parametrize("case", list(CKPT_CASES), ids=list(CKPT_CASES))
def test_damaged_checkpoint_contents_are_one_line_naming_it(trained, tmp_path, case):
    path, value = CKPT_CASES[case]
    ckpt = torch.load(trained, weights_only=True)
    if path[-1] == "embedding.table" and path[0] == "state_dict":
        value = torch.full_like(ckpt["state_dict"]["embedding.table"], math.nan)
    _set(path, value)(ckpt)
    bad = tmp_path / "bad[/]run.pt"  # Rich markup in the path: printed as it is (class 7)
    bad.parent.mkdir()
    torch.save(ckpt, bad)
    result = runner.invoke(app, ["train", "--resume", str(bad), "--epochs", "2", "--out", str(tmp_path / "n.pt")])
    line = refused(result)
    assert str(bad) in line or "--resume" in line
    if "optimizer" not in case:
        assert str(bad) in refused(runner.invoke(app, ["eval", str(bad)]))
    assert not (tmp_path / "n.pt").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------- class 7: the printer


def test_user_text_is_printed_verbatim_never_as_markup(tmp_path):
    for name in ("a[/]b.txt", "[bold]x.txt", "[red]y[/red]"):
        result = runner.invoke(app, ["preprocess", str(tmp_path / name), "--format", "criteo", "--out",
                                     str(tmp_path / "ds")])  # fmt: skip
        refused(result, name, "no such file")
    data = tmp_path / "d[/]ata"
    data.mkdir(parents=True)
    refused(runner.invoke(app, ["train", str(data), *TRAIN, "--out", str(tmp_path / "r.pt")]), "d[/]ata")


# ------------------------------------------------------------------------------ class 8: NaN gates, finite values
# The report gates refuse a bound that is not a finite number in the library (dcollapse.reports.Gates), for the
# CLI and Python alike: tests/test_report_library.py::test_gates_refuse_bounds_that_are_not_finite_numbers.


# -------------------------------------------------------------------------- class 9: leftovers of killed runs


def test_stale_scratch_of_killed_runs_is_removed_and_nothing_else(tiny, tmp_path):
    host, dead = socket.gethostname(), 2**22 + 12345  # above Linux's largest pid: never a live process
    raw = criteo_file(tmp_path / "raw.txt", 60)
    stale = [tmp_path / f".ds.{host}-{dead}.ab12.work", tmp_path / f".run.pt.{host}-{dead}.x9.tmp"]
    kept = [tmp_path / f".ds.{host}-{os.getpid()}.live.work",  # a live process (this one) owns it
            tmp_path / f".ds.otherhost-{dead}.cd34.work",  # another host's: its liveness is unknown here
            tmp_path / ".ds.unrelated.work", tmp_path / ".notes.tmp"]  # fmt: skip
    for path in stale + kept:
        path.mkdir() if path.suffix == ".work" else path.write_bytes(b"partial")
    (stale[0] / "rows.parquet").write_bytes(b"x" * 1000)
    result = runner.invoke(app, ["preprocess", str(raw), "--format", "criteo", "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0 and "removed 1 temporary" in result.stderr
    assert runner.invoke(app, ["train", str(tiny), *TRAIN, "--out", str(tmp_path / "run.pt")]).exit_code == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_temporary_paths_name_their_process(tmp_path):
    target = tmp_path / "out.pt"
    with io.atomic_path(target) as tmp:
        assert tmp.name.startswith(f".out.pt.{socket.gethostname()}-{os.getpid()}.") and tmp.suffix == ".tmp"
        assert io.remove_stale(target) == []  # ours, and alive
        tmp.write_text("x")
    assert target.read_text() == "x" and leftovers(tmp_path) == []


# ------------------------------------------------------------------------- class 10: relaunch option injection


def test_relaunched_command_line_keeps_paths_that_look_like_options():
    command = typer.main.get_command(app)
    train = command.get_command(None, "train")
    root = typer.Context(command, info_name="dcollapse")
    args = ["--epochs", "3", "--out", "--x.pt", "--nproc", "2", "--", "--epochs=1"]
    ctx = train.make_context("train", list(args), parent=root)
    line = command_line(ctx)
    assert line[0] == "train" and line[-2:] == ["--", "--epochs=1"] and "--out=--x.pt" in line
    again = train.make_context("train", line[1:], parent=root)
    assert again.params["data_dir"] == Path("--epochs=1") and again.params["out_path"] == Path("--x.pt")
    assert {k: v for k, v in again.params.items() if k != "nproc"} == {
        k: v for k, v in ctx.params.items() if k != "nproc"
    }


# ------------------------------------------------------------------------------ class 11: messages that mislead


def test_a_byte_that_is_not_utf8_is_located(tmp_path):
    raw = criteo_file(tmp_path / "raw.txt", 40)
    lines = raw.read_bytes().split(b"\n")
    lines[30] = lines[30].replace(b"\tc", b"\tc\xff", 1)
    raw.write_bytes(b"\n".join(lines))
    result = runner.invoke(app, ["preprocess", str(raw), "--format", "criteo", "--out", str(tmp_path / "ds")])
    assert "line 31, byte" in refused(result, "raw.txt", "0xff")
    for block in (1, 7, 1 << 24):  # a character cut by a block's end is not an error; the column counts bytes
        (tmp_path / "t.txt").write_bytes("héllo\nwörld\n".encode() + b"x\xffy\n")
        assert scan.bad_utf8(tmp_path / "t.txt", block) == "line 3, byte 2: 0xff is not UTF-8 text (save it as UTF-8)"


def test_messages_say_what_happened(tmp_path):
    with pytest.raises(UserError, match=r"out/ds: cannot write \(.*No space left on device"):
        scan.polars_job(lambda: pl.LazyFrame({"a": [1]}).sink_parquet("/dev/full"), [], writing=Path("out/ds"))
    raw = criteo_file(tmp_path / "raw.txt", 10)
    with pytest.raises(UserError, match="raw.txt: cannot read"):  # no output was being written: the input's fault
        scan.polars_job(lambda: pl.read_parquet(raw), [raw])
    meta = make_meta([3, 4], {"train": 5})
    meta["splits"]["train"]["file"] = "sub"
    (tmp_path / "sub").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="sub: a folder, not a split file"):
        load_meta(tmp_path)
