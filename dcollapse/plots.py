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
from matplotlib.ticker import MaxNLocator

from dcollapse.errors import UserError
from dcollapse.io import atomic_path

FLOOR = 1e-7  # values at or below this (exact zeros of rank-deficient spectra) are not drawn on the log axis
SPECTRUM_YLABEL = "s_i / s_1 (log)"


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
        ax.set_ylabel(SPECTRUM_YLABEL, fontsize=8)
    for col in range(cols):  # the lowest visible panel of each column
        axes[(n - 1 - col) // cols, col].set_xlabel("index i", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def overlay_on(ax: Axes, series: Mapping[str, Sequence[float]], title: str, *, ylabel: str = SPECTRUM_YLABEL) -> None:
    """Draw one line per normalized spectrum (descending, s / s_1) on a log-scale ``ax``, legend beside it."""
    for label, values in series.items():
        x, y = _log_ready(values)
        ax.plot(x, y, linewidth=1.6, label=label)
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
        backbone = r["backbone"] or f"{r['layout']} tables"
        label = f"{Path(r['checkpoint']).name} ({r['variant']}, RankMe {r['batch']['z']['rankme']:.1f})"
        groups.setdefault((r["dataset_label"], backbone), {})[label] = r["batch"]["covariance"]["normalized"]
    if not groups:
        raise ValueError("no spectra to plot")
    names = {d["label"]: d["name"] for d in doc["datasets"]}
    fig = Figure(figsize=(8.5, 3.6 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, ((dataset, backbone), series) in zip(axes, groups.items(), strict=True):
        overlay_on(ax, series, f"{backbone} on {names.get(dataset) or dataset}", ylabel="eigenvalue / largest (log)")
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
