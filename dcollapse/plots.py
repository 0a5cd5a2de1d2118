"""Plots shared by the reports (PNG, PDF or SVG by extension): normalized spectra on a log scale, as small
multiples or overlaid, and lines.

matplotlib's object API with the Agg canvas only (no pyplot, no global state, no display needed); every file is
written atomically through :func:`dcollapse.io.atomic_path`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from dcollapse.errors import UserError
from dcollapse.io import atomic_path
from dcollapse.reports.runs import BACKBONES

FLOOR = 1e-7  # values at or below this (exact zeros of rank-deficient spectra) are not drawn on the log axis
SPECTRUM_YLABEL = "s_i / s_1 (log)"  # singular values, normalized by the largest
EIGEN_YLABEL = "eigenvalue / largest (log)"  # eigenvalues of cov(Z), normalized by the largest
# Coinciding curves (e.g. the total gradient and its only path) stay visible: each later line thinner and dashed.
LINE_STYLES = [("-", 2.6), ("--", 1.8), ("-.", 1.6), (":", 1.8)] + [(s, 1.3) for s in ("-", "--", "-.", ":")] * 3


PLOT_FORMATS = (".png", ".pdf", ".svg")


def check_plot_path(path: str | Path) -> Path:
    """The output path of a plot, refused with a one-line :class:`UserError` unless it ends in .png, .pdf or .svg
    (the format follows the extension)."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UserError(f"{path}: plot files are PNG, PDF or SVG; give a name ending in .png, .pdf or .svg")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name ending in .png, .pdf or .svg")
    return path


