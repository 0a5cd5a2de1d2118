"""``dcollapse interactions``: Harsanyi AND-OR interactions between the feature fields of a CTR checkpoint.

One checkpoint: the order-wise strength distribution and the strongest field sets. Several checkpoints (the
``RUN.epochN.pt`` files of ``dcollapse train --save-every-epoch``): the distribution per epoch as a heat map,
the detected phase boundary and the train/valid loss gap beside it. Every result is built as one JSON-ready
document (what ``--json`` prints) and the tables are rendered from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from dcollapse.cli.common import emit, err, handles_errors, out, progress
from dcollapse.errors import UserError

if TYPE_CHECKING:
    import torch

DEFAULT_TOP = 10  # players when the model has more than MAX_PLAYERS fields and none were chosen
BASELINE_ROWS = 10_000  # training rows the mean baseline averages over
AGOP_ROWS = 512  # rows the AGOP field ranking averages over
BAR = "█"


@dataclass
class Loaded:
    """One checkpoint: its path, dict, rebuilt model (eval mode, CPU) and the epoch it was saved at."""

    path: Path
    ckpt: dict[str, Any]
    model: torch.nn.Module
    epoch: int


def load_checkpoints(paths: list[Path]) -> list[Loaded]:
    """Load CTR checkpoints of one dataset layout, sorted by epoch (distinct epochs when there are several)."""
    from dcollapse import checkpoint
    from dcollapse.models import load_model

    runs = []
    for path in paths:
        ckpt = checkpoint.load(path)
        if ckpt.get("kind", "ctr") != "ctr":
            raise UserError(f"{path}: a {ckpt.get('kind')!r} checkpoint; interactions read `dcollapse train` output")
        # epoch snapshots name their epoch; a run's main checkpoint holds the best epoch's weights
        history = ckpt.get("history") or []
        epoch = int(ckpt.get("epoch") or ckpt.get("best_epoch") or (history[-1]["epoch"] if history else 0))
        runs.append(Loaded(path, ckpt, load_model(ckpt), epoch))
    layout = field_layout(runs[0].ckpt["meta"])
    for run in runs[1:]:
        if field_layout(run.ckpt["meta"]) != layout:
            raise UserError(f"{run.path}: fields differ from those of {runs[0].path}; give checkpoints of one run")
    runs.sort(key=lambda r: r.epoch)
    epochs = [r.epoch for r in runs]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"two checkpoints were saved at the same epoch ({epochs}); give one run's epoch files")
    return runs


def field_layout(meta: dict[str, Any]) -> list[tuple[str, int]]:
    return [(f["name"], int(f["vocab_size"])) for f in meta["fields"]]


def dataset_dir(run: Loaded, data: Path | None) -> Path:
    """The dataset directory (``--data`` or the stored path), checked against the checkpoint's fields."""
    from dcollapse.data.dataset import load_meta

    stored = (run.ckpt.get("data") or {}).get("path")
    if data is None and not (stored and (Path(stored) / "meta.json").is_file()):
        raise UserError(f"{run.path}: its dataset {stored or '(none stored)'} is not available; pass --data DIR")
    directory = data if data is not None else Path(stored)
    if field_layout(load_meta(directory)) != field_layout(run.ckpt["meta"]):
        raise UserError(f"{directory}: fields or vocabulary sizes differ from the ones {run.path} was trained on")
    return directory


