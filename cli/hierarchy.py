"""``dcollapse hierarchy`` (train / sensitivity / curve / check on (S)RHM data) and ``dcollapse synth srhm``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from dcollapse.cli.common import emit, err, handles_errors, out
from dcollapse.cli.options import CommandGroup, JsonOpt
from dcollapse.errors import CheckFailed, UserError

if TYPE_CHECKING:
    from dcollapse.hierarchy.curve import CurvePoint
    from dcollapse.hierarchy.sensitivity import Sensitivity

hierarchy_app = typer.Typer(
    help="Sparse Random Hierarchy Model: train CNN/LCN learners and measure per-layer synonym/position sensitivity.",
    no_args_is_help=True,
    cls=CommandGroup,
)


def register(app: typer.Typer) -> None:
    app.add_typer(hierarchy_app, name="hierarchy")


def register_srhm(synth_app: typer.Typer) -> None:
    """Add ``srhm`` to the ``dcollapse synth`` group."""
    synth_app.command("srhm")(handles_errors(srhm_command))


# ------------------------------------------------------------------------------------------------ synth srhm


def srhm_command(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Dataset directory to write (hierarchy.json + samples.npz)."),
    levels: int = typer.Option(2, "--levels", "-L", help="L: levels of the hierarchy."),
    patch: int = typer.Option(2, "--patch", help="s: informative children per rule."),
    sparsity: int = typer.Option(1, "--sparsity", help="s0: uninformative slots per informative symbol (0 = RHM)."),
    vocab: int = typer.Option(6, "--vocab", help="v: informative symbols per level."),
    synonyms: int = typer.Option(6, "--synonyms", help="m: synonymous rules per symbol."),
    classes: int = typer.Option(6, "--classes", help="n_c: number of classes."),
    samples: int = typer.Option(12000, "--samples", help="P: distinct samples to draw (train + test)."),
    sparsity_type: str = typer.Option("A", "--type", help="A: one slot per child; B: anywhere, order kept."),
    encoding: str = typer.Option("all0", "--encoding", help="onehot (empty symbol has a channel) | all0."),
    whitening: bool = typer.Option(True, "--whitening/--no-whitening", help="Centre the one-hot channels."),
    seed: int = typer.Option(0, "--seed", help="Seed of the grammar (the production rules)."),
    sample_seed: int = typer.Option(1, "--sample-seed", help="Seed of the sample draws."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    as_json: bool = JsonOpt,
) -> None:
    """(Sparse) Random Hierarchy Model data with its ground-truth grammar saved beside the samples.

    Example: dcollapse synth srhm -L 2 --patch 2 --sparsity 1 --vocab 6 --synonyms 6 --classes 6 --out data/srhm
    """
    from dcollapse.hierarchy.generator import describe, predicted_sample_complexity, sample, sample_grammar, save_data

    if encoding not in ("onehot", "all0"):
        raise UserError(f"--encoding {encoding!r}: expected onehot or all0")
    if samples < 1:
        raise UserError(f"--samples {samples}: expected a positive integer")
    grammar = sample_grammar(levels, patch, sparsity, vocab, synonyms, classes, sparsity_type.upper(), seed)
    symbols, labels = sample(grammar, samples, seed=sample_seed)
    meta = save_data(
        out_dir, grammar, symbols, labels, encoding=encoding, whitening=whitening, sample_seed=sample_seed,
        overwrite=overwrite,
    )  # fmt: skip
    summary = {"out": str(out_dir), "samples": meta["samples"], "input_hash": meta["input_hash"], **describe(grammar)}
    summary["predicted_p_star"] = {a: predicted_sample_complexity(grammar, a) for a in ("cnn", "lcn")}
    emit({"schema": "dcollapse.synth-srhm/1", **summary}, as_json, render_srhm)


def render_srhm(summary: dict[str, Any]) -> None:
    table = Table(title=escape(f"SRHM data -> {summary['out']}"))
    for column in ("samples", "input length", "informative", "distinct possible", "P* CNN (pred.)", "P* LCN (pred.)"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary['samples']:,}", str(summary["length"]), str(summary["informative"]),
        f"{summary['max_distinct']:.3g}", f"{summary['predicted_p_star']['cnn']:,}",
        f"{summary['predicted_p_star']['lcn']:,}",
    )  # fmt: skip
    out.print(table)


# The learner options `hierarchy train` and `hierarchy curve` share (one declaration each).
DataDirArg = typer.Argument(..., metavar="DATA_DIR", help="Dataset directory written by `dcollapse synth srhm`.")
ArchOpt = typer.Option("cnn", "--arch", help="cnn (shared weights) | lcn (locally connected).")
WidthOpt = typer.Option(256, "--width", help="H: channels of every hidden layer.")
TestSizeOpt = typer.Option(2000, "--test-size", help="Test samples (the last ones of the data).")
EpochsOpt = typer.Option(100, "--epochs", help="Maximum epochs (per run).")
BatchSizeOpt = typer.Option(4, "--batch-size", help="SGD batch size.")
LrOpt = typer.Option(0.1, "--lr", help="Learning rate; SGD uses lr * width (mean-field readout).")
MomentumOpt = typer.Option(0.0, "--momentum", help="SGD momentum.")
LossThresholdOpt = typer.Option(1e-3, "--loss-threshold", help="Stop once the epoch's train loss is below.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32 | float64.")
TrainSeedOpt = typer.Option(0, "--seed", help="Seed of the initialisation and the batch order (same for every P).")


# ------------------------------------------------------------------------------------------------ check


@hierarchy_app.command("check")
@handles_errors
def check_command(
    data_dir: Path = DataDirArg,
    as_json: bool = JsonOpt,
) -> None:
    """Verify a dataset against its grammar: labels decode, s^L informative positions, distinct samples.

    Exit 1 when any check fails.

    Example: dcollapse hierarchy check data/srhm
    """
    from dcollapse.hierarchy.generator import check_dataset

    result = {"schema": "dcollapse.hierarchy-check/1", "data": str(data_dir), **check_dataset(data_dir)}
    emit(result, as_json, render_check)
    if not result["passed"]:
        raise CheckFailed(f"{data_dir}: the samples do not match their grammar")


def render_check(result: dict[str, Any]) -> None:
    table = Table(title=escape(result["data"]))
    for column in ("samples", "labels decoded by the grammar", f"{result['informative']} informative", "distinct"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result['samples']:,}", f"{result['decoded_match']:.2%}", str(result["informative_ok"]),
        str(result["distinct"]),
    )  # fmt: skip
    out.print(table)


# ------------------------------------------------------------------------------------------------ train


@hierarchy_app.command("train")
@handles_errors
def train_command(
    data_dir: Path = DataDirArg,
    out_path: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write."),
    arch: str = ArchOpt,
    width: int = WidthOpt,
    train_size: int = typer.Option(1000, "--train-size", help="P: training samples (the first P of the data)."),
    test_size: int = TestSizeOpt,
    epochs: int = EpochsOpt,
    batch_size: int = BatchSizeOpt,
    lr: float = LrOpt,
    momentum: float = MomentumOpt,
    loss_threshold: float = LossThresholdOpt,
    dtype: str = DtypeOpt,
    seed: int = TrainSeedOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a hierarchical CNN or LCN with SGD + cross-entropy until the train loss is below the threshold.

    Ctrl-C stops training and still writes the checkpoint (marked "interrupted"), then exits 130.

    Example: dcollapse hierarchy train data/srhm --arch cnn --width 256 --train-size 3000 --out runs/srhm-cnn.pt
    """
    from dcollapse import checkpoint
    from dcollapse.hierarchy.train import TrainConfig, train

    config = TrainConfig(
        arch=arch, width=width, train_size=train_size, test_size=test_size, epochs=epochs, batch_size=batch_size,
        lr=lr, momentum=momentum, loss_threshold=loss_threshold, dtype=dtype, seed=seed,
    )  # fmt: skip

    def on_epoch(e: dict[str, Any]) -> None:
        err.print(
            f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}  train error {e['train_error']:.3f}  "
            f"test error {e['test_error']:.3f}  {e['seconds']:.1f}s",
            highlight=False,
        )

    ckpt = train(config, data_dir, on_epoch=on_epoch)
    checkpoint.save(out_path, ckpt)
    if ckpt["stopped"] == "interrupted":
        err.print(f"interrupted: {out_path} holds the model after {len(ckpt['history'])} epochs")
        raise typer.Exit(130)
    last = ckpt["history"][-1]
    result = {"out": str(out_path), "epochs": last["epoch"], "stopped": ckpt["stopped"], **ckpt["test"]}
    result["train_loss"] = last["train_loss"]
    emit({"schema": "dcollapse.hierarchy-train/1", "arch": arch, "train_size": train_size, **result}, as_json,
         render_train)  # fmt: skip


