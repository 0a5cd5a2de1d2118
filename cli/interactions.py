"""``dcollapse interactions``: Harsanyi AND-OR interactions between the feature fields of a CTR checkpoint.

One checkpoint: the order-wise strength distribution and the strongest field sets. Several checkpoints (the
``RUN.epochN.pt`` files of ``dcollapse train --save-every-epoch``): the distribution per epoch as a heat map,
the detected phase boundary and the train/valid loss gap beside it. Every result is built as one JSON-ready
document (what ``--json`` prints) and the tables are rendered from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dcollapse.cli.common import emit, err, handles_errors, out, progress
from dcollapse.cli.options import JsonOpt

BAR = "█"


# ----------------------------------------------------------------------------------------------- rendering


def bar(value: float, width: int = 30) -> str:
    return BAR * max(0, round(value * width))


def render_single(doc: dict[str, Any]) -> None:
    r = doc["results"][0]
    mode = "sparse AND-OR" if doc["options"]["sparse"] else "AND (Harsanyi)"
    table = Table(title=escape(f"{r['checkpoint']}: {mode} interactions between {len(doc['players'])} fields"))
    for column, justify in (("order", "right"), ("positive", "right"), ("negative", "right"), ("strength", "left")):
        table.add_column(column, justify=justify)
    dist = r["order"]
    for m, pos, neg in zip(dist["orders"], dist["positive"], dist["negative"], strict=True):
        table.add_row(str(m), f"{pos:.3f}", f"{neg:.3f}", bar(pos - neg))
    out.print(table)
    top = Table(title=f"strongest interactions (mean over {doc['samples']} {doc['split']} samples)")
    for column in ("kind", "fields", "mean I", "mean |I|", "salient in"):
        top.add_column(column, justify="left" if column in ("kind", "fields") else "right")
    for t in r["top"]:
        top.add_row(t["kind"], ", ".join(t["fields"]), f"{t['mean']:+.4f}", f"{t['mean_abs']:.4f}",
                    f"{t['salient_share']:.0%}")  # fmt: skip
    out.print(top)
    out.print(
        f"salient (|I| > 5% of the max): {r['salient_fraction']:.1%} of {2 ** (len(doc['players']) + 1) - 2} patterns; "
        f"mean order {r['mean_order']:.2f}; sum |I| {r['l1']['result']:.3f} (AND-only {r['l1']['and_only']:.3f}); "
        f"mean v(x_N) {r['v_full']:+.3f}, v(x_empty) {r['v_empty']:+.3f}",
        highlight=False,
        markup=False,
    )


def render_dynamics(doc: dict[str, Any]) -> None:
    phase, gap = doc["phase"], doc["loss_gap"]
    gaps = dict(zip(gap["epochs"], gap["gap"], strict=True))
    table = Table(title=f"interaction orders over training ({len(doc['players'])} fields, {doc['samples']} samples)")
    table.add_column("epoch", justify="right")
    table.add_column(f"mass order >= {phase['from_order']}", justify="right")
    table.add_column("mean order", justify="right")
    table.add_column("valid - train loss", justify="right")
    table.add_column("strength by order 1..n", justify="left")
    shades = " ░▒▓█"
    for r, mass in zip(doc["results"], phase["high_order_mass"], strict=True):
        strength = [p - q for p, q in zip(r["order"]["positive"], r["order"]["negative"], strict=True)]
        peak = max(strength) or 1.0
        heat = "".join(shades[min(4, round(4 * s / peak))] for s in strength)
        mark = " <" if r["epoch"] == phase["boundary_epoch"] else ""
        g = gaps.get(r["epoch"])
        table.add_row(str(r["epoch"]), f"{mass:.3f}{mark}", f"{r['mean_order']:.2f}",
                      "-" if g is None else f"{g:+.4f}", heat)  # fmt: skip
    out.print(table)
    verdict = "two phases (falls, then rises)" if phase["two_phase"] else "no clear two phases"
    out.print(
        f"phase boundary (min of the mass of orders >= {phase['from_order']}): epoch {phase['boundary_epoch']} "
        f"[{verdict}: drop {phase['drop']:.3f}, rise {phase['rise']:.3f}]; loss gap starts to grow after epoch "
        f"{gap['onset_epoch'] if gap['onset_epoch'] is not None else '-'}",
        highlight=False,
        markup=False,
    )


# ----------------------------------------------------------------------------------------------- command


def interactions(
    checkpoints: list[Path] = typer.Argument(
        ..., metavar="CHECKPOINT...", help="A `dcollapse train` checkpoint, or several epoch checkpoints of one run."
    ),
    data: Path | None = typer.Option(None, "--data", help="Dataset directory; default: the path stored in the run."),
    fields: str | None = typer.Option(None, "--fields", help="Player fields by name, comma-separated (at most 12)."),
    top: int | None = typer.Option(None, "--top", help="Players = the N most important fields (see --rank-by)."),
    rank_by: str = typer.Option("agop", "--rank-by", help="--top ranking: agop (AGOP trace share) | masking."),
    samples: int = typer.Option(32, "--samples", min=1, help="Samples whose interactions are averaged."),
    split: str = typer.Option("train", "--split", help="Split the samples are drawn from."),
    baseline: str = typer.Option("mean", "--baseline", help="Masked field value: mean | oov | zero embedding."),
    sparse: bool = typer.Option(False, "--sparse", help="Extract sparse AND-OR interactions (default: AND only)."),
    lr: float = typer.Option(1e-6, "--lr", help="--sparse: SGD learning rate (in units of max |v|)."),
    niter: int = typer.Option(5000, "--niter", help="--sparse: SGD steps."),
    tau: float = typer.Option(0.04, "--tau", help="--sparse: bound on q as a fraction of |v(x_N) - v(x_empty)|."),
    high_order: int | None = typer.Option(None, "--high-order", help="Dynamics: lowest 'high' order (default n/2)."),
    show: int = typer.Option(10, "--show", min=1, help="How many of the strongest interactions to list."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample draw."),
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Order bars, or heat map over epochs: .png, .pdf, .svg."),
) -> None:
    """Harsanyi AND-OR interactions between feature fields: which field sets a CTR model's log-odds rely on.

    Players are fields; masking a field replaces its embedding by a baseline; v = the log-odds of the observed
    label. With several epoch checkpoints: the order distribution per epoch, the phase boundary (epoch of least
    mid/high-order mass) and the train/valid loss gap.

    Example: dcollapse interactions runs/deepfm.pt --top 8 --sparse --plot orders.png
    """
    from dcollapse import plots
    from dcollapse.diagnostics import field_players as P

    choice = P.PlayerChoice(fields, top, rank_by)
    options = P.InteractionOptions(baseline, sparse, lr, niter, tau, show)
    if plot is not None:
        plots.check_plot_path(plot)
    bar_ = progress()
    with bar_:
        task = bar_.add_task("interactions", total=len(checkpoints), status="")

        def done(label: str) -> None:
            bar_.update(task, advance=1, status=Path(label).name)

        doc = P.interaction_report(checkpoints, data=data, choice=choice, options=options, samples=samples,
                                   split=split, high_order=high_order, seed=seed, on_checkpoint=done)  # fmt: skip
    for line in doc["warnings"] + ([doc["selection"]["note"]] if "note" in doc["selection"] else []):
        err.print(Text(f"note: {line}"), soft_wrap=True)
    several = len(doc["results"]) > 1
    if plot is not None:
        (plots.interaction_dynamics if several else plots.interaction_orders)(doc, plot)
    emit(doc, as_json, render_dynamics if several else render_single, plot)


def register(app: typer.Typer) -> None:
    app.command("interactions")(handles_errors(interactions))
