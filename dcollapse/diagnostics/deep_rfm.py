"""Deep Recursive Feature Machines (Deep RFM): neural collapse from AGOP projections, without backpropagation.

Per layer l = 1..D on training data X_l [n, d] with one-hot targets Y in {-1, +1} [n, K]:

1. normalise every sample to unit Euclidean norm (this is the recorded X_l);
2. fit Laplace kernel regression (K + ridge I) a = Y with k(x, z) = exp(-||x - z|| / L);
3. M_l = AGOP of that predictor over the training inputs, divided by its largest entry (M = I with ``use_agop=False``);
4. M_l^{1/2} by symmetric eigendecomposition (negative eigenvalues clipped);
5. X_{l+1} = ReLU(M_l^{1/2} X_l W^T) (row convention) with a fresh random W [width, d] ~ uniform(+-1/sqrt(d)).

NC1/NC2 are recorded for X_l, X_l M_l^{1/2} and Phi(X_l M_l^{1/2}) (Beaglehole et al., NeurIPS 2024).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from dcollapse.diagnostics.agop import psd_sqrt
from dcollapse.diagnostics.neural_collapse import NCStats, nc_stats
from dcollapse.errors import UserError

REPRESENTATIONS = ("x", "sqrt_m_x", "phi")


def mahalanobis_distances(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """||x_i - z_j||_M float64 [n, k] for x [n, d], z [k, d] and PSD M [d, d] (identity when None)."""
    x = x.to(torch.float64)
    z = z.to(torch.float64)
    mx = x if m is None else x @ m
    mz = z if m is None else z @ m
    squared = (mx * x).sum(1)[:, None] + (mz * z).sum(1)[None, :] - 2.0 * mx @ z.T
    return squared.clamp_min(0).sqrt()


def laplace_kernel(x: torch.Tensor, z: torch.Tensor, bandwidth: float, m: torch.Tensor | None = None) -> torch.Tensor:
    """Laplace(-Mahalanobis) kernel exp(-||x - z||_M / L), float64 [n, k] for x [n, d], z [k, d]."""
    return torch.exp(-mahalanobis_distances(x, z, m) / bandwidth)


def fit_laplace_regression(
    x: torch.Tensor, targets: torch.Tensor, bandwidth: float, ridge: float, m: torch.Tensor | None = None
) -> torch.Tensor:
    """Coefficients a float64 [n, K] solving (K(x, x) + ridge I) a = targets [n, K]."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    gram = laplace_kernel(x, x, bandwidth, m)
    gram.diagonal().add_(ridge)
    try:
        return torch.linalg.solve(gram, targets.to(torch.float64))
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError("the kernel matrix is singular (duplicate samples?): use a positive ridge") from None


