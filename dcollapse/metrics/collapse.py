"""Dimensional-collapse measurements of a trained CTR model.

Three views, each a plain dataclass of :class:`~dcollapse.metrics.spectrum.SpectrumStats`:

- :func:`field_spectra`: each field's rows of the one embedding table, E_f [V_f, d];
- :func:`batch_spectra`: the concatenated embeddings Z [B, F*d] of one fixed batch of a split (the source
  paper's RankMe), and the eigenvalues of Z's covariance (the paper's spectrum plot);
- :func:`gradient_spectra`: the loss gradient w.r.t. the batch's embeddings [B, F*d], in total and split
  into the part that arrives through the interaction branch and the part through the DNN branch.

Every spectrum goes through :mod:`dcollapse.metrics.spectrum`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F_nn

from dcollapse.data.dataset import Split
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED
from dcollapse.metrics.spectrum import SpectrumStats, field_singular_values, singular_values

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel

CHUNK_ROWS = 8192
BRANCHES = ("interaction", "dnn")


@dataclass
class FieldSpectrum:
    """Spectrum of one field's embedding rows E_f [V_f, d] (``spectrum.ia`` lies in [1, min(V_f, d)])."""

    field: str
    vocab_size: int
    spectrum: SpectrumStats


@dataclass
class BatchSpectrum:
    """Spectra of Z [rows, dim] (dim = F * d) of a fixed batch of ``split``, and of Z's covariance [dim, dim].

    ``covariance`` holds the metrics of the covariance's eigenvalues (its singular values), descending.
    """

    split: str
    rows: int
    dim: int
    seed: int
    z: SpectrumStats
    covariance: SpectrumStats


@dataclass
class GradientSpectra:
    """Spectra of dLoss/dE reshaped to [rows, dim] (dim = F * d), mean-BCE loss over the batch.

    ``branches`` maps "interaction" / "dnn" to the spectrum of the gradient arriving through that branch
    (empty for models without a DNN); ``norms`` holds the Frobenius norm of "total" and of each branch.
    A branch with zero norm receives no gradient of its own (its spectrum is all zeros).
    """

    rows: int
    dim: int
    total: SpectrumStats
    branches: dict[str, SpectrumStats]
    norms: dict[str, float]


def field_spectra(table: torch.Tensor, offsets: torch.Tensor, names: Sequence[str]) -> list[FieldSpectrum]:
    """Per-field spectra of a concatenated table [R, d] whose field f starts at row ``offsets[f]`` (int64 [F])."""
    if len(names) != offsets.numel():
        raise ValueError(f"{len(names)} field names for {offsets.numel()} offsets")
    rows, dim = table.shape
    sizes = torch.diff(offsets.cpu(), append=torch.tensor([rows])).tolist()
    spectra = field_singular_values(table, offsets)
    return [
        FieldSpectrum(name, size, SpectrumStats.from_singular_values(s[: min(size, dim)].cpu()))
        for name, size, s in zip(names, sizes, spectra, strict=True)
    ]


def model_field_spectra(model: CTRModel, meta: dict) -> list[FieldSpectrum]:
    """:func:`field_spectra` of a CTR model's ``embedding.table`` [sum V_f, d], field names from ``meta``."""
    names = [f["name"] for f in meta["fields"]]
    return field_spectra(model.embedding.table, model.embedding.offsets, names)


def fixed_batch_indices(num_rows: int, size: int = DEFAULT_BATCH_ROWS, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """int64 [min(size, num_rows)]: a fixed, seeded, sorted sample of row indices (all rows when fewer)."""
    if size <= 0:
        raise ValueError(f"batch size must be positive, got {size}")
    if num_rows <= size:
        return torch.arange(num_rows)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_rows, generator=generator)[:size].sort().values


def fixed_batch(rows: Split, size: int = DEFAULT_BATCH_ROWS, seed: int = DEFAULT_SEED) -> Split:
    """The fixed evaluation batch of a split: the rows at :func:`fixed_batch_indices` (ids [B, F], labels [B]).

    Training's per-epoch snapshot and every report draw their batch here, so they measure the same rows.
    """
    index = fixed_batch_indices(len(rows), size, seed).to(rows.ids.device)
    return Split(rows.ids[index], rows.labels[index])


