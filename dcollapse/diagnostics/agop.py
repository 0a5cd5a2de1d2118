"""Average gradient outer product (AGOP) and the Neural Feature Ansatz (NFA) correlation.

AGOP of a predictor f: R^d -> R^c over inputs x_1..x_n (Beaglehole et al., "Average gradient outer product as a
mechanism for deep neural collapse"):

    AGOP(f) = (1/n) sum_i J_f(x_i)^T J_f(x_i)  =  (1/n) sum_i sum_c grad f_c(x_i) grad f_c(x_i)^T      [d, d]

The per-sample gradients are taken as gradients of the *summed* output, which equals the per-sample gradients
whenever samples do not interact (eval mode: no batch statistics, no dropout). Every function here therefore
requires the predictor to be in eval mode (or to have no sample-coupling layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dcollapse.metrics.spectrum import SpectrumStats, rankme, singular_values

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel

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
    total = x.new_zeros(())
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


@dataclass
class FieldAGOP:
    """One field's block A_ff [d, d] of the CTR AGOP and how it sits relative to the field's embedding table.

    trace_share = tr(A_ff) / tr(AGOP) (how much the predictor uses the field); table_rank = k = round(RankMe) of
    the table [V_f, d]; energy_in_table_span = fraction of tr(A_ff) along the table's top-k right singular vectors
    (k / d for an AGOP isotropic within the field). Low values mean the predictor is sensitive to directions the
    collapsed table hardly spans; high values mean the unspanned directions are also unused.
    """

    field: str
    trace_share: float
    agop_rankme: float
    table_rank: int
    energy_in_table_span: float
    isotropic_baseline: float
    normalized: list[float]  # sqrt(eigenvalues) of A_ff / the largest, descending


@dataclass
class LayerNFA:
    """NFA correlations of one DNN linear layer [out, in] with the AGOP wrt its input."""

    layer: int
    in_features: int
    out_features: int
    corr_agop: float
    corr_sqrt_agop: float


@dataclass
class CTRAgop:
    """AGOP of a CTR model's logit wrt the concatenated embeddings [F*d] over ``samples`` rows."""

    samples: int
    dim: int
    spectrum: SpectrumStats  # of sqrt(eigenvalues of AGOP) = singular values of the per-sample gradients / sqrt(n)
    fields: list[FieldAGOP]
    layers: list[LayerNFA]


def ctr_agop(model: CTRModel, ids: torch.Tensor, field_names: list[str], chunk_size: int = DEFAULT_CHUNK) -> CTRAgop:
    """AGOP analysis of a CTR model (eval mode) on ids int [B, F]: spectrum, per-field use, NFA per DNN layer."""
    model.eval()
    with torch.no_grad():
        embeddings = model.embed(ids)  # [B, F, d]
    _, num_fields, d = embeddings.shape

    def logit_from_flat(flat: torch.Tensor) -> torch.Tensor:
        return model.forward_from_embeddings(flat.reshape(-1, num_fields, d))

    full = agop(logit_from_flat, embeddings.flatten(1), chunk_size=chunk_size)
    total = float(full.trace())
    fields = []
    for f, name in enumerate(field_names):
        block = full[f * d : (f + 1) * d, f * d : (f + 1) * d]
        # right singular vectors of the table [V_f, d] (the vectors are needed, so not singular_values())
        _, table_s, vh = torch.linalg.svd(model.embedding.field_table(f).detach().to(torch.float64))
        k = max(1, min(d, round(rankme(table_s)))) if float(table_s.max()) > 0 else 1
        top = vh[:k].T  # [d, k]
        block_trace = float(block.trace())
        inside = float((top * (block @ top)).sum()) / block_trace if block_trace > 0 else float("nan")
        block_stats = SpectrumStats.from_singular_values(singular_values(block).sqrt())
        share = block_trace / total if total > 0 else float("nan")
        fields.append(FieldAGOP(name, share, block_stats.rankme, k, inside, k / d, block_stats.normalized))
    layers = []
    for i, linear in enumerate(model.mlp_linears(), start=1):
        layer_agop = agop(model.forward_from_embeddings, embeddings, at=linear, chunk_size=chunk_size)
        corr = nfa_correlation(linear.weight, layer_agop)
        layers.append(LayerNFA(i, linear.in_features, linear.out_features, corr.corr_agop, corr.corr_sqrt_agop))
    spectrum = SpectrumStats.from_singular_values(singular_values(full).sqrt())
    return CTRAgop(int(ids.shape[0]), num_fields * d, spectrum, fields, layers)


def agop_report(checkpoint: str | Path, data: str | Path | None = None, *, split: str = "valid",
                samples: int = 2000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The ``dcollapse agop`` document of a ``dcollapse train`` checkpoint: :func:`ctr_agop` on ``samples``
    seeded rows of ``split``."""
    from dcollapse.reports.runs import load_run_with_batch, model_summary

    run, rows = load_run_with_batch(checkpoint, data, split, samples, seed)
    assert run.ckpt is not None and run.model is not None
    names = [f["name"] for f in run.ckpt["meta"]["fields"]]
    result = ctr_agop(run.model, rows.ids, names)
    return {
        "schema": "dcollapse.agop/1",
        "checkpoint": run.label,
        "model": model_summary(run.config),
        "split": split,
        "seed": seed,
        "samples": len(rows),
        **dataclasses.asdict(result),
    }
