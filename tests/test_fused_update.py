"""The in-backward table update (``update=`` a RowOptimizer, ``fused_update`` in training) against float64 numpy
references: every rule on the Triton path (on the ``device`` fixture) and the reference path, the FM algebra
backward, long runs split across programs, determinism, no table gradient, and training (exact SGD/Adagrad equal
the dense runs, resume, refusals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _ctr_fixtures import untimed, write_tiny

import dcollapse.train as training
from dcollapse import checkpoint
from dcollapse.errors import UserError
from dcollapse.kernels import RULES, RowOptimizer, fused_bi_interaction, fused_pairwise_dot, lookup
from dcollapse.kernels.scatter import reduce_segments

LR, WD = 0.05, 0.01
PATHS = ["reference", "triton"]


def numpy_update(rule: str, w: np.ndarray, state: list[np.ndarray], grad: np.ndarray, rows, t: int) -> None:
    """The rule (float64, in place) on ``rows`` of w from the summed gradients ``grad`` [V, d]; ``t``: 1-based step."""
    g = grad[rows] + WD * w[rows]
    if rule == "sgd":
        w[rows] -= LR * g
    elif rule == "adagrad":
        state[0][rows] += g * g
        w[rows] -= LR * g / (np.sqrt(state[0][rows]) + 1e-10)
    elif rule == "rowwise_adagrad":
        state[0][rows] += (g * g).mean(1)
        w[rows] -= LR * g / (np.sqrt(state[0][rows]) + 1e-10)[:, None]
    else:
        m, v = state
        m[rows] = 0.9 * m[rows] + 0.1 * g
        v[rows] = 0.999 * v[rows] + 0.001 * g * g
        w[rows] -= LR * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m[rows] / (np.sqrt(v[rows]) + 1e-8)


def numpy_state(rule: str, shape: tuple[int, int]) -> list[np.ndarray]:
    return {"sgd": [], "rowwise_adagrad": [np.zeros(shape[0])]}.get(rule, [np.zeros(shape), np.zeros(shape)])


def batch(step: int, B: int = 12, F: int = 5, vocab: int = 6):
    """ids [B, F] with repeats and a hot row (field 0 id 1 everywhere), offsets [F]; a different batch per step."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, vocab - 2, (B, F), generator=gen)  # ids vocab-2, vocab-1 never read: untouched rows
    ids[:, 0] = 1
    return ids.to(torch.int32), torch.arange(F) * vocab


def per_row64(table64: np.ndarray, ids, offsets, grad_e: np.ndarray) -> np.ndarray:
    """The table gradient [V, d] of contributions grad_e [B, F, d] at rows ids + offsets (float64)."""
    out = np.zeros_like(table64)
    np.add.at(out, (ids.numpy() + offsets.numpy()).reshape(-1), grad_e.reshape(-1, table64.shape[1]))
    return out


def fm_grad64(t, i, o, up):
    """dp/de_f = g * (s - e_f) for the FM bi-interaction p [B, d], upstream ``up`` [B, d]."""
    E = t[(i + o).numpy()]
    return per_row64(t, i, o, up[:, None] * (E.sum(1, keepdims=True) - E))


def dot_grad64(t, i, o, up):
    """dE = (G + G^T) E for the pairwise dots, G the upper triangle of ``up`` [B, P]."""
    E = t[(i + o).numpy()]
    B, F, _ = E.shape
    G = np.zeros((B, F, F))
    rows, cols = np.triu_indices(F, 1)
    G[:, rows, cols] = up
    return per_row64(t, i, o, (G + G.transpose(0, 2, 1)) @ E)


