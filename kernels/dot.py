"""Pairwise dot interaction (DLRM/IPNN): the upper triangle i < j of E E^T per sample, [B, F(F-1)/2].

Triton path: a program per (tile of BLOCK_B samples, field tile i, field tile j >= i) gathers the two field tiles'
rows (fused: straight from the concatenated table) as [BLOCK_B, F_TILE, BLOCK_D] blocks (every dot dimension
>= 16), accumulates Z_ij = E_i E_j^T over d blocks with a batched ``tl.dot`` and stores only the pairs i < j.
Backward: with G the [F, F] matrix holding the triangle's gradient, dE = (G + G^T) E, a program per (sample tile,
field tile i) summing over the field tiles j; the fused op reduces dE rows into the table gradient (or the
in-backward update).

Tiles: F_TILE <= 32 and BLOCK_D <= 32, so no program holds more than about 6k fp32 tile values (8 warps: no
register spills on sm_90, see scripts/check_kernels_compile.py) at any F (fields above 32 are tiled) and d.
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
TILE_VALUES = 2048  # BLOCK_B * F_TILE * F_TILE: the [BLOCK_B, F_TILE, F_TILE] accumulator


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
    """Rows of samples ``b`` [BLOCK_B, 1, 1], fields ``f`` [1, F_TILE, 1], columns ``dcols``: [BLOCK_B, F_TILE, D]."""
    bf_mask = (b < B) & (f < F)
    row = _field_rows(ids, offsets, b, f, F, bf_mask, GATHER)
    e = tl.load(src + row * d + dcols, mask=bf_mask & (dcols < d), other=0.0)
    return e.to(ACC)


@triton.jit
def _dot_forward_kernel(
    src, ids, offsets, out, B, F, d, P,
    GATHER: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, F_TILE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[b, pair(i, j)] = <e_i, e_j> for i < j in field tiles (program_id 1, program_id 2); out [B, P]."""
    ti = tl.program_id(1)
    tj = tl.program_id(2)
    if tj >= ti:
        b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]
        fi = ti * F_TILE + tl.arange(0, F_TILE)[None, :, None]
        fj = tj * F_TILE + tl.arange(0, F_TILE)[None, :, None]
        z = tl.zeros((BLOCK_B, F_TILE, F_TILE), dtype=ACC)
        for d0 in range(0, d, BLOCK_D):
            dcols = d0 + tl.arange(0, BLOCK_D)[None, None, :]
            e_i = _load_fields(src, ids, offsets, b, fi, dcols, B, F, d, GATHER, ACC)
            e_j = _load_fields(src, ids, offsets, b, fj, dcols, B, F, d, GATHER, ACC)
            z += tl.dot(e_i, tl.trans(e_j, 0, 2, 1), input_precision=PRECISION)
        i = ti * F_TILE + tl.arange(0, F_TILE)[None, :, None]
        j = tj * F_TILE + tl.arange(0, F_TILE)[None, None, :]
        mask = (b < B) & (i < j) & (j < F)
        tl.store(out + b.to(tl.int64) * P + _pair_index(i, j, F), z.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _dot_backward_kernel(
    src, ids, offsets, grad, grad_e, B, F, d, P,
    GATHER: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, F_TILE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """grad_e[b, tile i] = sum over field tiles j of (G + G^T)[tile i, tile j] E[b, tile j], G the [F, F] upper
    triangle of grad[b]; grad_e [B, F, d]."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]
    i = tl.program_id(1) * F_TILE + tl.arange(0, F_TILE)[None, :, None]
    for d0 in range(0, d, BLOCK_D):
        dcols = d0 + tl.arange(0, BLOCK_D)[None, None, :]
        de = tl.zeros((BLOCK_B, F_TILE, BLOCK_D), dtype=ACC)
        for j0 in range(0, F, F_TILE):
            j = j0 + tl.arange(0, F_TILE)[None, None, :]
            lo = tl.minimum(i, j)
            hi = tl.maximum(i, j)
            sym_mask = (b < B) & (i != j) & (i < F) & (j < F)
            g = tl.load(grad + b.to(tl.int64) * P + _pair_index(lo, hi, F), mask=sym_mask, other=0.0).to(ACC)
            fj = j0 + tl.arange(0, F_TILE)[None, :, None]
            e = _load_fields(src, ids, offsets, b, fj, dcols, B, F, d, GATHER, ACC)
            de += tl.dot(g, e, input_precision=PRECISION)
        out_row = b.to(tl.int64) * F + i
        tl.store(grad_e + out_row * d + dcols, de.to(grad_e.dtype.element_ty), mask=(b < B) & (i < F) & (dcols < d))


def launch_config(F: int, d: int) -> dict[str, int]:
    """Tiles and warps for F fields of width d (see the module docstring)."""
    f_tile, block_d = dot_block(F, cap=F_TILE_MAX), dot_block(d, cap=BLOCK_D_MAX)
    check_dot_blocks(f_tile, block_d)
    block_b = max(1, TILE_VALUES // (f_tile * f_tile))
    values = block_b * f_tile * (f_tile + 2 * block_d)  # the accumulator and two operand tiles
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
