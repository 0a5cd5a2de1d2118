"""``dcollapse synth``: synthetic data with planted ground truth (group; ``ctr`` is one command of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from dcollapse.cli.common import emit, handles_errors, out
from dcollapse.cli.hierarchy import register_srhm
from dcollapse.cli.options import CommandGroup, JsonOpt

synth_app = typer.Typer(
    help="Synthetic data with a known, planted ground truth.", no_args_is_help=True, cls=CommandGroup
)


def register(app: typer.Typer) -> None:
    register_srhm(synth_app)
    app.add_typer(synth_app, name="synth")


@synth_app.command("ctr")
@handles_errors
def ctr_command(
    out_path: Path = typer.Option(
        ..., "--out", "-o", help="Output CSV file (or dataset directory with --preprocessed)."
    ),
    rows: int = typer.Option(60000, "--rows", help="Number of rows."),
    fields: int = typer.Option(12, "--fields", help="Number of categorical fields."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed = same planted model and data)."),
    vocab: int | None = typer.Option(
        None, "--vocab", help="Values per field (default: spread geometrically from 5 to 200)."
    ),
    zipf: float = typer.Option(1.1, "--zipf", help="Zipf exponent of the value frequencies."),
    rank: int = typer.Option(4, "--rank", help="Rank of the planted interaction embeddings."),
    pairs: int | None = typer.Option(None, "--pairs", help="Number of planted field pairs (default: all)."),
    triples: int = typer.Option(0, "--triples", help="Number of planted third-order interactions."),
    bias: float = typer.Option(-1.0, "--bias", help="Global logit offset (sets the click rate)."),
    first_order: float = typer.Option(0.5, "--first-order", help="Std of the first-order part of the logit."),
    pairwise: float = typer.Option(1.5, "--pairwise", help="Std of the pairwise part of the logit."),
    higher: float = typer.Option(0.7, "--higher", help="Std of the third-order part (with --triples)."),
    noise: float = typer.Option(0.0, "--noise", help="Std of unobservable per-row logit noise."),
    preprocessed: bool = typer.Option(
        False, "--preprocessed", help="Write a ready dataset directory (train/valid/test) instead of raw CSV."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output."),
    as_json: bool = JsonOpt,
) -> None:
    """Synthetic CTR data: Zipf ids, planted first-order + low-rank pairwise (+ optional third-order) logit.

    Raw CSV output gets two sidecars: OUT.truth.parquet (true logit and click probability per row) and
    OUT.truth.json (the planted structure). With --preprocessed the directory holds truth.parquet/truth.json.

    Example: dcollapse synth ctr --out demo/raw.csv --rows 60000 --fields 12 --seed 0
    """
    from dcollapse.data.synth import write_ctr_csv, write_ctr_dataset

    kwargs = dict(
        vocab_sizes=[vocab] * fields if vocab is not None else None,
        zipf=zipf,
        rank=rank,
        pairs=pairs,
        triples=triples,
        bias=bias,
        first_order_scale=first_order,
        pairwise_scale=pairwise,
        higher_scale=higher,
        noise_std=noise,
    )
    if preprocessed:
        probs = write_ctr_dataset(out_path, rows, fields, seed, overwrite=overwrite, **kwargs)
        summary = {s: {"rows": int(p.size), "mean_prob": float(p.mean())} for s, p in probs.items()}
    else:
        truth = write_ctr_csv(out_path, rows, fields, seed, overwrite=overwrite, **kwargs)
        summary = {"all": {"rows": rows, "mean_prob": float(truth.prob.mean())}}
    doc = {"schema": "dcollapse.synth-ctr/1", "out": str(out_path), "preprocessed": preprocessed, "splits": summary}
    emit(doc, as_json, render_ctr)


def render_ctr(doc: dict[str, Any]) -> None:
    table = Table(title=escape(f"synthetic CTR data -> {doc['out']}"))
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("true click rate", justify="right")
    for name, s in doc["splits"].items():
        table.add_row(name, f"{s['rows']:,}", f"{s['mean_prob']:.4f}")
    out.print(table)
