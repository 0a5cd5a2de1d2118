"""The grids a sweep can run: the paper's (FM, CrossNet x none / parallel / stacked DNN, at settings scaled to
samples of 10^4-10^5 rows), the DNN-part ablation, and TOML grid files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dcollapse.config import did_you_mean, merged, toml_options
from dcollapse.errors import UserError
from dcollapse.io import read_toml

# The paper's settings (SPEC-collapse: emb 10, 3 cross layers, MLP [400,400,400]-[500,500,500], dropout 0.1,
# Adam 1e-3, early stopping patience 2, L2 on embeddings 5e-6 (FM) / 1e-5 (DCNv2)) scaled to samples of 10^4-10^5
# rows: a narrower MLP (200 per layer, depth 3 kept) and smaller batches (256 instead of 4096) so that an epoch has
# enough optimizer steps; at most 30 epochs.
SCALED_SETTINGS: dict[str, Any] = {
    "emb_dim": 10,
    "dnn": [200, 200, 200],
    "activation": "relu",
    "dropout": 0.1,
    "cross_layers": 3,
    "batch_size": 256,
    "epochs": 30,
    "patience": 2,
    "lr": 1e-3,
    "style": "paper",
}
L2_EMB = {"fm": 5e-6, "crossnet": 1e-5}
# --recipe paper: the L2 the paper's code applies. Its FM class reads `embedding_regularizer`, the FM configs set
# `regularizer` (5e-6 Criteo, 1e-6 Avazu), which nothing reads: no L2. DCNv2's Criteo config sets
# embedding_regularizer 1e-5 (its Avazu config 0).
PAPER_L2_EMB = {"fm": 0.0, "crossnet": 1e-5}
BACKBONES = ("fm", "crossnet")
ARCHS = ("none", "parallel", "stacked")
# One DNN part switched at a time, against the reference DNN of SCALED_SETTINGS.
ABLATIONS: dict[str, dict[str, Any]] = {
    "linear": {"activation": "identity"},
    "depth1": {"dnn": [200]},
    "narrow": {"dnn": [50, 50, 50]},
    "nodropout": {"dropout": 0.0},
    "batchnorm": {"norm": "batch"},
    "layernorm": {"norm": "layer"},
    "residual": {"residual": True},
}


def paper_grid(recipe: str = "default") -> dict[str, dict[str, Any]]:
    """The paper's Table 1: FM and CrossNet, each with no DNN, a parallel DNN and a stacked DNN (6 entries).

    ``recipe`` "paper": every entry trains with ``--recipe paper`` and :data:`PAPER_L2_EMB`; the CrossNet DNNs are
    linear as in the paper's code, and ``crossnet-parallel-relu`` / ``crossnet-stacked-relu`` add the ReLU DNNs
    beside them (8 entries)."""
    if recipe == "default":
        return {
            f"{model}-{arch}": {**SCALED_SETTINGS, "model": model, "arch": arch, "l2_emb": L2_EMB[model]}
            for model in BACKBONES
            for arch in ARCHS
        }
    settings = {key: value for key, value in SCALED_SETTINGS.items() if key != "activation"}
    grid = {
        f"{model}-{arch}": {**settings, "model": model, "arch": arch, "l2_emb": PAPER_L2_EMB[model], "recipe": recipe}
        for model in BACKBONES
        for arch in ARCHS
    }
    for arch in ARCHS[1:]:
        grid[f"crossnet-{arch}-relu"] = {**grid[f"crossnet-{arch}"], "activation": "relu"}
    return grid


def ablation_grid(recipe: str = "default") -> dict[str, dict[str, Any]]:
    """The paper grid plus, for every backbone x (parallel, stacked), each of :data:`ABLATIONS` switched alone."""
    grid = paper_grid(recipe)
    for model in BACKBONES:
        for arch in ARCHS[1:]:
            for variant, change in ABLATIONS.items():
                grid[f"{model}-{arch}-{variant}"] = {**grid[f"{model}-{arch}"], **change}
    return grid


GRIDS: dict[str, Callable[[str], dict[str, dict[str, Any]]]] = {"paper": paper_grid, "ablation": ablation_grid}


def read_grid_file(path: Path) -> dict[str, dict[str, Any]]:
    """A grid from TOML: an optional ``[base]`` table applied to every run, and one ``[runs.<name>]`` table per run
    (option keys with dashes or underscores; a bad value is named by its file, line and key).

    Example::

        [base]
        emb_dim = 8
        epochs = 5

        [runs.fm-none]
        model = "fm"

        [runs.deepfm]
        model = "fm"
        arch = "parallel"
        dnn = [64, 64]
    """
    raw = read_toml(path, "grid")
    unknown = sorted(set(raw) - {"base", "runs"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; expected [base] and [runs.<name>]")
    base, runs = raw.get("base", {}), raw.get("runs", {})
    if not isinstance(base, dict) or not isinstance(runs, dict) or not runs:
        raise UserError(f"{path}: expected at least one [runs.<name>] table (and optionally a [base] table)")
    for name, options in runs.items():
        if not isinstance(options, dict):
            raise UserError(f"{path}: runs.{name} must be a table of options")
    base_options = toml_options(path, base, ("base",))
    return {name: merged(base_options, toml_options(path, options, ("runs", name))) for name, options in runs.items()}


def load_grid(grid: str, recipe: str = "default") -> dict[str, dict[str, Any]]:
    """``paper``, ``ablation`` (built for ``recipe``) or the path of a TOML grid file."""
    if grid in GRIDS:
        return GRIDS[grid](recipe)
    path = Path(grid)
    if path.suffix.lower() != ".toml":
        hint = did_you_mean(grid, GRIDS)
        raise UserError(f"--grid must be one of {', '.join(GRIDS)} or a .toml grid file, not {grid!r}{hint}")
    return read_grid_file(path)
