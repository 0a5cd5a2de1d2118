"""``dcollapse spectrum``, ``compare`` and ``gradients``: parse, call :mod:`dcollapse.reports`, render.

Each report's ``to_dict()`` is what ``--json`` prints; the tables below are drawn from that same document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text

from dcollapse.cli.common import emit, err, handles_errors, out
from dcollapse.cli.options import BatchOpt, DataOpt, DeviceOpt, JsonOpt, SeedOpt, SplitOpt, plot_option
from dcollapse.cli.render import BAR_NOTE, fmt, ia_text, print_header, print_verdict, report_table, spark
from dcollapse.errors import CheckFailed, UserError

BATCH_ROWS = (("Z", "z"), ("cov(Z)", "covariance"))

TablesOpt = typer.Option(None, "--tables", metavar="REGEX", help="Report only the tables whose key matches REGEX.")
FieldDimsOpt = typer.Option(
    None, "--field-dims", metavar="V1,V2,...", help="Split one concatenated table into fields of these sizes."
)
FieldMapOpt = typer.Option(
    None, "--field-map", metavar="FILE", help="Field names and sizes: FuxiCTR feature_map.json or a meta.json."
)


def parse_field_dims(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        dims = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--field-dims: expected comma-separated integers, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise UserError(f"--field-dims: expected positive integers, got {text!r}")
    return dims


# ----------------------------------------------------------------------------------------------- rendering


def render_spectrum(doc: dict[str, Any]) -> None:
    print_header(doc)
    dim = doc["field_summary"]["dim"]
    several = len(doc["source"]["tables"]) > 1 and doc["source"]["layout"] != "dcollapse"
    title = f"Embedding table per field (d = {dim})" if dim else "Embedding tables"
    columns = ["field", "vocab", "IA", "untrained", "RankMe", "stable rank"]
    table = report_table(title, columns, bar=True)
    for r in doc["fields"]:
        width = len(r["normalized"])
        rank = min(r["vocab_size"], width)
        name = r["field"] if not several or r["table"] == r["field"] else f"{r['table']}/{r['field']}"
        table.add_row(
            Text(name),
            str(r["vocab_size"]),
            ia_text(r["ia"], rank),
            f"{r['untrained']['ia']:.2f}",
            f"{r['rankme']:.2f}",
            f"{r['stable_rank']:.2f}",
            spark(r["normalized"]),
        )
    s = doc["field_summary"]
    table.add_section()
    table.add_row("mean", "", ia_text(s["mean_ia"], dim or 1), "", f"{s['mean_rankme']:.2f}", "", "")
    table.add_row(Text(f"min ({s['min_ia_field']})"), "", ia_text(s["min_ia"], dim or 1), "", "", "", "")
    out.print(table)
    out.print(
        f"[dim]IA: information abundance, in [1, min(vocab, d)]; untrained: the IA of a random table of the same "
        f"shape; {BAR_NOTE}[/]",
        soft_wrap=True,
    )
    for note in doc["source"]["notes"]:
        out.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)

    batch = doc["batch"]
    if batch is None:
        out.print(Text(f"batch metrics skipped: {doc['dataset']['skipped']}", style="yellow"), soft_wrap=True)
    else:
        rows = f"{batch['rows']:,} {escape(batch['split'])} rows"
        title = f"Batch matrix Z: {rows} x {batch['dim']} (F*d), seed {batch['seed']}"
        table = report_table(title, ["matrix", "RankMe", "IA", "stable rank", ">1e-3"], bar=True)
        for label, key in BATCH_ROWS:
            st = batch[key]
            row = [f"{st['rankme']:.2f}", f"{st['ia']:.2f}", f"{st['stable_rank']:.2f}", str(st["above_1e3"])]
            table.add_row(label, *row, spark(st["normalized"]))
        out.print(table)

    if doc["history"]:
        table = report_table(
            "Over training (fixed validation batch)",
            ["epoch", "valid AUC", "valid logloss", "RankMe", "mean IA"],
            left=0,
        )
        for h in doc["history"]:
            best = h["epoch"] == doc["best_epoch"]
            epoch = f"{h['epoch']}{' *' if best else ''}"
            row = [fmt(h["valid_auc"]), fmt(h["valid_logloss"]), fmt(h["rankme"], ".2f"), fmt(h["mean_ia"], ".2f")]
            table.add_row(epoch, *row, style="bold" if best else None)
        table.caption = "* best epoch (the checkpoint's weights)" if doc["best_epoch"] is not None else None
        out.print(table)
    print_verdict(doc["verdict"]["lines"])
    if doc["checks"]["requested"] and doc["checks"]["passed"]:
        out.print("[green]checks passed[/]")


def render_tables_list(doc: dict[str, Any]) -> None:
    """``--list-tables``: every tensor the reader saw, and whether it was chosen as an embedding table."""
    where = escape(str(doc["path"] or "the object"))
    table = report_table(f"Tensors in {where} ({doc['reader']}, layout {doc['layout']})",
                         ["key", "shape", "dtype", "chosen", "why"], left=5)  # fmt: skip
    for c in doc["candidates"]:
        cells = [Text(c["key"]), "x".join(map(str, c["shape"])), c["dtype"], "yes" if c["chosen"] else "no"]
        table.add_row(*cells, Text(c["reason"]))
    out.print(table)
    for note in doc["notes"]:
        out.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)


def run_label(checkpoint_path: str, names: list[str]) -> str:
    """The file name, or ``folder/name`` when two runs share a file name."""
    path = Path(checkpoint_path).resolve()
    return path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"


def render_compare(doc: dict[str, Any]) -> None:
    from dcollapse.reports.compare import variant_name
    from dcollapse.reports.runs import dnn_label

    several = len(doc["datasets"]) > 1
    names = [Path(r["checkpoint"]).name for r in doc["runs"]]
    text = ["run", "model", "DNN"] + (["data"] if several else [])
    columns = [*text, "AUC", "log loss", "RankMe", "Δ RankMe", "Δ AUC", "mean IA", "min IA"]
    table = report_table("Collapse across variants (the paper's Table 1 layout)", columns, left=len(text))
    previous = None
    for r in doc["runs"]:
        group = (r["dataset_label"], r["backbone"])
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        change, auc_change = r["rankme_change_vs_base"], r["auc_change_vs_base"]
        change_text = Text("—") if change is None else Text(f"{change:+.1%}", style="green" if change > 0 else "red")
        auc_mark = "" if r["metrics_split"] in ("test", None) else " ᵛ"
        rankme_mark = "" if r["rankme_source"] in ("batch", None) else " †"
        flag_mark = " ⚠" if r["flags"] else ""
        cells = [Text(run_label(r["checkpoint"], names) + flag_mark), variant_name(r)]
        cells += [dnn_label(r["model"]) if r["model"] else "—"] + ([r["dataset_label"]] if several else [])
        cells += [
            fmt(r["auc"]) + auc_mark,
            fmt(r["logloss"]) + auc_mark,
            fmt(r["rankme"], ".1f" if (r["rankme"] or 0) >= 100 else ".2f") + rankme_mark,
        ]
        dim = r["dim"] or 1
        cells += [change_text, fmt(auc_change, "+.4f"), ia_text(r["mean_field_ia"], dim)]
        cells += [ia_text(r["min_field_ia"], dim)]
        table.add_row(*cells)
    splits = sorted({r["metrics_split"] for r in doc["runs"]} - {None})
    notes = [f"AUC and log loss: {' / '.join(splits) or 'none'} split"]
    if "valid" in splits:
        notes.append("ᵛ validation metrics of the best epoch (no test split)")
    if any(r["rankme_source"] == "history" for r in doc["runs"]):
        notes.append("† RankMe from the training history (dataset not found; pass --data to recompute)")
    if any(r["flags"] for r in doc["runs"]):
        notes.append("⚠ a run whose numbers cannot be read as collapse (see the verdict)")
    table.caption = "Δ: relative RankMe and absolute AUC change vs the base run of the same backbone and dataset"
    table.caption += "".join(f"\n{note}" for note in notes)
    out.print(table)
    for note in doc["notes"]:
        out.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)
    print_verdict(doc["verdict"]["lines"])


def render_gradients(doc: dict[str, Any]) -> None:
    print_header(doc)
    rows = f"{doc['rows']:,} {escape(doc['split'])} rows"
    title = f"Gradient of the loss w.r.t. the embeddings: {rows} x {doc['dim']} (F*d)"
    table = report_table(title, ["matrix", "‖g‖ / ‖total‖", "RankMe", "IA", "stable rank", ">1e-3"], bar=True)
    labels = {"total": "dL/dE", "interaction": " via interaction", "dnn": " via DNN"}
    for key, label in labels.items():
        g = doc["gradients"].get(key)
        if g is None:
            continue
        if g["norm"] == 0.0:
            table.add_row(label, "0", "—", "—", "—", "—", "no direct path")
            continue
        share = g["norm"] / doc["gradients"]["total"]["norm"] if doc["gradients"]["total"]["norm"] else 0.0
        row = [f"{share:.3f}", f"{g['rankme']:.2f}", f"{g['ia']:.2f}", f"{g['stable_rank']:.2f}", str(g["above_1e3"])]
        table.add_row(label, *row, spark(g["normalized"]))
    z = doc["embeddings"]
    table.add_section()
    row = ["", f"{z['rankme']:.2f}", f"{z['ia']:.2f}", f"{z['stable_rank']:.2f}", str(z["above_1e3"])]
    table.add_row("Z (embeddings)", *row, spark(z["normalized"]), style="dim")
    table.caption = BAR_NOTE
    if "interaction" not in doc["gradients"]:
        table.caption += "\nno DNN: the whole gradient arrives through the interaction"
    out.print(table)


def check_plot(path: Path | None) -> None:
    """Refuse a bad plot name before any work (matplotlib is imported only when a plot is asked for)."""
    if path is not None:
        from dcollapse import plots

        plots.check_plot_path(path)


def warn(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- commands


@handles_errors
def spectrum(
    checkpoint_path: Path = typer.Argument(
        ...,
        metavar="CHECKPOINT",
        help="A `dcollapse train` checkpoint, or any model file: .pt/.pth/.bin/.ckpt, safetensors, .npy/.npz, a "
        "torch.distributed.checkpoint directory (docs/any-model.md).",
    ),  # fmt: skip
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = plot_option("log normalized spectra (per field and Z)"),
    fail_under_ia: float | None = typer.Option(None, "--fail-under-ia", help="Exit 1 if the mean field IA is below X."),
    fail_under_rankme: float | None = typer.Option(
        None, "--fail-under-rankme", help="Exit 1 if the batch RankMe of Z is below Y (needs the dataset)."
    ),
    fail_field_ia: float | None = typer.Option(None, "--fail-field-ia", help="Exit 1 if any field's IA is below X."),
    tables: str | None = TablesOpt,
    field_dims: str | None = FieldDimsOpt,
    field_map: Path | None = FieldMapOpt,
    list_tables: bool = typer.Option(False, "--list-tables", help="List the tensors found and which were chosen."),
) -> None:
    """Per-field collapse of the embedding tables, RankMe of the batch matrix Z, their history over training, and
    a plain-language verdict.

    IA = information abundance (sum s / max s, at most d), shown beside the IA of an untrained table of the same
    shape; RankMe = entropy effective rank (the source paper's metric).

    Without the dataset only the table-level metrics are reported. A violated gate exits 1 with a one-line reason.

    Example: dcollapse spectrum runs/deepfm.pt --fail-under-ia 4 --plot deepfm-spectrum.png
    """
    from dcollapse import reports

    gates = reports.Gates(fail_under_ia, fail_under_rankme, fail_field_ia)
    check_plot(plot)
    dims = parse_field_dims(field_dims)
    if list_tables:
        from dcollapse.sources import read_tables

        found = read_tables(checkpoint_path, field_dims=dims, field_map=field_map, tables=tables, allow_empty=True)
        emit(reports.tables_listing(found), as_json, render_tables_list)
        return
    run = reports.load_run(checkpoint_path, data, field_dims=dims, field_map=field_map, tables=tables, device=device)
    warn(run.warnings)
    with err.status(f"spectra of {escape(str(checkpoint_path))}"):
        report = reports.spectrum_report(run, split=split, batch=batch, seed=seed, gates=gates)
        if plot is not None:
            report.plot(plot)
    emit(report.to_dict(), as_json, render_spectrum, plot)
    if report.checks["failures"]:
        raise CheckFailed(f"{checkpoint_path}: " + "; ".join(report.checks["failures"]))


@handles_errors
def compare(
    checkpoints: list[Path] = typer.Argument(
        ..., metavar="CHECKPOINT...", help="Checkpoints from `dcollapse train` (and any model files, table-level)."
    ),
    data: Path | None = typer.Option(
        None, "--data", metavar="DATA_DIR", help="Dataset directory for every run; default: each checkpoint's own."
    ),
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = plot_option("the overlaid normalized eigenvalues of cov(Z), one panel per backbone"),
) -> None:
    """One table over many runs in the source paper's Table 1 layout: AUC, logloss, batch RankMe, field IA, the
    RankMe and AUC change against the base run, and a verdict per variant.

    The base of a variant is the run with no DNN of the same backbone and dataset (same width, then same seed).

    Runs on different datasets are allowed: the table then shows each run's dataset and says so.

    Example: dcollapse compare runs/fm.pt runs/deepfm.pt runs/nfm.pt --plot spectra.png
    """
    from dcollapse import reports

    check_plot(plot)
    runs = [reports.load_run(path, data, device=device) for path in checkpoints]
    if plot is not None and all(run.data is None for run in runs):
        raise UserError(f"--plot needs the batch matrix Z, but no run's dataset is available ({runs[0].skipped})")
    with err.status(f"spectra of {len(runs)} runs"):
        report = reports.compare_report(runs, split=split, batch=batch, seed=seed)
        if plot is not None:
            report.plot(plot)
    emit(report.to_dict(), as_json, render_compare, plot)


@handles_errors
def gradients(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = plot_option("the overlaid normalized gradient spectra"),
    mode: str = typer.Option(
        "train",
        "--mode",
        metavar="NAME",
        help="train (dropout on, batch-norm batch statistics, as the paper's code) | eval (the model as it predicts).",
    ),
) -> None:
    """The mechanism view: singular spectrum of the loss gradient w.r.t. a fixed batch's embeddings [B, F*d].

    With a DNN the gradient is split into the parts arriving through the interaction and through the DNN (they sum).

    The model is in train mode by default (dropout on, batch norm on batch statistics, as the paper's code), in
    eval mode with --mode eval; the loss is the mean binary cross-entropy over the batch.

    Example: dcollapse gradients runs/deepfm.pt --plot deepfm-gradients.png
    """
    from dcollapse import reports

    check_plot(plot)
    run = reports.load_run(checkpoint_path, data, device=device)
    warn(run.warnings)
    with err.status(f"gradients on up to {batch:,} {split} rows"):
        report = reports.gradient_report(run, split=split, batch=batch, seed=seed, mode=mode)
        if plot is not None:
            report.plot(plot)
    emit(report.to_dict(), as_json, render_gradients, plot)


def register(app: typer.Typer) -> None:
    app.command("spectrum")(spectrum)
    app.command("compare")(compare)
    app.command("gradients")(gradients)
