"""``dcollapse spectrum``, ``compare`` and ``gradients``: collapse reports of trained CTR checkpoints.

Each command builds one plain JSON-ready document (what ``--json`` prints) and renders the Rich tables from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from dcollapse.cli.common import check_dataset, emit, err, handles_errors, out
from dcollapse.errors import CheckFailed, UserError
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED

if TYPE_CHECKING:
    import torch

BLOCKS = "▁▂▃▄▅▆▇█"
BAR_DECADES = 4  # the inline bar spans s_i / s_1 from 1e-4 (lowest block) to 1 (full block)
BAR_HEADER = "log spectrum"
BAR_NOTE = "log spectrum: s_i / s_1 per block, from 1e-4 (▁) to 1 (█)"
BACKBONES = {"fm": "FM", "crossnet": "CrossNet", "dot": "Dot"}
VARIANTS = {"none": "base", "parallel": "+p-DNN", "stacked": "+s-DNN"}
BATCH_PANELS = {"Z": "z", "cov(Z)": "covariance"}  # plot panel -> key of the batch document

DataOpt = typer.Option(None, "--data", help="Dataset directory; default: the path stored in the checkpoint.")
SplitOpt = typer.Option("valid", "--split", help="Split the fixed batch is drawn from.")
BatchOpt = typer.Option(DEFAULT_BATCH_ROWS, "--batch", min=1, help="Rows in the fixed batch (all if fewer).")
SeedOpt = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the fixed batch's row sample.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """A loaded checkpoint, its rebuilt model and the dataset directory its batch metrics can use."""

    path: Path
    ckpt: dict[str, Any]
    model: torch.nn.Module
    data: Path | None
    skipped: str | None  # why batch metrics are unavailable (None when ``data`` is usable)


def load_run(path: Path, data: Path | None) -> Run:
    """Load a ``dcollapse train`` checkpoint and locate its dataset (``data`` overrides the stored path)."""
    from dcollapse import checkpoint
    from dcollapse.models import load_model

    ckpt = checkpoint.load(path)
    kind = ckpt.get("kind", "ctr")
    if kind != "ctr":
        raise UserError(f"{path}: a {kind!r} checkpoint; these reports read CTR checkpoints from `dcollapse train`")
    model = load_model(ckpt)
    if data is not None:
        check_dataset(data, ckpt, path)
        return Run(path, ckpt, model, data, None)
    stored = (ckpt.get("data") or {}).get("path")
    if not stored:
        return Run(path, ckpt, model, None, "the checkpoint stores no dataset path (pass --data DIR)")
    if not (Path(stored) / "meta.json").is_file():
        return Run(path, ckpt, model, None, f"dataset {stored} not found (pass --data DIR)")
    check_dataset(Path(stored), ckpt, path)
    return Run(path, ckpt, model, Path(stored), None)


def fixed_batch(data: Path, split: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int32 [B, F], labels [B]) of the fixed seeded batch of ``split``."""
    from dcollapse.data.dataset import load_split
    from dcollapse.metrics import collapse

    rows = load_split(data, split)
    if len(rows) == 0:
        raise UserError(f"{data}: split {split!r} has no rows")
    index = collapse.fixed_batch_indices(len(rows), size, seed)
    return rows.ids[index], rows.labels[index]


# ----------------------------------------------------------------------------------------------- documents


