"""``dcollapse train`` (fit a model, write a checkpoint) and ``dcollapse eval`` (AUC/logloss of a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from dcollapse import io
from dcollapse.cli.common import check_dataset, err, handles_errors, out, print_json, progress
from dcollapse.cli.launch import hold_output, records_rank_failures, relaunch
from dcollapse.errors import UserError

RESUMABLE = ("epochs", "patience", "device")  # what may change when a run is resumed


def parse_widths(text: str) -> list[int]:
    """``"400,400,400"`` -> [400, 400, 400] (``""`` or ``"none"`` -> [])."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--dnn: expected comma-separated layer widths like 400,400,400, got {text!r}") from None


def read_config(path: Path) -> dict[str, Any]:
    """Options from a TOML file (keys as the long option names, dashes or underscores)."""
    options = {key.replace("-", "_"): value for key, value in io.read_toml(path, "config").items()}
    if isinstance(options.get("dnn"), str):
        options["dnn"] = parse_widths(options["dnn"])
    if isinstance(options.get("track"), str):
        options["track"] = parse_names(options["track"])
    return options


def parse_names(text: str) -> list[str]:
    """``"richness"`` or ``"a,b"`` -> ["a", "b"] (``""`` -> [])."""
    return [part.strip() for part in text.split(",") if part.strip()]


