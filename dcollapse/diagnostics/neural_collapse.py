"""Neural collapse statistics NC1 and NC2 of a feature matrix with class labels.

For features h_i [N, p] with labels y_i in K classes, class means mu_c and mu_G = mean of the class means:

    Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T
    Sigma_W = (1/N) sum_c sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T
    NC1     = tr(Sigma_W) / tr(Sigma_B)

(The reference code of Beaglehole et al. divides Sigma_W by K*N instead of N; that is a constant factor 1/K.)
NC2 = mean over the K x K entries of (M~ M~^T - E)^2, with M~ the class means centred by mu_G and normalised to
unit length, and E = K/(K-1) I - 1/(K-1) 11^T the Gram matrix of a simplex equiangular tight frame.
For K = 2 the two centred means are always antipodal (mu_1 - mu_G = -(mu_2 - mu_G)), so NC2 = 0 by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel


@dataclass
class NCStats:
    """NC statistics of one representation; traces of the within-class, between-class and total covariances."""

    num_classes: int
    tr_within: float
    tr_between: float
    tr_total: float
    nc1: float
    nc2: float


def class_means(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(means float64 [K, p], inverse [N]) for features [N, p] and labels [N]; classes in sorted label order."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    h = features.detach().to(torch.float64)
    sums = torch.zeros(len(classes), h.shape[1], dtype=torch.float64).index_add_(0, inverse, h)
    counts = torch.bincount(inverse, minlength=len(classes)).to(torch.float64)
    return sums / counts[:, None], inverse


def nc2_from_means(means: torch.Tensor) -> float:
    """Mean squared deviation of the centred, normalised class means [K, p] from the simplex ETF Gram (K >= 2)."""
    k = means.shape[0]
    if k < 2:
        raise ValueError("NC2 needs at least two classes")
    centred = means.to(torch.float64) - means.to(torch.float64).mean(dim=0, keepdim=True)
    norms = centred.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        return float("nan")
    unit = centred / norms
    etf = torch.eye(k, dtype=torch.float64) * (k / (k - 1)) - 1.0 / (k - 1)
    return float(((unit @ unit.T - etf) ** 2).mean())


def nc_stats(features: torch.Tensor, labels: torch.Tensor) -> NCStats:
    """NC1, NC2 and the covariance traces of features [N, p] with labels [N] (at least two classes)."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected features [N, p] and labels [N], got {tuple(features.shape)}, {tuple(labels.shape)}")
    means, inverse = class_means(features, labels)
    if means.shape[0] < 2:
        raise ValueError("neural collapse needs at least two classes among the labels")
    h = features.detach().to(torch.float64)
    n = h.shape[0]
    tr_within = float(((h - means[inverse]) ** 2).sum() / n)
    tr_between = float(((means - means.mean(dim=0)) ** 2).sum() / means.shape[0])
    tr_total = float(((h - h.mean(dim=0)) ** 2).sum() / n)
    nc1 = tr_within / tr_between if tr_between > 0 else float("inf")
    return NCStats(means.shape[0], tr_within, tr_between, tr_total, nc1, nc2_from_means(means))


def ctr_layer_features(model: CTRModel, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hidden representations of a CTR model (eval mode) on embeddings [B, F, d], input to output.

    "dnn layer i" [B, H_i] = output of the DNN's i-th hidden layer (the input of its next linear layer, and the
    DNN's output for the last one); "head input" [B, H] = ``hidden(E)``, listed when it differs from the DNN output
    (parallel DNN or no DNN).
    """
    linears = list(model.mlp_linears())
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) for layer in linears[1:]]
    if model.mlp is not None:
        hooks.append(model.mlp.register_forward_hook(lambda _m, _args, output: captured.append(output)))
    model.eval()
    try:
        with torch.no_grad():
            head_input = model.hidden(embeddings)
    finally:
        for hook in hooks:
            hook.remove()
    layers = {f"dnn layer {i}": h for i, h in enumerate(captured, start=1)}
    if not captured or captured[-1] is not head_input:
        layers["head input"] = head_input
    return layers


K2_NOTE = (
    "K = 2 (click / no click): the two centred class means are always antipodal, so NC2 = 0 by construction; "
    "only NC1 = tr(Sigma_W) / tr(Sigma_B) is informative."
)


def nc_report(checkpoint: str | Path, data: str | Path | None = None, *, split: str = "valid",
              samples: int = 20000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The ``dcollapse nc`` document: :func:`nc_stats` of every DNN hidden layer of a ``dcollapse train``
    checkpoint on ``samples`` seeded rows of ``split``, the click labels as the K = 2 classes."""
    from dcollapse.errors import UserError
    from dcollapse.reports.runs import load_run_with_batch, model_summary

    run, rows = load_run_with_batch(checkpoint, data, split, samples, seed)
    assert run.model is not None
    if torch.unique(rows.labels).numel() < 2:
        raise UserError(f"{run.data}: the {len(rows):,} sampled {split} rows hold a single label; NC needs both")
    with torch.no_grad():
        embeddings = run.model.embed(rows.ids)
    layers = ctr_layer_features(run.model, embeddings)
    return {
        "schema": "dcollapse.nc/1",
        "checkpoint": run.label,
        "model": model_summary(run.config),
        "split": split,
        "samples": len(rows),
        "click_rate": float(rows.labels.float().mean()),
        "layers": [
            {"layer": name, "dim": int(h.shape[1]), **dataclasses.asdict(nc_stats(h, rows.labels))}
            for name, h in layers.items()
        ],  # fmt: skip
        "note": K2_NOTE,
    }
