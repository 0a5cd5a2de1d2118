"""Singular spectra and the scalar collapse metrics computed from them.

All spectra in dcollapse go through :func:`singular_values` (one matrix) or
:func:`batched_singular_values` (many), so the Triton spectrum kernel can serve every caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dcollapse.kernels.dispatch import use_triton
from dcollapse.kernels.spectrum import batched_spectra, gram_singular_values, gram_spectra, matrix_spectrum

RANKME_EPS = 1e-7


def _triton_gram(tensor: torch.Tensor) -> bool:
    """CUDA tensors use the Triton float64 Gram + eigvalsh path (dcollapse.kernels.spectrum); CPU ones use svdvals."""
    return tensor.is_cuda and use_triton(tensor)


TALL = 4  # one side at least this many times the other: the Gram path is much faster than svdvals on the CPU too


GRAM_ROWS = 4096  # rows of a matrix held in float64 at a time by gram()
GRAM_COLUMNS = 128  # columns of each block row of the Gram's upper triangle


def gram(matrix: torch.Tensor, chunk_rows: int = GRAM_ROWS) -> torch.Tensor:
    """float64 [k, k]: matrix^T matrix of a matrix [n, k], accumulated in float64 over chunks of ``chunk_rows`` rows.

    The products of float32 entries are exact in float64, so the Gram is exact to ~1e-16 relative. Only the block
    rows of the upper triangle are multiplied (block [a:b, a:] per chunk), the lower triangle is their mirror:
    about 0.6 of a full product's multiply-adds at k = 624, and no float64 copy of the whole matrix.
    """
    n, k = matrix.shape
    edges = [*range(0, k, GRAM_COLUMNS), k]
    upper = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for lo in range(0, n, chunk_rows):
        block = matrix[lo : lo + chunk_rows].detach().to(torch.float64)
        for a, b in zip(edges, edges[1:], strict=False):
            upper[a:b, a:].addmm_(block[:, a:b].T, block[:, a:])
    return upper.triu() + upper.triu(1).T


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, float64 [min(n, k)] of a matrix [n, k].

    CUDA tensors (Triton), and tall or wide CPU matrices (e.g. a batch Z [50000, F*d], :func:`gram`), use the
    float64 Gram of the smaller side + eigvalsh (relative error ~1e-16 (s_1/s_i)^2, several times faster than
    svdvals on the CPU).
    """
    n, k = matrix.shape
    if _triton_gram(matrix):
        return matrix_spectrum(matrix.detach())
    if min(n, k) > 0 and max(n, k) >= TALL * min(n, k):
        return gram_singular_values(gram(matrix if n >= k else matrix.T))
    return torch.linalg.svdvals(matrix.detach().to(torch.float64))


def batched_singular_values(matrices: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, float64 [M, min(n, k)] of a stack of matrices [M, n, k]."""
    if _triton_gram(matrices):
        return batched_spectra(matrices.detach())
    return torch.linalg.svdvals(matrices.detach().to(torch.float64))


def field_singular_values(table: torch.Tensor, offsets: torch.Tensor, chunk_rows: int = GRAM_ROWS) -> torch.Tensor:
    """Singular values, descending, float64 [F, d] of each field's block of one concatenated table [R, d].

    Field f owns rows ``offsets[f]`` up to ``offsets[f + 1]`` (the last field up to R). A field with fewer
    than d rows has zeros past its rank. Each field's Gram matrix E_f^T E_f [d, d] is accumulated in float64
    over chunks of ``chunk_rows`` rows (:func:`gram`), then all F are solved at once: s = sqrt(clamp(eigvalsh(G), 0)).
    """
    if _triton_gram(table):
        return gram_spectra(table.detach(), offsets)
    ends = [*offsets.tolist()[1:], table.shape[0]]
    blocks = zip(offsets.tolist(), ends, strict=True)
    return gram_singular_values(torch.stack([gram(table[start:end], chunk_rows) for start, end in blocks]))


def rankme(s: torch.Tensor) -> float:
    """Entropy effective rank: p = s / sum(s) + 1e-7, RankMe = exp(-sum p log p)."""
    p = s / s.sum() + RANKME_EPS
    return float(torch.exp(-(p * torch.log(p)).sum()))


def information_abundance(s: torch.Tensor) -> float:
    """IA = sum(s) / max(s), in [1, len(s)] (Guo et al. 2024)."""
    return float(s.sum() / s.max())


def stable_rank(s: torch.Tensor) -> float:
    """sum(s^2) / max(s)^2."""
    return float((s**2).sum() / s.max() ** 2)


def count_above(s: torch.Tensor, rel: float = 1e-3) -> int:
    """How many singular values exceed ``rel`` times the largest."""
    return int((s > rel * s.max()).sum())


@dataclass
class SpectrumStats:
    """Collapse metrics of one spectrum; ``normalized`` = s / s_1 (descending)."""

    rankme: float
    ia: float
    stable_rank: float
    above_1e3: int
    normalized: list[float]

    @classmethod
    def from_singular_values(cls, s: torch.Tensor) -> SpectrumStats:
        s = s.to(torch.float64)
        if s.numel() == 0 or float(s.max()) == 0.0:
            return cls(0.0, 0.0, 0.0, 0, [0.0] * s.numel())
        return cls(rankme(s), information_abundance(s), stable_rank(s), count_above(s), (s / s.max()).tolist())
