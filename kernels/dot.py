"""Pairwise dot interaction (DLRM/IPNN): the upper triangle i < j of E E^T per sample, [B, F(F-1)/2].

Triton path: one program per tile of BLOCK_B samples gathers their [BLOCK_B, F, d] rows (fused: straight from the
concatenated table) into a tile padded to [BLOCK_B, F_PAD, D_PAD] (every dot dimension >= 16), forms
Z = E E^T with a batched ``tl.dot`` and stores only the strict upper triangle. Backward: with G the [F, F] matrix
holding the triangle's gradient, dE = (G + G^T) E, one more batched ``tl.dot``; the fused op scatters dE rows into
the table gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import check_dot_blocks, dot_block, use_triton
from dcollapse.kernels.lookup import _field_rows, field_op, lookup


def pair_indices(num_fields: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64 [F(F-1)/2] of the strict upper triangle, row-major."""
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1, device=device)
    return rows, cols


def pairwise_dot_reference(E: torch.Tensor) -> torch.Tensor:
    """[B, F(F-1)/2] dots <e_i, e_j> for i < j, from E [B, F, d]."""
    rows, cols = pair_indices(E.shape[1], E.device)
    return torch.bmm(E, E.transpose(1, 2))[:, rows, cols]


@triton.jit
def _pair_index(i, j, F):
    """Position of the pair (i, j), i < j, in the row-major strict upper triangle of an F x F matrix."""
    return i * F - (i * (i + 1)) // 2 + j - i - 1


@triton.jit
def _load_fields(src, ids, offsets, b, f, dcols, B, F, d, GATHER: tl.constexpr):
    """Rows of samples ``b`` [BLOCK_B, 1, 1] and fields ``f`` [1, F_PAD, 1], columns ``dcols``: [BLOCK_B, F_PAD, D]."""
    bf_mask = (b < B) & (f < F)
    row = _field_rows(ids, offsets, b, f, F, bf_mask, GATHER)
    e = tl.load(src + row * d + dcols, mask=bf_mask & (dcols < d), other=0.0)
    return e.to(tl.float32)


@triton.jit
def _dot_forward_kernel(
    src,
    ids,
    offsets,
    out,
    B,
    F,
    d,
    P,
    GATHER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    F_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, pair(i, j)] = <e_i, e_j> for i < j; out [B, P], P = F(F-1)/2."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]
    f = tl.arange(0, F_PAD)[None, :, None]
    z = tl.zeros((BLOCK_B, F_PAD, F_PAD), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dcols = d0 + tl.arange(0, BLOCK_D)[None, None, :]
        e = _load_fields(src, ids, offsets, b, f, dcols, B, F, d, GATHER)
        z += tl.dot(e, tl.trans(e, 0, 2, 1), input_precision="ieee")
    i = tl.arange(0, F_PAD)[None, :, None]
    j = tl.arange(0, F_PAD)[None, None, :]
    mask = (b < B) & (i < j) & (j < F)
    tl.store(out + b.to(tl.int64) * P + _pair_index(i, j, F), z, mask=mask)


@triton.jit
def _dot_backward_kernel(
    src,
    ids,
    offsets,
    grad,
    grad_e,
    B,
    F,
    d,
    P,
    GATHER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    F_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_e[b] = (G + G^T) E[b], G the [F, F] upper triangle of grad[b]; grad_e [B, F, d]."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]
    f = tl.arange(0, F_PAD)[None, :, None]
    i = tl.arange(0, F_PAD)[None, :, None]
    j = tl.arange(0, F_PAD)[None, None, :]
    lo = tl.minimum(i, j)
    hi = tl.maximum(i, j)
    sym_mask = (b < B) & (i != j) & (i < F) & (j < F)
    g = tl.load(grad + b.to(tl.int64) * P + _pair_index(lo, hi, F), mask=sym_mask, other=0.0).to(tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dcols = d0 + tl.arange(0, BLOCK_D)[None, None, :]
        e = _load_fields(src, ids, offsets, b, f, dcols, B, F, d, GATHER)
        de = tl.dot(g, e, input_precision="ieee")
        out_row = b.to(tl.int64) * F + f
        tl.store(grad_e + out_row * d + dcols, de, mask=(b < B) & (f < F) & (dcols < d))


def _launch(kernel, src, ids, offsets, B, F, *tensors, gather: bool):
    d = src.shape[1]
    f_pad, block_d = dot_block(F), dot_block(d, cap=64)
    check_dot_blocks(f_pad, block_d)
    block_b = max(1, 2048 // (f_pad * f_pad))  # keeps the [BLOCK_B, F_PAD, F_PAD] tile at <= 2048 values
    grid = (triton.cdiv(B, block_b),)
    P = F * (F - 1) // 2
    kernel[grid](src, ids, offsets, *tensors, B, F, d, P, GATHER=gather, BLOCK_B=block_b, F_PAD=f_pad, BLOCK_D=block_d)


_PairwiseDot = field_op(_launch, _dot_forward_kernel, _dot_backward_kernel, out_width=lambda F, d: F * (F - 1) // 2)


def pairwise_dot(E: torch.Tensor) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] from E [B, F, d]."""
    if not use_triton(E):
        return pairwise_dot_reference(E)
    return _PairwiseDot.apply(E.contiguous(), None, None)


def fused_pairwise_dot(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] straight from the table (``table`` [V, d], ``ids`` [B, F], ``offsets`` [F])."""
    if not use_triton(table):
        return pairwise_dot_reference(lookup(table, ids, offsets))
    return _PairwiseDot.apply(table.contiguous(), ids.contiguous(), offsets.contiguous())
