"""Table gradients from row gradients: the sorted segment reduction, into a dense gradient or an in-place update.

Given N gradient contributions to table rows ``rows`` [N], the Triton path (the FBGEMM/TorchRec backward)

1. plans segments on the device with no host sync (:func:`plan_segments`): a stable sort of the rows, the runs of
   equal rows (one segment per distinct row), and pieces of at most ``max_run`` contributions. A segment of one
   piece (almost all of them) is reduced and finished by one program; only the long segments (hot rows such as
   the missing-value ids) are split, their pieces' partial sums written out and combined by a second pass over
   the long segments alone;
2. reduces each piece in a fixed order (deterministic: one program owns a row, no atomics) and finishes the row:
   ``dst[row] = sum`` (a dense gradient, :func:`scatter_rows`) or the optimizer rule of a
   :class:`~dcollapse.kernels.row_update.RowOptimizer` applied to the table row in place (:func:`update_rows`).

Contributions come in two forms: gradient rows ``grad`` [N, d] (row n contributes grad[n]), or the FM algebra
(row n of sample b = n // F contributes g_b * (s_b - e_row), summed per row as sum g_b s_b - e_row sum g_b from
g, s [B, d]: no per-(sample, field) gradient is formed and no row is gathered twice).

``"atomic"`` (:func:`scatter_rows_atomic`): one ``tl.atomic_add`` per element into a zeroed fp32 table, the
simple baseline (the order of the additions, and so the last bits, vary between GPU runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import acc_dtype, num_warps, use_triton
from dcollapse.kernels.row_update import RULES, RowOptimizer

SCATTER_METHODS = ("sorted", "atomic")
MAX_RUN = 256  # contributions one program reduces before a segment is split (TorchRec's long-run threshold)
BLOCK_D_MAX = 1024  # columns per program; wider rows take several column blocks (not row-wise Adagrad: whole rows)
SOURCE_ROWS, SOURCE_FM, SOURCE_PARTIAL = 0, 1, 2
SINK_DENSE, SINK_UPDATE = 0, 1


def scatter_rows_reference(grad: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[num_rows, d] with out[rows[n]] += grad[n]; ``grad`` [N, d], ``rows`` int [N]."""
    out = torch.zeros(num_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, rows.long(), grad)


def split_segments(begins: torch.Tensor, ends: torch.Tensor, max_len: int) -> tuple[torch.Tensor, ...]:
    """Cut segments [begins[s], ends[s]) into pieces of at most ``max_len``.

    Returns (piece_begin [P], piece_end [P], piece_segment [P]) int64, pieces in segment order; empty
    segments get no piece. (Sizes its outputs on the host: one sync; the spectrum's chunking uses it.)
    """
    lengths = (ends - begins).clamp(min=0)
    pieces = torch.div(lengths + max_len - 1, max_len, rounding_mode="floor")
    segment = torch.repeat_interleave(torch.arange(len(begins), device=begins.device), pieces)
    first_piece = torch.cumsum(pieces, 0) - pieces
    k = torch.arange(len(segment), device=begins.device) - first_piece[segment]
    piece_begin = begins[segment] + k * max_len
    piece_end = torch.minimum(piece_begin + max_len, ends[segment])
    return piece_begin, piece_end, segment


@dataclass
class Segments:
    """A device-side plan of the segment reduction of N contributions (all int64 device tensors, fixed sizes).

    ``order`` [N]: contribution index of each sorted position. Pass 1, pieces p < P = N + N // max_run + 1:
    sorted positions [piece_begin[p], piece_end[p]) (empty for unused p) of table row ``piece_row[p]``;
    ``piece_alone[p]`` = 1 when the piece is its segment's only one (finished in pass 1). Pass 2, long segments
    j < L = N // (max_run + 1) + 1: pieces [long_begin[j], long_end[j]) (empty for unused j) of row ``long_row[j]``.
    """

    order: torch.Tensor
    piece_begin: torch.Tensor
    piece_end: torch.Tensor
    piece_row: torch.Tensor
    piece_alone: torch.Tensor
    long_begin: torch.Tensor
    long_end: torch.Tensor
    long_row: torch.Tensor
    has_long: bool  # whether a long segment is possible at all (N > max_run): pass 2 runs only then


