"""Collapse metrics against independent float64 numpy references, closed forms and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dcollapse.metrics.collapse import (
    batch_matrix,
    covariance_eigenvalues,
    embedding_gradients,
    field_spectra,
    fixed_batch_indices,
    gradient_spectra,
    matrix_spectra,
)
from dcollapse.metrics.spectrum import GRAM_COLUMNS, SpectrumStats, field_singular_values, gram, singular_values


def numpy_metrics(matrix: np.ndarray) -> dict[str, float]:
    """RankMe, IA and stable rank written out from numpy's float64 SVD."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return {
        "rankme": float(np.exp(-(p * np.log(p)).sum())),
        "ia": float(s.sum() / s.max()),
        "stable_rank": float((s**2).sum() / s.max() ** 2),
        "above_1e3": int((s > 1e-3 * s.max()).sum()),
        "normalized": s / s.max(),
    }


def assert_matches(stats: SpectrumStats, ref: dict, rtol: float = 1e-9) -> None:
    assert stats.rankme == pytest.approx(ref["rankme"], rel=rtol)
    assert stats.ia == pytest.approx(ref["ia"], rel=rtol)
    assert stats.stable_rank == pytest.approx(ref["stable_rank"], rel=rtol)
    assert stats.above_1e3 == ref["above_1e3"]
    np.testing.assert_allclose(stats.normalized, ref["normalized"], rtol=0, atol=rtol)


def decaying_matrix(rng: np.random.Generator, rows: int, cols: int, decay: float = 0.6) -> np.ndarray:
    """A random [rows, cols] matrix with singular values decaying geometrically (a collapsing spectrum)."""
    u, _ = np.linalg.qr(rng.standard_normal((rows, min(rows, cols))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, min(rows, cols))))
    s = 3.0 * decay ** np.arange(min(rows, cols))
    return (u * s) @ v.T


@pytest.mark.parametrize("shape", [(200, 16), (37, 10), (9, 24)])
def test_matrix_spectrum_matches_numpy_svd(shape):
    rng = np.random.default_rng(sum(shape))
    z = rng.standard_normal(shape) * rng.uniform(0.1, 3.0, size=shape[1])
    stats, _ = matrix_spectra(torch.tensor(z, dtype=torch.float32))
    assert_matches(stats, numpy_metrics(z.astype(np.float32)), rtol=1e-6)


def test_field_spectra_match_per_field_numpy_svd():
    rng = np.random.default_rng(0)
    sizes, dim = [50, 3, 120, 16, 7], 16
    blocks = [decaying_matrix(rng, n, dim, decay) for n, decay in zip(sizes, [0.9, 0.5, 0.7, 0.3, 0.95], strict=True)]
    table = torch.tensor(np.concatenate(blocks))
    offsets = torch.tensor(np.cumsum([0, *sizes[:-1]]), dtype=torch.int64)
    result = field_spectra(table, offsets, [f"f{i}" for i in range(len(sizes))])
    assert [r.field for r in result] == ["f0", "f1", "f2", "f3", "f4"]
    assert [r.vocab_size for r in result] == sizes
    for r, block in zip(result, blocks, strict=True):
        # Gram + eigvalsh in float64 keeps ~1e-16 * (s1/si)^2 relative error: tiny down to s/s1 = 1e-6.
        assert_matches(r.spectrum, numpy_metrics(block), rtol=1e-7)
        assert len(r.spectrum.normalized) == min(block.shape)


def test_gram_of_row_chunks_and_upper_blocks_is_the_float64_product():
    """Columns over several GRAM_COLUMNS blocks (the last one narrower), rows over several chunks (the last short):
    the mirrored upper triangle equals numpy's float64 X^T X; a wide matrix's spectrum takes the Gram of X^T."""
    rng = np.random.default_rng(3)
    cols = 2 * GRAM_COLUMNS + 37
    x = (rng.standard_normal((301, cols)) * rng.uniform(0.01, 5.0, cols)).astype(np.float32)
    want = x.astype(np.float64).T @ x.astype(np.float64)
    got = gram(torch.from_numpy(x), chunk_rows=64)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    tall = decaying_matrix(rng, 400, 40).astype(np.float32)  # rows >= TALL * cols: the Gram path, both ways
    for matrix in (tall, tall.T):
        s = singular_values(torch.from_numpy(np.ascontiguousarray(matrix)))
        want_s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(s.numpy() / s[0].item(), want_s / want_s[0], rtol=1e-3, atol=1e-7)  # Gram floor


def test_field_singular_values_chunking_and_padding():
    rng = np.random.default_rng(1)
    table = torch.tensor(rng.standard_normal((23, 5)))
    offsets = torch.tensor([0, 2, 20])
    whole = field_singular_values(table, offsets)
    chunked = field_singular_values(table, offsets, chunk_rows=4)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)
    assert whole.shape == (3, 5)
    np.testing.assert_allclose(whole[0, :2], np.linalg.svd(table[:2].numpy(), compute_uv=False), rtol=1e-10)
    assert torch.all(whole[0, 2:] < 1e-6)  # a 2-row field has rank 2; the rest is zero up to rounding


def test_rank_one_closed_form():
    rng = np.random.default_rng(2)
    z = np.outer(rng.standard_normal(300), rng.standard_normal(12))
    stats, _ = matrix_spectra(torch.tensor(z))
    # a tall matrix goes through its float64 Gram: exact zeros come back as ~sqrt(1e-16) * s_1
    assert stats.ia == pytest.approx(1.0, abs=1e-6)
    assert stats.rankme == pytest.approx(1.0, abs=1e-4)
    assert stats.stable_rank == pytest.approx(1.0, abs=1e-9)
    assert stats.above_1e3 == 1
    (field,) = field_spectra(torch.tensor(z), torch.tensor([0]), ["only"])
    assert field.spectrum.ia == pytest.approx(1.0, abs=1e-6)
    assert field.spectrum.rankme == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dim", [4, 16, 33])
