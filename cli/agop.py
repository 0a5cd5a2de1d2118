"""``dcollapse agop``, ``nc`` and ``rfm``: AGOP, neural collapse and Deep RFM (Beaglehole et al., NeurIPS 2024)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from dcollapse.cli.common import emit, err, handles_errors, out
from dcollapse.cli.options import DataOpt, JsonOpt
from dcollapse.cli.render import fmt, report_table
from dcollapse.errors import UserError
from dcollapse.reports.runs import model_line

SplitOpt = typer.Option("valid", "--split", help="Split the sample rows are drawn from.")
SeedOpt = typer.Option(0, "--seed", help="Seed of the row sample.")
FIELD_NOTE = (
    "trace share: the field's part of tr(AGOP) (how much the logit moves with it); table rank k = round(RankMe) of "
    "the field's embedding table; AGOP in table top-k: fraction of the field's AGOP along the table's top-k singular "
    "directions (isotropic = k/d). Low: the model is sensitive to directions the table barely spans."
)
RFM_LABELS = {"x": "X", "sqrt_m_x": "M^1/2 X", "phi": "ReLU(W M^1/2 X)"}
RFM_COLUMNS = {"x": "X", "sqrt_m_x": "MX", "phi": "Phi"}
RFM_LEGEND = "X: layer input (unit rows); MX = M^1/2 X: AGOP projection; Phi = ReLU(W M^1/2 X): random features"


# ----------------------------------------------------------------------------------------------- agop


def render_agop(doc: dict[str, Any]) -> None:
    out.print(Text.assemble((doc["checkpoint"], "bold"), f": {model_line(doc['model'])}"))
    s = doc["spectrum"]
    out.print(
        f"AGOP of the logit wrt the concatenated embeddings ({doc['dim']} = F*d) over {doc['samples']:,} "
        f"{doc['split']} rows: RankMe {s['rankme']:.2f}, IA {s['ia']:.2f}, stable rank {s['stable_rank']:.2f}, "
        f"{s['above_1e3']} directions above 1e-3 of the top",
        highlight=False,
    )
    table = report_table(
        "Per field", ["field", "AGOP trace share", "AGOP RankMe", "table rank k", "AGOP in table top-k", "isotropic"]
    )
    for f in doc["fields"]:
        table.add_row(
            f["field"],
            f"{f['trace_share']:.3f}",
            f"{f['agop_rankme']:.2f}",
            str(f["table_rank"]),
            fmt(f["energy_in_table_span"], ".3f"),
            f"{f['isotropic_baseline']:.3f}",
        )
    out.print(table)
    out.print(FIELD_NOTE, style="dim", highlight=False)
    if doc["layers"]:
        table = report_table(
            "Neural Feature Ansatz per DNN linear layer", ["layer", "shape", "corr(W^TW, AGOP^1/2)", "corr(W^TW, AGOP)"]
        )
        for layer in doc["layers"]:
            shape = f"{layer['out_features']}x{layer['in_features']}"
            table.add_row(str(layer["layer"]), shape, f"{layer['corr_sqrt_agop']:.3f}", f"{layer['corr_agop']:.3f}")
        out.print(table)
        out.print("AGOP wrt the layer's input, of the sub-network from that layer to the logit", style="dim")


@handles_errors
def agop_command(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    samples: int = typer.Option(2000, "--samples", min=1, help="Rows the AGOP averages over (all if fewer)."),
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="AGOP spectra (whole and per field): .png, .pdf or .svg."),
) -> None:
    """AGOP of the logit wrt the field embeddings: which directions and fields the model uses.

    The AGOP spectrum is set against the collapse of each field's table, and every DNN layer gets its Neural
    Feature Ansatz correlation.

    Example: dcollapse agop runs/deepfm.pt --samples 2000 --plot deepfm-agop.png
    """
    from dcollapse import plots
    from dcollapse.diagnostics.agop import agop_report

    if plot is not None:
        plots.check_plot_path(plot)
    with err.status(f"AGOP over up to {samples:,} rows"):
        doc = agop_report(checkpoint_path, data, split=split, samples=samples, seed=seed)
    if plot is not None:
        d = doc["dim"] // len(doc["fields"])
        top_fields = sorted(doc["fields"], key=lambda f: -f["trace_share"])[:8]
        title = f"{checkpoint_path.name}: AGOP of the logit w.r.t. the embeddings ({doc['samples']:,} rows, d = {d})"
        plots.agop_spectra(doc["spectrum"]["normalized"], {f["field"]: f["normalized"] for f in top_fields}, plot,
                           title)  # fmt: skip
    emit(doc, as_json, render_agop, plot)


# ----------------------------------------------------------------------------------------------- nc


@handles_errors
def nc_command(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    samples: int = typer.Option(20000, "--samples", min=2, help="Rows to measure on (all if fewer)."),
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Neural collapse (NC1, NC2) of every DNN hidden layer's features, with the click labels as the K = 2 classes.

    NC1 = tr(Sigma_W) / tr(Sigma_B) with Sigma_W normalised by 1/N and Sigma_B by 1/K over the class means.

    Example: dcollapse nc runs/deepfm.pt --split train --samples 20000
    """
    from dcollapse.diagnostics.neural_collapse import nc_report

    doc = nc_report(checkpoint_path, data, split=split, samples=samples, seed=seed)
    emit(doc, as_json, render_nc)