def render_train(result: dict[str, Any]) -> None:
    table = Table(title=escape(result["out"]))
    for column in ("arch", "P", "epochs", "stopped", "train loss", "test error", "test loss"):
        table.add_column(column, justify="right")
    table.add_row(
        result["arch"], f"{result['train_size']:,}", str(result["epochs"]), result["stopped"],
        f"{result['train_loss']:.2e}", f"{result['error']:.4f}", f"{result['loss']:.4f}",
    )  # fmt: skip
    out.print(table)


# ------------------------------------------------------------------------------------------------ sensitivity


def _sensitivity_table(result: Sensitivity, title: str) -> Table:
    from dcollapse.hierarchy.sensitivity import KINDS

    table = Table(title=title)
    table.add_column("layer")
    for kind in KINDS:
        for level in result.levels:
            table.add_column(f"{kind[:3]} l={level}", justify="right")
    for k, layer in enumerate(result.layers):
        cells = [f"{result.values[kind][k][j]:.3f}" for kind in KINDS for j in range(len(result.levels))]
        table.add_row(layer, *cells)
    return table


@hierarchy_app.command("sensitivity")
@handles_errors
def sensitivity_command(
    run: Path = typer.Argument(..., help="Checkpoint written by `dcollapse hierarchy train`."),
    samples: int = typer.Option(500, "--samples", help="Fresh samples drawn from the run's grammar."),
    seed: int = typer.Option(0, "--seed", help="Seed of the samples and of the perturbations."),
    init: bool = typer.Option(False, "--init", help="Measure the network at initialisation (same seed) instead."),
    plot: Path | None = typer.Option(None, "--plot", help="Heat map (layers x levels per kind): .png, .pdf or .svg."),
    as_json: bool = JsonOpt,
) -> None:
    """S_k(l) = E||f_k(x) - f_k(T_l x)||^2 / E||f_k(x) - f_k(z)||^2 per layer k and perturbation level l.

    T_l re-draws the synonyms (syn), the informative positions (pos) or adds matched Gaussian noise (gau) at the
    l lowest levels; small values mean the layer has become invariant to that change.

    Example: dcollapse hierarchy sensitivity runs/srhm-cnn.pt --plot runs/srhm-cnn-sens.png
    """
    from dcollapse import checkpoint, plots
    from dcollapse.hierarchy.sensitivity import measure
    from dcollapse.hierarchy.train import TrainConfig, build_model, load_model

    if samples < 2:
        raise UserError(f"--samples {samples}: expected at least 2")
    if plot is not None:
        plots.check_plot_path(plot)
    ckpt = checkpoint.load(run)
    net, grammar = load_model(ckpt)
    if init:
        net = build_model(TrainConfig.from_dict(ckpt["config"]), grammar, ckpt["meta"]["encoding"]).eval()
    meta = ckpt["meta"]
    result = measure(net, grammar, meta["encoding"], meta["whitening"], samples, seed)
    title = f"{run}{' at initialisation' if init else ''}: sensitivity S_k(l)"
    if plot is not None:
        plots.sensitivity_heatmap(result.values, result.layers, result.levels, plot, title)
    doc = {"schema": "dcollapse.hierarchy-sensitivity/1", "checkpoint": str(run), "init": init, **asdict(result)}
    emit(doc, as_json, lambda _: out.print(_sensitivity_table(result, escape(title))), plot)