OPS = {"lookup": (lookup, per_row64), "fm": (fused_bi_interaction, fm_grad64), "dot": (fused_pairwise_dot, dot_grad64)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("op_name", ["lookup", "fm", "dot"])
def test_update_matches_float64_numpy(op_name, rule, path, device, monkeypatch):
    """Three steps of op forward + backward with ``update=``: the read rows follow the numpy rule, the others do
    not move, and the table never gets a gradient."""
    monkeypatch.setenv("DCOLLAPSE_KERNELS", path)
    op, grad64_of = OPS[op_name]
    table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    update = RowOptimizer(table, rule, LR, weight_decay=WD)
    w64 = table.detach().double().cpu().numpy()
    state = numpy_state(rule, w64.shape)
    for t in (1, 2, 3):
        ids, offsets = batch(t)
        out = op(table, ids.to(device), offsets.to(device), update=update)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        before = table.detach().clone()
        (out * upstream.to(device, out.dtype)).sum().backward()
        assert table.grad is None
        up = upstream.numpy()
        read = np.unique((ids.numpy() + offsets.numpy()).reshape(-1))
        numpy_update(rule, w64, state, grad64_of(w64, ids.long(), offsets, up), read, t)
        np.testing.assert_allclose(table.detach().double().cpu().numpy(), w64, rtol=2e-5, atol=2e-6)
        unread = np.setdiff1d(np.arange(30), read)
        assert torch.equal(table.detach()[unread], before[unread])  # not even a moment-driven drift
    assert update.steps == 3


@pytest.mark.parametrize("rule", RULES)
def test_long_runs_split_across_programs_update_the_same(rule, device, monkeypatch):
    """max_run 3 splits the hot row's 12 contributions into pieces combined by the second pass: the same update
    (up to summation order) as one program per row, and bitwise the same every run."""
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "triton")
    ids, offsets = batch(0)
    rows = (ids.long() + offsets).reshape(-1).to(device)
    grad = torch.randn(len(rows), 8, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for max_run in (256, 3, 3):
        table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)).to(device)
        update = RowOptimizer(table, rule, LR, weight_decay=WD)
        reduce_segments(grad, None, rows, 30, update=update, max_run=max_run)
        reduce_segments(grad * 0.5, None, rows, 30, update=update, max_run=max_run)
        results.append(table)
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(results[1], results[2])


def test_triton_update_is_deterministic_and_matches_the_reference_path(device, monkeypatch):
    ids, offsets = batch(4)
    tables = {}
    for path in ("triton", "triton", "reference"):
        monkeypatch.setenv("DCOLLAPSE_KERNELS", path)
        table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
        update = RowOptimizer(table, "lazy_adam", LR)
        for _ in range(2):
            fused_bi_interaction(table, ids.to(device), offsets.to(device), update=update).pow(2).sum().backward()
        tables.setdefault(path, []).append(table.detach())
    assert torch.equal(*tables["triton"])
    torch.testing.assert_close(tables["triton"][0], tables["reference"][0], rtol=1e-5, atol=1e-6)


def test_float64_table_updates_in_float64(device, monkeypatch):
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "triton")
    table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    table.requires_grad_()
    update = RowOptimizer(table, "adagrad", LR, weight_decay=WD)
    assert update.state[0].dtype == torch.float64
    ids, offsets = batch(1)
    out = fused_bi_interaction(table, ids.to(device), offsets.to(device), update=update)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w64 = table.detach().cpu().numpy().copy()
    (out * upstream.to(device)).sum().backward()
    state = numpy_state("adagrad", w64.shape)
    read = np.unique((ids.numpy() + offsets.numpy()).reshape(-1))
    numpy_update("adagrad", w64, state, fm_grad64(w64, ids.long(), offsets, upstream.numpy()), read, 1)
    np.testing.assert_allclose(table.detach().cpu().numpy(), w64, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tables_update_with_float32_state(dtype, device, monkeypatch):
    if device.type != "cuda":
        pytest.skip("bfloat16/float16 kernels are checked on CUDA (the interpreter's half support is incomplete)")
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "triton")
    table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)).to(device, dtype).requires_grad_()
    reference = table.detach().float().clone().requires_grad_()
    update, update32 = RowOptimizer(table, "lazy_adam", LR), RowOptimizer(reference, "lazy_adam", LR)
    assert update.state[0].dtype == torch.float32
    ids, offsets = batch(2)
    for t, u in ((table, update), (reference, update32)):
        fused_bi_interaction(t, ids.to(device), offsets.to(device), update=u).float().pow(2).sum().backward()
    torch.testing.assert_close(table.detach().float(), reference.detach(), rtol=2e-2, atol=2e-2)


