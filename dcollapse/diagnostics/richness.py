"""Richness (lazy vs rich dynamics) of a trained network's last layer, and eigen-feature quality/utilisation.

Low-rank richness measure D_LR, reconstructed from the stated properties of Nam et al. ("Disentangling Rich
Dynamics from Feature Learning", arXiv 2410.04264): label free, bounded in [0, 1], invariant to the scale of the
readout and of the features, and NC1 as a special case. The paper's exact formula could not be retrieved; the
definition lives only in :func:`d_lr` so it can be corrected in one place:

    D_LR(Phi, F) = 1 - ||P_F Phi||_F^2 / ||Phi||_F^2

Phi [n, p] = features entering the final linear layer, F = Phi W^T [n, C] = its outputs without bias, P_F the
orthogonal projector in sample space R^n onto the column span of F. Rich (low-rank, readout-aligned) features give
D_LR near 0; lazy (random-like, high-rank) features give D_LR near 1 - C / rank(Phi).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dcollapse.diagnostics.neural_collapse import nc_stats

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel

RANK_TOL = 1e-10  # singular values below RANK_TOL * s_max * max(n, C) do not span P_F


def _centred(matrix: torch.Tensor, centered: bool) -> torch.Tensor:
    m = matrix.detach().to(torch.float64)
    return m - m.mean(dim=0, keepdim=True) if centered else m


def column_space_basis(matrix: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis float64 [n, r] of the column span of matrix [n, C] (numerical rank r, possibly 0)."""
    u, s, _ = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0]
    rank = int((s > RANK_TOL * s[0] * max(matrix.shape)).sum())
    return u[:, :rank]


def d_lr(features: torch.Tensor, outputs: torch.Tensor, *, centered: bool = False) -> float:
    """D_LR = 1 - ||P_F Phi||^2 / ||Phi||^2 for features Phi [n, p] and outputs F [n, C] (or [n]).

    ``centered=True`` subtracts the sample mean from both Phi and F first (invariant to a constant offset).
    Returns NaN when Phi is zero (after centring).
    """
    phi = _centred(features, centered)
    f = _centred(outputs.reshape(outputs.shape[0], -1), centered)
    if phi.ndim != 2 or f.shape[0] != phi.shape[0]:
        raise ValueError(f"expected features [n, p] and outputs [n, C], got {tuple(phi.shape)}, {tuple(f.shape)}")
    if not (bool(torch.isfinite(phi).all()) and bool(torch.isfinite(f).all())):
        raise ValueError("features or outputs contain NaN/inf")
    total = float((phi**2).sum())
    if total == 0.0:
        return float("nan")
    basis = column_space_basis(f)
    explained = float(((basis.T @ phi) ** 2).sum())
    return min(1.0, max(0.0, 1.0 - explained / total))


def nc1_bounded(features: torch.Tensor, labels: torch.Tensor) -> float:
    """NC1 / (1 + NC1) = tr(Sigma_W) / (tr(Sigma_W) + tr(Sigma_B)) in [0, 1]: the NC counterpart of D_LR."""
    stats = nc_stats(features, labels)
    denominator = stats.tr_within + stats.tr_between
    return stats.tr_within / denominator if denominator > 0 else float("nan")


@dataclass
class FeatureSpectrum:
    """Eigen-features of K = Phi Phi^T / n, sorted by decreasing eigenvalue (index k-1 holds the top-k value).

    relative_eigenvalues[k] = lambda_k / sum_j lambda_j; quality[k] = Q(k+1) = sum_{i<=k+1} ||u_i^T Y||^2 / ||Y||_F^2
    (how much of the targets lies in the top directions); utilisation[k] = U(k+1), the same for the outputs F.
    """

    relative_eigenvalues: list[float]
    quality: list[float]
    utilisation: list[float]


def feature_spectrum(
    features: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor, *, centered: bool = True
) -> FeatureSpectrum:
    """Relative eigenvalues, Q(k) and U(k) for features [n, p], targets Y [n, C'] or [n], outputs F [n, C] or [n].

    The eigenvectors u_k in R^n are the left singular vectors of Phi. ``centered`` subtracts the sample mean from
    Phi, Y and F first (so a constant offset such as the click rate does not count as a direction).
    """
    phi = _centred(features, centered)
    y = _centred(targets.reshape(targets.shape[0], -1), centered)
    f = _centred(outputs.reshape(outputs.shape[0], -1), centered)
    u, s, _ = torch.linalg.svd(phi, full_matrices=False)
    energy = s**2
    relative = energy / energy.sum() if float(energy.sum()) > 0 else energy

    def cumulative(matrix: torch.Tensor) -> list[float]:
        total = (matrix**2).sum()
        if float(total) == 0.0:
            return [float("nan")] * len(s)
        return torch.cumsum(((u.T @ matrix) ** 2).sum(dim=1) / total, 0).tolist()

    return FeatureSpectrum(relative.tolist(), cumulative(y), cumulative(f))


