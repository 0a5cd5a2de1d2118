"""FM bi-interaction: p = sum_{i<j} e_i * e_j = 0.5 * ((sum_f e)^2 - sum_f e^2), [B, d].

Triton path: one program per tile of samples walks the F fields, gathering each field's rows straight from the
concatenated table (fused) or from E, and keeps only the running sum s and sum of squares q in registers, so the
gathered [B, F, d] is never written. Backward recomputes s (a second gather) and writes dp/de_f = g * (s - e_f);
the fused op then scatters those rows into the table gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import use_triton
from dcollapse.kernels.lookup import _field_rows, field_op, lookup

BLOCK_B = 32


def bi_interaction_reference(E: torch.Tensor) -> torch.Tensor:
    """p [B, d] from E [B, F, d]."""
    total = E.sum(dim=1)
    return 0.5 * (total * total - (E * E).sum(dim=1))


@triton.jit
def _field_sum(src, ids, offsets, b, cols, B, F, d, GATHER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """(s, q) [BLOCK_B, BLOCK_D] fp32: sum over fields of e and of e * e."""
    b_mask = b < B
    mask = b_mask[:, None] & (cols < d)[None, :]
    s = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    q = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for f in range(F):
        row = _field_rows(ids, offsets, b, f, F, b_mask, GATHER)
        e = tl.load(src + row[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s += e
        q += e * e
    return s, q


@triton.jit
def _bi_forward_kernel(
    src, ids, offsets, out, B, F, d, GATHER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr
):
    """out[b] = 0.5 * (s^2 - q) for a tile of samples; ``src`` is the table (GATHER) or E viewed as [B * F, d]."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    s, q = _field_sum(src, ids, offsets, b, cols, B, F, d, GATHER, BLOCK_B, BLOCK_D)
    mask = (b < B)[:, None] & (cols < d)[None, :]
    tl.store(out + b.to(tl.int64)[:, None] * d + cols[None, :], 0.5 * (s * s - q), mask=mask)


@triton.jit
def _bi_backward_kernel(
    src, ids, offsets, grad, grad_e, B, F, d, GATHER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr
):
    """grad_e[b, f] = grad[b] * (s[b] - e[b, f]), grad_e [B, F, d]."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b_mask = b < B
    mask = b_mask[:, None] & (cols < d)[None, :]
    s, _ = _field_sum(src, ids, offsets, b, cols, B, F, d, GATHER, BLOCK_B, BLOCK_D)
    g = tl.load(grad + b.to(tl.int64)[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    for f in range(F):
        row = _field_rows(ids, offsets, b, f, F, b_mask, GATHER)
        e = tl.load(src + row[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        out_row = b.to(tl.int64) * F + f
        tl.store(grad_e + out_row[:, None] * d + cols[None, :], g * (s - e), mask=mask)


def _launch(kernel, src, ids, offsets, B, F, *tensors, gather: bool):
    d = src.shape[1]
    block_d = min(triton.next_power_of_2(d), 64)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(d, block_d))
    kernel[grid](src, ids, offsets, *tensors, B, F, d, GATHER=gather, BLOCK_B=BLOCK_B, BLOCK_D=block_d)


_BiInteraction = field_op(_launch, _bi_forward_kernel, _bi_backward_kernel, out_width=lambda F, d: d)


def bi_interaction(E: torch.Tensor) -> torch.Tensor:
    """Public op: p [B, d] from E [B, F, d]; its sum over d is the FM second-order term."""
    if not use_triton(E):
        return bi_interaction_reference(E)
    return _BiInteraction.apply(E.contiguous(), None, None)


def fused_bi_interaction(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Public op: p [B, d] straight from the table (``table`` [V, d], ``ids`` [B, F], ``offsets`` [F])."""
    if not use_triton(table):
        return bi_interaction_reference(lookup(table, ids, offsets))
    return _BiInteraction.apply(table.contiguous(), ids.contiguous(), offsets.contiguous())
