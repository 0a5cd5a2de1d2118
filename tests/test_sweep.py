"""dcollapse sweep: grids, resumable runs, failure isolation, summary files (tiny synthetic data, 2-epoch runs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from dcollapse import sweep
from dcollapse.cli.app import app
from dcollapse.data.synth import write_ctr_dataset
from dcollapse.errors import UserError

GRID = """
[base]
emb_dim = 4
dnn = [8]
epochs = 2
batch_size = 256
snapshot_rows = 200

[runs.fm-none]
model = "fm"

[runs.fm-parallel]
model = "fm"
arch = "parallel"
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "synth"
    write_ctr_dataset(path, rows=1500, fields=4, seed=0, vocab_sizes=[10, 20, 30, 40])
    return path


@pytest.fixture()
def grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def test_builtin_grids_expand_with_seeds():
    paper = sweep.plan(sweep.load_grid("paper"), seeds=3)
    assert len(paper) == 18 and len({s.name for s in paper}) == 18
    assert {(s.config["model"], s.config["arch"]) for s in paper} == {
        (m, a) for m in ("fm", "crossnet") for a in ("none", "parallel", "stacked")
    }
    assert sorted({s.seed for s in paper}) == [0, 1, 2]
    ablation = sweep.load_grid("ablation")
    # every ablation entry differs from its reference DNN in exactly one option
    for name, config in ablation.items():
        if name.count("-") == 2:
            reference = ablation[name.rsplit("-", 1)[0]]
            assert len([k for k in config if config[k] != reference.get(k)]) == 1, name
    assert ablation["crossnet-stacked-linear"]["activation"] == "identity"


def test_grid_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[runs.x]\nmodel = "nope"\n')
    with pytest.raises(UserError, match=r"bad.toml:2: runs.x.model must be one of .* not 'nope'$"):
        sweep.plan(sweep.load_grid(str(bad)), seeds=1)
    with pytest.raises(UserError, match="grid entry x: model must be one of"):
        sweep.plan({"x": {"model": "nope"}}, seeds=1)
    bad.write_text("[runz.x]\n")
    with pytest.raises(UserError, match="unknown top-level"):
        sweep.load_grid(str(bad))
    with pytest.raises(UserError, match="--grid must be one of"):
        sweep.load_grid("papers")


@pytest.mark.slow
def test_sweep_resumes_isolates_failures_and_writes_summary(data_dir, grid_file, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    cli = CliRunner()
    real_train = sweep.runner.train

    def failing_train(data, config, out, **kwargs):
        if config["arch"] == "parallel" and config["seed"] == 1:
            raise RuntimeError("boom\nsecond line")
        return real_train(data, config, out, **kwargs)

    monkeypatch.setattr(sweep.runner, "train", failing_train)
    monkeypatch.setattr(sweep.summary, "run_flags", lambda ok: {r["name"]: [] for r in ok})  # 2-epoch runs get flagged
    args = ["sweep", str(data_dir), "--grid", str(grid_file), "--seeds", "2", "--out", str(runs), "--threads", "1"]
    first = cli.invoke(app, args)
    assert first.exit_code == 1, first.output  # one run failed: the sweep finished the others, then exit 1
    assert "fm-parallel-s1" in first.output and "boom" in first.output
    for name in ("fm-none-s0", "fm-none-s1", "fm-parallel-s0"):
        assert (runs / f"{name}.json").is_file() and (runs / f"{name}.pt").is_file()
    assert not (runs / "fm-parallel-s1.json").exists()
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["ok"] == 3 and [f["name"] for f in summary["failed"]] == ["fm-parallel-s1"]
    assert "RuntimeError: boom" in summary["failed"][0]["error"]
    assert "fm-parallel-s1: RuntimeError: boom" in (runs / "summary.md").read_text()

    # Restart: finished runs are skipped (train is never called for them), the failed one is redone.
    calls = []

    def counting_train(data, config, out, **kwargs):
        calls.append(out.name)
        return real_train(data, config, out, **kwargs)

    monkeypatch.setattr(sweep.runner, "train", counting_train)
    second = cli.invoke(app, [*args, "--json"])
    assert second.exit_code == 0, second.output
    assert calls == ["fm-parallel-s1.pt"]
    printed = json.loads(second.stdout)
    summary = json.loads((runs / "summary.json").read_text())
    assert printed == summary and summary["ok"] == 4 and summary["failed"] == []

    # The summary aggregates the per-run results: mean and sample std over the two seeds, RankMe change paired by seed.
    results = {r: json.loads((runs / f"{r}.json").read_text()) for r in ("fm-none-s0", "fm-none-s1")}
    results |= {r: json.loads((runs / f"{r}.json").read_text()) for r in ("fm-parallel-s0", "fm-parallel-s1")}
    groups = {g["group"]: g for g in summary["groups"]}
    aucs = [results["fm-none-s0"]["auc"], results["fm-none-s1"]["auc"]]
    assert groups["fm-none"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert groups["fm-none"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    change = [results[f"fm-parallel-s{s}"]["rankme"] / results[f"fm-none-s{s}"]["rankme"] - 1 for s in (0, 1)]
    assert groups["fm-parallel"]["rankme_change"]["mean"] == pytest.approx(np.mean(change))
    assert groups["fm-none"]["rankme_change"]["mean"] is None
    for r in results.values():
        assert 1.0 <= r["rankme"] <= 4 * 4 and math.isfinite(r["logloss"]) and r["cov_spectrum"][0] == pytest.approx(1)
    assert (runs / "spectra-fm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (runs / "summary.md").read_text()
    assert md.count("\n| fm-") == 2 and " ± " in md


def test_changed_settings_are_refused_not_mixed(data_dir, grid_file, tmp_path):
    specs = sweep.plan(sweep.load_grid(str(grid_file)), seeds=1, overrides={"epochs": 1})
    runs = tmp_path / "runs"
    sweep.run_sweep(data_dir, specs[:1], runs)
    other = sweep.plan(sweep.load_grid(str(grid_file)), seeds=1, overrides={"epochs": 2})
    with pytest.raises(UserError, match="other settings"):
        sweep.run_sweep(data_dir, other[:1], runs)


def test_interrupted_run_resumes_from_its_checkpoint(data_dir, grid_file, tmp_path, monkeypatch):
    specs = sweep.plan(sweep.load_grid(str(grid_file)), seeds=1)[1:]  # fm-parallel-s0, 2 epochs

    def stop_after_first_epoch(spec, entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C stops the whole sweep, it is not a failed run
        sweep.run_sweep(data_dir, specs, tmp_path / "cut", on_epoch=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "fm-parallel-s0.json").exists()

    resumed_from = []
    real_train = sweep.runner.train

    def recording_train(data, config, out, **kwargs):
        resumed_from.append(len(kwargs["resume"]["history"]) if kwargs["resume"] else 0)
        return real_train(data, config, out, **kwargs)

    monkeypatch.setattr(sweep.runner, "train", recording_train)
    (resumed,) = sweep.run_sweep(data_dir, specs, tmp_path / "cut")
    (straight,) = sweep.run_sweep(data_dir, specs, tmp_path / "straight")
    assert resumed_from == [1, 0]
    assert resumed["auc"] == pytest.approx(straight["auc"], abs=1e-12)
    assert resumed["rankme"] == pytest.approx(straight["rankme"], rel=1e-9)
