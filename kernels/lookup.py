"""Field-embedding lookup from one concatenated table: ids [B, F] + offsets [F] -> E [B, F, d].

Triton path: a gather kernel forward, the table-gradient segment reduction (:mod:`dcollapse.kernels.scatter`)
backward. ``sparse=True``: the table's gradient is a sparse COO tensor holding only the rows the batch read, once
each (for optimizers that update only those rows, e.g. ``torch.optim.SparseAdam``). ``update=``: a
:class:`~dcollapse.kernels.row_update.RowOptimizer` of the table, applied in the backward to the rows the batch
read (the table gets no gradient at all); the reference path computes the same with ``torch.unique``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import check_ids, use_triton
from dcollapse.kernels.row_update import RowOptimizer
from dcollapse.kernels.scatter import reduce_segments, scatter_rows, update_rows


def lookup_reference(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """E [B, F, d] = table[ids + offsets]; ``table`` [V, d], ``ids`` int [B, F] local ids, ``offsets`` int64 [F].

    ``index_select`` rather than advanced indexing: on the CPU it gathers about 6x and trains about 1.6x faster
    (its backward is one ``index_add`` instead of a general ``index_put``).
    """
    rows = table_rows(ids, offsets)
    return table.index_select(0, rows).view(*ids.shape, table.shape[1])


def table_rows(ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """int64 [B * F]: the table row of every (sample, field), row-major."""
    return (ids.long() + offsets).reshape(-1)


def table_gradient(
    grad_rows: torch.Tensor, rows: torch.Tensor, num_rows: int, update: RowOptimizer | None
) -> torch.Tensor | None:
    """The Triton backward's table gradient [num_rows, d] from row gradients ``grad_rows`` [N, d] of ``rows`` [N];
    with ``update``, None instead: the rows are updated in place."""
    if update is None:
        return scatter_rows(grad_rows, rows, num_rows)
    update_rows(grad_rows, rows, update)
    return None


def check_table_op(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, update: RowOptimizer | None) -> None:
    """Refuse ids outside their fields' vocabularies and an ``update`` that belongs to another table."""
    check_ids(ids, offsets, table.shape[0])
    if update is not None and update.table is not table:
        raise ValueError("update= must be the RowOptimizer of the table the op reads")


@triton.jit
def _field_rows(ids, offsets, b, f, F, mask, GATHER: tl.constexpr):
    """int64 table rows of samples ``b`` in fields ``f`` (broadcast together, e.g. [BLOCK_B] and a scalar).

    GATHER: row = ids[b, f] + offsets[f] in the concatenated table; otherwise E itself is the table, row = b * F + f.
    """
    if GATHER:
        row = tl.load(ids + b * F + f, mask=mask, other=0).to(tl.int64)
        row += tl.load(offsets + (f + 0 * b), mask=mask, other=0)
    else:
        row = b.to(tl.int64) * F + f
    return row


@triton.jit
def _gather_kernel(table, ids, offsets, out, n, F, d, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[i] = table[ids[i] + offsets[i % F]] for the flattened (sample, field) index i < n = B * F."""
    idx = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n_mask = idx < n
    row = tl.load(ids + idx, mask=n_mask, other=0).to(tl.int64) + tl.load(offsets + idx % F, mask=n_mask, other=0)
    mask = n_mask[:, None] & (cols < d)[None, :]
    e = tl.load(table + row[:, None] * d + cols[None, :], mask=mask, other=0.0)
    tl.store(out + idx.to(tl.int64)[:, None] * d + cols[None, :], e, mask=mask)


def lookup_triton(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Forward gather only (no autograd), E [B, F, d]."""
    (B, F), d = ids.shape, table.shape[1]
    out = torch.empty(B, F, d, dtype=table.dtype, device=table.device)
    block_d = min(triton.next_power_of_2(d), 128)
    grid = (triton.cdiv(B * F, 64), triton.cdiv(d, block_d))
    _gather_kernel[grid](table, ids, offsets, out, B * F, F, d, BLOCK_N=64, BLOCK_D=block_d)
    return out


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, offsets, update):
        ctx.save_for_backward(ids, offsets)
        ctx.num_rows, ctx.update = table.shape[0], update
        return lookup_triton(table, ids, offsets)

    @staticmethod
    def backward(ctx, grad_e):
        ids, offsets = ctx.saved_tensors
        rows = table_rows(ids, offsets)
        return table_gradient(grad_e.reshape(-1, grad_e.shape[-1]), rows, ctx.num_rows, ctx.update), None, None, None


