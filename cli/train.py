"""``dcollapse train`` (fit a model, write a checkpoint) and ``dcollapse eval`` (AUC/logloss of a checkpoint)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from dcollapse import config
from dcollapse.cli.common import emit, err, handles_errors, out, progress
from dcollapse.cli.launch import hold_output, records_rank_failures, relaunch
from dcollapse.cli.options import JsonOpt
from dcollapse.errors import UserError

RESUMABLE = ("epochs", "patience", "device")  # what may change when a run is resumed
SPLITS = ("train", "valid", "test")
COMMAND_LINE_ONLY = ("out", "resume", "config", "overwrite", "save_every_epoch", "tensorboard", "threads", "nproc")


def config_option(key: str) -> inspect.Parameter:
    """The command-line option of config key ``key``, from its field in :mod:`dcollapse.config`. Values come in as
    text (``--emb-dim 8``) and are parsed by the config's own rules, so the command line, --config files and sweep
    grids accept and refuse the same values with the same messages; flags are ``--x/--no-x``."""
    rule, kind = config.rule(key), config.FIELDS[key][1]
    default = config.default(key)
    shown = (",".join(map(str, default)) or "none") if isinstance(default, list) else str(default).lower()
    help = rule.help if "Default:" in rule.help else f"{rule.help} Default: {shown}."
    if kind is bool:
        no = "--no-" + key.replace("_", "-")
        option = typer.Option(None, f"{config.flag(key)}/{no}", help=help, metavar="", rich_help_panel=rule.panel)
        return inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool | None)
    option = typer.Option(None, config.flag(key), help=help, metavar=rule.metavar, rich_help_panel=rule.panel)
    return inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None)


def with_config_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn(..., **options)`` as a command whose signature also has every config option (see :func:`config_option`),
    all parameters sorted into the --help panels of :data:`dcollapse.config.PANELS`; ``fn`` gets the config options
    in ``options`` (None where not given)."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = typing.get_type_hints(fn)
    own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    params = [*own, *(config_option(key) for key in config.FIELDS)]

    def panel(p: inspect.Parameter) -> int:
        name = getattr(p.default, "rich_help_panel", None)
        return config.PANELS.index(name) if name in config.PANELS else -1

    arguments = [p for p in params if isinstance(p.default, typer.models.ArgumentInfo) or p.name == "ctx"]
    options = sorted((p for p in params if p not in arguments), key=panel)
    fn.__signature__ = inspect.Signature([*arguments, *options])  # type: ignore[attr-defined]
    return fn


@with_config_options
def train_command(
    ctx: typer.Context,
    data_dir: Path | None = typer.Argument(
        None, metavar="DATA_DIR", help="Preprocessed dataset directory (meta.json + Parquet splits)."
    ),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        metavar="FILE",
        rich_help_panel=config.DATA,
        help="TOML file of options (keys as the long option names, dashes or underscores): those of the Data, Model, "
        "DNN and Optimisation panels, --snapshot-rows, --track, --device, --sparse-emb, --fused-update, --compile.",
    ),
    out_path: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="CHECKPOINT",
        rich_help_panel=config.CHECKPOINTS,
        help="Checkpoint to write (default: the --resume file).",
    ),
    resume: Path | None = typer.Option(
        None,
        metavar="CHECKPOINT",
        rich_help_panel=config.CHECKPOINTS,
        help="Continue the run saved in this checkpoint, with its options (--epochs, --patience and --device may "
        "change).",
    ),
    save_every_epoch: bool | None = typer.Option(
        None,
        "--save-every-epoch/--no-save-every-epoch",
        metavar="",
        rich_help_panel=config.CHECKPOINTS,
        help="Also keep OUT.epochN.pt after every epoch. Default: off (on --resume: as the run did).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar="",
        rich_help_panel=config.CHECKPOINTS,
        help="Replace an existing --out checkpoint.",
    ),
    threads: int | None = typer.Option(
        None,
        min=1,
        metavar="INT",
        rich_help_panel=config.SPEED,
        help="Torch CPU threads per process. Default: OMP_NUM_THREADS when set, else the CPUs the load average "
        "leaves idle, shared by the --nproc processes (a thread per core on a busy machine is many times slower). "
        "Runs are bitwise the same for the same --seed and --threads.",
    ),
    tensorboard: Path | None = typer.Option(
        None,
        "--tensorboard",
        metavar="DIR",
        rich_help_panel=config.CHECKPOINTS,
        help="Also write TensorBoard logs to DIR: per-epoch train loss, valid AUC/logloss, RankMe, mean/min/per-field "
        "IA and the batch spectrum (needs the tensorboard extra).",
    ),
    nproc: int = typer.Option(
        1,
        min=1,
        metavar="INT",
        rich_help_panel=config.SPEED,
        help="Data-parallel processes on this machine (torch.distributed); --batch-size stays the global "
        "batch. Same as torchrun --nproc-per-node N -m dcollapse train ...",
    ),
    **options: Any,
) -> None:
    """Train a feature-interaction model; the checkpoint holds the best-by-valid-AUC weights and the history.

    Options come from the defaults, then --config FILE.toml, then the command line (which wins).

    --model also takes model-zoo names (deepfm, nfm, dcnv2, dlrm, ipnn, ...) for a model and its --arch.

    Example: dcollapse train data/criteo --model deepfm --epochs 2 --out runs/deepfm.pt
    """
    from_file = config.read_config_file(config_file) if config_file else config.Options()
    clash = [key for key in from_file if key in COMMAND_LINE_ONLY]
    if clash:
        key = clash[0]
        raise UserError(f"{from_file.name(key)}: {config.flag(key)} is given on the command line, not in a file")
    given = config.merged(
        from_file,
        config.Options({k: v for k, v in options.items() if v is not None}, {k: config.flag(k) for k in options}),
    )

    import torch

    from dcollapse import checkpoint
    from dcollapse.data.dataset import load_meta
    from dcollapse.distributed import from_env, world_size
    from dcollapse.optim import update_hint
    from dcollapse.train import check_world, default_threads, train

    previous = None
    if resume is not None:
        previous = checkpoint.load(resume)
        if "resume" not in previous:
            raise UserError(f"{resume}: this checkpoint has no resume state (it is an epoch snapshot)")
        before = previous["config"]
        run_config = config.full_config(config.merged(before, given))
        changed = [given.name(k) for k in given if k not in RESUMABLE and run_config[k] != before.get(k)]
        if changed:
            raise UserError(f"--resume keeps the run's settings; cannot change {', '.join(dict.fromkeys(changed))}")
        data_dir = data_dir or Path(previous["data"]["path"])
        out_path = out_path or resume
    else:
        run_config = config.full_config(given)
    if data_dir is None or out_path is None:
        raise UserError("give DATA_DIR and --out (or --resume run.pt)")
    hold_output(ctx, out_path)  # one run writes a checkpoint at a time; an unwritable place fails before training
    continues = resume is not None and out_path.resolve() == resume.resolve()
    if out_path.is_file() and not (overwrite or continues):
        raise UserError(f"{out_path}: already exists (pass --overwrite to replace it, or --resume to continue it)")
    check_world(run_config, max(nproc, world_size()))
    torch.set_num_threads(threads or default_threads(max(nproc, world_size())))
    if nproc > 1:
        relaunch(ctx, nproc)
        return
    parallel = from_env(run_config["device"])  # one rank of a torchrun/--nproc run, or the only process
    if parallel.is_main and nproc == 1 and world_size() == 1:
        meta = load_meta(data_dir)
        hint = update_hint(run_config, sum(int(f["vocab_size"]) for f in meta["fields"]), len(meta["fields"]))
        if hint:
            err.print(f"note: {hint}", markup=False, highlight=False, soft_wrap=True)
    run = {"resume": previous, "save_every_epoch": save_every_epoch, "parallel": parallel, "tensorboard": tensorboard}
    if not parallel.is_main:  # the other ranks train silently: rank 0 reports
        train(data_dir, run_config, out_path, **run)
        return

    bar = progress(transient=True)
    with bar:
        task = bar.add_task("epoch 1", total=None, status="")

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            bar.update(task, description=f"epoch {epoch}", completed=step, total=steps, status=f"loss {loss:.4f}")

        def on_epoch(e: dict[str, Any]) -> None:
            richness = f"  D_LR centred {e['d_lr_centered']:.3f} (valid batch)" if "d_lr_centered" in e else ""
            bar.console.print(
                f"epoch {e['epoch']}  loss {e['train_loss']:.4f}  valid AUC {e['valid_auc']:.4f}  "
                f"logloss {e['valid_logloss']:.4f}  RankMe {e['rankme']:.1f}  IA {e['mean_ia']:.2f}{richness}  "
                f"{e['samples_per_s']:,.0f}/s  {e['seconds']:.1f}s",
                highlight=False,
                soft_wrap=True,
            )

        try:
            result = train(data_dir, run_config, out_path, on_step=on_step, on_epoch=on_epoch, **run)
        except KeyboardInterrupt:
            kept = f"{out_path} holds the best model so far" if out_path.exists() else "no epoch finished"
            err.print(f"interrupted: {kept}", markup=False, highlight=False)
            raise typer.Exit(130) from None

    table = Table(title=escape(str(out_path)))
    for column in ("model", "arch", "best epoch", "valid AUC", "test AUC", "test logloss"):
        table.add_column(column)
    best = result["history"][result["best_epoch"] - 1]
    test = result["test"] or {}
    table.add_row(
        run_config["model"], run_config["arch"], str(result["best_epoch"]), f"{best['valid_auc']:.4f}",
        f"{test['auc']:.4f}" if test else "-", f"{test['logloss']:.4f}" if test else "-",
    )  # fmt: skip
    out.print(table)


def eval_command(
    run: Path = typer.Argument(..., metavar="CHECKPOINT", help="Checkpoint written by `dcollapse train`."),
    data_dir: Path | None = typer.Argument(
        None, metavar="DATA_DIR", help="Dataset directory (default: the one the run was trained on)."
    ),
    data: Path | None = typer.Option(
        None, "--data", metavar="DATA_DIR", help="Same as DATA_DIR, as the report commands spell it."
    ),
    split: str = typer.Option("test", metavar="NAME", help="Split to evaluate: train | valid | test."),
    as_json: bool = JsonOpt,
) -> None:
    """AUC and logloss of a trained checkpoint on one split of a dataset.

    Example: dcollapse eval runs/deepfm.pt --split test --json
    """
    from rich.text import Text

    from dcollapse import checkpoint, reports
    from dcollapse.data.dataset import load_split
    from dcollapse.evaluation import evaluate

    if split not in SPLITS:
        raise config.choice_error("--split", split, SPLITS)
    if data_dir is not None and data is not None and data_dir != data:
        raise UserError("give the dataset once: DATA_DIR or --data")
    loaded = reports.load_run(checkpoint.load(run), data_dir or data, device="cpu", label=str(run))
    if loaded.data is None:
        raise UserError(f"{run}: {loaded.skipped}")
    for line in loaded.warnings:
        err.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)
    data_dir = loaded.data
    metrics = evaluate(loaded.model, load_split(data_dir, split), split)
    result = {"schema": "dcollapse.eval/1", "checkpoint": str(run), "data": str(data_dir), "split": split, **metrics}
    emit(result, as_json, render_eval)


def render_eval(result: dict[str, Any]) -> None:
    table = Table(title=escape(f"{result['checkpoint']} on {result['split']}"))
    for column in ("rows", "AUC", "logloss"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['rows']:,}", f"{result['auc']:.4f}", f"{result['logloss']:.4f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(handles_errors(records_rank_failures(train_command)))
    app.command("eval")(handles_errors(eval_command))