def train_command(
    ctx: typer.Context,
    data_dir: Path | None = typer.Argument(None, help="Preprocessed dataset directory (meta.json + Parquet splits)."),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Checkpoint to write (default: the --resume file)."),
    model: str | None = typer.Option(None, help="Interaction: fm | crossnet | dot. Default: fm."),
    arch: str | None = typer.Option(None, help="DNN placement: none | parallel | stacked. Default: none."),
    style: str | None = typer.Option(None, help="paper (the source paper's code) | textbook. Default: paper."),
    emb_dim: int | None = typer.Option(None, help="Embedding size per field (per set). Default: 16."),
    num_sets: int | None = typer.Option(None, help="Multi-embedding: independent embedding sets. Default: 1."),
    dnn: str | None = typer.Option(None, help="DNN hidden widths, comma-separated. Default: 400,400,400."),
    activation: str | None = typer.Option(None, help="relu | gelu | identity (a linear DNN). Default: relu."),
    norm: str | None = typer.Option(None, help="DNN normalisation: none | batch | layer. Default: none."),
    dropout: float | None = typer.Option(None, help="DNN dropout probability. Default: 0."),
    residual: bool | None = typer.Option(None, "--residual/--no-residual", help="Skip connections in the DNN."),
    cross_layers: int | None = typer.Option(None, help="CrossNet layers. Default: 3."),
    cross_rank: int | None = typer.Option(None, help="CrossNet weight rank, 0 = full. Default: 0."),
    epochs: int | None = typer.Option(None, help="Maximum epochs. Default: 100."),
    batch_size: int | None = typer.Option(None, help="Training batch size. Default: 1024."),
    lr: float | None = typer.Option(None, help="Learning rate. Default: 0.001."),
    optimizer: str | None = typer.Option(None, help="adam | adagrad | sgd. Default: adam."),
    l2_emb: float | None = typer.Option(
        None, help="L2 penalty on the embedding tables (with --sparse-emb: on the rows of each batch only). Default: 0."
    ),
    sparse_emb: bool | None = typer.Option(
        None,
        "--sparse-emb/--no-sparse-emb",
        help="Sparse table gradients: update only the embedding rows each batch reads (faster with large tables). "
        "With --optimizer adam the tables use lazy Adam (torch SparseAdam: moments of absent rows are not decayed), "
        "which is NOT the paper's dense Adam; adagrad and sgd give the dense result. One process only. "
        "Default: dense.",
    ),
    compile: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the training steps (fused C++ loops on the CPU; the first steps compile for seconds "
        "and need a C++ compiler). Same math, float rounding may differ. Default: off.",
    ),
    patience: int | None = typer.Option(
        None, help="Early stopping: epochs without a better valid AUC, 0 = off. Default: 2."
    ),
    seed: int | None = typer.Option(None, help="Random seed (same seed, same run on CPU). Default: 0."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto. Default: auto."),
    snapshot_rows: int | None = typer.Option(None, help="Valid rows in the per-epoch RankMe batch. Default: 50000."),
    chunk_rows: int | None = typer.Option(
        None, help="Stream the train split from Parquet in chunks of this many rows (for splits larger than memory)."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="TOML file with any of these options."),
    resume: Path | None = typer.Option(None, help="Continue the run saved in this checkpoint."),
    save_every_epoch: bool = typer.Option(False, help="Also keep OUT.epochN.pt after every epoch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out checkpoint."),
    track: str | None = typer.Option(
        None, help="Extra per-epoch diagnostics in the history, comma-separated: richness (D_LR and NC1)."
    ),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", metavar="DIR",
        help="Also write TensorBoard logs to DIR: per-epoch train loss, valid AUC/logloss, RankMe, mean/min/per-field "
        "IA and the batch spectrum (needs the tensorboard extra).",
    ),
    nproc: int = typer.Option(
        1,
        min=1,
        help="Data-parallel processes on this machine (torch.distributed); --batch-size stays the global "
        "batch. Same as torchrun --nproc-per-node N -m dcollapse train ...",
    ),
) -> None:
    """Train a feature-interaction model; the checkpoint holds the best-by-valid-AUC weights and the history.

    Options come from the defaults, then --config FILE.toml, then the command line (which wins).

    Example: dcollapse train data/criteo --model fm --arch parallel --epochs 2 --out runs/deepfm.pt
    """
    given = {key: value for key, value in locals().items() if value is not None}  # first: only options here
    given.pop("save_every_epoch"), given.pop("overwrite")
    for key in ("ctx", "data_dir", "out_path", "config_file", "resume", "nproc", "tensorboard"):
        given.pop(key, None)
    if isinstance(given.get("dnn"), str):
        given["dnn"] = parse_widths(given["dnn"])
    if isinstance(given.get("track"), str):
        given["track"] = parse_names(given["track"])
    options = {**(read_config(config_file) if config_file else {}), **given}

    from dcollapse import checkpoint
    from dcollapse.distributed import from_env, world_size
    from dcollapse.train import check_world, full_config, train

    previous = None
    if resume is not None:
        previous = checkpoint.load(resume)
        if "resume" not in previous:
            raise UserError(f"{resume}: this checkpoint has no resume state (it is an epoch snapshot)")
        changed = sorted(k for k in options if k not in RESUMABLE and options[k] != previous["config"].get(k))
        if changed:
            raise UserError(f"--resume keeps the run's settings; cannot change {', '.join(changed)}")
        options = {**previous["config"], **options}
        data_dir = data_dir or Path(previous["data"]["path"])
        out_path = out_path or resume
    if data_dir is None or out_path is None:
        raise UserError("give DATA_DIR and --out (or --resume run.pt)")
    hold_output(ctx, out_path)  # one run writes a checkpoint at a time; an unwritable place fails before training
    continues = resume is not None and out_path.resolve() == resume.resolve()
    if out_path.is_file() and not (overwrite or continues):
        raise UserError(f"{out_path}: already exists (pass --overwrite to replace it, or --resume to continue it)")
    config = full_config(options)
    check_world(config, max(nproc, world_size()))
    if nproc > 1:
        relaunch(ctx, nproc)
        return
    parallel = from_env(config["device"])  # one rank of a torchrun/--nproc run, or the only process
    if not parallel.is_main:  # the other ranks train silently: rank 0 reports
        train(
            data_dir, config, out_path, resume=previous, save_every_epoch=save_every_epoch, parallel=parallel,
            tensorboard=tensorboard,
        )  # fmt: skip
        return

    bar = progress(transient=True)
    with bar:
        task = bar.add_task("epoch 1", total=None, status="")

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            bar.update(task, description=f"epoch {epoch}", completed=step, total=steps, status=f"loss {loss:.4f}")

        def on_epoch(e: dict[str, Any]) -> None:
            richness = f"  D_LR {e['d_lr_centered']:.3f}" if "d_lr_centered" in e else ""
            bar.console.print(
                f"epoch {e['epoch']}  loss {e['train_loss']:.4f}  valid AUC {e['valid_auc']:.4f}  "
                f"logloss {e['valid_logloss']:.4f}  RankMe {e['rankme']:.1f}  IA {e['mean_ia']:.2f}{richness}  "
                f"{e['samples_per_s']:,.0f}/s  {e['seconds']:.1f}s",
                highlight=False,
                soft_wrap=True,
            )

        try:
            result = train(
                data_dir, config, out_path, resume=previous, save_every_epoch=save_every_epoch,
                on_step=on_step, on_epoch=on_epoch, parallel=parallel, tensorboard=tensorboard,
            )  # fmt: skip
        except KeyboardInterrupt:
            kept = f"{out_path} holds the best model so far" if out_path.exists() else "no epoch finished"
            err.print(f"interrupted: {kept}")
            raise typer.Exit(130) from None

    table = Table(title=escape(str(out_path)))
    for column in ("model", "arch", "best epoch", "valid AUC", "test AUC", "test logloss"):
        table.add_column(column)
    best = result["history"][result["best_epoch"] - 1]
    test = result["test"] or {}
    table.add_row(
        config["model"], config["arch"], str(result["best_epoch"]), f"{best['valid_auc']:.4f}",
        f"{test['auc']:.4f}" if test else "-", f"{test['logloss']:.4f}" if test else "-",
    )  # fmt: skip
    out.print(table)


