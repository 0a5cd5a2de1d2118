"""Pairwise dot interaction (DLRM/IPNN): the upper triangle i < j of E E^T per sample, [B, F(F-1)/2].

Triton path: a program per (BLOCK_B samples, field tile i, field tile j >= i) gathers, sample after sample, the
two field tiles' rows (fused: straight from the concatenated table) as [F_TILE, BLOCK_D] blocks (every dot
dimension >= 16), accumulates Z_ij = E_i E_j^T over d blocks with ``tl.dot`` and stores only the pairs i < j.
Backward: with G the [F, F] matrix holding the triangle's gradient, dE = (G + G^T) E, a program per (sample tile,
field tile i) summing over the field tiles j; the fused op reduces dE rows into the table gradient (or the
in-backward update).

Tiles: F_TILE <= 32 and BLOCK_D <= 32 (fields above 32 are tiled), at most 3k fp32 tile values live per
program at any F and d: no register spills on sm_90 (scripts/check_kernels_compile.py). A batched 3D ``tl.dot``
over several samples at once spilled (a 8-16 byte stack at F_TILE = 16-32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import acc_dtype, check_dot_blocks, dot_block, dot_precision, num_warps, use_triton
from dcollapse.kernels.lookup import _field_rows, check_table_op, field_op, lookup
from dcollapse.kernels.row_update import RowOptimizer

F_TILE_MAX = 32
BLOCK_D_MAX = 32
SAMPLE_VALUES = 1024  # a program walks BLOCK_B = SAMPLE_VALUES // F_TILE^2 samples (one at F_TILE = 32)


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
def _load_fields(src, ids, offsets, b, f, dcols, B, F, d, GATHER: tl.constexpr, ACC: tl.constexpr):
    """Rows of sample ``b`` (a scalar), fields ``f`` [F_TILE, 1], columns ``dcols`` [1, BLOCK_D]: [F_TILE, BLOCK_D]."""
    bf_mask = (f < F) & (f * 0 + b < B)  # b broadcast explicitly: the interpreter rejects a 0-d mask operand
    row = _field_rows(ids, offsets, b, f, F, bf_mask, GATHER)
    e = tl.load(src + row * d + dcols, mask=bf_mask & (dcols < d), other=0.0)
    return e.to(ACC)


@triton.jit
def _dot_forward_kernel(
    src, ids, offsets, out, B, F, d, P,
    GATHER: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, F_TILE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[b, pair(i, j)] = <e_i, e_j> for i < j in field tiles (program_id 1, program_id 2), for the BLOCK_B
    samples of program_id 0 in turn; out [B, P]."""
    ti = tl.program_id(1)
    tj = tl.program_id(2)
    if tj >= ti:
        fi = ti * F_TILE + tl.arange(0, F_TILE)[:, None]
        fj = tj * F_TILE + tl.arange(0, F_TILE)[:, None]
        i = fi
        j = tj * F_TILE + tl.arange(0, F_TILE)[None, :]
        for k in range(BLOCK_B):
            b = tl.program_id(0) * BLOCK_B + k
            z = tl.zeros((F_TILE, F_TILE), dtype=ACC)
            for d0 in range(0, d, BLOCK_D):
                dcols = d0 + tl.arange(0, BLOCK_D)[None, :]
                e_i = _load_fields(src, ids, offsets, b, fi, dcols, B, F, d, GATHER, ACC)
                e_j = _load_fields(src, ids, offsets, b, fj, dcols, B, F, d, GATHER, ACC)
                z += tl.dot(e_i, tl.trans(e_j), input_precision=PRECISION)
            mask = (i < j) & (j < F) & (i * 0 + b < B)
            tl.store(out + b.to(tl.int64) * P + _pair_index(i, j, F), z.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _dot_backward_kernel(
    src, ids, offsets, grad, grad_e, B, F, d, P,
    GATHER: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, F_TILE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """grad_e[b, tile i] = sum over field tiles j of (G + G^T)[tile i, tile j] E[b, tile j], G the [F, F] upper
    triangle of grad[b], for the BLOCK_B samples of program_id 0 in turn; grad_e [B, F, d]."""
    i = tl.program_id(1) * F_TILE + tl.arange(0, F_TILE)[:, None]
    for k in range(BLOCK_B):
        b = tl.program_id(0) * BLOCK_B + k
        for d0 in range(0, d, BLOCK_D):
            dcols = d0 + tl.arange(0, BLOCK_D)[None, :]
            de = tl.zeros((F_TILE, BLOCK_D), dtype=ACC)
            for j0 in range(0, F, F_TILE):
                j = j0 + tl.arange(0, F_TILE)[None, :]
                sym_mask = (i != j) & (i < F) & (j < F) & (i * 0 + b < B)
                pair = _pair_index(tl.minimum(i, j), tl.maximum(i, j), F)
                g = tl.load(grad + b.to(tl.int64) * P + pair, mask=sym_mask, other=0.0).to(ACC)
                fj = j0 + tl.arange(0, F_TILE)[:, None]
                e = _load_fields(src, ids, offsets, b, fj, dcols, B, F, d, GATHER, ACC)
                de += tl.dot(g, e, input_precision=PRECISION)
            out_row = b.to(tl.int64) * F + i
            mask = (i < F) & (dcols < d) & (i * 0 + b < B)
            tl.store(grad_e + out_row * d + dcols, de.to(grad_e.dtype.element_ty), mask=mask)


def launch_config(F: int, d: int) -> dict[str, int]:
    """Tiles and warps for F fields of width d (see the module docstring)."""
    f_tile, block_d = dot_block(F, cap=F_TILE_MAX), dot_block(d, cap=BLOCK_D_MAX)
    check_dot_blocks(f_tile, block_d)
    block_b = max(1, SAMPLE_VALUES // (f_tile * f_tile))
    values = f_tile * (f_tile + 2 * block_d)  # the accumulator and two operand tiles of one sample
    return {"BLOCK_B": block_b, "F_TILE": f_tile, "BLOCK_D": block_d, "num_warps": num_warps(values)}


def _launch(kernel, src, ids, offsets, B, F, *tensors, gather: bool):
    d = src.shape[1]
    config = launch_config(F, d)
    tiles = triton.cdiv(F, config["F_TILE"])
    grid = (triton.cdiv(B, config["BLOCK_B"]), tiles) + ((tiles,) if kernel is _dot_forward_kernel else ())
    P = F * (F - 1) // 2
    kernel[grid](
        src, ids, offsets, *tensors, B, F, d, P,
        GATHER=gather, ACC=acc_dtype(src.dtype), PRECISION=dot_precision(src.dtype), **config,
    )  # fmt: skip


_PairwiseDot = field_op(_launch, _dot_forward_kernel, _dot_backward_kernel, out_width=lambda F, d: F * (F - 1) // 2)


def pairwise_dot(E: torch.Tensor) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] from E [B, F, d]."""
    if not use_triton(E):
        return pairwise_dot_reference(E)
    return _PairwiseDot.apply(E.contiguous(), None, None, None)


def fused_pairwise_dot(
    table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, update: RowOptimizer | None = None
) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] straight from the table (``table`` [V, d], ``ids`` [B, F], ``offsets`` [F]);
    ``update`` as in :func:`dcollapse.kernels.lookup`."""
    if not use_triton(table):
        return pairwise_dot_reference(lookup(table, ids, offsets, update=update))
    check_table_op(table, ids, offsets, update)
    return _PairwiseDot.apply(table.contiguous(), ids.contiguous(), offsets.contiguous(), update)
