"""Richness measure D_LR and eigen-feature metrics: closed forms, invariances, the NC relation, lazy vs rich."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _diag_fixtures import ctr_checkpoint, digits, mlp, train_mse
from matplotlib.image import imread
from typer.testing import CliRunner

from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.data.dataset import load_split
from dcollapse.diagnostics.richness import d_lr, feature_spectrum, nc1_bounded, richness, richness_snapshot
from dcollapse.models import load_model


def _normal(seed: int, *shape: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=shape))


@pytest.mark.parametrize("centered", [False, True])
def test_d_lr_is_zero_when_features_lie_in_the_span_of_the_outputs(centered):
    outputs = _normal(0, 200, 3)
    features = outputs @ _normal(1, 3, 40)
    assert d_lr(features, outputs, centered=centered) == pytest.approx(0.0, abs=1e-12)
    # the same through a readout: rank-3 features, generic W [3, 40] -> F = Phi W^T spans the features' columns
    assert d_lr(features, features @ _normal(2, 3, 40).T, centered=centered) == pytest.approx(0.0, abs=1e-12)


def test_d_lr_of_isotropic_features_is_one_minus_c_over_p():
    n, p, c = 400, 50, 4
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(n, p)))
    features = torch.tensor(q * np.sqrt(n))  # Phi^T Phi = n I exactly
    w = _normal(4, c, p)
    assert d_lr(features, features @ w.T) == pytest.approx(1 - c / p, abs=1e-12)
    gaussian = _normal(5, 20_000, p)  # isotropic in expectation
    assert d_lr(gaussian, gaussian @ w.T) == pytest.approx(1 - c / p, abs=0.01)


def test_d_lr_is_invariant_to_the_scale_of_readout_and_features():
    features, w = _normal(6, 100, 20).abs(), _normal(7, 2, 20)
    base = d_lr(features, features @ w.T)
    assert 0.05 < base < 0.95
    assert d_lr(features, features @ (1e-3 * w).T) == pytest.approx(base, abs=1e-12)
    assert d_lr(7.0 * features, 7.0 * features @ w.T) == pytest.approx(base, abs=1e-12)
    assert d_lr(features, -50.0 * features @ w.T) == pytest.approx(base, abs=1e-12)


def test_centred_d_lr_is_invariant_to_a_constant_offset_of_the_features():
    features, w = _normal(8, 150, 12), _normal(9, 3, 12)
    shifted = features + 10.0 * _normal(10, 1, 12)
    centred = d_lr(features, features @ w.T, centered=True)
    assert d_lr(shifted, shifted @ w.T, centered=True) == pytest.approx(centred, abs=1e-12)
    assert abs(d_lr(shifted, shifted @ w.T) - d_lr(features, features @ w.T)) > 0.05  # the plain one is not


def test_d_lr_edge_cases():
    features = _normal(11, 10, 4)
    assert d_lr(features, torch.zeros(10, 1)) == 1.0  # a zero readout explains nothing
    assert np.isnan(d_lr(torch.zeros(10, 4), features[:, :1]))
    with pytest.raises(ValueError, match="NaN"):
        d_lr(features, torch.full((10, 1), float("nan")))


def test_centred_d_lr_tracks_the_bounded_nc1_on_planted_clusters():
    """B.2: with a readout that separates the classes, D_LR ~ tr(Sigma_W) / tr(Sigma_T) = NC1 / (1 + NC1)."""
    rng = np.random.default_rng(12)
    k, p, per_class = 4, 400, 100
    labels = np.repeat(np.arange(k), per_class)
    means = rng.normal(size=(k, p))
    for noise in (0.3, 1.0):
        features = torch.tensor(means[labels] + noise * rng.normal(size=(k * per_class, p)))
        outputs = features @ torch.tensor(means).T  # readout aligned with the class means
        bounded = nc1_bounded(features, torch.tensor(labels))
        assert d_lr(features, outputs, centered=True) == pytest.approx(bounded, rel=0.05)


def test_feature_spectrum_closed_form():
    n = 6
    u, _ = np.linalg.qr(np.random.default_rng(13).normal(size=(n, n)))
    v, _ = np.linalg.qr(np.random.default_rng(14).normal(size=(3, 3)))
    s = np.array([3.0, 2.0, 1.0])
    features = torch.tensor(u[:, :3] * s @ v.T)
    targets = torch.tensor(u[:, 1:2])  # the targets are exactly the 2nd eigen-feature
    outputs = torch.tensor(u[:, :3] @ np.array([[0.0], [0.0], [2.0]]))  # the learned function uses only the 3rd
    spectrum = feature_spectrum(features, targets, outputs, centered=False)
    np.testing.assert_allclose(spectrum.relative_eigenvalues, s**2 / (s**2).sum(), atol=1e-12)
    np.testing.assert_allclose(spectrum.quality, [0.0, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(spectrum.utilisation, [0.0, 0.0, 1.0], atol=1e-12)


def test_richness_bundles_the_measures_with_labels():
    features = _normal(15, 80, 6)
    labels = torch.arange(80) % 2
    result = richness(features, features @ _normal(16, 1, 6).T, labels)
    assert result.outputs_dim == 1 and result.features_dim == 6 and result.samples == 80
    assert result.nc1_bounded == pytest.approx(nc1_bounded(features, labels))
    assert result.spectrum is not None and result.spectrum.utilisation[-1] == pytest.approx(1.0)


def _last_layer_d_lr(net: torch.nn.Sequential, x: torch.Tensor) -> float:
    with torch.no_grad():
        features = net[:-1](x)
        return d_lr(features, features @ net[-1].weight.T, centered=True)


@pytest.mark.slow
def test_lazy_training_leaves_d_lr_high_and_rich_training_lowers_it():
    """Spec B.3.1 on scikit-learn's digits, 2 hidden ReLU layers of width 128: standard training (rich) vs the
    output-scaled alpha = 100 model f = alpha (net - net_init) (lazy), both to ~100% train accuracy."""
    x, labels = digits(500)
    initial = _last_layer_d_lr(mlp(128, 2), x)
    rich = mlp(128, 2)
    rich_accuracy = train_mse(rich, x, labels, epochs=20, lr=0.05)
    lazy = mlp(128, 2)
    lazy_accuracy = train_mse(lazy, x, labels, epochs=40, lr=0.05, alpha=100.0)
    assert rich_accuracy > 0.97 and lazy_accuracy > 0.97  # comparable train accuracy
    lazy_d, rich_d = _last_layer_d_lr(lazy, x), _last_layer_d_lr(rich, x)
    assert lazy_d == pytest.approx(initial, abs=0.05)
    assert rich_d < lazy_d / 2, (rich_d, lazy_d)


# ----------------------------------------------------------------------------------------------- CTR checkpoints


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("richness")
    return root, ctr_checkpoint(root, "deepfm", model="fm", arch="parallel", epochs=3, save_every_epoch=True)


def _phi_and_logit(model, ids):
    with torch.no_grad():
        phi = model.hidden(model.embed(ids)).double()
    return phi, phi @ model.head.weight.double().T


def test_richness_snapshot_matches_the_definition_and_keeps_the_training_flag(run):
    ckpt = checkpoint.load(run[1])
    model = load_model(ckpt).train()
    rows = load_split(ckpt["data"]["path"], "valid")
    embeddings = model.embed(rows.ids).detach()
    snapshot = richness_snapshot(model, embeddings)
    assert model.training
    model.eval()
    phi, logit = _phi_and_logit(model, rows.ids)
    assert snapshot == pytest.approx({"d_lr": d_lr(phi, logit), "d_lr_centered": d_lr(phi, logit, centered=True)})
    with_labels = richness_snapshot(model, embeddings, rows.labels)
    assert with_labels["nc1_bounded"] == pytest.approx(nc1_bounded(phi, rows.labels))


def test_richness_command_one_checkpoint(run):
    root, path = run
    png = root / "curves.png"
    result = CliRunner().invoke(app, ["richness", str(path), "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ckpt = checkpoint.load(path)
    model = load_model(ckpt)
    rows = load_split(ckpt["data"]["path"], "train")  # all 1200 train rows (fewer than --samples)
    phi, logit = _phi_and_logit(model, rows.ids)
    assert doc["samples"] == len(rows) and doc["outputs_dim"] == 1
    assert doc["d_lr"] == pytest.approx(d_lr(phi, logit), abs=1e-9)
    assert doc["d_lr_centered"] == pytest.approx(d_lr(phi, logit, centered=True), abs=1e-9)
    assert doc["spectrum"]["utilisation"][-1] == pytest.approx(1.0)
    assert imread(png).shape[0] > 100
    table = CliRunner().invoke(app, ["richness", str(path)])
    assert table.exit_code == 0 and "D_LR centred" in table.stdout and "Q(k) clicks" in table.stdout


def test_richness_command_over_epochs(run):
    root, path = run
    epochs = [root / f"deepfm.epoch{e}.pt" for e in (3, 1, 2)]
    png = root / "epochs.png"
    result = CliRunner().invoke(app, ["richness", *map(str, epochs), "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    history = {h["epoch"]: h["valid_auc"] for h in checkpoint.load(path)["history"]}
    assert [r["epoch"] for r in doc["runs"]] == [1, 2, 3]
    assert [r["valid_auc"] for r in doc["runs"]] == pytest.approx([history[1], history[2], history[3]])
    assert -1 <= doc["spearman_d_lr_centered_vs_nc1"] <= 1
    assert imread(png).shape[0] > 100
    table = CliRunner().invoke(app, ["richness", *map(str, epochs)])
    assert table.exit_code == 0 and "Richness per checkpoint" in table.stdout


def test_richness_command_bad_input_exits_2(run):
    root, path = run
    result = CliRunner().invoke(app, ["richness", str(path), "--plot", str(root / "x.jpg")])
    assert result.exit_code == 2 and "PNG" in result.output
    result = CliRunner().invoke(app, ["richness", str(root / "none.pt")])
    assert result.exit_code == 2 and "no such file" in result.output
