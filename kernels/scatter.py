"""Table-gradient scatter: out[rows[n]] += grad[n] for grad rows [N, d] -> a dense table gradient [V, d].

Two Triton paths behind :func:`scatter_rows`:

* ``"sorted"`` (default, deterministic): sort the row ids, run-length encode them, and give each run one
  program that sums its gradient rows in registers and writes the table row once (the FBGEMM/TorchRec
  backward). Runs longer than ``max_run`` (hot rows such as the OOV/missing ids) are split into chunks whose
  partial sums a second pass of the same kernel reduces, in a fixed order.
* ``"atomic"``: one ``tl.atomic_add`` per gradient element into a zeroed fp32 table (simple; the order of the
  additions, and so the last bits, vary between GPU runs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import use_triton

SCATTER_METHODS = ("sorted", "atomic")
MAX_RUN = 256  # rows one program reduces before a run is split (TorchRec's long-run threshold)


def scatter_rows_reference(grad: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[num_rows, d] with out[rows[n]] += grad[n]; ``grad`` [N, d], ``rows`` int [N]."""
    out = torch.zeros(num_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, rows.long(), grad)


def split_segments(begins: torch.Tensor, ends: torch.Tensor, max_len: int) -> tuple[torch.Tensor, ...]:
    """Cut segments [begins[s], ends[s]) into pieces of at most ``max_len``.

    Returns (piece_begin [P], piece_end [P], piece_segment [P]) int64, pieces in segment order; empty
    segments get no piece.
    """
    lengths = (ends - begins).clamp(min=0)
    pieces = torch.div(lengths + max_len - 1, max_len, rounding_mode="floor")
    segment = torch.repeat_interleave(torch.arange(len(begins), device=begins.device), pieces)
    first_piece = torch.cumsum(pieces, 0) - pieces
    k = torch.arange(len(segment), device=begins.device) - first_piece[segment]
    piece_begin = begins[segment] + k * max_len
    piece_end = torch.minimum(piece_begin + max_len, ends[segment])
    return piece_begin, piece_end, segment


@triton.jit
def _segment_sum_kernel(
    src, order, begins, ends, dst, dst_rows, d, HAS_ORDER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """dst[dst_rows[s]] = sum of src[order[i]] (or src[i]) for i in [begins[s], ends[s]), summed in a fixed order."""
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    begin = tl.load(begins + seg)
    end = tl.load(ends + seg)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start in range(begin, end, BLOCK_N):
        idx = start + tl.arange(0, BLOCK_N)
        mask = idx < end
        if HAS_ORDER:
            src_row = tl.load(order + idx, mask=mask, other=0)
        else:
            src_row = idx
        ptrs = src + src_row.to(tl.int64)[:, None] * d + cols[None, :]
        acc += tl.load(ptrs, mask=mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
    out_row = tl.load(dst_rows + seg).to(tl.int64)
    tl.store(dst + out_row * d + cols, tl.sum(acc, axis=0), mask=col_mask)


@triton.jit
def _atomic_scatter_kernel(src, rows, dst, n, d, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[rows[i]] += src[i] with fp32 atomics."""
    idx = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (idx < n)[:, None] & (cols < d)[None, :]
    row = tl.load(rows + idx, mask=idx < n, other=0).to(tl.int64)
    g = tl.load(src + idx.to(tl.int64)[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dst + row[:, None] * d + cols[None, :], g, mask=mask)


def _launch_segment_sum(src, order, begins, ends, dst, dst_rows) -> None:
    d = src.shape[1]
    block_d = min(triton.next_power_of_2(d), 128)
    grid = (len(begins), triton.cdiv(d, block_d))
    _segment_sum_kernel[grid](
        src,
        order if order is not None else begins,
        begins,
        ends,
        dst,
        dst_rows,
        d,
        HAS_ORDER=order is not None,
        BLOCK_N=16,
        BLOCK_D=block_d,
    )


def scatter_rows_sorted(grad: torch.Tensor, rows: torch.Tensor, num_rows: int, max_run: int = MAX_RUN) -> torch.Tensor:
    """Deterministic Triton scatter (sort + run-length segments), [num_rows, d] fp32."""
    grad = grad.contiguous()
    out = torch.zeros(num_rows, grad.shape[1], dtype=torch.float32, device=grad.device)
    if grad.shape[0] == 0:
        return out
    sorted_rows, order = torch.sort(rows.long(), stable=True)
    unique, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    run_end = torch.cumsum(counts, 0)
    piece_begin, piece_end, piece_run = split_segments(run_end - counts, run_end, max_run)
    if len(piece_begin) == len(unique):  # no long runs: one pass straight into the table
        _launch_segment_sum(grad, order, piece_begin, piece_end, out, unique)
        return out
    partial = torch.empty(len(piece_begin), grad.shape[1], dtype=torch.float32, device=grad.device)
    _launch_segment_sum(
        grad, order, piece_begin, piece_end, partial, torch.arange(len(piece_begin), device=grad.device)
    )
    pieces_per_run = torch.bincount(piece_run, minlength=len(unique))
    pieces_end = torch.cumsum(pieces_per_run, 0)
    _launch_segment_sum(partial, None, pieces_end - pieces_per_run, pieces_end, out, unique)
    return out


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
        out = scatter_rows_atomic(grad, rows, num_rows)
    else:
        out = scatter_rows_sorted(grad, rows, num_rows)
    return out.to(grad.dtype)