def choose_players(
    names: list[str], fields: str | None, top: int | None, rank_by: str, run: Loaded, ids: torch.Tensor,
    labels: torch.Tensor, baseline_ids: torch.Tensor, baseline: str,
) -> tuple[list[int], dict[str, Any]]:  # fmt: skip
    """Player fields (indices) and how they were chosen: --fields, --top N by AGOP share or masking drop, or all."""
    import torch

    from dcollapse.diagnostics import harsanyi as H

    if fields is not None and top is not None:
        raise UserError("give --fields or --top, not both")
    if fields is not None:
        chosen = [name.strip() for name in fields.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise UserError(f"--fields: no field named {unknown[0]!r} (fields: {', '.join(names)})")
        if len(set(chosen)) != len(chosen) or not chosen:
            raise UserError("--fields: give distinct field names, comma-separated")
        if len(chosen) > H.MAX_PLAYERS:
            raise UserError(f"--fields: at most {H.MAX_PLAYERS} fields (2^n masked inputs), got {len(chosen)}")
        return [names.index(name) for name in chosen], {"by": "fields"}
    if top is None:
        if len(names) <= H.MAX_PLAYERS:
            return list(range(len(names))), {"by": "all"}
        err.print(f"{len(names)} fields > {H.MAX_PLAYERS}: analysing the top {DEFAULT_TOP} (use --fields or --top)")
        top = DEFAULT_TOP
    if not 1 <= top <= min(H.MAX_PLAYERS, len(names)):
        raise UserError(f"--top: expected 1..{min(H.MAX_PLAYERS, len(names))}, got {top}")
    if rank_by == "agop":
        scores = H.agop_field_shares(run.model, ids[:AGOP_ROWS])
    else:
        inputs = H.field_inputs(run.model, ids)
        scores = H.masking_drop(run.model, inputs, labels, H.field_baselines(run.model, baseline, baseline_ids))
    order = torch.argsort(scores, descending=True)[:top].sort().values.tolist()
    return order, {"by": rank_by, "epoch": run.epoch, "scores": dict(zip(names, scores.tolist(), strict=True))}


def analyse(
    run: Loaded, ids: torch.Tensor, labels: torch.Tensor, baseline_ids: torch.Tensor, players: list[int],
    options: dict[str, Any], names: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The interaction document of one checkpoint (order distribution, salient share, strongest sets)."""
    from dcollapse.diagnostics import harsanyi as H

    base = H.field_baselines(run.model, options["baseline"], baseline_ids)
    value = H.field_value_fn(run.model, H.field_inputs(run.model, ids), labels, players, base)
    values = H.masked_outputs(value, len(players))
    dense = H.harsanyi(values)
    result = dense
    if options["sparse"]:
        result = H.sparse_and_or(values, lr=options["lr"], niter=options["niter"], tau=options["tau"])
    dist = H.order_distribution(result)
    top = H.top_interactions(result, options["show"])
    return {
        "checkpoint": str(run.path),
        "epoch": run.epoch,
        "v_full": float(values[-1].mean()),
        "v_empty": float(values[0].mean()),
        "l1": {"and_only": float(dense.strengths().sum(0).mean()), "result": float(result.strengths().sum(0).mean())},
        "max_q": float(result.q.abs().max()),
        "order": {"orders": list(range(1, len(players) + 1)), **dataclasses.asdict(dist)},
        "mean_order": dist.mean_order(),
        "salient_fraction": H.salient_fraction(result),
        "top": [{**dataclasses.asdict(t), "fields": [names[players[i]] for i in t.players]} for t in top],
    }


# ----------------------------------------------------------------------------------------------- rendering


def bar(value: float, width: int = 30) -> str:
    return BAR * max(0, round(value * width))


def render_single(doc: dict[str, Any]) -> None:
    r = doc["results"][0]
    mode = "sparse AND-OR" if doc["options"]["sparse"] else "AND (Harsanyi)"
    table = Table(title=f"{r['checkpoint']}: {mode} interactions between {len(doc['players'])} fields")
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


def plot_single(doc: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    from dcollapse import plots

    dist = doc["results"][0]["order"]
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.bar(dist["orders"], dist["positive"], color="tab:red", label="positive")
    ax.bar(dist["orders"], dist["negative"], color="tab:blue", label="negative")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("order |S|")
    ax.set_ylabel("normalised strength")
    ax.set_xticks(dist["orders"])
    ax.legend(fontsize=8)
    ax.set_title(f"{Path(doc['results'][0]['checkpoint']).name}: interaction strength by order", fontsize=10)
    plots.save_figure(fig, path)


def plot_dynamics(doc: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    from dcollapse import plots

    phase, gap = doc["phase"], doc["loss_gap"]
    epochs = [r["epoch"] for r in doc["results"]]
    heat = np.array([[p - q for p, q in zip(r["order"]["positive"], r["order"]["negative"], strict=True)]
                     for r in doc["results"]]).T  # fmt: skip
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    image = top.imshow(heat, aspect="auto", origin="lower", cmap="viridis",
                       extent=(-0.5, len(epochs) - 0.5, 0.5, heat.shape[0] + 0.5))  # fmt: skip
    fig.colorbar(image, ax=top, label="normalised strength")
    top.set_ylabel("order |S|")
    top.set_title("interaction strength by order over training", fontsize=10)
    steps = np.arange(len(epochs))
    bottom.plot(steps, phase["high_order_mass"], marker="o", color="tab:purple",
                label=f"mass of orders >= {phase['from_order']}")  # fmt: skip
    bottom.set_ylabel("high-order mass")
    bottom.axvline(epochs.index(phase["boundary_epoch"]), color="tab:purple", linestyle="--", linewidth=1)
    gaps = dict(zip(gap["epochs"], gap["gap"], strict=True))
    twin = bottom.twinx()
    twin.plot(steps, [gaps.get(e, np.nan) for e in epochs], marker="s", color="tab:orange", label="valid - train loss")
    twin.set_ylabel("valid - train loss")
    if gap["onset_epoch"] in epochs:
        twin.axvline(epochs.index(gap["onset_epoch"]), color="tab:orange", linestyle=":", linewidth=1)
    bottom.set_xticks(steps, [str(e) for e in epochs])
    bottom.set_xlabel("epoch")
    fig.legend(loc="lower center", ncols=2, fontsize=8, bbox_to_anchor=(0.5, -0.04))
    plots.save_figure(fig, path)


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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG: order bars, or the heat map over epochs."),
) -> None:
    """Harsanyi AND-OR interactions between feature fields: which field sets a CTR model's log-odds rely on.

    Players are fields; masking a field replaces its embedding by a baseline; v = the log-odds of the observed
    label. With several epoch checkpoints: the order distribution per epoch, the phase boundary (epoch of least
    mid/high-order mass) and the train/valid loss gap.

    Example: dcollapse interactions runs/deepfm.pt --top 8 --sparse --plot orders.png
    """
    from dcollapse import plots
    from dcollapse.data.dataset import load_meta, load_split
    from dcollapse.diagnostics import harsanyi as H
    from dcollapse.metrics.collapse import fixed_batch_indices

    if baseline not in H.BASELINES:
        raise UserError(f"--baseline: expected one of {', '.join(H.BASELINES)}, got {baseline!r}")
    if rank_by not in ("agop", "masking"):
        raise UserError(f"--rank-by: expected agop or masking, got {rank_by!r}")
    if sparse and (niter < 1 or lr <= 0 or tau < 0):
        raise UserError("--sparse needs --niter >= 1, --lr > 0 and --tau >= 0")
    if plot is not None:
        plots.check_plot_path(plot)
    runs = load_checkpoints(checkpoints)
    last = runs[-1]
    directory = dataset_dir(last, data)
    meta = load_meta(directory)
    names = [f["name"] for f in meta["fields"]]
    rows = load_split(directory, split, meta)
    if len(rows) == 0:
        raise UserError(f"{directory}: split {split!r} has no rows")
    index = fixed_batch_indices(len(rows), samples, seed)
    ids, labels = rows.ids[index].long(), rows.labels[index]
    base_rows = load_split(directory, "train", meta) if "train" in meta["splits"] else rows
    baseline_ids = base_rows.ids[fixed_batch_indices(len(base_rows), BASELINE_ROWS, seed)].long()
    players, selection = choose_players(names, fields, top, rank_by, last, ids, labels, baseline_ids, baseline)
    if high_order is not None and not 1 <= high_order <= len(players):
        raise UserError(f"--high-order: expected 1..{len(players)}, got {high_order}")
    options = {"baseline": baseline, "sparse": sparse, "lr": lr, "niter": niter, "tau": tau, "show": show}

    results = []
    bar_ = progress()
    with bar_:
        task = bar_.add_task("interactions", total=len(runs), status="")
        for run in runs:
            bar_.update(task, status=f"{run.path.name}")
            results.append(analyse(run, ids, labels, baseline_ids, players, options, names))
            bar_.advance(task)
    doc: dict[str, Any] = {
        "players": [names[i] for i in players],
        "selection": selection,
        "data": str(directory),
        "split": split,
        "samples": int(index.numel()),
        "seed": seed,
        "options": {k: v for k, v in options.items() if k != "show"},
        "results": results,
    }
    if len(runs) > 1:
        distributions = [H.OrderDistribution(r["order"]["positive"], r["order"]["negative"], r["order"]["total"])
                         for r in results]  # fmt: skip
        phase = H.detect_two_phase([r.epoch for r in runs], distributions, high_order)
        history = max((r.ckpt.get("history") or [] for r in runs), key=len)
        doc["phase"] = dataclasses.asdict(phase)
        doc["loss_gap"] = dataclasses.asdict(H.loss_gap(history))
    if plot is not None:
        (plot_dynamics if len(runs) > 1 else plot_single)(doc, plot)
    emit(doc, as_json, render_dynamics if len(runs) > 1 else render_single, plot)


def register(app: typer.Typer) -> None:
    app.command("interactions")(handles_errors(interactions))
