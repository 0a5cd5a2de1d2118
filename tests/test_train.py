"""Training: Bayes-optimal AUC on planted data, checkpoints, resume, early stopping, determinism, the CLI."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from _ctr_fixtures import untimed, write_dataset, write_tiny
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder
from typer.testing import CliRunner

import dcollapse.train as training
from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.data.synth import write_ctr_dataset
from dcollapse.errors import UserError
from dcollapse.models import load_model

runner = CliRunner()
SMALL = {"model": "fm", "arch": "parallel", "emb_dim": 4, "dnn": [16, 8], "batch_size": 256, "lr": 0.01}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
def test_fm_and_deepfm_reach_bayes_auc_on_planted_pairwise_data(tmp_path):
    kw = {"vocab_sizes": [8] * 5, "rank": 2, "first_order_scale": 0.5, "pairwise_scale": 2.0, "zipf": 0.5}
    probs = write_ctr_dataset(tmp_path / "d", 30_000, 5, 3, **kw)
    test = pl.read_parquet(tmp_path / "d" / "test.parquet")
    labels = test["label"].to_numpy()
    bayes = roc_auc_score(labels, probs["test"])

    train = pl.read_parquet(tmp_path / "d" / "train.parquet")
    columns = [c for c in train.columns if c != "label"]
    onehot = OneHotEncoder(handle_unknown="ignore").fit(train[columns].to_numpy())
    first_order = LogisticRegression(max_iter=500).fit(onehot.transform(train[columns].to_numpy()), train["label"])
    first_order_auc = roc_auc_score(labels, first_order.predict_proba(onehot.transform(test[columns].to_numpy()))[:, 1])

    for arch in ("none", "parallel"):
        config = {**SMALL, "arch": arch, "dnn": [32, 32], "batch_size": 512, "epochs": 4, "patience": 0}
        result = training.train(tmp_path / "d", config, tmp_path / f"{arch}.pt")
        assert result["test"]["auc"] > bayes - 0.02, (arch, result["test"], bayes)
        assert result["test"]["auc"] > first_order_auc + 0.1, (arch, result["test"], first_order_auc)


def test_checkpoint_holds_the_contract_and_the_best_model(tiny, tmp_path):
    out = tmp_path / "run.pt"
    result = training.train(tiny, {**SMALL, "epochs": 3, "patience": 0}, out)
    ckpt = checkpoint.load(out)
    assert ckpt["format"] == "dcollapse.checkpoint" and ckpt["kind"] == "ctr"
    assert ckpt["data"] == {"path": str(tiny.resolve()), "hash": "test-hash"}
    assert ckpt["meta"] == load_meta(tiny) and ckpt["config"]["model"] == "fm"
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3]
    entry = ckpt["history"][0]
    assert set(entry) == {
        "epoch", "train_loss", "valid_auc", "valid_logloss", "seconds", "samples_per_s", "rankme", "field_ia", "mean_ia"
    }  # fmt: skip
    assert len(entry["field_ia"]) == 4 and all(1.0 <= ia <= 4.0 + 1e-9 for ia in entry["field_ia"])
    assert math.isclose(entry["mean_ia"], float(np.mean(entry["field_ia"])))
    aucs = [h["valid_auc"] for h in ckpt["history"]]
    assert ckpt["best_epoch"] == int(np.argmax(aucs)) + 1

    model = load_model(ckpt)
    valid = load_split(tiny, "valid")
    probs = torch.sigmoid(model(valid.ids).double()).detach().numpy()
    assert math.isclose(roc_auc_score(valid.labels.numpy(), probs), max(aucs), rel_tol=1e-9)
    test = load_split(tiny, "test")
    probs = torch.sigmoid(model(test.ids).double()).detach().numpy()
    assert math.isclose(roc_auc_score(test.labels.numpy(), probs), result["test"]["auc"], rel_tol=1e-9)
    # RankMe is that of the flattened embeddings of the whole (small) validation split
    z = model.embed(valid.ids).flatten(1).detach().double()
    s = torch.linalg.svdvals(z)
    p = s / s.sum() + 1e-7
    best_entry = ckpt["history"][ckpt["best_epoch"] - 1]
    assert math.isclose(best_entry["rankme"], float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-6)
    table = ckpt["state_dict"]["embedding.table"].double().numpy()
    starts = [f["offset"] for f in ckpt["meta"]["fields"]] + [len(table)]
    for f, ia in enumerate(best_entry["field_ia"]):
        s = np.linalg.svd(table[starts[f] : starts[f + 1]], compute_uv=False)
        assert math.isclose(ia, s.sum() / s.max(), rel_tol=1e-6)


def test_same_seed_same_run_and_other_seed_differs(tiny, tmp_path):
    config = {**SMALL, "epochs": 2, "dropout": 0.3, "patience": 0}
    a = training.train(tiny, config, tmp_path / "a.pt")
    b = training.train(tiny, config, tmp_path / "b.pt")
    c = training.train(tiny, {**config, "seed": 1}, tmp_path / "c.pt")
    assert untimed(a["history"]) == untimed(b["history"])
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert untimed(a["history"]) != untimed(c["history"])


def test_resume_ends_like_an_uninterrupted_run(tiny, tmp_path):
    config = {**SMALL, "epochs": 4, "dropout": 0.2, "patience": 0}
    full = training.train(tiny, config, tmp_path / "full.pt")
    training.train(tiny, {**config, "epochs": 2}, tmp_path / "part.pt")
    part = checkpoint.load(tmp_path / "part.pt")
    resumed = training.train(tiny, {**part["config"], "epochs": 4}, tmp_path / "part.pt", resume=part)
    assert untimed(resumed["history"]) == untimed(full["history"])
    assert_same_weights(resumed["state_dict"], full["state_dict"])
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    rng = np.random.default_rng(0)
    write_dataset(tmp_path / "noise", [20, 20, 20], {"train": 1000, "valid": 400})
    for split in ("train", "valid"):  # labels independent of the features: validation AUC cannot keep improving
        path = tmp_path / "noise" / f"{split}.parquet"
        frame = pl.read_parquet(path)
        frame.with_columns(label=pl.Series(rng.integers(0, 2, len(frame)).astype(np.int8))).write_parquet(path)
    result = training.train(tmp_path / "noise", {**SMALL, "epochs": 30, "patience": 2}, tmp_path / "n.pt")
    aucs = [h["valid_auc"] for h in result["history"]]
    assert len(aucs) < 30 and result["test"] is None
    best = int(np.argmax(aucs))
    assert result["best_epoch"] == best + 1 and len(aucs) == best + 1 + 2
    assert all(aucs[i] > max(aucs[:i]) for i in [best] if i > 0)


def test_streamed_chunks_visit_every_training_row_once_per_epoch(tiny, tmp_path, monkeypatch):
    seen = []
    original = training.train_step

    def recording(model, optimizer, ids, labels):
        seen.append(torch.cat([ids, labels[:, None].int()], dim=1))
        return original(model, optimizer, ids, labels)

    monkeypatch.setattr(training, "train_step", recording)
    config = {**SMALL, "epochs": 2, "patience": 0, "chunk_rows": 400}
    streamed = training.train(tiny, config, tmp_path / "s.pt")
    train = load_split(tiny, "train")
    expected = torch.cat([train.ids, train.labels[:, None].int()], dim=1)
    rows = torch.cat(seen)
    assert len(rows) == 2 * len(train)
    for epoch_rows in (rows[: len(train)], rows[len(train) :]):
        assert sorted(map(tuple, epoch_rows.tolist())) == sorted(map(tuple, expected.tolist()))
    assert not torch.equal(rows[: len(train)], rows[len(train) :])  # reshuffled
    assert streamed["history"][-1]["valid_auc"] > 0.55  # it learns


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run.pt"
    original = training.train_step
    calls = {"n": 0}

    def poisoned(model, optimizer, ids, labels):
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 2, step 2 (6 steps per epoch)
            with torch.no_grad():
                model.embedding.table.fill_(float("nan"))
        return original(model, optimizer, ids, labels)

    monkeypatch.setattr(training, "train_step", poisoned)
    with pytest.raises(UserError, match=r"epoch 2, step 2; .*run.pt keeps epoch 1"):
        training.train(tiny, {**SMALL, "epochs": 3}, out)
    ckpt = checkpoint.load(out)
    assert len(ckpt["history"]) == 1 and torch.isfinite(ckpt["state_dict"]["embedding.table"]).all()


def test_finite_explosion_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run.pt"
    original = training.train_step
    calls = {"n": 0}

    def exploding(*args):
        calls["n"] += 1
        loss = original(*args)
        return 1e6 if calls["n"] == 9 else loss  # epoch 2, step 3: finite but far above the start

    monkeypatch.setattr(training, "train_step", exploding)
    message = r"rose to 1e\+06, over 100x its starting value 0\.\d+, at epoch 2, step 3"
    with pytest.raises(training.Diverged, match=message):
        training.train(tiny, {**SMALL, "epochs": 3}, out)
    assert len(checkpoint.load(out)["history"]) == 1


def test_cli_lr_1e9_stops_with_one_line_and_no_checkpoint(tiny, tmp_path):
    out = tmp_path / "run.pt"
    result = runner.invoke(app, ["train", str(tiny), "--emb-dim", "4", "--lr", "1e9", "--out", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert re.search(r"training loss (became inf|became nan|rose to .*) at epoch 1, step \d+", result.stderr)
    assert "no checkpoint was written" in result.stderr and not out.exists()


def test_loss_guard_limit_is_100x_the_first_loss_and_never_below_100_ln2():
    guard = training.LossGuard()
    guard.check(0.5, 1, 1)  # the start: limit 100 * ln 2 (a start below ln 2 counts as ln 2)
    guard.check(100 * math.log(2) - 1e-9, 1, 2)
    with pytest.raises(training.Diverged, match="at epoch 3, step 7; try a smaller lr"):
        guard.check(100 * math.log(2) + 1e-9, 3, 7)
    high = training.LossGuard()
    high.check(2.0, 1, 1)
    high.check(199.0, 1, 2)
    with pytest.raises(training.Diverged, match="became inf at epoch 1, step 3"):
        high.check(math.inf, 1, 3)
    with pytest.raises(training.Diverged):
        high.check(201.0, 1, 4)


def test_a_model_too_large_for_memory_is_refused_before_allocation(tiny, tmp_path):
    config = {**SMALL, "dnn": [1_000_000, 1_000_000], "epochs": 1}  # 1e12 weights: 16 TB to train
    with pytest.raises(UserError, match=r"the model has 1e\+12 parameters, .* GiB of cpu memory here; use a smaller"):
        training.train(tiny, config, tmp_path / "big.pt")
    assert not (tmp_path / "big.pt").exists()


def test_default_threads_follow_omp_then_the_idle_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert training.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(training.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert training.default_threads() == 8 and training.default_threads(processes=4) == 2
    monkeypatch.setattr(training.os, "getloadavg", lambda: (5.4, 0.0, 0.0))
    assert training.default_threads() == 3 and training.default_threads(processes=4) == 1
    monkeypatch.setattr(training.os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert training.default_threads() == 1


def test_cli_threads_option_and_default(tiny, tmp_path, monkeypatch):
    set_to: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(training, "default_threads", lambda processes=1: 5)
    args = ["train", str(tiny), "--emb-dim", "4", "--epochs", "1"]
    assert runner.invoke(app, [*args, "--threads", "1", "--out", str(tmp_path / "a.pt")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b.pt")]).exit_code == 0
    assert set_to == [1, 5]


def test_cli_resume_keeps_save_every_epoch(tiny, tmp_path):
    out = tmp_path / "run.pt"
    args = ["train", str(tiny), "--emb-dim", "4", "--epochs", "1", "--save-every-epoch", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(tmp_path / "run.epoch2.pt")["epoch"] == 2
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "3", "--no-save-every-epoch"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run.epoch3.pt").exists() and len(checkpoint.load(out)["history"]) == 3


def test_resume_keeps_the_tensorboard_directory(tiny, tmp_path, monkeypatch):
    boards: list[str] = []

    class Board:
        def __init__(self, directory, fields):
            boards.append(str(directory))

        def log_epoch(self, entry, model, ids):
            pass

        def close(self):
            pass

    monkeypatch.setattr(training, "TrainingBoard", Board)
    out = tmp_path / "run.pt"
    training.train(tiny, {**SMALL, "epochs": 1}, out, tensorboard=tmp_path / "tb")
    training.train(tiny, {**SMALL, "epochs": 2}, out, resume=checkpoint.load(out))
    training.train(tiny, {**SMALL, "epochs": 3}, out, resume=checkpoint.load(out), tensorboard=tmp_path / "tb2")
    assert boards == [str(tmp_path / "tb"), str(tmp_path / "tb"), str(tmp_path / "tb2")]


def test_cli_train_config_file_eval_and_epoch_snapshots(tiny, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "dot"\narch = "stacked"\ndnn = [8]\nemb-dim = 3\nepochs = 5\nbatch_size = 512\n')
    out = tmp_path / "run.pt"
    args = ["train", str(tiny), "--config", str(toml), "--epochs", "2", "--out", str(out), "--save-every-epoch"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ckpt = checkpoint.load(out)
    assert ckpt["config"]["model"] == "dot" and ckpt["config"]["emb_dim"] == 3 and ckpt["config"]["epochs"] == 2
    assert len(ckpt["history"]) == 2
    for epoch in (1, 2):
        snap = checkpoint.load(tmp_path / f"run.epoch{epoch}.pt")
        assert snap["epoch"] == epoch and len(snap["history"]) == epoch

    result = runner.invoke(app, ["eval", str(out), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 500 and math.isclose(report["auc"], ckpt["test"]["auc"], rel_tol=1e-9)
    result = runner.invoke(app, ["eval", str(out), str(tiny), "--split", "valid"])
    assert result.exit_code == 0 and "AUC" in result.stdout


def test_cli_resume_continues_the_run(tiny, tmp_path):
    out = tmp_path / "run.pt"
    assert runner.invoke(app, ["train", str(tiny), "--epochs", "1", "--emb-dim", "4", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert len(checkpoint.load(out)["history"]) == 2
    result = runner.invoke(app, ["train", "--resume", str(out), "--emb-dim", "8"])
    assert result.exit_code == 2 and "cannot change --emb-dim" in result.output


def test_cli_refuses_to_overwrite_a_checkpoint_unless_asked(tiny, tmp_path):
    out = tmp_path / "run.pt"
    args = ["train", str(tiny), "--epochs", "1", "--emb-dim", "4", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = out.read_bytes()
    result = runner.invoke(app, [*args[:-2], "--seed", "1", "--out", str(out)])
    assert result.exit_code == 2 and "already exists (pass --overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and out.read_bytes() == before
    result = runner.invoke(app, [*args[:-2], "--seed", "1", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(out)["config"]["seed"] == 1


def test_cli_ctrl_c_keeps_best_so_far_and_exits_130(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run.pt"
    original = training.train_epoch

    def interrupted(*args, **kwargs):
        if args[5] == 2:  # the epoch argument
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupted)
    result = runner.invoke(app, ["train", str(tiny), "--epochs", "3", "--emb-dim", "4", "--out", str(out)])
    assert result.exit_code == 130
    ckpt = checkpoint.load(out)
    assert len(ckpt["history"]) == 1 and ckpt["best_epoch"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "xdeepfm"], "model must be one of"),
        (["--dnn", "4,x"], "--dnn"),
        (["--optimizer", "lbfgs"], "optimizer must be one of"),
    ],
)
def test_cli_bad_options_exit_2_without_output(tiny, tmp_path, args, message):
    out = tmp_path / "run.pt"
    result = runner.invoke(app, ["train", str(tiny), "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_bad_checkpoints_are_refused_with_exit_2(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "dcollapse.checkpoint", "version": 99, "config": {}, "meta": {}, "state_dict": {},
                "history": []}, newer)  # fmt: skip
    evil = tmp_path / "evil.pt"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil.write_bytes(pickle.dumps(Exploit()))
    for path, message in ((foreign, "not a dcollapse checkpoint"), (newer, "newer"), (evil, "")):
        result = runner.invoke(app, ["eval", str(path)])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "pwned").exists()


def test_training_without_valid_split_is_a_user_error(tmp_path):
    write_dataset(tmp_path / "d", [3, 3, 3], {"train": 50})
    with pytest.raises(UserError, match="valid split"):
        training.train(tmp_path / "d", SMALL, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_track_richness_adds_bounded_d_lr_per_epoch(tiny, tmp_path):
    out = tmp_path / "rich.pt"
    args = ["train", str(tiny), "--epochs", "2", "--emb-dim", "4", "--dnn", "16", "--arch", "parallel"]
    result = runner.invoke(app, [*args, "--track", "richness", "--out", str(out)])
    assert result.exit_code == 0, result.output
    history = checkpoint.load(out)["history"]
    assert len(history) == 2
    for entry in history:
        assert 0.0 <= entry["d_lr"] <= 1.0 and 0.0 <= entry["d_lr_centered"] <= 1.0
        assert 0.0 < entry["nc1_bounded"] < 1.0
    bad = runner.invoke(app, [*args, "--track", "grokking", "--out", str(tmp_path / "bad.pt")])
    assert bad.exit_code == 2 and "track" in bad.output
    assert not (tmp_path / "bad.pt").exists()


def test_eval_takes_data_like_the_reports_and_names_a_missing_dataset(tiny, tmp_path):
    out = tmp_path / "run.pt"
    assert runner.invoke(app, ["train", str(tiny), "--epochs", "1", "--emb-dim", "4", "--out", str(out)]).exit_code == 0
    by_option = json.loads(runner.invoke(app, ["eval", str(out), "--data", str(tiny), "--json"]).stdout)
    by_argument = json.loads(runner.invoke(app, ["eval", str(out), str(tiny), "--json"]).stdout)
    assert by_option == by_argument
    ckpt = checkpoint.load(out)
    ckpt["data"]["path"] = str(tmp_path / "gone")
    checkpoint.save(tmp_path / "moved.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    missing = runner.invoke(app, ["eval", str(tmp_path / "moved.pt")])
    assert missing.exit_code == 2 and "--data" in missing.output


def test_out_that_is_a_directory_is_refused_before_training(tiny, tmp_path):
    result = runner.invoke(app, ["train", str(tiny), "--epochs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output and "epoch 1" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_eval_checks_the_dataset_like_the_reports(tiny, tmp_path):
    out = tmp_path / "run.pt"
    assert runner.invoke(app, ["train", str(tiny), "--epochs", "1", "--emb-dim", "4", "--out", str(out)]).exit_code == 0
    other = tmp_path / "other"  # same layout, other rows: a different input hash
    write_dataset(other, [6, 5, 4, 7], {"train": 100, "test": 300}, seed=1)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "input_hash": "sha256:other"}))
    result = runner.invoke(app, ["eval", str(out), str(other), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 300
    assert "warning" in result.stderr and "input hash differs" in result.stderr
    write_dataset(tmp_path / "wider", [6, 5, 4, 8], {"test": 50})
    result = runner.invoke(app, ["eval", str(out), str(tmp_path / "wider")])
    assert result.exit_code == 2 and "fields (name, vocab size) differ" in result.stderr


@pytest.mark.parametrize("model", ["fm", "crossnet", "dot"])
def test_the_parameter_bound_is_never_below_the_real_count(model):
    """check_model_fits trusts parameter_bound to skip the meta-device build: it must bound every variant."""
    import itertools

    from dcollapse.config import full_config
    from dcollapse.models import build_model

    sizes = [12, 40, 7, 60, 3]
    offsets = np.cumsum([0, *sizes[:-1]])
    meta = {"fields": [{"name": f"f{i}", "vocab_size": v, "offset": int(o)}
                       for i, (v, o) in enumerate(zip(sizes, offsets, strict=True))]}  # fmt: skip
    for arch, style, sets in itertools.product(["none", "parallel", "stacked"], ["paper", "textbook"], [1, 3]):
        config = full_config({"model": model, "arch": arch, "style": style, "num_sets": sets, "emb_dim": 8,
                              "dnn": [16, 32], "cross_layers": 2})  # fmt: skip
        real = sum(p.numel() for p in build_model(config, meta).parameters())
        assert real <= training.parameter_bound(config, meta) <= 4 * real + 10_000, (arch, style, sets)