# ------------------------------------------------------------------------------------------------ curve


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--train-sizes: expected comma-separated integers like 100,300,1000, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise UserError("--train-sizes: expected positive integers")
    return sizes


@hierarchy_app.command("curve")
@handles_errors
def curve_command(
    data_dir: Path = DataDirArg,
    train_sizes: str = typer.Option("100,300,1000,3000,10000", "--train-sizes", help="Comma-separated P values."),
    arch: str = ArchOpt,
    width: int = WidthOpt,
    test_size: int = TestSizeOpt,
    epochs: int = EpochsOpt,
    batch_size: int = BatchSizeOpt,
    lr: float = LrOpt,
    momentum: float = MomentumOpt,
    loss_threshold: float = LossThresholdOpt,
    dtype: str = DtypeOpt,
    seed: int = TrainSeedOpt,
    samples: int = typer.Option(500, "--samples", help="Samples for the sensitivity measurement."),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Also keep each run's checkpoint here (P<size>.pt)."),
    plot: Path | None = typer.Option(None, "--plot", help="Test error and sensitivities vs P: .png, .pdf or .svg."),
    as_json: bool = JsonOpt,
) -> None:
    """Test error and last-hidden-layer sensitivities against P, with the measured and predicted P*.

    Predicted P* (no prefactor): (s0+1)^L n_c m^L for the LCN, (s0+1)^2 n_c m^L for the CNN.

    Example: dcollapse hierarchy curve data/srhm --train-sizes 100,300,1000,3000,10000 --arch cnn --json
    """
    from dcollapse import checkpoint, plots
    from dcollapse.hierarchy.curve import learning_curve
    from dcollapse.hierarchy.sensitivity import KINDS
    from dcollapse.hierarchy.train import TrainConfig

    if plot is not None:
        plots.check_plot_path(plot)

    config = TrainConfig(
        arch=arch, width=width, train_size=1, test_size=test_size, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=momentum, loss_threshold=loss_threshold, dtype=dtype, seed=seed,
    )  # fmt: skip
    sizes = _parse_sizes(train_sizes)

    def on_point(p: CurvePoint) -> None:
        err.print(
            f"P={p.train_size}: {p.epochs} epochs ({p.stopped}), test error {p.test_error:.3f}, "
            f"S_L(1) syn {p.last_hidden('synonyms'):.3f} pos {p.last_hidden('positions'):.3f}",
            highlight=False,
        )

    def on_checkpoint(size: int, ckpt: dict[str, Any]) -> None:
        if runs_dir is not None:
            checkpoint.save(runs_dir / f"P{size}.pt", ckpt)

    points, summary = learning_curve(data_dir, config, sizes, samples, on_point, on_checkpoint)
    if plot is not None:
        sensitivities = {kind: [p.last_hidden(kind) for p in points] for kind in KINDS}
        sizes, errors = [p.train_size for p in points], [p.test_error for p in points]
        plots.learning_curve(sizes, errors, sensitivities, summary["predicted"], summary["p_star"], plot)
    doc = {"schema": "dcollapse.hierarchy-curve/1", **summary, "points": [asdict(p) for p in points]}
    emit(doc, as_json, lambda _: render_curve(points, summary, escape(f"{data_dir}: {arch} learning curve")), plot)


def render_curve(points: list[CurvePoint], summary: dict[str, Any], title: str) -> None:
    from dcollapse.hierarchy.sensitivity import KINDS

    table = Table(title=title)
    for column in ("P", "epochs", "stopped", "test error", *(f"S_L(1) {k[:3]}" for k in KINDS)):
        table.add_column(column, justify="right")
    for p in points:
        table.add_row(
            f"{p.train_size:,}", str(p.epochs), p.stopped, f"{p.test_error:.3f}",
            *(f"{p.last_hidden(k):.3f}" for k in KINDS),
        )  # fmt: skip
    out.print(table)
    star = summary["p_star"]
    out.print(
        f"P* (50% test error): {'not bracketed by these sizes' if star is None else f'{star:,.0f}'}   "
        f"predicted without prefactor: {summary['predicted']:,}"
    )
