"""``dcollapse sweep``: train a grid of variants x seeds, resumable, then the compare table and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from dcollapse import config
from dcollapse.cli.common import emit, err, handles_errors, out, progress
from dcollapse.cli.options import JsonOpt
from dcollapse.cli.render import report_table
from dcollapse.cli.report import render_compare
from dcollapse.errors import CheckFailed

if TYPE_CHECKING:
    from dcollapse import sweep


@handles_errors
def sweep_command(
    data_dir: Path = typer.Argument(
        ..., metavar="DATA_DIR", help="Preprocessed dataset directory (meta.json + Parquet splits)."
    ),
    grid: str = typer.Option(
        "paper",
        "--grid",
        metavar="NAME|FILE",
        help="paper (FM, CrossNet x none/parallel/stacked) | ablation (DNN parts) | FILE.toml.",
    ),
    runs_dir: Path = typer.Option(
        ..., "--out", "-o", metavar="RUNS_DIR", help="Directory for the runs' checkpoints and the summary."
    ),
    seeds: int = typer.Option(
        1, "--seeds", metavar="INT", help="Repeat every grid entry with seeds 0..N-1 (mean ± std)."
    ),
    epochs: str | None = typer.Option(
        None, "--epochs", metavar="INT", help="Override the maximum epochs of every run."
    ),
    patience: str | None = typer.Option(
        None, "--patience", metavar="INT", help="Override early-stopping patience (0 = off)."
    ),
    batch_size: str | None = typer.Option(
        None, "--batch-size", metavar="INT", help="Override the batch size of every run."
    ),
    emb_dim: str | None = typer.Option(
        None, "--emb-dim", metavar="INT", help="Override the embedding size of every run."
    ),
    dnn: str | None = typer.Option(
        None, "--dnn", metavar="W,W,...", help="Override the DNN widths of every run, e.g. 64,64."
    ),
    device: str | None = typer.Option(None, "--device", metavar="NAME", help="cpu | cuda | auto for every run."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        metavar="INT",
        help="Torch CPU threads. Default: OMP_NUM_THREADS when set, else the CPUs the load average leaves idle.",
    ),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        metavar="NAME",
        help="default | paper: train every run as the paper's code does (see `dcollapse train --help`); with "
        "--grid paper also the paper's L2 and the CrossNet ReLU-DNN entries beside the linear ones.",
    ),
    title: str | None = typer.Option(
        None, "--title", metavar="TEXT", help="Title of summary.md and the plots (default: the grid)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Train every entry of a grid with N seeds, one run after another; a restarted sweep skips finished runs.

    Writes RUNS_DIR/<entry>-s<seed>.pt and .json per run, then RUNS_DIR/summary.json, summary.md and
    spectra-<backbone>.png; prints the compare table of all runs and the mean ± std per entry. A failed run is
    reported and the others go on (exit 1 at the end if any failed).

    Fixed-length runs (the verdict then does not depend on when early stopping fired): --patience 0 --epochs N.

    Example: dcollapse sweep data/criteo --grid paper --seeds 3 --recipe paper --out runs/criteo-paper
    """
    import torch

    from dcollapse import sweep
    from dcollapse.data.dataset import load_meta
    from dcollapse.train import default_threads

    given = {"epochs": epochs, "patience": patience, "batch_size": batch_size, "emb_dim": emb_dim, "dnn": dnn}
    given["device"], given["recipe"] = device, recipe
    overrides = config.Options(
        {key: value for key, value in given.items() if value is not None}, {key: config.flag(key) for key in given}
    )
    if recipe is not None:
        recipe = config.check("recipe", recipe, "--recipe")
    specs = sweep.plan(sweep.load_grid(grid, recipe or "default"), seeds, overrides)
    load_meta(data_dir)  # a bad dataset directory is reported before the progress bar starts
    torch.set_num_threads(threads or default_threads())

    bar = progress(transient=False)
    with bar:
        task = bar.add_task("sweep", total=len(specs), status="")

        def on_event(kind: str, spec: sweep.RunSpec, result: dict[str, Any] | None) -> None:
            if kind == "start":
                bar.update(task, description=spec.name, status="")
                return
            if kind == "fail":
                bar.console.print(Text(f"{spec.name}: failed: {result['error']}", style="red"))
            elif kind == "done":
                bar.console.print(
                    f"{spec.name}: AUC {result['auc']:.4f}  RankMe {result['rankme']:.1f}  "
                    f"mean IA {result['mean_ia']:.2f}  best epoch {result['best_epoch']}/{result['epochs_run']}  "
                    f"{result['seconds']:.0f}s",
                    highlight=False,
                )
            bar.advance(task)

        def on_epoch(spec: sweep.RunSpec, entry: dict[str, Any]) -> None:
            bar.update(task, status=f"epoch {entry['epoch']}: valid AUC {entry['valid_auc']:.4f}")

        results = sweep.run_sweep(data_dir, specs, runs_dir, on_event=on_event, on_epoch=on_epoch)

    summary = sweep.summarize(results)
    written = sweep.write_summary(summary, runs_dir, title or f"{grid} grid on {data_dir.name}")
    finished = [runs_dir / f"{r['name']}.pt" for r in results if r["status"] == "ok"]

    def render(summary: dict[str, Any]) -> None:
        from dcollapse import reports

        if finished:
            render_compare(reports.compare_report([reports.load_run(path) for path in finished]).to_dict())
        table = report_table(f"Mean ± std over seeds ({runs_dir})", list(sweep.SUMMARY_COLUMNS), left=2)
        for row in summary["groups"]:
            table.add_row(*sweep.summary_cells(row))
        table.caption = "Δ: against the base run (no DNN) of the same backbone (same seed where there is one)"
        out.print(table)
        for line in summary["claims"]:
            out.print(line, highlight=False)
        err.print("wrote " + ", ".join(str(path) for path in written.values()), highlight=False)

    emit(summary, as_json, render)
    if summary["failed"]:
        names = ", ".join(f["name"] for f in summary["failed"])
        raise CheckFailed(f"{len(summary['failed'])} run(s) failed: {names} (rerun the sweep to retry them)")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
