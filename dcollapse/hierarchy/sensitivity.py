"""Per-layer sensitivity of a trained hierarchical network to synonym exchange, position shifts and noise.

For the representation f_k of layer k (flattened) and a perturbation T_l of level l (see
:mod:`dcollapse.hierarchy.generator`: level l re-draws the choices of the l lowest generation depths):

    S_k(l) = E_x ||f_k(x) - f_k(T_l x)||^2 / E_{x != z} ||f_k(x) - f_k(z)||^2

with both expectations over the same batch of fresh samples. Three families:
``synonyms`` (re-drawn rules), ``positions`` (re-drawn arrangements: the SRHM's discrete diffeomorphisms) and
``gaussian`` (x + eta with ||eta|| equal, sample by sample, to the ``positions`` perturbation of the same level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dcollapse.hierarchy.generator import Grammar, encode, gaussian_like, perturb, sample
from dcollapse.hierarchy.models import HierarchicalNet, layer_names

KINDS = ("synonyms", "positions", "gaussian")


@dataclass
class Sensitivity:
    """``values[kind]``: [layers][levels] floats, rows = ``layers`` (layer1..layerL, output), cols = levels 1..L."""

    layers: list[str]
    levels: list[int]
    values: dict[str, list[list[float]]]
    samples: int


def pair_distance(f: torch.Tensor) -> float:
    """Mean squared distance between representations of distinct samples: f [N, ...] -> float.

    E_{i != j} ||f_i - f_j||^2 = 2 N / (N - 1) * mean_i ||f_i - mean f||^2 (computed in float64).
    """
    flat = f.flatten(1).to(torch.float64)
    n = flat.shape[0]
    centred = flat - flat.mean(dim=0, keepdim=True)
    return float(2 * n / (n - 1) * centred.pow(2).sum(dim=1).mean())


def shift_distance(f: torch.Tensor, g: torch.Tensor) -> float:
    """Mean squared distance between matched rows: E_i ||f_i - g_i||^2 (float64)."""
    return float((f.flatten(1).to(torch.float64) - g.flatten(1).to(torch.float64)).pow(2).sum(dim=1).mean())


@torch.no_grad()
def measure(
    net: HierarchicalNet,
    grammar: Grammar,
    encoding: str,
    whitening: bool,
    samples: int = 500,
    seed: int = 0,
) -> Sensitivity:
    """S_k(l) for every layer k of ``net`` and level l = 1..L, for the three perturbation families.

    ``samples`` fresh distinct inputs (capped by the grammar's size) are drawn with ``seed``.
    """
    dtype = next(net.parameters()).dtype
    n = min(samples, grammar.max_distinct())
    symbols, _ = sample(grammar, n, seed=seed)
    x = encode(grammar, symbols, encoding, whitening, dtype)
    clean = net.representations(x)
    norms = [pair_distance(f) for f in clean]
    levels = list(range(1, grammar.L + 1))
    values: dict[str, list[list[float]]] = {kind: [[math.nan] * len(levels) for _ in clean] for kind in KINDS}
    for j, level in enumerate(levels):
        shifted = {
            kind: encode(
                grammar,
                perturb(grammar, symbols, kind, level, seed=seed + 1000 * level + i),
                encoding,
                whitening,
                dtype,
            )
            for i, kind in enumerate(("synonyms", "positions"))
        }
        shifted["gaussian"] = gaussian_like(x, shifted["positions"], seed=seed + 1000 * level + 7)
        for kind, xp in shifted.items():
            for k, (f, g) in enumerate(zip(clean, net.representations(xp), strict=True)):
                values[kind][k][j] = shift_distance(f, g) / norms[k] if norms[k] > 0 else math.nan
    return Sensitivity(layers=layer_names(grammar.L), levels=levels, values=values, samples=n)