@torch.no_grad()
def batch_matrix(model: CTRModel, ids: torch.Tensor) -> torch.Tensor:
    """Z [B, F * d]: the model's embeddings of local ids [B, F], flattened per sample (computed in chunks)."""
    chunks = [model.embed(ids[lo : lo + CHUNK_ROWS]).flatten(1) for lo in range(0, ids.shape[0], CHUNK_ROWS)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def covariance_eigenvalues(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, descending, float64 [min(B, K)] of the covariance [K, K] of the rows of z [B, K].

    Computed as the squared singular values of the centred z over (B - 1), never forming the covariance.
    """
    z = z.detach().to(torch.float64)
    centred = z - z.mean(dim=0, keepdim=True)
    return singular_values(centred) ** 2 / max(z.shape[0] - 1, 1)


def matrix_spectra(z: torch.Tensor) -> tuple[SpectrumStats, SpectrumStats]:
    """(spectrum of z [B, K], spectrum of its covariance)."""
    return SpectrumStats.from_singular_values(singular_values(z)), SpectrumStats.from_singular_values(
        covariance_eigenvalues(z)
    )


def batch_spectra(model: CTRModel, ids: torch.Tensor, split: str = "valid", seed: int = DEFAULT_SEED) -> BatchSpectrum:
    """Spectra of Z = :func:`batch_matrix` of the batch ids [B, F] (``split`` and ``seed`` are recorded)."""
    z = batch_matrix(model, ids)
    z_stats, cov_stats = matrix_spectra(z)
    return BatchSpectrum(split, z.shape[0], z.shape[1], seed, z_stats, cov_stats)


def embedding_gradients(model: CTRModel, ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """dLoss/dE as [B, F * d] for the mean BCE-with-logits loss over the batch ids [B, F], labels [B].

    Keys: "total", and for models with a DNN (``model.mlp`` not None) "interaction" (E detached where the
    DNN reads it) and "dnn" (E detached where the interaction reads it); the two sum to "total".
    Rows are processed in chunks; each sample's gradient depends on that sample only (eval mode). The ids also go
    to ``forward_from_embeddings`` so id-only terms (textbook FM's first order) enter the loss.
    """
    detach_for: dict[str, str | None] = {"total": None}
    if getattr(model, "mlp", None) is not None:
        detach_for |= {"interaction": "dnn", "dnn": "interaction"}
    grads: dict[str, list[torch.Tensor]] = {key: [] for key in detach_for}
    n = ids.shape[0]
    for lo in range(0, n, CHUNK_ROWS):
        with torch.no_grad():
            e = model.embed(ids[lo : lo + CHUNK_ROWS])
        y = labels[lo : lo + CHUNK_ROWS].to(e.dtype)
        for key, detach in detach_for.items():
            leaf = e.clone().requires_grad_(True)
            logits = model.forward_from_embeddings(leaf, detach=detach, ids=ids[lo : lo + CHUNK_ROWS])
            loss = F_nn.binary_cross_entropy_with_logits(logits, y, reduction="sum") / n
            (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
            grads[key].append((torch.zeros_like(leaf) if grad is None else grad).flatten(1))
    return {key: torch.cat(parts) for key, parts in grads.items()}


def gradient_spectra(model: CTRModel, ids: torch.Tensor, labels: torch.Tensor) -> GradientSpectra:
    """Spectra of :func:`embedding_gradients` for the batch ids [B, F], labels [B]."""
    grads = embedding_gradients(model, ids, labels)
    stats = {key: SpectrumStats.from_singular_values(singular_values(g)) for key, g in grads.items()}
    norms = {key: float(torch.linalg.matrix_norm(g.to(torch.float64))) for key, g in grads.items()}
    total = grads["total"]
    return GradientSpectra(
        total.shape[0], total.shape[1], stats.pop("total"), {k: stats[k] for k in BRANCHES if k in stats}, norms
    )
