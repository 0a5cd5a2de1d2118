"""Average gradient outer product (AGOP) and the Neural Feature Ansatz (NFA) correlation.

AGOP of a predictor f: R^d -> R^c over inputs x_1..x_n (Beaglehole et al., "Average gradient outer product as a
mechanism for deep neural collapse"):

    AGOP(f) = (1/n) sum_i J_f(x_i)^T J_f(x_i)  =  (1/n) sum_i sum_c grad f_c(x_i) grad f_c(x_i)^T      [d, d]

The per-sample gradients are taken as gradients of the *summed* output, which equals the per-sample gradients
whenever samples do not interact (eval mode: no batch statistics, no dropout). Every function here therefore
requires the predictor to be in eval mode (or to have no sample-coupling layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_CHUNK = 1024


def per_sample_gradients(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    at: nn.Module | None = None,
) -> torch.Tensor:
    """Gradients of every output wrt each sample's input, float64 [c, n, d].

    ``fn`` maps x [n, ...] to outputs [n] or [n, c]. With ``at=None`` the gradient is wrt x itself (flattened to
    [n, d]); with ``at`` a module called exactly once inside ``fn``, it is wrt that module's (first) input [n, d],
    i.e. the gradient of the sub-network from that module to the output.
    """
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple) -> tuple:
        leaf = args[0].detach().requires_grad_(True)
        captured.append(leaf)
        return (leaf, *args[1:])

    with torch.enable_grad():
        if at is None:
            captured.append(x.detach().clone().requires_grad_(True))
            outputs = fn(captured[0])
        else:
            handle = at.register_forward_pre_hook(capture)
            try:
                outputs = fn(x)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise ValueError(f"the module given as `at` ran {len(captured)} times in one forward pass (expected 1)")
        inp = captured[0]
        outputs = outputs.reshape(outputs.shape[0], -1)
        if outputs.shape[0] != x.shape[0]:
            raise ValueError(f"fn returned {outputs.shape[0]} rows for {x.shape[0]} samples")
        grads = []
        for c in range(outputs.shape[1]):
            last = c + 1 == outputs.shape[1]
            (g,) = torch.autograd.grad(outputs[:, c].sum(), inp, retain_graph=not last, allow_unused=True)
            g = torch.zeros_like(inp) if g is None else g
            grads.append(g.reshape(g.shape[0], -1).to(torch.float64))
    return torch.stack(grads)


def agop(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    at: nn.Module | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """AGOP float64 [d, d] of ``fn`` over the samples x [n, ...], computed in chunks of ``chunk_size`` samples.

    See :func:`per_sample_gradients` for ``fn`` and ``at``. Memory is bounded by one chunk's gradients [c, chunk, d].
    """
    if x.shape[0] == 0:
        raise ValueError("AGOP needs at least one sample")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = 0.0
    for start in range(0, x.shape[0], chunk_size):
        g = per_sample_gradients(fn, x[start : start + chunk_size], at=at)
        g = g.reshape(-1, g.shape[-1])
        total = total + g.T @ g
    return total / x.shape[0]


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root float64 [d, d] of a symmetric matrix [d, d]; negative eigenvalues are clipped to 0."""
    m = matrix.detach().to(torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


def entry_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the entries of two same-shape matrices (flatten, subtract the mean entry, cosine)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    u = a.detach().reshape(-1).to(torch.float64)
    v = b.detach().reshape(-1).to(torch.float64)
    u = u - u.mean()
    v = v - v.mean()
    denominator = u.norm() * v.norm()
    return float(u @ v / denominator) if denominator > 0 else float("nan")


@dataclass
class NFACorrelation:
    """Neural Feature Ansatz check for one linear layer W [out, in]: corr(W^T W, AGOP) and corr(W^T W, AGOP^{1/2})."""

    corr_agop: float
    corr_sqrt_agop: float


def nfa_correlation(weight: torch.Tensor, layer_agop: torch.Tensor) -> NFACorrelation:
    """NFA correlations of a weight [out, in] with the AGOP [in, in] taken wrt that layer's input."""
    w = weight.detach().to(torch.float64)
    gram = w.T @ w
    return NFACorrelation(entry_correlation(gram, layer_agop), entry_correlation(gram, psd_sqrt(layer_agop)))