def _log_ready(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(1-based index, values) with non-positive / sub-floor entries masked as NaN for a log axis."""
    v = np.asarray(values, dtype=np.float64)
    return np.arange(1, v.size + 1), np.where(v > FLOOR, v, np.nan)


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 110) -> Figure:
    """Render ``fig`` with the Agg canvas and, when ``path`` is given, write it atomically in the format its
    extension names (.png, .pdf, .svg); returns the figure (for notebooks)."""
    FigureCanvasAgg(fig)
    if path is not None:
        path = check_plot_path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=dpi, bbox_inches="tight")
    return fig


def spectrum_grid(
    panels: Mapping[str, Sequence[float]],
    path: str | Path | None,
    title: str,
    *,
    subtitles: Mapping[str, str] | None = None,
    highlight: Sequence[str] = (),
    columns: int = 6,
) -> Figure:
    """Small multiples: one log-scale panel per normalized spectrum (descending, s / s_1), shared y axis.

    ``panels`` maps a panel title to its values; ``subtitles`` adds a second line per panel (e.g. "IA 3.2");
    panels named in ``highlight`` are drawn in a second colour (e.g. the batch matrix beside the fields).
    """
    if not panels:
        raise ValueError("no spectra to plot")
    n = len(panels)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.3 * cols + 0.6, 2.0 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    low = min((v for vals in panels.values() for v in vals if v > FLOOR), default=1e-3)
    for ax, (name, values) in zip(axes.flat, panels.items(), strict=False):
        x, y = _log_ready(values)
        ax.plot(x, y, marker="o", markersize=2.5, linewidth=1.2, color="tab:red" if name in highlight else "tab:blue")
        ax.set_yscale("log")
        ax.set_ylim(max(low, FLOOR) / 2, 1.6)
        ax.grid(True, which="major", alpha=0.3)
        sub = (subtitles or {}).get(name)
        ax.set_title(f"{name}\n{sub}" if sub else name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("value / largest (log)", fontsize=8)  # singular values, or eigenvalues (cov(Z))
    for col in range(cols):  # the lowest visible panel of each column
        axes[(n - 1 - col) // cols, col].set_xlabel("index i", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def overlay_on(ax: Axes, series: Mapping[str, Sequence[float]], title: str, *, ylabel: str = SPECTRUM_YLABEL) -> None:
    """Draw one line per normalized spectrum (descending, s / s_1) on a log-scale ``ax``, legend beside it."""
    for k, (label, values) in enumerate(series.items()):
        x, y = _log_ready(values)
        style, width = LINE_STYLES[min(k, len(LINE_STYLES) - 1)]
        ax.plot(x, y, linestyle=style, linewidth=width, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(title, fontsize=10)


def overlay_spectra(
    series: Mapping[str, Sequence[float]],
    path: str | Path | None,
    title: str,
    *,
    ylabel: str = SPECTRUM_YLABEL,
) -> Figure:
    """One log-scale axis with one line per normalized spectrum (descending, s / s_1), legend beside the curves."""
    if not series:
        raise ValueError("no spectra to plot")
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    overlay_on(fig.subplots(), series, title, ylabel=ylabel)
    return save_figure(fig, path)


def compare_overlay(doc: Mapping[str, Any], path: str | Path | None) -> Figure:
    """``dcollapse compare --plot``: the normalized eigenvalues of cov(Z) of every run with a batch, one panel per
    (dataset, backbone), each run labelled with its variant and RankMe; ``doc`` is the compare document."""
    groups: dict[tuple[str, str], dict[str, Sequence[float]]] = {}
    for r in doc["runs"]:
        if r["batch"] is None:
            continue
        backbone = BACKBONES.get(r["backbone"], r["backbone"]) or f"{r['layout']} tables"
        label = f"{Path(r['checkpoint']).name} ({r['variant']}, RankMe of Z {r['batch']['z']['rankme']:.1f})"
        groups.setdefault((r["dataset_label"], backbone), {})[label] = r["batch"]["covariance"]["normalized"]
    if not groups:
        raise ValueError("no spectra to plot")
    names = {d["label"]: d["name"] for d in doc["datasets"]}
    fig = Figure(figsize=(8.5, 3.6 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, ((dataset, backbone), series) in zip(axes, groups.items(), strict=True):
        overlay_on(ax, series, f"{backbone} on {names.get(dataset) or dataset}", ylabel=EIGEN_YLABEL)
    fig.suptitle("Eigenvalues of cov(Z), fixed batch, normalized", fontsize=11)
    return save_figure(fig, path)


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path | None,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log: bool = True,
) -> Figure:
    """One axis, one line per (x, y) series (integer x ticks), legend by key."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.6, label=label)
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def agop_spectra(
    whole: Sequence[float], fields: Mapping[str, Sequence[float]], path: str | Path | None, title: str
) -> Figure:
    """``dcollapse agop --plot``: the normalized square-root eigenvalues of the whole AGOP [F*d] (left) and of each
    listed field's diagonal block [d] (right), each on its own index axis."""
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[1.2, 1])
    ylabel = "sqrt(eigenvalue) / largest (log)"
    overlay_on(left, {"all fields": whole}, "whole AGOP", ylabel=ylabel)
    left.get_legend().remove()
    overlay_on(right, fields, "per field (the most used)", ylabel=ylabel)
    right.set_ylabel("")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def richness_spectrum(
    quality: Sequence[float],
    utilisation: Sequence[float],
    relative_eigenvalues: Sequence[float],
    path: str | Path | None,
    title: str,
) -> Figure:
    """``dcollapse richness --plot`` of one checkpoint: over the top-k eigen-features of the last hidden layer
    (k = 1..K, all [K]), the cumulative share of the labels (Q), of the logit (U) and of the feature variance."""
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.subplots()
    k = np.arange(1, len(quality) + 1)
    lines: dict[str, Sequence[float] | np.ndarray] = {
        "labels captured, Q(k)": quality,
        "logit captured, U(k)": utilisation,
        "feature variance captured": np.cumsum(np.asarray(relative_eigenvalues, dtype=np.float64)),
    }
    marker = "o" if len(k) <= 30 else None
    for (label, values), (style, width) in zip(lines.items(), LINE_STYLES, strict=False):
        ax.plot(k, values, marker=marker, markersize=3, linestyle=style, linewidth=width, label=label)
    ax.set_xscale("log")  # the top few eigen-features carry most of it
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("top-k eigen-features of the last hidden layer (log)")
    ax.set_ylabel("cumulative share")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def richness_over_training(
    epochs: Sequence[int],
    d_lr: Sequence[float],
    d_lr_centered: Sequence[float],
    valid_auc: Sequence[float | None],
    path: str | Path | None,
    title: str,
) -> Figure:
    """``dcollapse richness --plot`` of epoch checkpoints: D_LR (plain and centred, left axis, 0..1) and the
    validation AUC (right axis, its own range) against the epoch; every list has one entry per epoch [E]."""
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(epochs, d_lr_centered, marker="o", linewidth=1.8, color="tab:blue", label="D_LR, centred features")
    ax.plot(epochs, d_lr, marker="o", linewidth=1.2, linestyle="--", color="tab:blue", alpha=0.6, label="D_LR")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("low-rank richness D_LR (lower = richer)", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.25)
    twin = ax.twinx()
    auc = [np.nan if a is None else a for a in valid_auc]
    twin.plot(epochs, auc, marker="s", linewidth=1.6, color="tab:orange", label="validation AUC")
    twin.set_ylabel("validation AUC", color="tab:orange")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.12, 1.0), borderaxespad=0.0)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def interaction_orders(doc: Mapping[str, Any], path: str | Path | None) -> Figure:
    """``dcollapse interactions --plot`` of one checkpoint: positive and negative interaction strength per order
    |S| (bars up and down); ``doc`` is the interactions document."""
    result = doc["results"][0]
    dist = result["order"]
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.bar(dist["orders"], dist["positive"], color="tab:red", label="positive interactions")
    ax.bar(dist["orders"], dist["negative"], color="tab:blue", label="negative interactions")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("order |S| (number of fields in the interaction)")
    ax.set_ylabel("normalised strength")
    ax.set_xticks(dist["orders"])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(f"{Path(result['checkpoint']).name}: interaction strength by order", fontsize=10)
    return save_figure(fig, path)


