"""Batched singular spectra through one segmented Gram pass: s = sqrt(clamp(eigvalsh(X_s^T X_s), 0)).

Row segments X_s of one strided matrix X [R, C] (the fields of the concatenated embedding table, the matrices of
a batch, or one batch matrix Z) are cut into row chunks; one Triton program per (chunk, column tile i, column tile
j >= i) accumulates X_chunk[:, i]^T X_chunk[:, j] with ``tl.dot`` in float64, chunks combine in float64 in a
fixed order (the segment reduction of :mod:`dcollapse.kernels.scatter`), and
``torch.linalg.eigvalsh`` (float64) gives every segment's eigenvalues at once.

Why float64 inside the tile: the Gram squares the condition number, so an fp32 accumulation perturbs every
eigenvalue by about u * s_1^2 and the relative error of s_i grows like (u / 2) (s_1 / s_i)^2, which breaks the
accuracy bar (normalized singular values within 1e-3 relative of float64 ``svdvals`` down to s_i / s_1 = 1e-3).
fp32 products are exact in float64, so loading fp32 and accumulating in float64 keeps the Gram exact to ~1e-16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dcollapse.kernels.dispatch import check_dot_blocks, dot_block, use_triton
from dcollapse.kernels.scatter import reduce_segments, split_segments

BLOCK_ROWS = 32
BLOCK_COLS_MAX = 64
TARGET_PROGRAMS = 2048  # enough (chunk x tile) programs to fill a large GPU several times over
SMALL_EIGH = 32  # torch's CUDA eigh runs a batched solver only up to n = 32; larger batches go to the CPU


@triton.jit
def _gram_kernel(
    x,
    chunk_begin,
    chunk_end,
    out,
    C,
    s_r,
    s_c,
    C_PAD,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """out[chunk, tile i, tile j] = X[rows of chunk, cols i]^T X[rows of chunk, cols j] in float64 (only j >= i)."""
    chunk = tl.program_id(0)
    ti = tl.program_id(1)
    tj = tl.program_id(2)
    if tj >= ti:
        begin = tl.load(chunk_begin + chunk)
        end = tl.load(chunk_end + chunk)
        ci = ti * BLOCK_C + tl.arange(0, BLOCK_C)
        cj = tj * BLOCK_C + tl.arange(0, BLOCK_C)
        ci_off = ci.to(tl.int64)[None, :] * s_c  # int64: a transposed view's column stride can be large
        cj_off = cj.to(tl.int64)[None, :] * s_c
        acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float64)
        for start in range(begin, end, BLOCK_R):
            r = start + tl.arange(0, BLOCK_R)
            r_off = r.to(tl.int64)[:, None] * s_r
            r_mask = (r < end)[:, None]
            xi = tl.load(x + r_off + ci_off, mask=r_mask & (ci < C)[None, :], other=0.0).to(tl.float64)
            xj = tl.load(x + r_off + cj_off, mask=r_mask & (cj < C)[None, :], other=0.0).to(tl.float64)
            acc += tl.dot(tl.trans(xi), xj)
        out_off = chunk.to(tl.int64) * C_PAD * C_PAD + ci[:, None] * C_PAD + cj[None, :]
        tl.store(out + out_off, acc)


def segment_grams_reference(x: torch.Tensor, begins: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """float64 [S, C, C]: X[begins[s]:ends[s]]^T X[begins[s]:ends[s]] for the row segments of ``x`` [R, C]."""
    grams = [x[b:e].to(torch.float64) for b, e in zip(begins.tolist(), ends.tolist(), strict=True)]
    return torch.stack([block.T @ block for block in grams])


def segment_grams_triton(x: torch.Tensor, begins: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Same as :func:`segment_grams_reference`, one Triton launch over all segments, float64 [S, C, C]."""
    R, C = x.shape
    block_c = dot_block(C, cap=BLOCK_COLS_MAX)
    check_dot_blocks(block_c, BLOCK_ROWS)
    tiles = triton.cdiv(C, block_c)
    c_pad = tiles * block_c
    rows_per_chunk = triton.cdiv(max(1, R * tiles * (tiles + 1) // 2 // TARGET_PROGRAMS), BLOCK_ROWS) * BLOCK_ROWS
    chunk_begin, chunk_end, chunk_segment = split_segments(begins.to(x.device), ends.to(x.device), rows_per_chunk)
    partial = torch.zeros(len(chunk_begin), c_pad, c_pad, dtype=torch.float64, device=x.device)
    if len(chunk_begin):
        _gram_kernel[(len(chunk_begin), tiles, tiles)](
            x, chunk_begin, chunk_end, partial, C, x.stride(0), x.stride(1), c_pad, BLOCK_R=BLOCK_ROWS, BLOCK_C=block_c
        )
    grams = torch.zeros(len(begins), c_pad, c_pad, dtype=torch.float64, device=x.device)
    flat = c_pad * c_pad  # chunks combine per segment in a fixed order (no atomics): the same bits every run
    reduce_segments(partial.view(-1, flat), None, chunk_segment, len(begins), dst=grams.view(-1, flat))
    upper = grams[:, :C, :C].triu()
    return upper + upper.triu(1).transpose(1, 2)


def segment_grams(x: torch.Tensor, begins: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Public op: float64 [S, C, C] Gram matrices of the row segments [begins[s], ends[s]) of ``x`` [R, C]."""
    if use_triton(x):
        return segment_grams_triton(x.detach(), begins.long(), ends.long())
    return segment_grams_reference(x.detach(), begins.long(), ends.long())


def gram_singular_values(grams: torch.Tensor) -> torch.Tensor:
    """Singular values float64 [..., C], descending, of the matrices whose Gram matrices are ``grams`` [..., C, C]."""
    if grams.is_cuda and grams.dim() > 2 and grams.shape[0] > 1 and grams.shape[-1] > SMALL_EIGH:
        eig = torch.linalg.eigvalsh(grams.cpu()).to(grams.device)
    else:
        eig = torch.linalg.eigvalsh(grams)
    return eig.clamp(min=0).sqrt().flip(-1)


def gram_spectra(table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """float64 [F, d]: the singular values (descending) of every field block of ``table`` [V, d].

    Field f holds rows [offsets[f], offsets[f + 1]) (the last runs to V). A field with fewer than d rows has
    only that many nonzero singular values; the rest come out as (numerically) zero.
    """
    offsets = offsets.long().to(table.device)
    ends = torch.cat([offsets[1:], offsets.new_tensor([table.shape[0]])])
    return gram_singular_values(segment_grams(table, offsets, ends))


def matrix_spectrum(z: torch.Tensor) -> torch.Tensor:
    """float64 [min(n, k)]: singular values (descending) of ``z`` [n, k], via the Gram of its smaller side."""
    x = z if z.shape[0] >= z.shape[1] else z.T
    bounds = torch.tensor([[0], [x.shape[0]]], device=z.device)
    return gram_singular_values(segment_grams(x, bounds[0], bounds[1]))[0]


def batched_spectra(matrices: torch.Tensor) -> torch.Tensor:
    """float64 [M, min(n, k)]: singular values (descending) of each of ``matrices`` [M, n, k]."""
    M, n, k = matrices.shape
    x = matrices.reshape(M * n, k) if n >= k else matrices.transpose(1, 2).reshape(M * k, n)
    rows = max(n, k)
    begins = torch.arange(M, device=matrices.device) * rows
    return gram_singular_values(segment_grams(x, begins, begins + rows))
