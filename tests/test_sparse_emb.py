"""--sparse-emb: sparse table gradients, lazy Adam against a float64 numpy reference, exact Adagrad/SGD, lazy L2,
resume, the refusals and the CLI flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _ctr_fixtures import untimed, write_dataset, write_tiny
from typer.testing import CliRunner

import dcollapse.optim as optim
import dcollapse.train as training
from dcollapse import checkpoint, sweep
from dcollapse.cli.app import app
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.errors import UserError
from dcollapse.kernels.lookup import lookup
from dcollapse.models import build_model

runner = CliRunner()
# textbook DeepFM: both tables (embeddings and first-order weights) and dense parameters (DNN, head)
SMALL = {"model": "fm", "arch": "parallel", "style": "textbook", "emb_dim": 4, "dnn": [16, 8], "batch_size": 256}
SMALL |= {"lr": 0.01, "patience": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """Vocabularies larger than a batch of 16 rows reads, so every step leaves rows untouched."""
    directory = tmp_path_factory.mktemp("wide")
    write_dataset(directory, [40, 30, 20, 50], {"train": 400, "valid": 100})
    return directory


def test_sparse_lookup_gradient_is_the_summed_rows_of_the_batch():
    rng = np.random.default_rng(0)
    table = torch.tensor(rng.normal(size=(30, 5)), requires_grad=True)
    offsets = torch.tensor([0, 10, 25])
    ids = torch.tensor(np.stack([rng.integers(0, v, 64) for v in (10, 15, 5)], axis=1))  # many repeated rows
    upstream = rng.normal(size=(64, 3, 5))
    E = lookup(table, ids, offsets, sparse=True)
    np.testing.assert_array_equal(E.detach().numpy(), table.detach().numpy()[ids.numpy() + offsets.numpy()])
    E.backward(torch.tensor(upstream))
    rows = (ids.numpy() + offsets.numpy()).reshape(-1)
    expected = np.zeros((30, 5))
    np.add.at(expected, rows, upstream.reshape(-1, 5))
    grad = table.grad.coalesce()
    assert grad.is_sparse
    np.testing.assert_array_equal(grad.indices()[0].numpy(), np.unique(rows))  # one row per distinct id
    np.testing.assert_allclose(grad.to_dense().numpy(), expected, rtol=1e-12, atol=1e-12)


def numpy_lazy_adam(p, m, v, grad, rows, t, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Lazy Adam (the efficient form of Kingma & Ba, sec. 2) on the ``rows`` of p, m, v [V, d] only, in place;
    ``t`` = the optimizer's step count (1-based)."""
    g = grad[rows]
    m[rows] = beta1 * m[rows] + (1 - beta1) * g
    v[rows] = beta2 * v[rows] + (1 - beta2) * g * g
    step = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
    p[rows] -= step * m[rows] / (np.sqrt(v[rows]) + eps)


def model_and_batches(data_dir: Path, config: dict, steps: int):
    meta = load_meta(data_dir)
    config = training.full_config(config)
    torch.manual_seed(0)
    model = build_model(config, meta).double()
    train = load_split(data_dir, "train", meta)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    batches = [order[i * 16 : (i + 1) * 16] for i in range(steps)]
    offsets = model.embedding.offsets.numpy()
    return (
        model,
        optim.make_optimizer(model, config),
        [(train.ids[b], train.labels[b].double(), offsets) for b in batches],
    )


def test_lazy_adam_updates_only_the_batch_rows_like_a_float64_reference(wide):
    lr = 0.05
    model, optimizer, batches = model_and_batches(wide, {**SMALL, "lr": lr, "sparse_emb": True}, 4)
    tables = model.embedding_parameters()
    state = [(t.detach().numpy().copy(), np.zeros(t.shape), np.zeros(t.shape)) for t in tables]
    head_before = model.head.weight.detach().clone()
    for t, (ids, labels, offsets) in enumerate(batches, start=1):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids), labels).backward()
        touched = np.unique((ids.numpy() + offsets).reshape(-1))
        grads = [table.grad.to_dense().numpy() for table in tables]
        before = [table.detach().clone() for table in tables]
        optimizer.step()
        for table, old, (p, m, v), grad in zip(tables, before, state, grads, strict=True):
            numpy_lazy_adam(p, m, v, grad, touched, t, lr)
            np.testing.assert_allclose(table.detach().numpy(), p, rtol=1e-12, atol=1e-15)
            untouched = np.setdiff1d(np.arange(len(p)), touched)
            assert len(untouched) > 0
            assert torch.equal(table.detach()[untouched], old[untouched])  # not even a moment-driven drift
    assert not torch.equal(model.head.weight, head_before)  # the dense parameters train too

    # dense Adam would have moved rows that a later batch did not read (their moments keep decaying): not the same
    dense, dense_optimizer, _ = model_and_batches(wide, {**SMALL, "lr": lr}, 0)
    for ids, labels, _ in batches:
        dense_optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(dense(ids), labels).backward()
        dense_optimizer.step()
    assert not torch.allclose(dense.embedding.table, model.embedding.table, rtol=1e-6, atol=1e-9)


