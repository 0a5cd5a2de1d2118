"""`dcollapse spectrum`, `compare` and `gradients` end to end on tiny trained checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F_nn
from _report_fixtures import VOCAB, make_dataset, make_run
from matplotlib.image import imread
from typer.testing import CliRunner

from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.cli.render import spark
from dcollapse.data.dataset import load_split
from dcollapse.metrics.collapse import embedding_gradients
from dcollapse.models import load_model
from dcollapse.reports.compare import add_base_changes

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    data = make_dataset(root / "data")
    other = make_dataset(root / "other", rows=800, seed=1, vocab=[10, 30, 7, 60, 25])
    return {
        "root": root,
        "data": data,
        "fm": make_run(data, root / "fm.pt"),
        "deepfm": make_run(data, root / "deepfm.pt", arch="parallel"),
        "nfm": make_run(data, root / "nfm.pt", arch="stacked", epochs=1),
        "fm_other": make_run(other, root / "fm-other.pt", epochs=1),
    }


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def numpy_rankme(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_spectrum_table_renders(runs):
    result = invoke("spectrum", runs["deepfm"])
    assert result.exit_code == 0, result.output
    for text in ("Embedding table per field", "f1", "f5", "Batch matrix Z", "cov(Z)", "Over training", "best epoch"):
        assert text in result.stdout
    assert "█" in result.stdout  # the inline spectrum bars


def test_spectrum_json_matches_independent_numpy(runs):
    result = invoke("spectrum", runs["deepfm"], "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ckpt = checkpoint.load(runs["deepfm"])
    table = ckpt["state_dict"]["embedding.table"].double().numpy()
    offsets = np.cumsum([0, *[v + 2 for v in VOCAB[:-1]]])
    assert [f["field"] for f in doc["fields"]] == [f"f{i + 1}" for i in range(len(VOCAB))]
    for f, start, vocab in zip(doc["fields"], offsets, VOCAB, strict=True):
        s = np.linalg.svd(table[start : start + vocab + 2], compute_uv=False)
        assert f["vocab_size"] == vocab + 2
        assert f["ia"] == pytest.approx(s.sum() / s.max(), rel=1e-6)
        assert len(f["normalized"]) == min(vocab + 2, 8)
    valid = load_split(runs["data"], "valid")
    z = table[valid.ids.numpy() + offsets].reshape(len(valid), -1)  # < 50,000 rows: the batch is the whole split
    assert doc["batch"]["rows"] == len(valid) and doc["batch"]["dim"] == len(VOCAB) * 8
    assert doc["batch"]["z"]["rankme"] == pytest.approx(numpy_rankme(z), rel=1e-5)
    cov = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(doc["batch"]["covariance"]["normalized"][:10], (cov / cov[0])[:10], rtol=1e-5)
    assert [h["epoch"] for h in doc["history"]] == [1, 2] and doc["best_epoch"] == 2
    assert doc["dataset"]["available"] and doc["dataset"]["skipped"] is None
    assert doc["checks"] == {"requested": False, "passed": True, "failures": []}


def test_spectrum_gates_pass_and_fail(runs):
    ok = invoke("spectrum", runs["fm"], "--fail-under-ia", "1", "--fail-field-ia", "1", "--fail-under-rankme", "1")
    assert ok.exit_code == 0, ok.output
    assert "checks passed" in ok.stdout
    for flag, reason in [
        ("--fail-under-ia", "mean field IA"),
        ("--fail-field-ia", "field(s) with IA <"),
        ("--fail-under-rankme", "batch RankMe"),
    ]:
        bad = invoke("spectrum", runs["fm"], flag, "1000", "--json")
        assert bad.exit_code == 1, bad.output
        assert reason in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        doc = json.loads(bad.stdout)  # the report is still printed, then the gate fails
        assert doc["checks"]["passed"] is False and reason in doc["checks"]["failures"][0]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # lines and text, not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50


def test_plots_are_valid_pngs(runs, tmp_path):
    for args, name in [
        (["spectrum", runs["deepfm"]], "spectrum.png"),
        (["compare", runs["fm"], runs["deepfm"]], "compare.png"),
        (["gradients", runs["deepfm"], "--batch", "200"], "gradients.png"),
    ]:
        result = invoke(*args, "--plot", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert_png(tmp_path / name)
    bad = invoke("spectrum", runs["fm"], "--plot", tmp_path / "x.jpg")
    assert bad.exit_code == 2 and ".png" in bad.stderr
    assert not (tmp_path / "x.jpg").exists()


def moved_checkpoint(runs, name: str) -> Path:
    """A copy of the FM checkpoint whose stored dataset path no longer exists."""
    ckpt = checkpoint.load(runs["fm"])
    ckpt["data"] = {"path": str(runs["root"] / "gone"), "hash": ckpt["data"]["hash"]}
    path = runs["root"] / name
    checkpoint.save(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return path


def test_missing_dataset_degrades_to_table_metrics(runs):
    moved = moved_checkpoint(runs, "moved.pt")
    result = invoke("spectrum", moved)
    assert result.exit_code == 0, result.output
    assert "batch metrics skipped" in result.stdout and "not found" in result.stdout
    assert "Embedding table per field" in result.stdout
    doc = json.loads(invoke("spectrum", moved, "--json").stdout)
    assert doc["batch"] is None and "gone" in doc["dataset"]["skipped"] and len(doc["fields"]) == len(VOCAB)
    assert invoke("spectrum", moved, "--fail-under-ia", "1").exit_code == 0  # table-level gates still work
    needs_batch = invoke("spectrum", moved, "--fail-under-rankme", "1")
    assert needs_batch.exit_code == 2 and "--data" in needs_batch.stderr
    assert json.loads(invoke("spectrum", moved, "--json", "--data", runs["data"]).stdout)["batch"] is not None
    grads = invoke("gradients", moved)
    assert grads.exit_code == 2 and "need the dataset" in grads.stderr
    compared = json.loads(invoke("compare", moved, runs["deepfm"], "--json").stdout)
    assert compared["runs"][0]["rankme_source"] == "history"
    assert compared["runs"][0]["rankme"] == pytest.approx(checkpoint.load(runs["fm"])["history"][-1]["rankme"])


def test_bad_inputs_exit_2(runs, tmp_path):
    assert invoke("spectrum", tmp_path / "nope.pt").exit_code == 2
    wrong = invoke("spectrum", runs["fm"], "--data", runs["fm_other"].parent / "other")
    assert wrong.exit_code == 2 and "differ" in wrong.stderr  # other vocabulary sizes: refused, not misread
    ckpt = checkpoint.load(runs["fm"])
    ckpt["kind"] = "srhm"
    checkpoint.save(tmp_path / "srhm.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    foreign = invoke("compare", runs["fm"], tmp_path / "srhm.pt")
    assert foreign.exit_code == 2 and "CTR" in foreign.stderr


def test_compare_table_and_relative_rankme(runs):
    result = invoke("compare", runs["deepfm"], runs["nfm"], runs["fm"])
    assert result.exit_code == 0, result.output
    assert "FM base" in result.stdout and "+p-DNN" in result.stdout and "Δ RankMe" in result.stdout
    doc = json.loads(invoke("compare", runs["deepfm"], runs["nfm"], runs["fm"], "--json").stdout)
    by_arch = {r["arch"]: r for r in doc["runs"]}
    assert [r["arch"] for r in doc["runs"]] == ["none", "parallel", "stacked"]  # base first, as in Table 1
    base = by_arch["none"]
    assert base["rankme_change_vs_base"] is None and base["rankme_source"] == "batch"
    for arch in ("parallel", "stacked"):
        row = by_arch[arch]
        assert row["base"] == str(runs["fm"])
        assert row["rankme_change_vs_base"] == pytest.approx(row["rankme"] / base["rankme"] - 1.0)
        assert row["auc"] == checkpoint.load(runs["deepfm" if arch == "parallel" else "nfm"])["test"]["auc"]
    assert len(doc["datasets"]) == 1 and doc["notes"] == []


def test_compare_across_datasets_says_so(runs):
    doc = json.loads(invoke("compare", runs["fm"], runs["deepfm"], runs["fm_other"], "--json").stdout)
    assert len(doc["datasets"]) == 2
    assert any("2 different datasets" in note for note in doc["notes"])
    other = next(r for r in doc["runs"] if r["checkpoint"] == str(runs["fm_other"]))
    deepfm = next(r for r in doc["runs"] if r["arch"] == "parallel")
    assert other["rankme_change_vs_base"] is None and deepfm["base"] == str(runs["fm"])  # never across datasets
    table = invoke("compare", runs["fm"], runs["deepfm"], runs["fm_other"])
    assert table.exit_code == 0 and "different datasets" in table.stdout
    assert [d["label"] for d in doc["datasets"]] == ["A", "B"] and other["dataset_label"] == "B"


def test_gradients_report(runs):
    result = invoke("gradients", runs["deepfm"], "--batch", "150")
    assert result.exit_code == 0, result.output
    assert "via interaction" in result.stdout and "via DNN" in result.stdout
    doc = json.loads(invoke("gradients", runs["deepfm"], "--batch", "150", "--json").stdout)
    assert doc["rows"] == 150 and doc["dim"] == len(VOCAB) * 8
    assert set(doc["gradients"]) == {"total", "interaction", "dnn"}
    assert all(g["norm"] > 0 for g in doc["gradients"].values())
    stacked = json.loads(invoke("gradients", runs["nfm"], "--batch", "150", "--json").stdout)
    # NFM's DNN reads E only through the bi-interaction: no gradient takes a direct DNN path
    assert stacked["gradients"]["dnn"]["norm"] == 0.0
    assert stacked["gradients"]["interaction"]["rankme"] == pytest.approx(stacked["gradients"]["total"]["rankme"])
    base = json.loads(invoke("gradients", runs["fm"], "--batch", "150", "--json").stdout)
    assert set(base["gradients"]) == {"total"}


def test_parallel_branch_gradients_sum_to_total_and_match_table_gradient(runs):
    model = load_model(checkpoint.load(runs["deepfm"])).double()
    valid = load_split(runs["data"], "valid")
    ids, labels = valid.ids[:97], valid.labels[:97]
    grads = embedding_gradients(model, ids, labels)
    assert grads["interaction"].abs().sum() > 0 and grads["dnn"].abs().sum() > 0
    torch.testing.assert_close(grads["interaction"] + grads["dnn"], grads["total"], rtol=1e-10, atol=1e-14)
    # independent path: d loss / d table through the model's own forward(ids), versus scattering dL/dE rows
    model.zero_grad()
    F_nn.binary_cross_entropy_with_logits(model(ids), labels.double()).backward()
    rows = (ids.long() + model.embedding.offsets).flatten()
    scattered = torch.zeros_like(model.embedding.table).index_add_(0, rows, grads["total"].reshape(rows.numel(), -1))
    torch.testing.assert_close(scattered, model.embedding.table.grad, rtol=1e-8, atol=1e-14)


def test_reports_read_checkpoints_of_dcollapse_train(runs, tmp_path):
    out = tmp_path / "trained.pt"
    args = ["--model", "crossnet", "--arch", "stacked", "--emb-dim", "4", "--dnn", "8", "--epochs", "1"]
    trained = invoke("train", runs["data"], *args, "--batch-size", "512", "--cross-layers", "1", "--out", out)
    assert trained.exit_code == 0, trained.output
    doc = json.loads(invoke("spectrum", out, "--json").stdout)
    assert doc["model"]["model"] == "crossnet" and doc["batch"]["dim"] == len(VOCAB) * 4
    # the training history's snapshot uses the same fixed validation batch
    assert doc["batch"]["z"]["rankme"] == pytest.approx(doc["history"][-1]["rankme"], rel=1e-6)
    assert doc["field_summary"]["mean_ia"] == pytest.approx(doc["history"][-1]["mean_ia"], rel=1e-6)
    grads = json.loads(invoke("gradients", out, "--json").stdout)
    assert grads["gradients"]["dnn"]["norm"] == 0.0 and grads["gradients"]["interaction"]["norm"] > 0


def test_inline_bar_maps_log_decades_to_blocks():
    assert spark([1.0, 1e-2, 1e-4, 0.0]) == "█▅▁▁"
    assert len(spark(list(np.geomspace(1, 1e-3, 100)), width=20)) == 20
    assert spark([]) == ""


def test_base_of_a_seeded_run_is_the_base_with_the_same_seed():
    def row(arch: str, seed: int, rankme: float) -> dict:
        return {"checkpoint": f"{arch}{seed}", "backbone": "fm", "dataset_label": "A", "arch": arch,
                "seed": seed, "model": {"emb_dim": 8}, "rankme": rankme, "auc": 0.7,
                "metrics_split": "test", "history": []}  # fmt: skip

    rows = [row("none", 0, 10.0), row("none", 1, 20.0), row("parallel", 1, 30.0), row("parallel", 0, 30.0)]
    add_base_changes(rows)
    assert rows[2]["base"] == "none1" and rows[2]["rankme_change_vs_base"] == pytest.approx(0.5)
    assert rows[3]["base"] == "none0" and rows[3]["rankme_change_vs_base"] == pytest.approx(2.0)
