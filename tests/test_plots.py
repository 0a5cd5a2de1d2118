"""dcollapse.plots: every figure the tool writes, in each file format, and what a reader of it sees (axes, labels,
the data on each axis)."""

from __future__ import annotations

import numpy as np
import pytest

from dcollapse import plots
from dcollapse.errors import UserError

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".svg": b"<?xml"}


def written(path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(MAGIC[path.suffix]), data[:16]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    return data


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_every_format_by_extension(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    plots.overlay_spectra({"a": [1.0, 0.5, 0.1], "b": [1.0, 0.01, 0.0]}, path, "t")
    data = written(path)
    if suffix == ".svg":
        assert b"<svg" in data


@pytest.mark.parametrize("name", ["s.jpg", "s", "s.png.txt"])
def test_other_extensions_are_one_line_errors(tmp_path, name):
    with pytest.raises(UserError, match=r"\.png, \.pdf or \.svg"):
        plots.check_plot_path(tmp_path / name)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        plots.check_plot_path(tmp_path / "d.png")


def test_richness_over_training_puts_auc_on_its_own_axis(tmp_path):
    epochs, d_lr, centred, auc = [1, 2, 3], [0.9, 0.8, 0.7], [0.5, 0.2, 0.1], [0.61, 0.65, None]
    fig = plots.richness_over_training(epochs, d_lr, centred, auc, tmp_path / "r.png", "title")
    written(tmp_path / "r.png")
    left, right = fig.axes
    assert left.get_ylim() == (0, 1.02) and "D_LR" in left.get_ylabel()
    assert right.get_ylabel() == "validation AUC"
    (line,) = right.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), [0.61, 0.65, np.nan])  # a missing AUC is a gap, not a 0
    assert {ln.get_label() for ln in left.get_lines()} == {"D_LR", "D_LR, centred features"}
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert legend == ["D_LR, centred features", "D_LR", "validation AUC"]  # one legend for both axes


def test_richness_spectrum_cumulates_the_eigenvalue_shares(tmp_path):
    fig = plots.richness_spectrum([0.5, 0.9, 1.0], [0.7, 0.95, 1.0], [0.6, 0.3, 0.1], tmp_path / "q.svg", "t")
    written(tmp_path / "q.svg")
    lines = {ln.get_label(): ln.get_ydata() for ln in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["feature variance captured"], [0.6, 0.9, 1.0])
    assert "Q(k)" in " ".join(lines) and "U(k)" in " ".join(lines)


def test_interaction_figures(tmp_path):
    result = {
        "checkpoint": "runs/x.epoch2.pt",
        "epoch": 2,
        "order": {"orders": [1, 2, 3], "positive": [0.5, 0.2, 0.1], "negative": [-0.1, -0.05, 0.0]},
    }
    fig = plots.interaction_orders({"results": [result]}, tmp_path / "o.png")
    written(tmp_path / "o.png")
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted([0.5, 0.2, 0.1, -0.1, -0.05, 0.0])
    first = {**result, "epoch": 1, "order": {**result["order"], "positive": [0.9, 0.1, 0.0]}}
    doc = {"results": [first, result], "phase": {"high_order_mass": [0.1, 0.3], "from_order": 3, "boundary_epoch": 2},
           "loss_gap": {"epochs": [1, 2], "gap": [0.0, 0.02], "onset_epoch": 2}}  # fmt: skip
    fig = plots.interaction_dynamics(doc, tmp_path / "d.pdf")
    written(tmp_path / "d.pdf")
    heat = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(heat[:, 0], [1.0, 0.15, 0.0])  # orders x epochs, net strength of epoch 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # the marker lines say what they mark
    assert "phase boundary (epoch 2)" in legend and "loss-gap onset (epoch 2)" in legend and len(legend) == 4


def test_sensitivity_heatmap_annotates_every_cell(tmp_path):
    values = {"synonyms": [[0.1, 0.25], [0.5, 1.0]], "positions": [[0.2, 0.3], [0.4, 0.6]]}
    fig = plots.sensitivity_heatmap(values, ["conv1", "conv2"], [1, 2], tmp_path / "h.png")
    written(tmp_path / "h.png")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.10", "0.25", "0.50", "1.00"]
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["synonyms", "positions"]  # (and colour bars)


def test_learning_curve_marks_both_thresholds(tmp_path):
    fig = plots.learning_curve([100, 1000], [0.6, 0.2], {"synonyms": [0.9, 0.3]}, 500.0, 700.0, tmp_path / "c.png")
    written(tmp_path / "c.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["test error", "S_L(1), synonyms", "predicted P* (no prefactor)", "measured P* (50% error)"]
    no_measured = plots.learning_curve([100, 1000], [0.6, 0.55], {}, 500.0, None, None)
    assert len(no_measured.axes[0].get_lines()) == 2  # nothing written without a path


def test_spectrum_figures_leave_exact_zeros_out_of_the_log_axis(tmp_path):
    fig = plots.spectrum_grid({"f1": [1.0, 0.1, 0.0], "Z": [1.0, 0.5, 0.2]}, tmp_path / "g.png", "t", highlight=["Z"])
    written(tmp_path / "g.png")
    y = fig.axes[0].get_lines()[0].get_ydata()
    assert np.isnan(y[2]) and y[1] == 0.1
    assert fig.axes[1].get_lines()[0].get_color() != fig.axes[0].get_lines()[0].get_color()


def test_agop_spectra_give_the_whole_matrix_and_the_fields_their_own_index_axes(tmp_path):
    fig = plots.agop_spectra(np.linspace(1, 0.01, 40), {"a": [1.0, 0.5], "b": [1.0, 0.2]}, tmp_path / "a.png", "t")
    written(tmp_path / "a.png")
    left, right = fig.axes
    assert len(left.get_lines()[0].get_xdata()) == 40 and [len(ln.get_xdata()) for ln in right.get_lines()] == [2, 2]
    assert left.get_legend() is None and [t.get_text() for t in right.get_legend().get_texts()] == ["a", "b"]
    assert "sqrt(eigenvalue)" in left.get_ylabel()