def test_orthogonal_equal_norm_columns_closed_form(dim):
    rng = np.random.default_rng(dim)
    q, _ = np.linalg.qr(rng.standard_normal((5 * dim, dim)))
    z = torch.tensor(2.5 * q)
    stats, _ = matrix_spectra(z)
    assert stats.ia == pytest.approx(dim, rel=1e-9)
    assert stats.rankme == pytest.approx(dim, rel=1e-5)
    assert stats.stable_rank == pytest.approx(dim, rel=1e-9)
    (field,) = field_spectra(z, torch.tensor([0]), ["only"])
    assert field.spectrum.ia == pytest.approx(dim, rel=1e-9)
    assert field.spectrum.rankme == pytest.approx(dim, rel=1e-5)


def test_invariance_to_row_permutation_and_positive_scaling():
    rng = np.random.default_rng(3)
    z = torch.tensor(decaying_matrix(rng, 150, 20, 0.8))
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    base_z, base_cov = matrix_spectra(z)
    (base_field,) = field_spectra(z, torch.tensor([0]), ["f"])
    for variant in (z[perm], 7.3 * z, 0.01 * z[perm]):
        z_stats, cov_stats = matrix_spectra(variant)
        (field,) = field_spectra(variant, torch.tensor([0]), ["f"])
        for got, want in ((z_stats, base_z), (cov_stats, base_cov), (field.spectrum, base_field.spectrum)):
            assert got.rankme == pytest.approx(want.rankme, rel=1e-9)
            assert got.ia == pytest.approx(want.ia, rel=1e-9)
            np.testing.assert_allclose(got.normalized, want.normalized, atol=1e-9)


def test_covariance_eigenvalues_match_numpy_cov():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((400, 9)) @ rng.standard_normal((9, 9)) + 5.0  # non-zero mean must be removed
    got = covariance_eigenvalues(torch.tensor(z)).numpy()
    want = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_zero_matrix_gives_zero_metrics_not_nan():
    stats = SpectrumStats.from_singular_values(torch.zeros(4, dtype=torch.float64))
    assert (stats.rankme, stats.ia, stats.above_1e3) == (0.0, 0.0, 0)


def test_fixed_batch_indices_are_seeded_sorted_and_capped():
    a = fixed_batch_indices(1000, size=100, seed=3)
    assert torch.equal(a, fixed_batch_indices(1000, size=100, seed=3))
    assert not torch.equal(a, fixed_batch_indices(1000, size=100, seed=4))
    assert a.numel() == 100 and a.unique().numel() == 100 and torch.all(a[1:] > a[:-1])
    assert torch.equal(fixed_batch_indices(40, size=100), torch.arange(40))
    with pytest.raises(ValueError):
        fixed_batch_indices(10, size=0)


class LinearTwoBranch(nn.Module):
    """A stand-in obeying the model contract with gradients known in closed form.

    logit = <w, E> (interaction branch) + <v, E> (DNN branch), so dLoss/dE = (sigmoid(logit) - y) / B * (w + v),
    split into (sigmoid - y) / B * w and (sigmoid - y) / B * v.
    """

    def __init__(self, table: torch.Tensor, offsets: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.table, self.offsets, self.w, self.v = table, offsets, w, v
        self.mlp = nn.Identity()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.long() + self.offsets]

    def forward_from_embeddings(self, e: torch.Tensor, detach: str | None = None, ids=None) -> torch.Tensor:
        e_int = e.detach() if detach == "interaction" else e
        e_dnn = e.detach() if detach == "dnn" else e
        return (e_int * self.w).sum((1, 2)) + (e_dnn * self.v).sum((1, 2))


def test_embedding_gradients_closed_form_and_branch_sum(monkeypatch):
    monkeypatch.setattr("dcollapse.metrics.collapse.CHUNK_ROWS", 7)  # chunked sums must equal the full batch
    gen = torch.Generator().manual_seed(0)
    fields, dim, n = 3, 4, 30
    table = torch.randn(12, dim, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([0, 4, 8])
    w, v = torch.randn(fields, dim, generator=gen, dtype=torch.float64), torch.randn(fields, dim, generator=gen)
    model = LinearTwoBranch(table, offsets, w, v.double())
    ids = torch.randint(0, 4, (n, fields), generator=gen)
    labels = (torch.rand(n, generator=gen) < 0.4).float()
    grads = embedding_gradients(model, ids, labels)
    e = table[ids + offsets]
    residual = (torch.sigmoid((e * (w + v)).sum((1, 2))) - labels.double()) / n
    torch.testing.assert_close(grads["interaction"], (residual[:, None, None] * w).flatten(1))
    torch.testing.assert_close(grads["dnn"], (residual[:, None, None] * v.double()).flatten(1))
    torch.testing.assert_close(grads["total"], grads["interaction"] + grads["dnn"])
    assert batch_matrix(model, ids).shape == (n, fields * dim)

    report = gradient_spectra(model, ids, labels)
    assert (report.rows, report.dim) == (n, fields * dim)
    assert set(report.branches) == {"interaction", "dnn"}
    # each branch gradient is (residual) x (one fixed direction): exactly rank one
    assert report.branches["interaction"].ia == pytest.approx(1.0, abs=1e-6)
    assert report.norms["dnn"] == pytest.approx(float(grads["dnn"].norm()), rel=1e-9)

    model.mlp = None
    assert set(embedding_gradients(model, ids, labels)) == {"total"}
