"""The CPU paths written for speed (hand-written backwards of the FM bi-interaction and the DCNv2 cross layer)
against independent float64 references: forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from dcollapse.kernels import bi_interaction, cross_layer, fused_bi_interaction, lookup
from dcollapse.kernels.lookup import distinct_rows


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    monkeypatch.setenv("DCOLLAPSE_KERNELS", "reference")


def fm64(E: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} e_i * e_j [B, d] as an explicit pair sum."""
    F = E.shape[1]
    return sum(E[:, i] * E[:, j] for i in range(F) for j in range(i + 1, F))


def cross64(x0, x, weight, bias):
    return x0 * (x @ weight.T + bias) + x


def check(op, ref64, inputs, atol):
    """op(*inputs) and the gradients of the inputs that require them match ref64 in float64 (a random upstream
    gradient); the gradients of inputs that do not require one stay None."""
    out = op(*inputs)
    leaves = [x for x in inputs if x.requires_grad]
    inputs64 = [x.detach().double().requires_grad_(x.requires_grad) for x in inputs]
    out64 = ref64(*inputs64)
    torch.testing.assert_close(out.double(), out64, atol=atol, rtol=atol)
    weight = torch.randn(out64.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves)
    grads64 = torch.autograd.grad((out64 * weight).sum(), [x for x in inputs64 if x.requires_grad])
    for g, g64 in zip(grads, grads64, strict=True):
        assert g.dtype == out.dtype and g.abs().max() > 0
        torch.testing.assert_close(g.double(), g64, atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("B,F,d", [(7, 13, 10), (4, 39, 16), (1, 2, 3)])
def test_bi_interaction_cpu_path(B, F, d, dtype, atol):
    E = torch.randn(B, F, d, dtype=dtype, generator=torch.Generator().manual_seed(B)).requires_grad_()
    check(bi_interaction, fm64, [E], atol)


def test_bi_interaction_cpu_path_on_a_strided_view():
    """E as a column slice of a wider tensor (one embedding set of several): same values and gradient."""
    wide = torch.randn(5, 6, 8, dtype=torch.float64, requires_grad=True)
    check(lambda w: bi_interaction(w[:, :, 2:6]), lambda w: fm64(w[:, :, 2:6]), [wide], 1e-12)


def test_fused_bi_interaction_cpu_path_table_gradient():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, dtype=torch.float64, generator=gen).requires_grad_()
    ids, offsets = torch.tensor([[0, 1, 3], [2, 1, 0], [0, 0, 0]]), torch.tensor([0, 3, 5])
    check(lambda t: fused_bi_interaction(t, ids, offsets), lambda t: fm64(t[ids + offsets]), [table], 1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
@pytest.mark.parametrize("B,K", [(7, 16), (33, 40), (1, 5)])
def test_cross_layer_cpu_path(B, K, dtype, atol):
    gen = torch.Generator().manual_seed(K)
    x0, x, bias = (torch.randn(*s, dtype=dtype, generator=gen) for s in ((B, K), (B, K), (K,)))
    weight = torch.randn(K, K, dtype=dtype, generator=gen) / K**0.5
    check(cross_layer, cross64, [t.requires_grad_() for t in (x0, x, weight, bias)], atol)


def test_cross_layer_cpu_path_same_input_twice_and_frozen_weights():
    """The first layer reads x0 as x too (both gradients sum); with frozen W and b only the inputs get one."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 12, dtype=torch.float64, generator=gen).requires_grad_()
    weight, bias = torch.randn(12, 12, dtype=torch.float64, generator=gen), torch.randn(12, dtype=torch.float64)
    check(lambda a: cross_layer(a, a, weight, bias), lambda a: cross64(a, a, weight, bias), [x0], 1e-12)


@pytest.mark.parametrize("num_rows", [50, 100_000])  # the mask (V <= 8 N) and the sort
def test_distinct_rows_is_torch_unique(num_rows):
    rows = torch.randint(0, num_rows, (400,), generator=torch.Generator().manual_seed(num_rows))
    rows[:10] = num_rows - 1  # a hot row, and the last row of the table
    unique, inverse = distinct_rows(rows, num_rows)
    expected, expected_inverse = torch.unique(rows, return_inverse=True)
    assert unique.dtype == inverse.dtype == torch.int64
    assert torch.equal(unique, expected) and torch.equal(inverse, expected_inverse)
    empty = distinct_rows(rows[:0], num_rows)
    assert empty[0].numel() == empty[1].numel() == 0


def test_sparse_lookup_on_a_small_table_sums_duplicate_rows():
    """The mask path of the sparse lookup: the table gradient's rows are the distinct rows read, each the sum of
    its reads' gradients (float64 reference by explicit indexing)."""
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(6, 3, dtype=torch.float64, generator=gen).requires_grad_()
    ids, offsets = torch.tensor([[0, 1], [0, 2], [1, 2]]), torch.tensor([0, 3])
    weight = torch.randn(3, 2, 3, dtype=torch.float64, generator=gen)
    (lookup(table, ids, offsets, sparse=True) * weight).sum().backward()
    grad = table.grad.coalesce()
    assert grad.indices()[0].tolist() == [0, 1, 4, 5]
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for b in range(3):
        for f in range(2):
            expected[offsets[f] + ids[b, f]] += weight[b, f]
    torch.testing.assert_close(grad.to_dense(), expected)
