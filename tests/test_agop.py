"""AGOP, matrix square root and NFA correlation against closed forms and independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _diag_fixtures import VOCAB, ctr_checkpoint, digits, mlp, train_mse
from matplotlib.image import imread
from torch import nn
from typer.testing import CliRunner

from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.data.dataset import load_split
from dcollapse.diagnostics.agop import (
    agop,
    ctr_agop,
    entry_correlation,
    nfa_correlation,
    per_sample_gradients,
    psd_sqrt,
)
from dcollapse.diagnostics.neural_collapse import nc_stats
from dcollapse.models import load_model

runner = CliRunner()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_agop_of_linear_model_is_outer_product_of_its_weights():
    a = torch.randn(7, generator=_gen(), dtype=torch.float64)
    x = torch.randn(40, 7, generator=_gen(1), dtype=torch.float64)
    result = agop(lambda inputs: inputs @ a, x)
    torch.testing.assert_close(result, torch.outer(a, a), rtol=1e-12, atol=1e-12)


def test_agop_of_multi_output_linear_model_is_w_transpose_w():
    w = torch.randn(3, 5, generator=_gen(), dtype=torch.float64)
    x = torch.randn(11, 5, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(agop(lambda inputs: inputs @ w.T, x), w.T @ w, rtol=1e-12, atol=1e-12)


def test_agop_of_quadratic_form_matches_closed_form():
    # f(x) = x^T A x  =>  grad = (A + A^T) x  =>  AGOP = (A + A^T) S (A + A^T), S = X^T X / n.
    a = np.random.default_rng(0).normal(size=(6, 6))
    x = np.random.default_rng(1).normal(size=(25, 6))
    sym = a + a.T
    expected = sym @ (x.T @ x / len(x)) @ sym
    at = torch.tensor(a)
    result = agop(lambda inputs: torch.einsum("ni,ij,nj->n", inputs, at, inputs), torch.tensor(x), chunk_size=4)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_chunked_agop_equals_unchunked_and_per_sample_jacobians():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(23, 5, generator=_gen(), dtype=torch.float64)
    whole = agop(net, x, chunk_size=1000)
    torch.testing.assert_close(agop(net, x, chunk_size=4), whole, rtol=1e-12, atol=1e-12)
    jacobians = [torch.autograd.functional.jacobian(net, row) for row in x]  # each [3, 5]
    reference = sum(j.T @ j for j in jacobians) / len(x)
    torch.testing.assert_close(whole, reference, rtol=1e-10, atol=1e-12)


def test_agop_at_a_layer_is_the_agop_of_the_subnetwork_on_that_layers_input():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 2)).double().eval()
    x = torch.randn(30, 4, generator=_gen(), dtype=torch.float64)
    hidden = net[:2](x).detach()
    subnet = net[2:]
    jacobians = [torch.autograd.functional.jacobian(subnet, row) for row in hidden]
    reference = sum(j.T @ j for j in jacobians) / len(x)
    torch.testing.assert_close(agop(net, x, at=net[2], chunk_size=7), reference, rtol=1e-10, atol=1e-12)


def test_agop_works_under_no_grad_and_with_batchnorm_in_eval_mode():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    net.train()
    net(torch.randn(64, 3, dtype=torch.float64))  # give BatchNorm non-trivial running statistics
    net.eval()
    x = torch.randn(9, 3, generator=_gen(), dtype=torch.float64)
    with torch.no_grad():
        result = agop(net, x, chunk_size=2)
    gradients = [torch.autograd.functional.jacobian(lambda r: net(r[None])[0, 0], row) for row in x]
    reference = sum(torch.outer(g, g) for g in gradients) / len(x)
    torch.testing.assert_close(result, reference, rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_rejects_a_module_that_runs_twice():
    layer = nn.Linear(3, 3).double()
    with pytest.raises(ValueError, match="ran 2 times"):
        per_sample_gradients(lambda inputs: layer(layer(inputs)).sum(1), torch.ones(2, 3).double(), at=layer)


def test_psd_sqrt_squares_back_and_clips_negative_eigenvalues():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(6, 4))
    psd = b @ b.T  # rank 4
    root = psd_sqrt(torch.tensor(psd)).numpy()
    np.testing.assert_allclose(root @ root, psd, atol=1e-10)
    np.testing.assert_allclose(root, root.T, atol=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    indefinite = q @ np.diag([4.0, -9.0, 1.0]) @ q.T
    expected = q @ np.diag([2.0, 0.0, 1.0]) @ q.T
    np.testing.assert_allclose(psd_sqrt(torch.tensor(indefinite)).numpy(), expected, atol=1e-10)


def test_entry_correlation_is_pearson_of_entries():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    expected = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert entry_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)
    assert entry_correlation(torch.tensor(a), torch.tensor(3 * a + 1)) == pytest.approx(1.0, abs=1e-12)


def test_nfa_correlation_closed_forms():
    w = torch.randn(4, 6, generator=_gen(), dtype=torch.float64)
    gram = w.T @ w
    exact = nfa_correlation(w, 2.5 * gram)
    assert exact.corr_agop == pytest.approx(1.0, abs=1e-12)
    squared = nfa_correlation(w, gram @ gram)  # AGOP = (W^T W)^2  =>  AGOP^{1/2} = W^T W
    assert squared.corr_sqrt_agop == pytest.approx(1.0, abs=1e-9)
    assert squared.corr_agop < 0.999


def test_nfa_correlation_of_first_layer_rises_while_training_on_digits():
    """Spec C.5.4 at test size: 3 hidden ReLU layers, MSE to {-1, +1}, Xavier gain 0.5."""
    x, labels = digits(500)
    net = mlp(256, 3, gain=0.5)
    history = []

    def record(_epoch: int, model: nn.Sequential) -> None:
        history.append(nfa_correlation(model[0].weight, agop(model, x, at=model[0])).corr_sqrt_agop)

    record(0, net)
    accuracy = train_mse(net, x, labels, epochs=12, lr=0.1, on_epoch=lambda e, m: record(e, m) if e % 4 == 0 else None)
    assert accuracy > 0.95
    assert history[-1] > history[0] + 0.05, history
    assert history[-1] > 0.9, history


# ----------------------------------------------------------------------------------------------- CTR checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("agop")
    return {
        "root": root,
        "deepfm": ctr_checkpoint(root, "deepfm", model="fm", arch="parallel"),
        "fm": ctr_checkpoint(root, "fm", model="fm", arch="none", epochs=1),
    }


def _model_and_rows(path, split="valid"):
    ckpt = checkpoint.load(path)
    rows = load_split(ckpt["data"]["path"], split)
    return load_model(ckpt), rows


def test_ctr_agop_matches_per_row_jacobians(runs):
    model, rows = _model_and_rows(runs["deepfm"])
    ids = rows.ids[:40]
    result = ctr_agop(model, ids, [f"f{i}" for i in range(len(VOCAB))], chunk_size=16)
    embeddings = model.embed(ids).detach().double()
    model.double()
    grads = [
        torch.autograd.functional.jacobian(lambda e: model.forward_from_embeddings(e[None])[0], row).flatten()
        for row in embeddings
    ]
    reference = sum(torch.outer(g, g) for g in grads) / len(grads)
    d = embeddings.shape[2]
    shares = [float(reference[f * d : (f + 1) * d, f * d : (f + 1) * d].trace() / reference.trace()) for f in range(4)]
    np.testing.assert_allclose([f.trace_share for f in result.fields], shares, rtol=1e-4)
    eig = np.sqrt(np.clip(np.linalg.eigvalsh(reference.numpy())[::-1], 0, None))
    np.testing.assert_allclose(result.spectrum.normalized[:2], (eig / eig[0])[:2], rtol=1e-4)
    assert len(result.layers) == 2 and result.layers[0].in_features == len(VOCAB) * d
    assert all(-1 <= layer.corr_sqrt_agop <= 1 for layer in result.layers)


def test_agop_command_json_table_and_plot(runs):
    result = runner.invoke(app, ["agop", str(runs["deepfm"]), "--json", "--samples", "300"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["samples"] == 300 and doc["dim"] == 16
    assert sum(f["trace_share"] for f in doc["fields"]) == pytest.approx(1.0)
    assert all(0 <= f["energy_in_table_span"] <= 1 + 1e-9 for f in doc["fields"])
    assert [layer["layer"] for layer in doc["layers"]] == [1, 2]
    png = runs["root"] / "agop.png"
    table = runner.invoke(app, ["agop", str(runs["fm"]), "--plot", str(png)])
    assert table.exit_code == 0, table.output
    assert "Per field" in table.stdout and "Neural Feature Ansatz" not in table.stdout  # no DNN in plain FM
    assert imread(png).shape[0] > 100


def test_nc_command_matches_features_computed_directly(runs):
    result = runner.invoke(app, ["nc", str(runs["deepfm"]), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["layer"] for r in doc["layers"]] == ["dnn layer 1", "dnn layer 2", "head input"]
    assert "K = 2" in doc["note"]
    model, rows = _model_and_rows(runs["deepfm"])
    with torch.no_grad():
        first = model.mlp.blocks[0](model.embed(rows.ids).flatten(1))
    expected = nc_stats(first, rows.labels)
    assert doc["samples"] == len(rows)
    assert doc["layers"][0]["nc1"] == pytest.approx(expected.nc1, rel=1e-6)
    assert all(abs(r["nc2"]) < 1e-20 for r in doc["layers"])  # K = 2
    assert "NC2 = 0 by construction" in runner.invoke(app, ["nc", str(runs["deepfm"])]).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agop", "{root}/missing.pt"], "no such file"),
        (["agop", "{deepfm}", "--data", "{root}/nowhere"], "not a dcollapse dataset"),
        (["agop", "{deepfm}", "--plot", "{root}/out.txt"], "PNG"),
        (["nc", "{deepfm}", "--split", "test"], "no split 'test'"),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, args, message):
    result = runner.invoke(app, [a.format(**runs) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not (runs["root"] / "out.txt").exists()