def plan_segments(rows: torch.Tensor, num_rows: int, max_run: int = MAX_RUN) -> Segments:
    """The :class:`Segments` of contributions to table rows ``rows`` int [N] (N > 0), computed without a host sync."""
    n = rows.numel()
    narrow = rows.int() if num_rows <= torch.iinfo(torch.int32).max else rows.long()  # the int32 sort is ~2x faster
    sorted_rows, order = torch.sort(narrow.reshape(-1), stable=True)
    sorted_rows = sorted_rows.long()
    starts = torch.ones(n, dtype=torch.bool, device=rows.device)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    segment = torch.cumsum(starts, 0) - 1  # [N] segment of each sorted position
    position = torch.arange(n, device=rows.device)
    begins = torch.full((n + 1,), n, dtype=torch.int64, device=rows.device)
    begins.scatter_reduce_(0, segment, position, "amin")  # first position of each segment; unused entries stay n
    seg_begin, seg_end = begins[:-1], begins[1:]
    seg_row = sorted_rows[seg_begin.clamp(max=n - 1)]
    pieces = torch.div(seg_end - seg_begin + max_run - 1, max_run, rounding_mode="floor")  # [N], 0 when unused
    pieces_end = torch.cumsum(pieces, 0)

    p = torch.arange(n + n // max_run + 1, device=rows.device)
    seg = torch.searchsorted(pieces_end, p, right=True).clamp(max=n - 1)
    piece_begin = seg_begin[seg] + (p - (pieces_end[seg] - pieces[seg])) * max_run
    piece_end = torch.where(p < pieces_end[-1], torch.minimum(piece_begin + max_run, seg_end[seg]), piece_begin)

    long_end = torch.cumsum(pieces > 1, 0)
    j = torch.arange(n // (max_run + 1) + 1, device=rows.device)
    long_seg = torch.searchsorted(long_end, j, right=True).clamp(max=n - 1)
    first = pieces_end[long_seg] - pieces[long_seg]
    return Segments(
        order=order.long(),
        piece_begin=piece_begin,
        piece_end=piece_end,
        piece_row=seg_row[seg],
        piece_alone=(pieces[seg] == 1).to(torch.int32),
        long_begin=first,
        long_end=torch.where(j < long_end[-1], pieces_end[long_seg], first),
        long_row=seg_row[long_seg],
        has_long=n > max_run,
    )


@triton.jit
def _finish_row(
    total, row, cols, col_mask, table, dst, state1, state2, d, step, eps, beta1, beta2, weight_decay,
    SINK: tl.constexpr, RULE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Finish table row ``row`` from its summed gradient ``total`` [BLOCK_D]: dst[row] = total (SINK 0), or the
    rule RULE (0 sgd, 1 adagrad, 2 rowwise_adagrad, 3 lazy_adam; see row_update) applied in place (SINK 1)."""
    off = row * d + cols
    if SINK == 0:
        tl.store(dst + off, total.to(dst.dtype.element_ty), mask=col_mask)
    else:
        w = tl.load(table + off, mask=col_mask, other=0.0).to(ACC)
        g = total + weight_decay * w
        if RULE == 0:
            w -= step * g
        elif RULE == 1:
            s = tl.load(state1 + off, mask=col_mask, other=0.0) + g * g
            tl.store(state1 + off, s, mask=col_mask)
            w -= step * g / (tl.sqrt(s) + eps)
        elif RULE == 2:
            s = tl.load(state1 + row) + tl.sum(g * g, axis=0) / d
            tl.store(state1 + row, s)
            w -= step * g / (tl.sqrt(s) + eps)
        else:
            m = beta1 * tl.load(state1 + off, mask=col_mask, other=0.0) + (1 - beta1) * g
            v = beta2 * tl.load(state2 + off, mask=col_mask, other=0.0) + (1 - beta2) * g * g
            tl.store(state1 + off, m, mask=col_mask)
            tl.store(state2 + off, v, mask=col_mask)
            w -= step * m / (tl.sqrt(v) + eps)
        tl.store(table + off, w.to(table.dtype.element_ty), mask=col_mask)


@triton.jit
def _segment_kernel(
    src, src2, order, begins, ends, rows, alone, partial, table, dst, state1, state2,
    d, F, step, eps, beta1, beta2, weight_decay,
    SOURCE: tl.constexpr, SINK: tl.constexpr, RULE: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One piece [begins[p], ends[p]) of the sorted contributions to table row rows[p], summed in a fixed order,
    columns [program_id(1) * BLOCK_D, + BLOCK_D).

    SOURCE 0: contribution i is src[order[i]] (gradient rows [N, d]); SOURCE 1 (FM): with b = order[i] // F, it is
    g_b * s_b and -g_b * e_row (src = g, src2 = s, both [B, d]); SOURCE 2: src[i] (pass 2 over pass 1's partial
    sums). A piece whose segment has others (SPLIT and alone[p] == 0) writes its sum to partial[p]; otherwise the
    row is finished (:func:`_finish_row`).
    """
    p = tl.program_id(0)
    begin = tl.load(begins + p)
    end = tl.load(ends + p)
    if end > begin:
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < d
        row = tl.load(rows + p).to(tl.int64)
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
        acc2 = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
        for start in range(begin, end, BLOCK_N):
            idx = start + tl.arange(0, BLOCK_N)
            mask = idx < end
            if SOURCE == 2:
                src_row = idx.to(tl.int64)
            else:
                src_row = tl.load(order + idx, mask=mask, other=0).to(tl.int64)
                if SOURCE == 1:
                    src_row = src_row // F
            tile_mask = mask[:, None] & col_mask[None, :]
            off = src_row[:, None] * d + cols[None, :]
            x = tl.load(src + off, mask=tile_mask, other=0.0).to(ACC)
            if SOURCE == 1:
                acc += x * tl.load(src2 + off, mask=tile_mask, other=0.0).to(ACC)
                acc2 += x
            else:
                acc += x
        total = tl.sum(acc, axis=0)
        if SOURCE == 1:
            total -= tl.load(table + row * d + cols, mask=col_mask, other=0.0).to(ACC) * tl.sum(acc2, axis=0)
        finish = True
        if SPLIT:
            finish = tl.load(alone + p) != 0
        if finish:
            _finish_row(total, row, cols, col_mask, table, dst, state1, state2, d, step, eps, beta1, beta2,
                        weight_decay, SINK, RULE, ACC)  # fmt: skip
        else:
            tl.store(partial + p.to(tl.int64) * d + cols, total, mask=col_mask)


def segment_config(d: int, source: int, whole_rows: bool = False) -> dict[str, int]:
    """Blocks and warps of :func:`_segment_kernel` for rows of width ``d``: up to 1024 columns (the whole row when
    ``whole_rows``), about 1024 accumulator values (2048 for FM's two), one warp per 512 values (a warp per row)."""
    if whole_rows and d > BLOCK_D_MAX:
        raise ValueError(f"row-wise Adagrad takes rows of at most {BLOCK_D_MAX} columns, got d = {d}")
    block_d = min(triton.next_power_of_2(d), BLOCK_D_MAX)
    block_n = max(1, min(32, 1024 // block_d))
    values = block_n * block_d * (2 if source == SOURCE_FM else 1)
    return {"BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": num_warps(values)}


def reduce_segments(
    src: torch.Tensor,
    src2: torch.Tensor | None,
    rows: torch.Tensor,
    num_rows: int,
    *,
    fields: int = 1,
    table: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    update: RowOptimizer | None = None,
    max_run: int = MAX_RUN,
) -> None:
    """Sum the contributions to each distinct row of ``rows`` int [N] and finish it: into ``dst`` [num_rows, d]
    (rows not in ``rows`` untouched), or by ``update`` in place (then ``table`` is ``update.table``).

    Contributions: ``src`` [N, d] rows (``src2`` None), or the FM algebra with g = ``src``, s = ``src2`` [B, d],
    ``fields`` = F (N = B * F) and ``table`` [num_rows, d] the embedding rows. No host sync.
    """
    d = src.shape[1]
    source = SOURCE_ROWS if src2 is None else SOURCE_FM
    table = update.table if update is not None else table
    if rows.numel() == 0:
        return
    plan = plan_segments(rows, num_rows, max_run)
    acc = acc_dtype(table.dtype if table is not None else src.dtype)
    torch_acc = torch.float64 if acc == tl.float64 else torch.float32
    if update is not None:
        step = update.next_step_size()
        state = [*update.state, *update.state][:2] if update.state else [table, table]
        rule_args = {"step": step, "eps": update.eps, "beta1": update.betas[0], "beta2": update.betas[1],
                     "weight_decay": update.weight_decay}  # fmt: skip
        sink, rule = SINK_UPDATE, RULES.index(update.rule)
    else:
        state = [dst, dst]
        rule_args = {"step": 0.0, "eps": 0.0, "beta1": 0.0, "beta2": 0.0, "weight_decay": 0.0}
        sink, rule = SINK_DENSE, 0
    table_arg = table if table is not None else src
    dst_arg = dst if dst is not None else table_arg
    partial = torch.empty(len(plan.piece_begin) if plan.has_long else 1, d, dtype=torch_acc, device=src.device)
    common = {"SINK": sink, "RULE": rule, "ACC": acc}
    whole_rows = update is not None and update.rule == "rowwise_adagrad"
    config = segment_config(d, source, whole_rows)
    col_blocks = triton.cdiv(d, config["BLOCK_D"])
    _segment_kernel[(len(plan.piece_begin), col_blocks)](
        src, src2 if src2 is not None else src, plan.order, plan.piece_begin, plan.piece_end, plan.piece_row,
        plan.piece_alone, partial, table_arg, dst_arg, *state, d, fields, **rule_args,
        SOURCE=source, SPLIT=True, **common, **config,
    )  # fmt: skip
    if plan.has_long:
        config = segment_config(d, SOURCE_PARTIAL, whole_rows)
        _segment_kernel[(len(plan.long_begin), col_blocks)](
            partial, partial, plan.order, plan.long_begin, plan.long_end, plan.long_row,
            plan.piece_alone, partial, table_arg, dst_arg, *state, d, fields, **rule_args,
            SOURCE=SOURCE_PARTIAL, SPLIT=False, **common, **config,
        )  # fmt: skip
    if update is not None and table is not None:  # written in place: tell autograd, a stale saved copy then errs
        torch.autograd.graph.increment_version(table)


def scatter_rows_sorted(grad: torch.Tensor, rows: torch.Tensor, num_rows: int, max_run: int = MAX_RUN) -> torch.Tensor:
    """Deterministic Triton scatter (sorted segment reduction), [num_rows, d] fp32 (float64 for float64 ``grad``)."""
    grad = grad.contiguous()
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    out = torch.zeros(num_rows, grad.shape[1], dtype=dtype, device=grad.device)
    reduce_segments(grad, None, rows, num_rows, dst=out, max_run=max_run)
    return out


@triton.jit
def _atomic_scatter_kernel(src, rows, dst, n, d, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[rows[i]] += src[i] with fp32 atomics."""
    idx = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (idx < n)[:, None] & (cols < d)[None, :]
    row = tl.load(rows + idx, mask=idx < n, other=0).to(tl.int64)
    g = tl.load(src + idx.to(tl.int64)[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dst + row[:, None] * d + cols[None, :], g, mask=mask)


def scatter_rows_atomic(grad: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Triton scatter with fp32 atomics, [num_rows, d] fp32."""
    grad = grad.contiguous()
    n, d = grad.shape
    out = torch.zeros(num_rows, d, dtype=torch.float32, device=grad.device)
    if n == 0:
        return out
    block_d = min(triton.next_power_of_2(d), 128)
    grid = (triton.cdiv(n, 64), triton.cdiv(d, block_d))
    _atomic_scatter_kernel[grid](grad, rows.contiguous(), out, n, d, BLOCK_N=64, BLOCK_D=block_d)
    return out


def scatter_rows(grad: torch.Tensor, rows: torch.Tensor, num_rows: int, method: str = "sorted") -> torch.Tensor:
    """Public op: table gradient [num_rows, d] (dtype of ``grad``) with out[rows[n]] += grad[n].

    ``grad`` [N, d], ``rows`` int [N] in [0, num_rows); ``method`` picks the Triton path (sorted | atomic).
    """
    if method not in SCATTER_METHODS:
        raise ValueError(f"scatter method must be one of {SCATTER_METHODS}, not {method!r}")
    if not use_triton(grad):
        return scatter_rows_reference(grad, rows, num_rows)
    if method == "atomic":
        if grad.dtype == torch.float64:
            raise ValueError("the atomic scatter accumulates in float32; use method='sorted' for float64")
        out = scatter_rows_atomic(grad, rows, num_rows)
    else:
        out = scatter_rows_sorted(grad, rows, num_rows)
    return out.to(grad.dtype)


def update_rows(grad: torch.Tensor, rows: torch.Tensor, update: RowOptimizer) -> None:
    """Triton path of the in-backward update: apply ``update`` to the distinct rows of ``rows`` int [N] with
    gradient contributions ``grad`` [N, d], each row's contributions summed first (the exact update)."""
    reduce_segments(grad.contiguous(), None, rows, update.table.shape[0], update=update)