def laplace_gradients(
    points: torch.Tensor,
    centers: torch.Tensor,
    coef: torch.Tensor,
    bandwidth: float,
    m: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input gradients float64 [n, K, d] of f(x) = sum_j coef_j k_M(x, c_j) at points [n, d].

    grad f_c(x) = sum_j coef_jc k_M(x, c_j) M (c_j - x) / (L ||x - c_j||_M), with the term taken as 0 where the
    distance is 0 (the Laplace kernel has no gradient there).
    """
    x = points.to(torch.float64)
    c = centers.to(torch.float64)
    a = coef.to(torch.float64)
    dist = mahalanobis_distances(x, c, m)
    weights = torch.where(dist > 0, torch.exp(-dist / bandwidth) / (bandwidth * dist.clamp_min(1e-300)), 0.0)
    toward = torch.einsum("ij,jk,jd->ikd", weights, a, c) - (weights @ a)[:, :, None] * x[:, None, :]
    return toward if m is None else toward @ m.to(torch.float64)


def laplace_agop(
    points: torch.Tensor,
    centers: torch.Tensor,
    coef: torch.Tensor,
    bandwidth: float,
    m: torch.Tensor | None = None,
) -> torch.Tensor:
    """AGOP float64 [d, d] over ``points`` of the Laplace kernel predictor (see :func:`laplace_gradients`)."""
    g = laplace_gradients(points, centers, coef, bandwidth, m)
    g = g.reshape(-1, g.shape[-1])
    return g.T @ g / points.shape[0]


@dataclass
class DeepRFMLayer:
    """NC statistics of the three representations of one Deep RFM layer (1-based ``layer``)."""

    layer: int
    x: NCStats
    sqrt_m_x: NCStats
    phi: NCStats


@dataclass
class DeepRFMResult:
    """Per-layer NC statistics and the settings that produced them."""

    samples: int
    classes: int
    input_dim: int
    depth: int
    width: int
    bandwidth: float
    ridge: float
    use_agop: bool
    seed: int
    layers: list[DeepRFMLayer] = field(default_factory=list)


def signed_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets float64 [n, K]: +1 for the sample's class, -1 elsewhere."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64) * 2.0 - 1.0


def deep_rfm(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    depth: int = 6,
    width: int = 512,
    bandwidth: float = 2.0,
    ridge: float = 1e-3,
    use_agop: bool = True,
    seed: int = 0,
) -> DeepRFMResult:
    """Run Deep RFM on training data x [n, d] with integer class labels [n] in 0..K-1 (see the module docstring)."""
    if depth < 1 or width < 1 or bandwidth <= 0:
        raise ValueError("depth and width must be >= 1 and bandwidth > 0")
    num_classes = int(labels.max()) + 1
    targets = signed_one_hot(labels, num_classes)
    generator = torch.Generator().manual_seed(seed)
    result = DeepRFMResult(len(x), num_classes, x.shape[1], depth, width, bandwidth, ridge, use_agop, seed)
    h = x.to(torch.float64)
    for layer in range(1, depth + 1):
        h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-300)
        d = h.shape[1]
        if use_agop:
            coef = fit_laplace_regression(h, targets, bandwidth, ridge)
            m = laplace_agop(h, h, coef, bandwidth)
            projected = h @ psd_sqrt(m / m.max())
        else:
            projected = h
        w = (torch.rand(width, d, generator=generator, dtype=torch.float64) * 2.0 - 1.0) / d**0.5
        phi = torch.relu(projected @ w.T)
        layer_stats = (nc_stats(h, labels), nc_stats(projected, labels), nc_stats(phi, labels))
        result.layers.append(DeepRFMLayer(layer, *layer_stats))
        h = phi
    return result


def load_classification_table(source: str, label: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    """(X float64 [N, d], labels int64 [N] in 0..K-1) from ``"digits"`` (scikit-learn's bundled 8x8 digits) or a
    Parquet/CSV file whose column ``label`` holds the class and whose other columns are all numeric."""
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return torch.from_numpy(bunch.data.astype(np.float64)), torch.from_numpy(bunch.target.astype(np.int64))
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected 'digits' or a Parquet/CSV file)")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'} ({exc})") from None
    if label not in frame.columns:
        raise UserError(f"{path}: no label column {label!r} (columns: {', '.join(frame.columns[:10])})")
    features = frame.drop(label)
    if features.width == 0 or frame.height == 0:
        raise UserError(f"{path}: needs at least one row and one feature column besides {label!r}")
    for name, dtype in features.schema.items():
        if not dtype.is_numeric():
            raise UserError(f"{path}: column {name!r} is {dtype}, expected numeric features")
    if features.null_count().sum_horizontal().item() > 0:
        raise UserError(f"{path}: feature columns contain missing values")
    if frame[label].null_count() > 0:
        raise UserError(f"{path}: label column {label!r} contains missing values")
    _, codes = np.unique(frame[label].to_numpy(), return_inverse=True)
    return torch.from_numpy(features.to_numpy().astype(np.float64)), torch.from_numpy(codes.astype(np.int64))


def prepare_training_set(x: torch.Tensor, labels: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` rows, each coordinate standardised over them (constant columns -> 0), sorted by class.

    Returns (X float64 [n, d], labels int64 [n] re-coded to 0..K-1 over the classes present).
    """
    if samples < 2:
        raise UserError(f"--samples must be >= 2, got {samples}")
    x = x[:samples].to(torch.float64)
    _, labels = torch.unique(labels[:samples], return_inverse=True)
    if int(labels.max()) < 1:
        raise UserError("the training set has a single class; Deep RFM needs at least two")
    std = x.std(dim=0)
    x = torch.where(std > 0, (x - x.mean(dim=0)) / torch.where(std > 0, std, 1.0), 0.0)
    order = torch.sort(labels, stable=True).indices
    return x[order], labels[order]
