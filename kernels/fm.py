"""FM bi-interaction: p = sum_{i<j} e_i * e_j = 0.5 * ((sum_f e)^2 - sum_f e^2), [B, d].

Triton path: one program per tile of samples walks the F fields, gathering each field's rows straight from the
concatenated table (fused) or from E, and keeps only the running sum s and sum of squares q in registers, so the
gathered [B, F, d] is never written. The forward keeps s [B, d] for the backward, where dp/de_f = g * (s - e_f).
Fused backward by the algebra, per distinct table row r read by the pairs (b, f):
sum_(b, f) g_b * (s_b - e_r) = sum g_b * s_b - e_r * sum g_b, one segment reduction over g and s
(:func:`dcollapse.kernels.scatter.reduce_segments`): no per-(sample, field) gradient is written and no row is
gathered again except e_r, once. On E [B, F, d] the backward is the elementwise g * (s - e_f) (PyTorch ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import acc_dtype, use_triton
from dcollapse.kernels.lookup import _field_rows, check_table_op, lookup, table_rows
from dcollapse.kernels.row_update import RowOptimizer
from dcollapse.kernels.scatter import reduce_segments

BLOCK_B = 32


def bi_interaction_reference(E: torch.Tensor) -> torch.Tensor:
    """p [B, d] from E [B, F, d] in PyTorch ops (what CPU tensors run), backward by the algebra."""
    return _BiInteractionReference.apply(E)


class _BiInteractionReference(torch.autograd.Function):
    """p = 0.5 * (s^2 - sum_f e_f^2) with s = sum_f e_f [B, d]; backward dp/de_f = g * (s - e_f) as one pass over
    E (``addcmul``), where autograd of the forward's ops makes about six passes over [B, F, d]."""

    @staticmethod
    def forward(ctx, E):
        s = E.sum(dim=1)
        ctx.save_for_backward(E, s)
        return (s * s - (E * E).sum(dim=1)).mul_(0.5)

    @staticmethod
    def backward(ctx, grad):
        E, s = ctx.saved_tensors
        return torch.addcmul((s * grad)[:, None], E, grad[:, None], value=-1)


@triton.jit
def _bi_forward_kernel(
    src, ids, offsets, out, s_out, B, F, d,
    GATHER: tl.constexpr, STORE_S: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[b] = 0.5 * (s^2 - q) with s, q the sums over fields of e and e * e (and s_out[b] = s when STORE_S), for a
    tile of samples; ``src`` is the table (GATHER) or E viewed as [B * F, d]; out, s_out [B, d]."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b_mask = b < B
    mask = b_mask[:, None] & (cols < d)[None, :]
    s = tl.zeros((BLOCK_B, BLOCK_D), dtype=ACC)
    q = tl.zeros((BLOCK_B, BLOCK_D), dtype=ACC)
    for f in range(F):
        row = _field_rows(ids, offsets, b, f, F, b_mask, GATHER)
        e = tl.load(src + row[:, None] * d + cols[None, :], mask=mask, other=0.0).to(ACC)
        s += e
        q += e * e
    off = b.to(tl.int64)[:, None] * d + cols[None, :]
    tl.store(out + off, (0.5 * (s * s - q)).to(out.dtype.element_ty), mask=mask)
    if STORE_S:
        tl.store(s_out + off, s, mask=mask)


def launch_config(d: int) -> dict[str, int]:
    """Blocks of the forward: 32 samples x up to 64 columns per program (two [32, 64] accumulators, 4 warps)."""
    return {"BLOCK_B": BLOCK_B, "BLOCK_D": min(triton.next_power_of_2(d), 64), "num_warps": 4}


class _BiInteraction(torch.autograd.Function):
    """apply(src, ids, offsets, update): ``src`` the table [V, d] with ids [B, F], offsets [F] (fused), or E
    [B, F, d] with ids, offsets, update None; returns p [B, d]."""

    @staticmethod
    def forward(ctx, src, ids, offsets, update):
        gather = ids is not None
        B, F = ids.shape if gather else src.shape[:2]
        rows = src if gather else src.reshape(B * F, -1)
        d = rows.shape[1]
        acc = acc_dtype(src.dtype)
        out = torch.empty(B, d, dtype=src.dtype, device=src.device)
        store_s = ctx.needs_input_grad[0]  # False under torch.no_grad(): evaluation keeps no s
        s = torch.empty(B, d, dtype=torch.float64 if acc == tl.float64 else torch.float32, device=src.device)
        config = launch_config(d)
        grid = (triton.cdiv(B, config["BLOCK_B"]), triton.cdiv(d, config["BLOCK_D"]))
        _bi_forward_kernel[grid](
            rows, ids, offsets, out, s if store_s else out, B, F, d, GATHER=gather, STORE_S=store_s, ACC=acc, **config
        )
        ctx.save_for_backward(src, ids, offsets, s if store_s else None)
        ctx.gather, ctx.update, ctx.F = gather, update, F
        return out

    @staticmethod
    def backward(ctx, grad):
        src, ids, offsets, s = ctx.saved_tensors
        grad = grad.contiguous()
        if not ctx.gather:
            grad_e = grad[:, None, :] * (s[:, None, :] - src)  # [B, F, d]
            return grad_e.to(src.dtype), None, None, None
        rows = table_rows(ids, offsets)
        if ctx.update is not None:
            reduce_segments(grad, s, rows, src.shape[0], fields=ctx.F, update=ctx.update)
            return None, None, None, None
        dst = torch.zeros(src.shape, dtype=s.dtype, device=src.device)
        reduce_segments(grad, s, rows, src.shape[0], fields=ctx.F, table=src, dst=dst)
        return dst.to(src.dtype), None, None, None


def bi_interaction(E: torch.Tensor) -> torch.Tensor:
    """Public op: p [B, d] from E [B, F, d]; its sum over d is the FM second-order term."""
    if not use_triton(E):
        return bi_interaction_reference(E)
    return _BiInteraction.apply(E.contiguous(), None, None, None)


def fused_bi_interaction(
    table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, update: RowOptimizer | None = None
) -> torch.Tensor:
    """Public op: p [B, d] straight from the table (``table`` [V, d], ``ids`` [B, F], ``offsets`` [F]);
    ``update`` as in :func:`dcollapse.kernels.lookup`."""
    if not use_triton(table):
        return bi_interaction_reference(lookup(table, ids, offsets, update=update))
    check_table_op(table, ids, offsets, update)
    return _BiInteraction.apply(table.contiguous(), ids.contiguous(), offsets.contiguous(), update)