def model_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The model settings a report shows (DNN settings only for models with a DNN)."""
    keys = ["model", "arch", "style", "emb_dim", "num_sets"]
    keys += ["cross_layers"] if config.get("model") == "crossnet" else []
    keys += ["dnn", "activation", "norm", "dropout", "residual"] if config.get("arch", "none") != "none" else []
    return {key: config.get(key) for key in keys}


def dataset_summary(run: Run) -> dict[str, Any]:
    stored = run.ckpt.get("data") or {}
    return {
        "name": run.ckpt["meta"].get("name"),
        "path": str(run.data) if run.data else stored.get("path"),
        "hash": stored.get("hash") or run.ckpt["meta"].get("input_hash"),
        "available": run.data is not None,
        "skipped": run.skipped,
    }


def field_document(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-field rows, summary) of the table spectra."""
    import numpy as np

    from dcollapse.metrics import collapse

    fields = collapse.model_field_spectra(run.model, run.ckpt["meta"])
    rows = [{"field": f.field, "vocab_size": f.vocab_size, **asdict(f.spectrum)} for f in fields]
    ias = np.array([r["ia"] for r in rows])
    worst = int(ias.argmin())
    summary = {
        "dim": int(run.model.embedding.table.shape[1]),
        "mean_ia": float(ias.mean()),
        "min_ia": float(ias[worst]),
        "min_ia_field": rows[worst]["field"],
        "mean_rankme": float(np.mean([r["rankme"] for r in rows])),
    }
    return rows, summary


