"""``dcollapse richness``: lazy vs rich dynamics of a CTR model's last hidden layer (low-rank richness D_LR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from dcollapse.cli.common import emit, handles_errors, out
from dcollapse.cli.options import DataOpt, JsonOpt
from dcollapse.cli.render import fmt, report_table
from dcollapse.reports.runs import model_line

CURVE_POINTS = (1, 2, 3, 5, 10, 20, 50)
NOTE = (
    "D_LR = 1 - ||P_F Phi||^2 / ||Phi||^2: share of the last hidden layer's energy outside the span of the logit "
    "(low-rank richness measure, reconstructed from the paper's stated properties); near 0 = rich/low-rank, near "
    "1 - 1/rank = lazy. Centred: sample means removed first. NC1/(1+NC1): its label-based counterpart (clicks, K = 2)."
)


def render_one(doc: dict[str, Any]) -> None:
    out.print(Text.assemble((doc["checkpoint"], "bold"), f": {model_line(doc['model'])}"))
    title = f"Last hidden layer Phi [{doc['samples']:,} {doc['split']} rows x {doc['features_dim']}] vs the logit"
    table = report_table(title, ["measure", "value"])
    table.add_row("D_LR", fmt(doc["d_lr"]))
    table.add_row("D_LR centred", fmt(doc["d_lr_centered"]))
    table.add_row("NC1 (clicks)", fmt(doc["nc1"], ".4g"))
    table.add_row("NC1 / (1 + NC1)", fmt(doc["nc1_bounded"]))
    out.print(table)
    out.print(NOTE, style="dim", highlight=False)
    spectrum = doc["spectrum"]
    if spectrum is not None:
        table = report_table("Eigen-features of Phi (centred)", ["k", "eigenvalue share", "Q(k) clicks", "U(k) logit"])
        for k in (k for k in CURVE_POINTS if k <= len(spectrum["relative_eigenvalues"])):
            table.add_row(
                str(k), *(fmt(spectrum[key][k - 1]) for key in ("relative_eigenvalues", "quality", "utilisation"))
            )
        table.caption = "Q(k) / U(k): share of the click labels / of the logit inside the top-k eigen-features"
        out.print(table)
    if doc["history"]:
        table = report_table("Tracked during training", ["epoch", "valid AUC", "D_LR", "D_LR centred"], left=0)
        for h in doc["history"]:
            table.add_row(str(h["epoch"]), fmt(h["valid_auc"]), fmt(h["d_lr"]), fmt(h["d_lr_centered"]))
        out.print(table)


def render_many(doc: dict[str, Any]) -> None:
    table = report_table(
        f"Richness per checkpoint ({doc['runs'][0]['split']} rows)",
        ["checkpoint", "epoch", "valid AUC", "D_LR", "D_LR centred", "NC1/(1+NC1)"],
    )
    for r in doc["runs"]:
        row = [fmt(r["valid_auc"]), fmt(r["d_lr"]), fmt(r["d_lr_centered"]), fmt(r["nc1_bounded"])]
        table.add_row(Path(r["checkpoint"]).name, str(r["epoch"]), *row)
    out.print(table)
    rho = doc["spearman_d_lr_centered_vs_nc1"]
    if rho is not None:
        out.print(f"Spearman rank correlation of D_LR centred and NC1 across checkpoints: {rho:.3f}", highlight=False)
    out.print(NOTE, style="dim", highlight=False)


@handles_errors
def richness_command(
    checkpoints: list[Path] = typer.Argument(..., metavar="CHECKPOINT...", help="Checkpoints from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split the probe rows are drawn from."),
    samples: int = typer.Option(5000, "--samples", min=2, help="Probe rows (all if fewer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the row sample."),
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Figure (.png, .pdf, .svg): Q(k)/U(k) curves (one checkpoint) or D_LR and valid AUC per epoch (several).",
    ),
) -> None:
    """Lazy vs rich: how much of the last hidden layer the click head uses (D_LR).

    Also reports its NC counterpart and the eigen-feature quality/utilisation curves. Several checkpoints (e.g.
    RUN.epoch*.pt from --save-every-epoch) give D_LR per epoch beside validation AUC.

    Example: dcollapse richness runs/deepfm.epoch*.pt --plot deepfm-richness.png
    """
    from dcollapse import plots
    from dcollapse.diagnostics.richness import richness_report

    if plot is not None:
        plots.check_plot_path(plot)
    doc = richness_report(checkpoints, data, split=split, samples=samples, seed=seed)
    several = "runs" in doc
    if plot is not None and not several and doc["spectrum"] is not None:
        s = doc["spectrum"]
        title = f"{checkpoints[0].name}: last hidden layer, D_LR (centred) {doc['d_lr_centered']:.3f}"
        plots.richness_spectrum(s["quality"], s["utilisation"], s["relative_eigenvalues"], plot, title)
    elif plot is not None and several:
        rows = [d for d in doc["runs"] if d["epoch"] is not None]
        columns = {key: [d[key] for d in rows] for key in ("epoch", "d_lr", "d_lr_centered", "valid_auc")}
        title = f"Richness (D_LR on {split} rows) and validation AUC over training"
        plots.richness_over_training(*columns.values(), plot, title)
    emit(doc, as_json, render_many if several else render_one, plot)


def register(app: typer.Typer) -> None:
    app.command("richness")(richness_command)