def render_nc(doc: dict[str, Any]) -> None:
    split, rows = doc["split"], doc["layers"]
    out.print(Text.assemble((doc["checkpoint"], "bold"), f": {model_line(doc['model'])}"))
    title = f"Neural collapse on {doc['samples']:,} {split} rows (click rate {doc['click_rate']:.3f})"
    table = report_table(title, ["layer", "dim", "NC1", "tr Sigma_W", "tr Sigma_B", "NC2"])
    for r in rows:
        table.add_row(
            r["layer"],
            str(r["dim"]),
            f"{r['nc1']:.4g}",
            f"{r['tr_within']:.4g}",
            f"{r['tr_between']:.4g}",
            f"{r['nc2']:.2g}",
        )
    out.print(table)
    out.print(doc["note"], style="dim", highlight=False)


# ----------------------------------------------------------------------------------------------- rfm


def render_rfm(doc: dict[str, Any]) -> None:
    from dcollapse.diagnostics.deep_rfm import REPRESENTATIONS

    out.print(
        f"Deep RFM{'' if doc['use_agop'] else ' without AGOP (M = I)'} on {doc['dataset']}: n = {doc['samples']}, "
        f"K = {doc['classes']}, d = {doc['input_dim']}, width {doc['width']}, L = {doc['bandwidth']:g}, "
        f"ridge {doc['ridge']:g}",
        highlight=False,
    )
    columns = [f"{nc} {RFM_COLUMNS[r]}" for nc in ("NC1", "NC2") for r in REPRESENTATIONS]
    table = report_table("NC per layer", ["layer", *columns], left=0)
    for layer in doc["layers"]:
        stats = [layer[r] for r in REPRESENTATIONS]
        table.add_row(str(layer["layer"]), *(f"{s['nc1']:.4g}" for s in stats), *(f"{s['nc2']:.3g}" for s in stats))
    out.print(table)
    first, last = doc["layers"][0]["phi"]["nc1"], doc["layers"][-1]["phi"]["nc1"]
    out.print(f"NC1 of Phi: layer 1 {first:.4g} -> layer {doc['depth']} {last:.4g} ({first / last:.1f}x lower)")
    out.print(RFM_LEGEND, style="dim", highlight=False)


@handles_errors
def rfm_command(
    dataset: str = typer.Option("digits", "--dataset", help="'digits' (scikit-learn's 8x8 digits) or a Parquet/CSV."),
    label: str = typer.Option("label", "--label", help="Class column of a Parquet/CSV dataset."),
    depth: int = typer.Option(6, "--depth", min=1, help="Deep RFM layers."),
    width: int = typer.Option(512, "--width", min=1, help="Random ReLU features per layer."),
    bandwidth: float = typer.Option(2.0, "--bandwidth", help="Laplace kernel bandwidth L (> 0)."),
    ridge: float = typer.Option(1e-3, "--ridge", min=0.0, help="Kernel ridge (0 = interpolate)."),
    no_agop: bool = typer.Option(False, "--no-agop", help="Ablation: M = I (random features only)."),
    samples: int = typer.Option(500, "--samples", min=2, help="Training samples: the first N rows."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random feature maps."),
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="NC1 against depth (3 representations): .png, .pdf, .svg."),
) -> None:
    """Deep Recursive Feature Machine: neural collapse of its representations layer by layer.

    Per layer: unit-normalise X, fit Laplace kernel regression, project by the square root of its AGOP, apply
    random ReLU features; NC1/NC2 of X, M^1/2 X and ReLU(W M^1/2 X) per layer.

    Example: dcollapse rfm --dataset digits --depth 6 --plot rfm-nc1.png
    """
    from dcollapse import plots
    from dcollapse.diagnostics.deep_rfm import (
        REPRESENTATIONS,
        deep_rfm,
        load_classification_table,
        prepare_training_set,
    )

    if bandwidth <= 0:
        raise UserError(f"--bandwidth must be > 0, got {bandwidth:g}")
    if plot is not None:
        plots.check_plot_path(plot)
    x, labels = load_classification_table(dataset, label)
    x, labels = prepare_training_set(x, labels, samples)
    with err.status(f"Deep RFM: {depth} layers on {len(x)} samples"):
        try:
            result = deep_rfm(
                x, labels, depth=depth, width=width, bandwidth=bandwidth, ridge=ridge, use_agop=not no_agop, seed=seed
            )
        except ValueError as exc:
            raise UserError(f"{dataset}: {exc}") from None
    doc = {"schema": "dcollapse.rfm/1", "dataset": dataset, **dataclasses.asdict(result)}
    if plot is not None:
        layers = [layer.layer for layer in result.layers]
        series = {RFM_LABELS[r]: (layers, [getattr(layer, r).nc1 for layer in result.layers]) for r in REPRESENTATIONS}
        title = f"Deep RFM on {dataset} (n = {result.samples}){' without AGOP' if no_agop else ''}"
        plots.line_plot(series, plot, title, "layer", "NC1 = tr(Sigma_W) / tr(Sigma_B)")
    emit(doc, as_json, render_rfm, plot)


def register(app: typer.Typer) -> None:
    app.command("agop")(agop_command)
    app.command("nc")(nc_command)
    app.command("rfm")(rfm_command)