def history_document(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("epoch", "valid_auc", "valid_logloss", "rankme", "mean_ia")
    return [{key: entry.get(key) for key in keys} for entry in ckpt.get("history") or []]


def gate_failures(
    doc: dict[str, Any], under_ia: float | None, under_rankme: float | None, field_ia: float | None
) -> list[str]:
    """One reason per violated gate (mean field IA, batch RankMe, any single field's IA)."""
    failures = []
    summary = doc["field_summary"]
    if under_ia is not None and summary["mean_ia"] < under_ia:
        failures.append(f"mean field IA {summary['mean_ia']:.3f} < {under_ia:g}")
    if under_rankme is not None and doc["batch"]["z"]["rankme"] < under_rankme:
        failures.append(f"batch RankMe {doc['batch']['z']['rankme']:.2f} < {under_rankme:g}")
    if field_ia is not None:
        low = [r for r in doc["fields"] if r["ia"] < field_ia]
        if low:
            names = ", ".join(f"{r['field']} {r['ia']:.3f}" for r in low[:5]) + (" ..." if len(low) > 5 else "")
            failures.append(f"{len(low)} field(s) with IA < {field_ia:g}: {names}")
    return failures


# ----------------------------------------------------------------------------------------------- rendering


def spark(normalized: list[float], width: int = 20) -> str:
    """A one-line bar of a normalized spectrum on a log scale (one block per value, resampled to ``width``)."""
    import numpy as np

    v = np.asarray(normalized, dtype=np.float64)
    if v.size == 0:
        return ""
    if v.size > width:
        v = v[np.linspace(0, v.size - 1, width).round().astype(int)]
    level = (np.log10(np.maximum(v, 10.0**-BAR_DECADES)) + BAR_DECADES) / BAR_DECADES
    return "".join(BLOCKS[int(round(x * (len(BLOCKS) - 1)))] for x in level)


def ia_text(ia: float, dim: int) -> Text:
    """IA coloured by how much of the available dimension it uses (red < 25%, yellow < 50%)."""
    share = ia / dim if dim else 0.0
    style = "red" if share < 0.25 else "yellow" if share < 0.5 else "green"
    return Text(f"{ia:.2f}", style=style)


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def model_line(config: dict[str, Any]) -> str:
    """'FM +p-DNN, emb 16, DNN 3x400 relu' (with 'x k sets' for multi-embedding)."""
    backbone = BACKBONES.get(config.get("model"), str(config.get("model")))
    variant = VARIANTS.get(config.get("arch"), str(config.get("arch")))
    sets = f" x {config['num_sets']} sets" if (config.get("num_sets") or 1) > 1 else ""
    dnn = f", DNN {dnn_text(config)}" if config.get("arch", "none") != "none" else ""
    return f"{backbone} {variant}, emb {config.get('emb_dim')}{sets}{dnn}"


def print_header(doc: dict[str, Any]) -> None:
    """One line: checkpoint, model and dataset of a single-run report."""
    line = f"[bold]{doc['checkpoint']}[/]: {model_line(doc['model'])}; dataset {doc['dataset']['name']}"
    out.print(line, highlight=False, soft_wrap=True)


def dnn_text(config: dict[str, Any]) -> str:
    """'3x400 relu', '400-200 gelu BN p=0.1 res' (widths, activation, norm, dropout, residual), '—' without a DNN."""
    if config.get("arch", "none") == "none":
        return "—"
    widths = list(config.get("dnn") or [])
    shape = f"{len(widths)}x{widths[0]}" if len(widths) > 1 and len(set(widths)) == 1 else "-".join(map(str, widths))
    parts = [shape, str(config.get("activation"))]
    parts += [{"batch": "BN", "layer": "LN"}.get(config.get("norm"), "")]
    parts += [f"p={config['dropout']:g}" if config.get("dropout") else "", "res" if config.get("residual") else ""]
    return " ".join(part for part in parts if part)


def report_table(title: str, columns: list[str], left: int = 1, bar: bool = False) -> Table:
    """A compact table: the first ``left`` columns left-aligned text, the rest right-aligned numbers,
    plus an inline spectrum-bar column when ``bar``."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < left else "right", no_wrap=i == 0 and left > 0)
    if bar:
        table.add_column(BAR_HEADER, no_wrap=True, overflow="crop")
    return table


def render_spectrum(doc: dict[str, Any]) -> None:
    data = doc["dataset"]
    print_header(doc)
    dim = doc["field_summary"]["dim"]
    table = report_table(
        f"Embedding table per field (d = {dim})", ["field", "vocab", "IA", "RankMe", "stable rank"], bar=True
    )
    for r in doc["fields"]:
        rank = min(r["vocab_size"], dim)
        table.add_row(
            r["field"],
            str(r["vocab_size"]),
            ia_text(r["ia"], rank),
            f"{r['rankme']:.2f}",
            f"{r['stable_rank']:.2f}",
            spark(r["normalized"]),
        )
    s = doc["field_summary"]
    table.add_section()
    table.add_row("mean", "", ia_text(s["mean_ia"], dim), f"{s['mean_rankme']:.2f}", "", "")
    table.add_row(f"min ({s['min_ia_field']})", "", ia_text(s["min_ia"], dim), "", "", "")
    out.print(table)
    out.print(f"[dim]IA: information abundance, in [1, min(vocab, {dim})]; {BAR_NOTE}[/]", soft_wrap=True)

    batch = doc["batch"]
    if batch is None:
        out.print(f"[yellow]batch metrics skipped:[/] {data['skipped']}", highlight=False, soft_wrap=True)
    else:
        title = f"Batch matrix Z: {batch['rows']:,} {batch['split']} rows x {batch['dim']} (F*d), seed {batch['seed']}"
        table = report_table(title, ["matrix", "RankMe", "IA", "stable rank", ">1e-3"], bar=True)
        for label, key in (("Z", "z"), ("cov(Z)", "covariance")):
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
    if doc["checks"]["requested"] and doc["checks"]["passed"]:
        out.print("[green]checks passed[/]")


# ----------------------------------------------------------------------------------------------- commands


@handles_errors
def spectrum(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Write log normalized spectra (per field and Z) to a PNG."),
    fail_under_ia: float | None = typer.Option(None, "--fail-under-ia", help="Exit 1 if the mean field IA is below X."),
    fail_under_rankme: float | None = typer.Option(
        None, "--fail-under-rankme", help="Exit 1 if the batch RankMe of Z is below Y (needs the dataset)."
    ),
    fail_field_ia: float | None = typer.Option(None, "--fail-field-ia", help="Exit 1 if any field's IA is below X."),
) -> None:
    """Per-field collapse of the embedding table, RankMe of the batch matrix Z, and their history over training.

    IA = information abundance (sum s / max s, at most d); RankMe = entropy effective rank (source paper's metric).

    Without the dataset only the table-level metrics are reported. A violated gate exits 1 with a one-line reason.

    Example: dcollapse spectrum runs/deepfm.pt --fail-under-ia 4 --plot deepfm-spectrum.png
    """
    from dcollapse import plots
    from dcollapse.metrics import collapse

    if plot is not None:
        plots.check_png_path(plot)
    run = load_run(checkpoint_path, data)
    if fail_under_rankme is not None and run.data is None:
        raise UserError(f"--fail-under-rankme needs the batch matrix, but {run.skipped}")
    fields, summary = field_document(run)
    batch_doc = None
    if run.data is not None:
        with err.status(f"spectrum of Z on up to {batch:,} {split} rows"):
            ids, _ = fixed_batch(run.data, split, batch, seed)
            batch_doc = asdict(collapse.batch_spectra(run.model, ids, split, seed))
    doc = {
        "checkpoint": str(checkpoint_path),
        "model": model_summary(run.ckpt["config"]),
        "dataset": dataset_summary(run),
        "fields": fields,
        "field_summary": summary,
        "batch": batch_doc,
        "history": history_document(run.ckpt),
        "best_epoch": run.ckpt.get("best_epoch"),
    }
    failures = gate_failures(doc, fail_under_ia, fail_under_rankme, fail_field_ia)
    requested = any(x is not None for x in (fail_under_ia, fail_under_rankme, fail_field_ia))
    doc["checks"] = {"requested": requested, "passed": not failures, "failures": failures}
    if plot is not None:
        panels = {} if batch_doc is None else {k: batch_doc[v]["normalized"] for k, v in BATCH_PANELS.items()}
        panels |= {r["field"]: r["normalized"] for r in fields}
        subtitles = {r["field"]: f"IA {r['ia']:.2f}" for r in fields}
        if batch_doc is not None:
            subtitles |= {k: f"RankMe {batch_doc[v]['rankme']:.1f}" for k, v in BATCH_PANELS.items()}
        title = f"{checkpoint_path.name}: {model_line(doc['model'])} — normalized singular values"
        plots.spectrum_grid(panels, plot, title, subtitles=subtitles, highlight=list(BATCH_PANELS))
    emit(doc, as_json, render_spectrum, plot)
    if failures:
        raise CheckFailed(f"{checkpoint_path}: " + "; ".join(failures))


def compare_row(run: Run, batches: dict[Path, torch.Tensor], split: str, batch: int, seed: int) -> dict[str, Any]:
    """One row of the comparison table (RankMe computed on the fixed batch, else taken from the history)."""
    from dcollapse.metrics import collapse

    config, ckpt = run.ckpt["config"], run.ckpt
    _, summary = field_document(run)
    history = ckpt.get("history") or []
    best = next((h for h in history if h.get("epoch") == ckpt.get("best_epoch")), history[-1] if history else {})
    test = ckpt.get("test")
    row: dict[str, Any] = {
        "checkpoint": str(run.path),
        "backbone": config.get("model"),
        "arch": config.get("arch"),
        "variant": VARIANTS.get(config.get("arch"), config.get("arch")),
        "seed": config.get("seed"),
        "model": model_summary(config),
        "dataset": dataset_summary(run),
        "auc": test["auc"] if test else best.get("valid_auc"),
        "logloss": test["logloss"] if test else best.get("valid_logloss"),
        "metrics_split": "test" if test else "valid",
        "mean_field_ia": summary["mean_ia"],
        "min_field_ia": summary["min_ia"],
        "min_ia_field": summary["min_ia_field"],
        "batch": None,
    }
    if run.data is not None:
        if run.data not in batches:
            batches[run.data] = fixed_batch(run.data, split, batch, seed)[0]
        row["batch"] = asdict(collapse.batch_spectra(run.model, batches[run.data], split, seed))
        row["rankme"], row["rankme_source"] = row["batch"]["z"]["rankme"], "batch"
    else:
        row["rankme"], row["rankme_source"] = best.get("rankme"), "history"
    return row


def add_base_changes(rows: list[dict[str, Any]]) -> None:
    """Relative RankMe change of each row against the base (arch none) run of its backbone and dataset.

    A base with the same embedding width, then with the same seed, is preferred; rows without a base get None.
    """
    for row in rows:
        same = ("backbone", "dataset_label")
        bases = [b for b in rows if b["arch"] == "none" and all(b[k] == row[k] for k in same)]
        bases.sort(key=lambda b: (b["model"]["emb_dim"] != row["model"]["emb_dim"], b["seed"] != row["seed"]))
        base = bases[0] if bases and row["arch"] != "none" else None
        ok = base is not None and base["rankme"] and row["rankme"] is not None
        row["base"] = base["checkpoint"] if base else None
        row["rankme_change_vs_base"] = (row["rankme"] / base["rankme"] - 1.0) if ok else None


def run_label(checkpoint_path: str, names: list[str]) -> str:
    """The file name, or ``folder/name`` when two runs share a file name."""
    path = Path(checkpoint_path).resolve()
    return path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"


def render_compare(doc: dict[str, Any]) -> None:
    several = len(doc["datasets"]) > 1
    names = [Path(r["checkpoint"]).name for r in doc["runs"]]
    text = ["run", "model", "DNN"] + (["data"] if several else [])
    columns = [*text, "AUC", "log loss", "RankMe", "Δ RankMe", "mean IA", "min IA"]
    table = report_table("Collapse across variants (the paper's Table 1 layout)", columns, left=len(text))
    previous = None
    for r in doc["runs"]:
        group = (r["dataset_label"], r["backbone"])
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        change = r["rankme_change_vs_base"]
        change_text = Text("—") if change is None else Text(f"{change:+.1%}", style="green" if change > 0 else "red")
        auc_mark = "" if r["metrics_split"] == "test" else " ᵛ"
        rankme_mark = "" if r["rankme_source"] == "batch" else " †"
        cells = [run_label(r["checkpoint"], names), f"{BACKBONES.get(r['backbone'], r['backbone'])} {r['variant']}"]
        cells += [dnn_text(r["model"])] + ([r["dataset_label"]] if several else [])
        cells += [
            fmt(r["auc"]) + auc_mark,
            fmt(r["logloss"]) + auc_mark,
            fmt(r["rankme"], ".1f" if (r["rankme"] or 0) >= 100 else ".2f") + rankme_mark,
        ]
        dim = r["model"]["emb_dim"] * (r["model"]["num_sets"] or 1)
        cells += [change_text, ia_text(r["mean_field_ia"], dim), ia_text(r["min_field_ia"], dim)]
        table.add_row(*cells)
    notes = []
    if any(r["metrics_split"] == "valid" for r in doc["runs"]):
        notes.append("ᵛ validation metrics of the best epoch (no test split)")
    if any(r["rankme_source"] == "history" for r in doc["runs"]):
        notes.append("† RankMe from the training history (dataset not found; pass --data to recompute)")
    table.caption = "Δ RankMe: relative to the base run of the same backbone and dataset"
    table.caption += "".join(f"\n{note}" for note in notes)
    out.print(table)
    for note in doc["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


@handles_errors
def compare(
    checkpoints: list[Path] = typer.Argument(..., metavar="RUN.pt...", help="Checkpoints from `dcollapse train`."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset directory for every run; default: each checkpoint's stored path."
    ),
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Write the overlaid normalized spectra of cov(Z) to a PNG."),
) -> None:
    """One table over many runs in the source paper's Table 1 layout: AUC, logloss, batch RankMe, field IA.

    The RankMe change is relative to the base (no DNN) run of the same backbone and dataset.

    Runs on different datasets are allowed: the table then shows each run's dataset and says so.

    Example: dcollapse compare runs/fm.pt runs/deepfm.pt runs/nfm.pt --plot spectra.png
    """
    from dcollapse import plots

    if plot is not None:
        plots.check_png_path(plot)
    runs = [load_run(path, data) for path in checkpoints]
    if plot is not None and all(run.data is None for run in runs):
        raise UserError(f"--plot needs the batch matrix Z, but no run's dataset is available ({runs[0].skipped})")
    batches: dict[Path, torch.Tensor] = {}
    rows = []
    with err.status(f"spectra of {len(runs)} runs"):
        for run in runs:
            rows.append(compare_row(run, batches, split, batch, seed))
    datasets: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["dataset"]["hash"] or row["dataset"]["path"]
        info = {k: row["dataset"][k] for k in ("name", "hash", "path")}
        row["dataset_label"] = datasets.setdefault(key, {"label": chr(ord("A") + len(datasets) % 26), **info})["label"]
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    rows.sort(key=lambda r: (r["dataset_label"], backbones.index(r["backbone"]), list(VARIANTS).index(r["arch"])))
    add_base_changes(rows)
    notes = []
    if len(datasets) > 1:
        names = "; ".join(
            f"{d['label']} = {d['name']} ({(d['hash'] or '')[:15]}, {d['path']})" for d in datasets.values()
        )
        notes.append(f"runs come from {len(datasets)} different datasets: {names}. RankMe changes compare within one")
    notes += [
        f"{Path(r['checkpoint']).name}: batch metrics skipped: {r['dataset']['skipped']}"
        for r in rows
        if r["batch"] is None
    ]
    doc = {"runs": rows, "datasets": list(datasets.values()), "notes": notes}
    if plot is not None:
        series = {
            f"{Path(r['checkpoint']).name} ({BACKBONES.get(r['backbone'], r['backbone'])} {r['variant']})": r["batch"][
                "covariance"
            ]["normalized"]
            for r in rows
            if r["batch"] is not None
        }
        plots.overlay_spectra(series, plot, "Normalized singular values of cov(Z), fixed batch")
    emit(doc, as_json, render_compare, plot)


def render_gradients(doc: dict[str, Any]) -> None:
    print_header(doc)
    title = f"Gradient of the loss w.r.t. the embeddings: {doc['rows']:,} {doc['split']} rows x {doc['dim']} (F*d)"
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


@handles_errors
def gradients(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint from `dcollapse train`."),
    data: Path | None = DataOpt,
    split: str = SplitOpt,
    batch: int = BatchOpt,
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Write the overlaid normalized gradient spectra to a PNG."),
) -> None:
    """The mechanism view: singular spectrum of the loss gradient w.r.t. a fixed batch's embeddings [B, F*d].

    With a DNN the gradient is split into the parts arriving through the interaction and through the DNN (they sum).

    The model is in eval mode (no dropout); the loss is the mean binary cross-entropy over the batch.

    Example: dcollapse gradients runs/deepfm.pt --plot deepfm-gradients.png
    """
    from dcollapse import plots
    from dcollapse.metrics import collapse

    if plot is not None:
        plots.check_png_path(plot)
    run = load_run(checkpoint_path, data)
    if run.data is None:
        raise UserError(f"{checkpoint_path}: gradients need the dataset, but {run.skipped}")
    with err.status(f"gradients on up to {batch:,} {split} rows"):
        ids, labels = fixed_batch(run.data, split, batch, seed)
        grads = collapse.gradient_spectra(run.model, ids, labels)
        z_stats, _ = collapse.matrix_spectra(collapse.batch_matrix(run.model, ids))
    spectra = {"total": grads.total, **grads.branches}
    doc = {
        "checkpoint": str(checkpoint_path),
        "model": model_summary(run.ckpt["config"]),
        "dataset": dataset_summary(run),
        "split": split,
        "rows": grads.rows,
        "dim": grads.dim,
        "seed": seed,
        "gradients": {key: {**asdict(st), "norm": grads.norms[key]} for key, st in spectra.items()},
        "embeddings": asdict(z_stats),
    }
    if plot is not None:
        labels_ = {"total": "dL/dE total", "interaction": "via interaction", "dnn": "via DNN"}
        series = {labels_[k]: g["normalized"] for k, g in doc["gradients"].items() if g["norm"] > 0}
        series["embeddings Z (reference)"] = doc["embeddings"]["normalized"]
        title = f"{checkpoint_path.name}: {model_line(doc['model'])} — gradient spectra"
        plots.overlay_spectra(series, plot, title)
    emit(doc, as_json, render_gradients, plot)


def register(app: typer.Typer) -> None:
    app.command("spectrum")(spectrum)
    app.command("compare")(compare)
    app.command("gradients")(gradients)
