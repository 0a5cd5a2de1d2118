"""Learning curve: test error and last-hidden-layer sensitivities against the training-set size P.

P* is the training-set size at which the test error first falls through 50 % (linear interpolation in
log P between the two bracketing sizes); the paper's scaling law (without its O(1) prefactor) is reported
beside it: (s0+1)^L n_c m^L for the LCN, (s0+1)^2 n_c m^L for the CNN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dcollapse.hierarchy.generator import Grammar, predicted_sample_complexity
from dcollapse.hierarchy.sensitivity import Sensitivity, measure
from dcollapse.hierarchy.train import TrainConfig, load_model, train


@dataclass
class CurvePoint:
    """One training run of the curve; ``sensitivity`` holds the full per-layer/per-level tables."""

    train_size: int
    epochs: int
    stopped: str
    train_loss: float
    test_error: float
    sensitivity: Sensitivity

    def last_hidden(self, kind: str, level: int = 1) -> float:
        """S_L(level) of the last hidden layer for perturbation ``kind``."""
        return self.sensitivity.values[kind][-2][level - 1]


def crossing(sizes: list[int], errors: list[float], threshold: float = 0.5) -> float | None:
    """First P where the error falls through ``threshold`` (log-linear interpolation), None if it never does."""
    points = sorted(zip(sizes, errors, strict=True))
    if points and points[0][1] <= threshold:
        return None
    for (p0, e0), (p1, e1) in zip(points, points[1:], strict=False):
        if e0 > threshold >= e1:
            frac = (e0 - threshold) / (e0 - e1)
            return math.exp(math.log(p0) + frac * (math.log(p1) - math.log(p0)))
    return None


def learning_curve(
    data_dir: str | Path,
    config: TrainConfig,
    train_sizes: list[int],
    sensitivity_samples: int = 500,
    on_point: Callable[[CurvePoint], None] | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[list[CurvePoint], dict[str, Any]]:
    """Train one network per P in ``train_sizes`` (same data, same test set, same init seed).

    Returns the points and a summary {"p_star", "predicted", "arch", "grammar": {...}}.
    """
    points: list[CurvePoint] = []
    grammar: Grammar | None = None
    for size in train_sizes:
        ckpt = train(replace(config, train_size=size), data_dir)
        if on_checkpoint is not None:
            on_checkpoint(size, ckpt)
        net, grammar = load_model(ckpt)
        meta = ckpt["meta"]
        sens = measure(net, grammar, meta["encoding"], meta["whitening"], sensitivity_samples, seed=config.seed + 1)
        last: dict[str, Any] = ckpt["history"][-1] if ckpt["history"] else {"epoch": 0, "train_loss": math.nan}
        point = CurvePoint(size, last["epoch"], ckpt["stopped"], last["train_loss"], ckpt["test"]["error"], sens)
        points.append(point)
        if on_point is not None:
            on_point(point)
        if ckpt["stopped"] == "interrupted":
            raise KeyboardInterrupt
    assert grammar is not None
    summary = {
        "arch": config.arch,
        "p_star": crossing([p.train_size for p in points], [p.test_error for p in points]),
        "predicted": predicted_sample_complexity(grammar, config.arch),
        "grammar": {k: v for k, v in grammar.to_dict().items() if k != "rules"},
        "config": asdict(config),
    }
    return points, summary
