"""dcollapse synth ctr: planted structure, true probabilities, Zipf ids, dataset/CSV writers and the CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from dcollapse.cli.app import app
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.data.synth import make_ctr, write_ctr_dataset
from dcollapse.errors import UserError


def logit_from_structure(x: np.ndarray, s: dict) -> np.ndarray:
    """Reference: the planted logit of rows ``x`` [N, F] rebuilt from the JSON structure, one term at a time."""
    names = s["fields"]
    col = {n: k for k, n in enumerate(names)}
    w = [np.asarray(v) for v in s["first_order"]]
    u = [np.asarray(v) for v in s["pair_embeddings"]]
    out = np.full(x.shape[0], s["bias"], dtype=np.float64)
    for f in range(len(names)):
        out += w[f][x[:, f]]
    pair_sum = np.zeros(x.shape[0])
    for a, b in s["pairs"]:
        i, j = col[a], col[b]
        for r in range(s["rank"]):
            pair_sum += u[i][x[:, i], r] * u[j][x[:, j], r]
    out += s["pairwise_scale"] / np.sqrt(max(len(s["pairs"]), 1)) * pair_sum
    if s["triples"]:
        t = [np.asarray(v) for v in s["triple_embeddings"]]
        tri = np.zeros(x.shape[0])
        for a, b, c in s["triples"]:
            i, j, k = col[a], col[b], col[c]
            tri += (t[i][x[:, i]] * t[j][x[:, j]] * t[k][x[:, k]]).sum(axis=1)
        out += s["higher_scale"] / np.sqrt(len(s["triples"])) * tri
    return out


def ids(frame: pl.DataFrame) -> np.ndarray:
    return frame.drop("label").to_numpy()


def test_deterministic_in_seed():
    a, ta = make_ctr(500, 4, seed=7)
    b, tb = make_ctr(500, 4, seed=7)
    c, _ = make_ctr(500, 4, seed=8)
    assert a.equals(b) and np.array_equal(ta.prob, tb.prob) and not a.equals(c)
    assert a.columns == ["label", "f1", "f2", "f3", "f4"] and a.schema["label"] == pl.Int8


@pytest.mark.parametrize("triples", [0, 3])
def test_recorded_logit_matches_planted_structure(triples):
    frame, truth = make_ctr(3000, 5, seed=1, pairs=4, triples=triples, rank=3)
    s = json.loads(json.dumps(truth.structure))  # what the JSON sidecar holds
    assert len(s["pairs"]) == 4 and len(s["triples"]) == triples
    np.testing.assert_allclose(truth.logit, logit_from_structure(ids(frame), s), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(truth.prob, 1 / (1 + np.exp(-truth.logit)), rtol=1e-12)


def test_labels_follow_the_true_probability():
    frame, truth = make_ctr(40000, 6, seed=2)
    y = frame["label"].to_numpy()
    sd = np.sqrt((truth.prob * (1 - truth.prob)).sum()) / y.size
    assert abs(y.mean() - truth.prob.mean()) < 4 * sd
    order = np.argsort(truth.prob)
    for chunk in np.array_split(order, 5):  # calibration per quintile of the true probability
        assert abs(y[chunk].mean() - truth.prob[chunk].mean()) < 0.03


def test_zipf_value_frequencies():
    frame, _ = make_ctr(60000, 2, seed=3, vocab_sizes=[50, 50], zipf=1.2)
    counts = np.bincount(frame["f1"].to_numpy(), minlength=50)
    assert counts[0] > counts[1] > counts[3] > counts[10]
    assert counts[0] / counts[1] == pytest.approx(2**1.2, rel=0.1)


def test_demo_defaults_have_learnable_pairwise_structure():
    frame, truth = make_ctr(60000, 12, seed=0)
    y = frame["label"].to_numpy()
    s = truth.structure
    x = ids(frame)
    first_only = s["bias"] + sum(np.asarray(s["first_order"][f])[x[:, f]] for f in range(12))
    bayes = roc_auc_score(y, truth.prob)
    assert 0.75 < bayes < 0.9
    assert bayes - roc_auc_score(y, first_only) > 0.1  # the interactions carry most of the signal
    assert 0.15 < y.mean() < 0.45


def test_noise_marginal_probability_matches_monte_carlo():
    frame, truth = make_ctr(200, 3, seed=4, noise_std=1.5)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((200, 20000))
    mc = (1 / (1 + np.exp(-(truth.logit[:, None] + 1.5 * eps)))).mean(axis=1)
    np.testing.assert_allclose(truth.prob, mc, atol=0.01)
    # noise pulls probabilities towards 1/2 but keeps their order (Bayes-optimal ranking unchanged)
    assert np.array_equal(np.argsort(truth.prob), np.argsort(truth.logit))


@pytest.mark.parametrize("kwargs", [{"rows": 0, "fields": 3}, {"rows": 10, "fields": 1}, {"pairs": 99}])
def test_invalid_arguments(kwargs):
    args = {"rows": 10, "fields": 3, **kwargs}
    with pytest.raises(UserError):
        make_ctr(args.pop("rows"), args.pop("fields"), **args)


def test_write_ctr_dataset_aligns_truth_with_split_rows(tmp_path):
    probs = write_ctr_dataset(tmp_path / "d", 2000, 4, seed=5, vocab_sizes=[5, 10, 20, 40])
    meta = load_meta(tmp_path / "d")
    assert [f["vocab_size"] for f in meta["fields"]] == [7, 12, 22, 42]
    assert [f["offset"] for f in meta["fields"]] == [0, 7, 19, 41]
    assert sum(s["rows"] for s in meta["splits"].values()) == 2000
    structure = json.loads((tmp_path / "d" / "truth.json").read_text())
    truth = pl.read_parquet(tmp_path / "d" / "truth.parquet")
    for split in ("train", "valid", "test"):
        data = load_split(tmp_path / "d", split, meta)
        assert len(data) == meta["splits"][split]["rows"] == probs[split].size
        x = data.ids.numpy().astype(np.int64) - 2  # id = value + 2
        assert x.min() >= 0
        ref = 1 / (1 + np.exp(-logit_from_structure(x, structure)))
        np.testing.assert_allclose(probs[split], ref, rtol=1e-10)
        np.testing.assert_allclose(truth.filter(pl.col("split") == split)["prob"].to_numpy(), ref, rtol=1e-10)
        assert data.labels.sum().item() == meta["splits"][split]["positives"]


def test_cli_raw_csv_preprocesses_without_truth_columns(tmp_path):
    raw = tmp_path / "raw.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "ctr", "--out", str(raw), "--rows", "3000", "--fields", "5", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "raw.csv.truth.parquet").is_file() and (tmp_path / "raw.csv.truth.json").is_file()
    truth = pl.read_parquet(tmp_path / "raw.csv.truth.parquet")
    assert truth.columns == ["logit", "prob"] and truth.height == 3000
    out = tmp_path / "data"
    result = runner.invoke(app, ["preprocess", str(raw), "--format", "csv", "--label", "label", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [f["name"] for f in load_meta(out)["fields"]] == ["f1", "f2", "f3", "f4", "f5"]
    again = runner.invoke(app, ["synth", "ctr", "--out", str(raw), "--rows", "10", "--fields", "3"])
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_cli_preprocessed_json(tmp_path):
    result = CliRunner().invoke(
        app, ["synth", "ctr", "--out", str(tmp_path / "d"), "--rows", "1000", "--fields", "3", "--preprocessed",
              "--triples", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["preprocessed"] and sum(s["rows"] for s in doc["splits"].values()) == 1000
    assert len(load_split(tmp_path / "d", "test")) == doc["splits"]["test"]["rows"]
