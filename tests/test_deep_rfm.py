"""Deep RFM: kernel, gradients and AGOP against independent references; the spec's checks on real digits data."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from dcollapse.cli.app import app
from dcollapse.diagnostics.agop import agop
from dcollapse.diagnostics.deep_rfm import (
    deep_rfm,
    fit_laplace_regression,
    laplace_agop,
    laplace_kernel,
    load_classification_table,
    prepare_training_set,
)
from dcollapse.errors import UserError


def _rng_tensor(seed: int, *shape: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=shape))


def test_laplace_mahalanobis_kernel_matches_brute_force():
    x, z = _rng_tensor(0, 5, 3), _rng_tensor(1, 4, 3)
    b = _rng_tensor(2, 3, 3)
    m = b @ b.T
    expected = np.array(
        [[np.exp(-np.sqrt((xi - zj) @ m.numpy() @ (xi - zj)) / 1.7) for zj in z.numpy()] for xi in x.numpy()]
    )
    np.testing.assert_allclose(laplace_kernel(x, z, 1.7, m).numpy(), expected, rtol=1e-10)
    euclidean = np.linalg.norm(x.numpy()[:, None] - z.numpy()[None], axis=-1)
    np.testing.assert_allclose(laplace_kernel(x, z, 1.7).numpy(), np.exp(-euclidean / 1.7), rtol=1e-10)


def test_ridgeless_fit_interpolates_the_targets():
    x, y = _rng_tensor(3, 20, 4), _rng_tensor(4, 20, 3)
    coef = fit_laplace_regression(x, y, 2.0, ridge=0.0)
    torch.testing.assert_close(laplace_kernel(x, x, 2.0) @ coef, y, rtol=1e-8, atol=1e-8)


def test_fit_rejects_duplicate_samples_without_ridge():
    x = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive ridge"):
        fit_laplace_regression(x, torch.ones(3, 1, dtype=torch.float64), 2.0, ridge=0.0)


@pytest.mark.parametrize("with_m", [False, True])
def test_closed_form_laplace_agop_matches_autograd(with_m):
    centers, points = _rng_tensor(5, 15, 4), _rng_tensor(6, 9, 4)  # points differ from every center
    coef = _rng_tensor(7, 15, 3)
    b = _rng_tensor(8, 4, 4)
    m = b @ b.T if with_m else None

    def predictor(inputs: torch.Tensor) -> torch.Tensor:
        diff = inputs[:, None, :] - centers[None, :, :]
        quad = diff if m is None else diff @ m
        return torch.exp(-(quad * diff).sum(-1).sqrt() / 2.0) @ coef

    closed_form = laplace_agop(points, centers, coef, 2.0, m)
    torch.testing.assert_close(closed_form, agop(predictor, points), rtol=1e-9, atol=1e-12)


def test_load_table_from_csv_and_parquet(tmp_path):
    frame = pl.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0, 1, 1], "y": ["cat", "dog", "cat"]})
    frame.write_csv(tmp_path / "t.csv")
    frame.write_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        x, labels = load_classification_table(str(tmp_path / name), label="y")
        assert x.tolist() == [[1.0, 0.0], [2.0, 1.0], [3.0, 1.0]]
        assert labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [("a,b\n1,2\n", "no label column 'label'"), ("a,label\nx,1\n", "column 'a' is String"), ("label\n1\n", "feature")],
)
def test_load_table_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_classification_table(str(path))
    with pytest.raises(UserError, match="no such file"):
        load_classification_table(str(tmp_path / "missing.csv"))


def test_prepare_standardises_and_sorts_by_class():
    x, labels = load_classification_table("digits")
    xs, ys = prepare_training_set(x, labels, 300)
    assert xs.shape == (300, 64)
    assert torch.all(ys[1:] >= ys[:-1])
    varying = x[:300].std(0) > 0
    kept = xs[:, varying]
    assert kept.mean(0).abs().max() < 1e-12
    assert (kept.std(0) - 1).abs().max() < 1e-12
    assert torch.all(xs[:, ~varying] == 0)


@pytest.fixture(scope="module")
def digits_500():
    x, labels = load_classification_table("digits")
    return prepare_training_set(x, labels, 500)


def test_deep_rfm_collapses_digits_across_layers(digits_500):
    """Spec C.5.1 and C.5.3 (n = 500, depth 6, bandwidth 2, width 512, ridge 1e-3)."""
    result = deep_rfm(*digits_500)
    phi_nc1 = [layer.phi.nc1 for layer in result.layers]
    assert result.classes == 10 and len(phi_nc1) == 6
    assert all(b < a for a, b in zip(phi_nc1, phi_nc1[1:], strict=False)), phi_nc1
    assert phi_nc1[-1] < phi_nc1[0] / 10, phi_nc1
    assert all(layer.sqrt_m_x.nc1 < layer.x.nc1 for layer in result.layers)
    assert result.layers[-1].phi.nc2 < result.layers[0].phi.nc2 / 10


def test_deep_rfm_without_agop_does_not_collapse(digits_500):
    """Spec C.5.2: with M = I (random features only) NC1 stays within ~2x of layer 1."""
    result = deep_rfm(*digits_500, use_agop=False)
    phi_nc1 = [layer.phi.nc1 for layer in result.layers]
    assert max(phi_nc1) < 2 * phi_nc1[0] and min(phi_nc1) > phi_nc1[0] / 2, phi_nc1
    assert all(layer.sqrt_m_x.nc1 == layer.x.nc1 for layer in result.layers)


def test_rfm_command_json_table_and_plot(tmp_path):
    runner = CliRunner()
    args = ["rfm", "--depth", "2", "--samples", "150", "--width", "64"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dataset"] == "digits" and doc["samples"] == 150 and doc["use_agop"] is True
    assert [layer["layer"] for layer in doc["layers"]] == [1, 2]
    assert doc["layers"][0]["sqrt_m_x"]["nc1"] < doc["layers"][0]["x"]["nc1"]
    png = tmp_path / "nc1.png"
    table = runner.invoke(app, [*args, "--no-agop", "--plot", str(png)])
    assert table.exit_code == 0, table.output
    assert "Deep RFM without AGOP (M = I)" in table.stdout and "NC1 Phi" in table.stdout
    assert imread(png).shape[0] > 100


def test_rfm_command_reads_a_user_table(tmp_path):
    x, labels = load_classification_table("digits")
    frame = pl.DataFrame(x[:120].numpy(), schema=[f"p{i}" for i in range(64)]).with_columns(
        pl.Series("digit", labels[:120].numpy())
    )
    frame.write_parquet(tmp_path / "digits.parquet")
    result = CliRunner().invoke(
        app, ["rfm", "--dataset", str(tmp_path / "digits.parquet"), "--label", "digit", "--depth", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 120


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "{tmp}/missing.csv"], "no such file"),
        (["--bandwidth", "0"], "--bandwidth must be > 0"),
        (["--plot", "{tmp}/out.txt"], "PNG"),
        (["--samples", "1"], "greater than or equal to 2"),
    ],
)
def test_rfm_command_bad_input_exits_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["rfm", *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out.txt").exists()