def eval_command(
    run: Path = typer.Argument(..., help="Checkpoint written by `dcollapse train`."),
    data_dir: Path | None = typer.Argument(None, help="Dataset directory (default: the one the run was trained on)."),
    data: Path | None = typer.Option(None, "--data", help="Same as DATA_DIR, as the report commands spell it."),
    split: str = typer.Option("test", help="Split to evaluate: train | valid | test."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """AUC and logloss of a trained checkpoint on one split of a dataset.

    Example: dcollapse eval runs/deepfm.pt --split test --json
    """
    from dcollapse import checkpoint
    from dcollapse.data.dataset import load_meta, load_split
    from dcollapse.models import load_model
    from dcollapse.train import evaluate

    ckpt = checkpoint.load(run)
    if ckpt.get("kind", "ctr") != "ctr":
        raise UserError(f"{run}: not a CTR model checkpoint (kind {ckpt.get('kind')!r})")
    if data_dir is not None and data is not None and data_dir != data:
        raise UserError("give the dataset once: DATA_DIR or --data")
    data_dir = data_dir or data
    if data_dir is None:
        data_dir = Path(ckpt["data"]["path"])
        if not data_dir.is_dir():
            raise UserError(f"{run}: its dataset {data_dir} was not found (pass --data DIR)")
    check_dataset(data_dir, ckpt, run)
    meta = load_meta(data_dir)
    model = load_model(ckpt)
    metrics = evaluate(model, load_split(data_dir, split, meta), split)
    result = {"checkpoint": str(run), "data": str(data_dir), "split": split, **metrics}
    if as_json:
        print_json(result)
        return
    table = Table(title=escape(f"{run} on {split}"))
    for column in ("rows", "AUC", "logloss"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['rows']:,}", f"{result['auc']:.4f}", f"{result['logloss']:.4f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(handles_errors(records_rank_failures(train_command)))
    app.command("eval")(handles_errors(eval_command))
