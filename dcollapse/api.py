"""The metrics on plain matrices, for the Python API: each takes a tensor or array and returns numbers.

``Z`` is any matrix [n, k] (e.g. a batch's concatenated embeddings [B, F*d]); ``E`` an embedding table [V, d].
All are computed from float64 singular values (:mod:`dcollapse.metrics.spectrum`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dcollapse.metrics import collapse, spectrum


def _matrix(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"expected a matrix [n, k], got shape {tuple(t.shape)}")
    return t


def singular_spectrum(E: Any) -> torch.Tensor:
    """Singular values, descending, float64 [min(n, k)] of a matrix [n, k]."""
    return spectrum.singular_values(_matrix(E))


def rankme(Z: Any) -> float:
    """RankMe (entropy effective rank) of a matrix [n, k], in [1, min(n, k)]: the source paper's headline metric."""
    return spectrum.rankme(singular_spectrum(Z))


def information_abundance(E: Any) -> float:
    """Information abundance sum(s) / max(s) of a table [V, d], in [1, min(V, d)]."""
    return spectrum.information_abundance(singular_spectrum(E))


def field_spectra(
    table: Any, offsets: Sequence[int] | torch.Tensor, names: Sequence[str] | None = None
) -> list[collapse.FieldSpectrum]:
    """Per-field spectra of one concatenated table [R, d] whose field f starts at row ``offsets[f]``."""
    offsets_t = torch.as_tensor(offsets, dtype=torch.int64)
    names = list(names) if names is not None else [f"f{i}" for i in range(offsets_t.numel())]
    return collapse.field_spectra(_matrix(table), offsets_t, names)