def test_refusals(device):
    table = torch.randn(30, 8, device=device, requires_grad=True)
    ids, offsets = batch(0)
    ids, offsets = ids.to(device), offsets.to(device)
    with pytest.raises(ValueError, match="rule must be one of"):
        RowOptimizer(table, "adamw", LR)
    with pytest.raises(ValueError, match="lr > 0"):
        RowOptimizer(table, "sgd", 0.0)
    other = RowOptimizer(torch.randn(30, 8, device=device), "sgd", LR)
    for op in (lookup, fused_bi_interaction, fused_pairwise_dot):
        with pytest.raises(ValueError, match="RowOptimizer of the table"):
            op(table, ids, offsets, update=other)
    with pytest.raises(ValueError, match="exclude each other"):
        lookup(table, ids, offsets, sparse=True, update=RowOptimizer(table, "sgd", LR))
    state = RowOptimizer(table, "adagrad", LR).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        RowOptimizer(table, "lazy_adam", LR).load_state_dict(state)


# training

SMALL = {"model": "fm", "arch": "parallel", "style": "textbook", "emb_dim": 4, "dnn": [16, 8], "batch_size": 256}
SMALL |= {"lr": 0.01, "patience": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_fused_sgd_and_adagrad_train_the_same_run_as_dense(tiny, tmp_path, optimizer):
    """Both tables (embeddings and textbook FM's first-order weights) of a DeepFM, on the reference path."""
    config = {**SMALL, "epochs": 2, "optimizer": optimizer, "lr": 0.05}
    dense = training.train(tiny, config, tmp_path / "dense.pt")
    fused = training.train(tiny, {**config, "fused_update": True}, tmp_path / "fused.pt")
    assert fused["config"]["fused_update"] is True
    for a, b in zip(untimed(fused["history"]), untimed(dense["history"]), strict=True):
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
    for key, value in dense["state_dict"].items():
        torch.testing.assert_close(fused["state_dict"][key], value, rtol=1e-5, atol=1e-6)


def test_fused_adam_is_lazy_adam_and_resumes_exactly(tiny, tmp_path):
    config = {**SMALL, "epochs": 3, "dropout": 0.2, "fused_update": True, "l2_emb": 1e-3}
    full = training.train(tiny, config, tmp_path / "full.pt")
    sparse = training.train(tiny, {**config, "fused_update": False, "sparse_emb": True}, tmp_path / "sparse.pt")
    for key, value in sparse["state_dict"].items():  # the same lazy Adam and lazy L2 as --sparse-emb
        torch.testing.assert_close(full["state_dict"][key], value, rtol=1e-4, atol=1e-6)
    training.train(tiny, {**config, "epochs": 1}, tmp_path / "part.pt")
    part = checkpoint.load(tmp_path / "part.pt")
    assert [s["rule"] for s in part["resume"]["optimizer"]["tables"]] == ["lazy_adam", "lazy_adam"]
    resumed = training.train(tiny, {**part["config"], "epochs": 3}, tmp_path / "part.pt", resume=part)
    assert untimed(resumed["history"]) == untimed(full["history"])
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


class TwoRanks(training.SingleProcess):
    world = 2


def test_training_refusals(tiny, tmp_path):
    for extra in ({"sparse_emb": True}, {"compile": True}):
        with pytest.raises(UserError, match="--fused-update replaces --sparse-emb"):
            training.train(tiny, {**SMALL, "fused_update": True, **extra}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="--fused-update does not work with data-parallel"):
        training.train(tiny, {**SMALL, "fused_update": True}, tmp_path / "x.pt", parallel=TwoRanks())
    assert not (tmp_path / "x.pt").exists()