@dataclass
class Richness:
    """D_LR (plain and centred), the NC counterpart (when labels are known) and the eigen-feature curves."""

    samples: int
    features_dim: int
    outputs_dim: int
    d_lr: float
    d_lr_centered: float
    nc1: float | None
    nc1_bounded: float | None
    spectrum: FeatureSpectrum | None


def richness(
    features: torch.Tensor,
    outputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    with_spectrum: bool = True,
) -> Richness:
    """All richness numbers for features Phi [n, p], outputs F [n, C] or [n] and optional class labels [n].

    The spectrum's targets are the labels (one column; for K > 2 classes, one-hot columns).
    """
    nc1 = bounded = None
    spectrum = None
    if labels is not None and torch.unique(labels).numel() >= 2:
        stats = nc_stats(features, labels)
        nc1 = stats.nc1
        bounded = nc1_bounded(features, labels)
    if with_spectrum and labels is not None:
        classes = torch.unique(labels)
        targets = labels if classes.numel() <= 2 else (labels[:, None] == classes[None, :])
        spectrum = feature_spectrum(features, targets.to(torch.float64), outputs)
    f = outputs.reshape(outputs.shape[0], -1)
    return Richness(
        features.shape[0],
        features.shape[1],
        f.shape[1],
        d_lr(features, f),
        d_lr(features, f, centered=True),
        nc1,
        bounded,
        spectrum,
    )


def last_layer(model: CTRModel, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Phi [B, H], F [B, 1]) of a CTR model on embeddings [B, F, d]: the head's input and its output minus bias.

    Uses the model's ``hidden(E)`` and ``head`` (nn.Linear(H, 1)); runs in eval mode without gradients and
    restores the model's training flag.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            phi = model.hidden(embeddings).to(torch.float64)
            outputs = phi @ model.head.weight.detach().to(torch.float64).T
    finally:
        model.train(was_training)
    return phi, outputs


def richness_snapshot(
    model: CTRModel, embeddings: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, float | None]:
    """Per-epoch richness of a CTR model on a fixed batch of embeddings [B, F, d] (optional click labels [B]).

    Returns {"d_lr", "d_lr_centered"} plus {"nc1", "nc1_bounded"} when labels with both classes are given.
    """
    phi, outputs = last_layer(model, embeddings)
    result = richness(phi, outputs, labels, with_spectrum=False)
    snapshot: dict[str, float | None] = {"d_lr": result.d_lr, "d_lr_centered": result.d_lr_centered}
    if result.nc1 is not None:
        snapshot |= {"nc1": result.nc1, "nc1_bounded": result.nc1_bounded}
    return snapshot


def richness_document(checkpoint: str | Path, data: str | Path | None, split: str, samples: int,
                      seed: int) -> dict[str, Any]:  # fmt: skip
    """The richness of one ``dcollapse train`` checkpoint on ``samples`` seeded rows of ``split``, beside the
    epoch's validation AUC and the D_LR its training history tracked (``train --track richness``)."""
    import dataclasses

    from dcollapse.reports.runs import load_run_with_batch, model_summary

    run, rows = load_run_with_batch(checkpoint, data, split, samples, seed)
    assert run.ckpt is not None and run.model is not None
    with torch.no_grad():
        features, outputs = last_layer(run.model, run.model.embed(rows.ids))
    result = richness(features, outputs, rows.labels)
    ckpt = run.ckpt
    epoch = ckpt.get("epoch", ckpt.get("best_epoch"))
    history = ckpt.get("history") or []
    auc = next((h.get("valid_auc") for h in history if h.get("epoch") == epoch), None)
    tracked = [{"epoch": h["epoch"], "valid_auc": h.get("valid_auc"), "d_lr": h["d_lr"],
                "d_lr_centered": h.get("d_lr_centered")} for h in history if "d_lr" in h]  # fmt: skip
    return {
        "checkpoint": run.label,
        "model": model_summary(run.config),
        "split": split,
        "epoch": epoch,
        "valid_auc": auc,
        **dataclasses.asdict(result),
        "history": tracked,
    }


def richness_report(checkpoints: Sequence[str | Path], data: str | Path | None = None, *, split: str = "train",
                    samples: int = 5000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The ``dcollapse richness`` document: one checkpoint's :func:`richness_document`, or for several (epoch
    snapshots of one run) the documents by epoch and the Spearman correlation of centred D_LR with NC1."""
    from scipy.stats import spearmanr

    docs = [richness_document(path, data, split, samples, seed) for path in checkpoints]
    if len(docs) == 1:
        return {"schema": "dcollapse.richness/1", **docs[0]}
    docs.sort(key=lambda d: (d["epoch"] is None, d["epoch"] or 0))
    pairs = [(d["d_lr_centered"], d["nc1"]) for d in docs if d["nc1"] is not None]
    rho = float(spearmanr(*zip(*pairs, strict=True)).statistic) if len(pairs) >= 3 else None
    return {"schema": "dcollapse.richness/1", "runs": docs, "spearman_d_lr_centered_vs_nc1": rho}