def interaction_dynamics(doc: Mapping[str, Any], path: str | Path | None) -> Figure:
    """``dcollapse interactions --plot`` of epoch checkpoints: the net strength per order over the epochs (heat map),
    below it the high-order mass and the valid - train loss gap; ``doc`` is the interactions document."""
    phase, gap = doc["phase"], doc["loss_gap"]
    epochs = [r["epoch"] for r in doc["results"]]
    heat = np.array(
        [[p - q for p, q in zip(r["order"]["positive"], r["order"]["negative"], strict=True)] for r in doc["results"]]
    ).T  # fmt: skip  [orders, epochs]
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    image = top.imshow(heat, aspect="auto", origin="lower", cmap="viridis",
                       extent=(-0.5, len(epochs) - 0.5, 0.5, heat.shape[0] + 0.5))  # fmt: skip
    fig.colorbar(image, ax=top, label="net strength (positive - negative)")
    top.set_yticks(range(1, heat.shape[0] + 1))
    top.set_ylabel("order |S|")
    top.set_title("Interaction strength by order over training", fontsize=10)
    steps = np.arange(len(epochs))
    bottom.plot(steps, phase["high_order_mass"], marker="o", color="tab:purple",
                label=f"share of orders >= {phase['from_order']}")  # fmt: skip
    bottom.set_ylabel("high-order share", color="tab:purple")
    bottom.axvline(epochs.index(phase["boundary_epoch"]), color="tab:purple", linestyle="--", linewidth=1,
                   label=f"phase boundary (epoch {phase['boundary_epoch']})")  # fmt: skip
    gaps = dict(zip(gap["epochs"], gap["gap"], strict=True))
    twin = bottom.twinx()
    twin.plot(steps, [gaps.get(e, np.nan) for e in epochs], marker="s", color="tab:orange", label="valid - train loss")
    twin.set_ylabel("valid - train loss", color="tab:orange")
    if gap["onset_epoch"] in epochs:
        twin.axvline(epochs.index(gap["onset_epoch"]), color="tab:orange", linestyle=":", linewidth=1,
                     label=f"loss-gap onset (epoch {gap['onset_epoch']})")  # fmt: skip
    bottom.set_xticks(steps, [str(e) for e in epochs])
    bottom.set_xlabel("epoch")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return save_figure(fig, path)


def sensitivity_heatmap(
    values: Mapping[str, Sequence[Sequence[float]]],
    layers: Sequence[str],
    levels: Sequence[int],
    path: str | Path | None,
    title: str = "",
) -> Figure:
    """``dcollapse hierarchy sensitivity --plot``: one panel per perturbation family (``values[kind]`` is
    [layers, levels]), each cell S_k(l) annotated."""
    fig = Figure(figsize=(3.2 * len(values) + 1, 0.6 * len(layers) + 1.8), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, (kind, table) in zip(axes, values.items(), strict=True):
        data = np.array(table, dtype=float)
        image = ax.imshow(data, cmap="viridis", vmin=0, vmax=max(1.0, float(np.nanmax(data, initial=0))))
        ax.set_xticks(range(len(levels)), [str(level) for level in levels])
        ax.set_yticks(range(len(layers)), list(layers))
        ax.set_xlabel("perturbation level l")
        ax.set_title(kind)
        for (r, c), value in np.ndenumerate(data):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title or "Sensitivity S_k(l) of layer k to perturbations of level l")
    return save_figure(fig, path, dpi=120)


def learning_curve(
    sizes: Sequence[int],
    test_error: Sequence[float],
    sensitivities: Mapping[str, Sequence[float]],
    predicted: float,
    measured: float | None,
    path: str | Path | None,
) -> Figure:
    """``dcollapse hierarchy curve --plot``: test error and the last hidden layer's sensitivities S_L(1) (one list
    per perturbation family, [P]) against the training-set sizes P [P], with the predicted and measured P*."""
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(sizes, test_error, "o-", label="test error")
    for kind, values in sensitivities.items():
        ax.plot(sizes, values, "s--", label=f"S_L(1), {kind}")
    ax.axvline(predicted, color="gray", ls=":", label="predicted P* (no prefactor)")
    if measured:
        ax.axvline(measured, color="k", ls="-.", label="measured P* (50% error)")
    ax.set_xscale("log")
    ax.set_xlabel("training-set size P")
    ax.set_ylabel("test error / sensitivity")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path, dpi=120)