def field_op(launch, forward_kernel, backward_kernel, out_width) -> type[torch.autograd.Function]:
    """An autograd op on field rows [B, F, d]: ``apply(src, ids, offsets, update)`` with ``src`` the table [V, d],
    ``ids`` [B, F] and ``offsets`` [F] (rows gathered inside the kernels: the fused lookup; ``update`` as in
    :func:`lookup`), or ``src`` = E [B, F, d] with ``ids``/``offsets``/``update`` None.

    ``launch(kernel, rows, ids, offsets, B, F, *tensors, gather=)`` runs a kernel on ``rows`` (the table, or E as
    [B * F, d]): ``forward_kernel`` writes out [B, out_width(F, d)]; ``backward_kernel`` reads the output gradient
    and writes grad_e [B, F, d], which the fused op scatters into the table gradient [V, d].
    """

    class FieldOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, src, ids, offsets, update):
            gather = ids is not None
            B, F = ids.shape if gather else src.shape[:2]
            rows = src if gather else src.reshape(B * F, -1)
            out = torch.empty(B, out_width(F, rows.shape[1]), dtype=src.dtype, device=src.device)
            launch(forward_kernel, rows, ids, offsets, B, F, out, gather=gather)
            ctx.save_for_backward(src, ids, offsets)
            ctx.gather, ctx.B, ctx.F, ctx.update = gather, B, F, update
            return out

        @staticmethod
        def backward(ctx, grad):
            src, ids, offsets = ctx.saved_tensors
            B, F, gather = ctx.B, ctx.F, ctx.gather
            rows = src if gather else src.reshape(B * F, -1)
            d = rows.shape[1]
            grad_e = torch.empty(B, F, d, dtype=src.dtype, device=src.device)
            launch(backward_kernel, rows, ids, offsets, B, F, grad.contiguous(), grad_e, gather=gather)
            if not gather:
                return grad_e, None, None, None
            rows_read = table_rows(ids, offsets)
            return table_gradient(grad_e.reshape(-1, d), rows_read, rows.shape[0], ctx.update), None, None, None

    return FieldOp


MARK_ROWS_PER_ID = 8  # distinct_rows marks a [V] mask instead of sorting while V <= this many times N


def distinct_rows(rows: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct values of ``rows`` int64 [N] < ``num_rows``, sorted, int64 [U]; each row's position among
    them, int64 [N]), as ``torch.unique(rows, return_inverse=True)``.

    On the CPU a table of up to :data:`MARK_ROWS_PER_ID` x N rows marks the rows read in a [V] mask (no sort:
    about 7x faster than the sort for V = 10^4-10^5 and N = 4096 x 39 Zipf ids, 1.5x at V = 10^6, one thread);
    larger tables (and CUDA tensors) sort, as int32 when the table allows (about 2x faster than int64).
    """
    if not rows.is_cuda and rows.numel() and num_rows <= MARK_ROWS_PER_ID * rows.numel():
        mark = torch.zeros(num_rows, dtype=torch.bool, device=rows.device).index_fill_(0, rows, True)
        unique = mark.nonzero().squeeze(1)
        position = torch.empty(num_rows, dtype=torch.int64, device=rows.device)
        position[unique] = torch.arange(len(unique), device=rows.device)
        return unique, position.index_select(0, rows)
    narrow = rows.int() if num_rows <= torch.iinfo(torch.int32).max else rows
    unique, inverse = torch.unique(narrow, return_inverse=True)
    return unique.long(), inverse


class _SparseLookup(torch.autograd.Function):
    """E [N, d] = table[rows] for rows int64 [N]; the table gradient is a sparse COO tensor [V, d] holding one
    row per distinct id (sorted, U <= N rows), or with ``update`` none: the distinct rows are updated in place
    from their summed gradients (the reference path of the in-backward update).

    The distinct rows are found once in forward (:func:`distinct_rows`) and the row gradients summed per distinct
    row in backward. ``F.embedding(..., sparse=True)`` instead returns all N rows, and the sparse optimizer's
    ``coalesce()`` of them costs several times more on the CPU (N = 4096 x 39 Criteo-shaped ids, one CPU thread:
    about 20 ms to coalesce vs 4 ms to sort the int32 ids).
    """

    @staticmethod
    def forward(ctx, table, rows, update):
        unique, inverse = distinct_rows(rows, table.shape[0])
        ctx.save_for_backward(unique, inverse)
        ctx.table_shape, ctx.update = table.shape, update
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        unique, inverse = ctx.saved_tensors
        values = grad.new_zeros(len(unique), grad.shape[1])
        if use_triton(grad):  # the deterministic segment reduction (index_add_ is atomic on CUDA)
            reduce_segments(grad.contiguous(), None, inverse, len(unique), dst=values)
        else:  # bitwise the same sums as index_add_, about 1.4x faster on the CPU (4096 x 39 rows of 16 into 17k)
            values.index_put_((inverse,), grad, accumulate=True)
        if ctx.update is not None:
            ctx.update.apply_reference(unique, values)
            return None, None, None
        return (
            torch.sparse_coo_tensor(unique[None], values, ctx.table_shape, is_coalesced=True, check_invariants=False),
            None,
            None,
        )


def lookup(
    table: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    sparse: bool = False,
    update: RowOptimizer | None = None,
) -> torch.Tensor:
    """Public op: E [B, F, d] from ``table`` [V, d], local ids int [B, F] and field offsets int [F], differentiable
    with respect to ``table`` (a sparse gradient with ``sparse``; updated in the backward by ``update``)."""
    check_table_op(table, ids, offsets, update)
    if sparse and update is not None:
        raise ValueError("sparse=True and update= exclude each other (update= leaves the table no gradient)")
    if sparse or (update is not None and not use_triton(table)):
        return _SparseLookup.apply(table, table_rows(ids, offsets), update).view(*ids.shape, table.shape[1])
    if not use_triton(table):
        return lookup_reference(table, ids, offsets)
    return _Lookup.apply(table.contiguous(), ids.contiguous(), offsets.contiguous(), update)