def test_lazy_l2_decays_only_the_rows_of_the_batch(wide):
    lr, l2 = 0.1, 0.5
    model, optimizer, batches = model_and_batches(wide, {**SMALL, "lr": lr, "l2_emb": l2, "optimizer": "sgd",
                                                         "sparse_emb": True}, 1)  # fmt: skip
    ids, labels, offsets = batches[0]
    tables = model.embedding_parameters()
    before = [table.detach().numpy().copy() for table in tables]
    optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(ids), labels).backward()
    grads = [table.grad.to_dense().numpy() for table in tables]
    optimizer.step()
    touched = np.unique((ids.numpy() + offsets).reshape(-1))
    for table, p, g in zip(tables, before, grads, strict=True):
        expected = p.copy()
        expected[touched] -= lr * (g[touched] + l2 * p[touched])  # SGD on loss + (l2 / 2) * ||row||^2, once per row
        np.testing.assert_allclose(table.detach().numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_sparse_adagrad_and_sgd_train_the_same_run_as_dense(tiny, tmp_path, optimizer):
    config = {**SMALL, "epochs": 2, "optimizer": optimizer, "lr": 0.05}
    dense = training.train(tiny, config, tmp_path / "dense.pt")
    sparse = training.train(tiny, {**config, "sparse_emb": True}, tmp_path / "sparse.pt")
    assert sparse["config"]["sparse_emb"] is True and dense["config"]["sparse_emb"] is False
    for a, b in zip(untimed(sparse["history"]), untimed(dense["history"]), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
    for key, value in dense["state_dict"].items():
        torch.testing.assert_close(sparse["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(dense["state_dict"]["embedding.table"], build_model(config, load_meta(tiny)).embedding.table)


def test_sparse_resume_ends_like_an_uninterrupted_run(tiny, tmp_path):
    config = {**SMALL, "epochs": 3, "dropout": 0.2, "sparse_emb": True, "l2_emb": 1e-3}
    full = training.train(tiny, config, tmp_path / "full.pt")
    training.train(tiny, {**config, "epochs": 1}, tmp_path / "part.pt")
    part = checkpoint.load(tmp_path / "part.pt")
    assert set(part["resume"]["optimizer"]) == {"tables", "dense"}
    resumed = training.train(tiny, {**part["config"], "epochs": 3}, tmp_path / "part.pt", resume=part)
    assert untimed(resumed["history"]) == untimed(full["history"])
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["test"] == full["test"]


class TwoRanks(training.SingleProcess):
    world = 2


def test_refusals_are_one_line_user_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="sparse_emb must be true or false"):
        training.full_config({"sparse_emb": "yes"})
    with pytest.raises(UserError, match="--sparse-emb does not work with data-parallel training"):
        training.train(tiny, {**SMALL, "sparse_emb": True}, tmp_path / "x.pt", parallel=TwoRanks())
    assert not (tmp_path / "x.pt").exists()
    result = runner.invoke(app, ["train", str(tiny), "--sparse-emb", "--nproc", "2", "--out", str(tmp_path / "y.pt")])
    assert result.exit_code == 2 and "--nproc" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "y.pt").exists()


def test_cli_flag_config_file_resume_and_sweep_carry_the_option(tiny, tmp_path):
    out = tmp_path / "run.pt"
    args = ["train", str(tiny), "--emb-dim", "4", "--epochs", "1", "--sparse-emb", "--optimizer", "adagrad"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(out)["config"]["sparse_emb"] is True
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert len(checkpoint.load(out)["history"]) == 2 and checkpoint.load(out)["config"]["sparse_emb"] is True
    changed = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "3", "--no-sparse-emb"])
    assert changed.exit_code == 2 and "--sparse-emb" in changed.output

    toml = tmp_path / "run.toml"
    toml.write_text("sparse-emb = true\nemb_dim = 3\nepochs = 1\n")
    result = runner.invoke(app, ["train", str(tiny), "--config", str(toml), "--out", str(tmp_path / "t.pt")])
    assert result.exit_code == 0, result.output
    assert checkpoint.load(tmp_path / "t.pt")["config"]["sparse_emb"] is True
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})  # wide: "lazy Adam" on one line
    assert "--sparse-emb" in result.output and "lazy Adam" in result.output

    specs = sweep.plan({"fm": {"model": "fm", "sparse_emb": True}}, 1)
    assert specs[0].config["sparse_emb"] is True


def test_fused_update_is_suggested_where_it_was_measured_to_pay():
    config = {"batch_size": 100, "optimizer": "adam", "sparse_emb": False, "fused_update": False, "compile": False}
    assert optim.update_hint(config, table_rows=799, fields=4) is None  # under 2x the 400 ids of a batch
    assert optim.update_hint(config, table_rows=800, fields=4) is not None
    hint = optim.update_hint(config, table_rows=4000, fields=4)
    assert hint is not None and "10x the 400 ids" in hint and "lazy Adam" in hint
    assert "the same rule" in optim.update_hint({**config, "optimizer": "sgd"}, 4000, 4)
    for taken in ("fused_update", "sparse_emb", "compile"):
        assert optim.update_hint({**config, taken: True}, 4000, 4) is None


def test_train_prints_the_hint_for_a_large_table(tmp_path):
    data = tmp_path / "wide"
    write_dataset(data, [2000, 5, 4], {"train": 300, "valid": 100, "test": 100})
    args = ["train", str(data), "--epochs", "1", "--batch-size", "64", "--emb-dim", "4", "--threads", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a.pt")])
    assert result.exit_code == 0, result.output
    assert "note: the tables have 2,009 rows, 10x the 192 ids a batch reads: --fused-update" in result.output
    quiet = CliRunner().invoke(app, [*args, "--fused-update", "--out", str(tmp_path / "b.pt")])
    assert quiet.exit_code == 0 and "note: the tables" not in quiet.output
