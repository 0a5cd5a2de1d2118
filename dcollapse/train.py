"""Training a CTR model on a preprocessed dataset, with a collapse snapshot every epoch.

Read top to bottom: config -> data -> model + optimizer -> epochs of (shuffle, steps, evaluate, snapshot,
checkpoint, early stopping) -> test metrics of the best model. The per-batch step (:func:`train_step`), one
epoch (:func:`train_epoch`) and the evaluation (:func:`evaluate`, :func:`collapse_snapshot`) are small functions
so a distributed wrapper can reuse them.

The train split is one in-memory id tensor [N, F] shuffled by index permutation, or, with ``chunk_rows`` > 0,
streamed from Parquet in chunks (random chunk order, random order within a chunk) when it does not fit in memory.

Checkpoints (``dcollapse.checkpoint`` format) hold the best weights by the ``monitor`` (valid AUC by default) in
``state_dict`` and, under ``"resume"``, the last epoch's weights and optimizer state (with any ``lr_decay``
applied), so ``resume=`` continues a run exactly: every epoch draws its shuffle and dropout randomness from
``(seed, epoch)`` alone.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
import torch
from torch.nn import functional

from dcollapse import checkpoint
from dcollapse.config import full_config
from dcollapse.data.dataset import Split, load_meta, load_split, split_tensors
from dcollapse.device import pick_device
from dcollapse.errors import UserError
from dcollapse.evaluation import collapse_snapshot, evaluate, snapshot_rows
from dcollapse.models import CTRModel, build_model
from dcollapse.monitor import TrainingBoard
from dcollapse.optim import ClipGradients, TrainOptimizer, decay_lr, make_optimizer


def default_threads(processes: int = 1) -> int:
    """Torch CPU threads for each of ``processes`` training processes on this machine: ``OMP_NUM_THREADS`` when it
    is set, else the CPUs this process may run on that other work leaves idle (by the 1-minute load average),
    shared among the processes; at least 1. Torch's own default, a thread per core whatever the load, makes the
    threads wait on each other on a busy machine (measured 5-8k instead of 316k samples/s)."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = cpus - (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    return max(1, min(cpus, round(idle)) // max(1, processes))


def parameter_bound(config: dict[str, Any], meta: dict[str, Any]) -> int:
    """An upper bound on the parameters of the model ``config`` builds on ``meta``'s fields, from the shapes alone:
    the table (plus a first-order weight per id), a DNN (with one) whose input is at most every embedding and
    every pair, cross layers (CrossNet) on the flat embeddings, and a head on all of them."""
    rows = sum(int(f["vocab_size"]) for f in meta["fields"])
    fields, width = len(meta["fields"]), int(config["emb_dim"]) * int(config.get("num_sets") or 1)
    flat = fields * width
    widths = [flat + fields * (fields - 1) // 2, *map(int, config.get("dnn") or []), 1]
    dnn = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False)) if config["arch"] != "none" else 0
    cross = int(config.get("cross_layers") or 0) * (flat + 1) * flat if config["model"] == "crossnet" else 0
    return rows * (width + 1) + dnn + cross + flat + 1


def check_model_fits(config: dict[str, Any], meta: dict[str, Any], device: torch.device) -> None:
    """Refuse a model whose weights, gradients and two optimizer moments (4 x 4 bytes a parameter) exceed the
    memory of ``device`` (the machine's RAM for the CPU), before anything is allocated. The bound of
    :func:`parameter_bound` settles almost every run at once; only a model near the limit is built on torch's meta
    device (which only counts, but costs seconds on first use) for its exact size."""
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 16 * parameter_bound(config, meta) <= have:
        return
    with torch.device("meta"):
        model = build_model(config, meta)
    params = sum(p.numel() for p in model.parameters())
    need = 16 * params
    if need > have:
        raise UserError(
            f"the model has {params:.3g} parameters, {need / 2**30:,.0f} GiB with gradients and optimizer state: "
            f"more than the {have / 2**30:,.0f} GiB of {device.type} memory here; use a smaller --emb-dim, "
            "--num-sets or --dnn (or a dataset with fewer ids)"
        )


def monitor_score(valid: dict[str, float], monitor: str) -> float:
    """The number whose rise marks a better epoch: valid AUC, -logloss, or AUC - logloss (FuxiCTR's monitor
    ``{"AUC": 1, "logloss": -1}``) for ``monitor`` auc | logloss | auc-logloss."""
    weights = {"auc": (1.0, 0.0), "logloss": (0.0, -1.0), "auc-logloss": (1.0, -1.0)}[monitor]
    return weights[0] * valid["auc"] + weights[1] * valid["logloss"]


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed torch's global RNG (dropout) for ``epoch`` and return a CPU generator for its shuffle."""
    epoch_seed = int(seed) * 1_000_003 + epoch
    torch.manual_seed(epoch_seed)
    return torch.Generator().manual_seed(epoch_seed)


def check_world(config: dict[str, Any], world: int) -> None:
    """Refuse ``sparse_emb`` in a data-parallel run of ``world`` > 1 processes (DDP all-reduces dense gradients)."""
    if (config["sparse_emb"] or config.get("fused_update", False)) and world > 1:
        raise UserError(
            f"--{'sparse-emb' if config['sparse_emb'] else 'fused-update'} does not work with data-parallel training "
            "(--nproc, torchrun); train on one process"
        )


def train_step(model: torch.nn.Module, optimizer: TrainOptimizer, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimizer step on a batch (ids int [B, F], labels float [B]); returns the mean BCE loss. ``model`` is a
    :class:`CTRModel` or what :meth:`SingleProcess.wrap` and :class:`OneShape` (--compile) made of it (logits [B])."""
    optimizer.zero_grad(set_to_none=True)
    loss = functional.binary_cross_entropy_with_logits(model(ids), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


class OneShape(torch.nn.Module):
    """``torch.compile`` of ``module`` (static shapes) for batches as long as the first batch it is called with, and
    ``module`` itself, eagerly, for any other length (an epoch's or a streamed chunk's last, shorter batch).

    The compiled step keeps one shape, so it compiles once per process instead of again for the partial batch
    (and then once more with a dynamic batch dimension, torch's default on a second shape); the partial batch
    computes the same loss and gradient as it would compiled, without padding rows into the optimizer's view.
    ``module`` (ids int [B, F] -> logits [B]) is a :class:`CTRModel` or what :meth:`SingleProcess.wrap` made of it.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.eager = module
        # torch's stubs type the result as a plain callable; compiling a Module gives an OptimizedModule (a Module)
        self.compiled = cast(torch.nn.Module, torch.compile(module, dynamic=False))
        self.rows: int | None = None  # the batch length the compiled step takes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            self.rows = len(ids)
        return (self.compiled if len(ids) == self.rows else self.eager)(ids)


class Diverged(UserError):
    """The training loss became NaN or infinite, or rose far above its starting value (see :class:`LossGuard`)."""


DIVERGENCE_FACTOR = 100.0


@dataclass
class LossGuard:
    """Stops a run whose training loss is NaN or infinite, or more than :data:`DIVERGENCE_FACTOR` times its
    starting value: the first step's loss of this call of :func:`train`, taken as at least ln 2 (the loss of
    predicting 0.5), so the limit is never below 69. A finite explosion (lr too large) ends there instead of
    writing a checkpoint of a loss of 1e18."""

    start: float = math.nan

    def check(self, loss: float, epoch: int, step: int) -> None:
        where = f"at epoch {epoch}, step {step}; try a smaller lr"
        if not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} {where}")
        if math.isnan(self.start):
            self.start = loss
        if loss > DIVERGENCE_FACTOR * max(self.start, math.log(2)):
            raise Diverged(
                f"training loss rose to {loss:.3g}, over {DIVERGENCE_FACTOR:g}x its starting value "
                f"{self.start:.3g}, {where}"
            )


class SingleProcess:
    """How :func:`train` runs on one process. ``dcollapse.distributed.DataParallel`` overrides each method for the
    ranks of a data-parallel run (``batch_size`` stays the global batch)."""

    is_main = True  # the process that writes checkpoints
    world = 1  # processes in the run

    def wrap(self, model: CTRModel) -> torch.nn.Module:
        """The module the training steps call."""
        return model

    def seed_epoch(self, seed: int, epoch: int) -> torch.Generator:
        """Seed ``epoch``'s randomness; returns the shuffle generator (see :func:`seed_epoch`)."""
        return seed_epoch(seed, epoch)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
        """This process's rows of each batch of the shuffled row indices ``order`` [N]."""
        return order.split(batch_size)

    def mean_loss(self, loss: float) -> float:
        """The epoch's mean training loss over all processes, from this process's ``loss``."""
        return loss

    def evaluate(self, model: CTRModel, split: Split, name: str = "valid") -> dict[str, float]:
        """:func:`evaluate` on the full split."""
        return evaluate(model, split, name)


ONE_PROCESS = SingleProcess()


def train_epoch(
    model: torch.nn.Module,
    optimizer: TrainOptimizer,
    chunks: Iterable[Split],
    batch_size: int,
    generator: torch.Generator,
    epoch: int,
    steps: int,
    on_step: Callable[[int, int, int, float], None] | None = None,
    parallel: SingleProcess = ONE_PROCESS,
    guard: LossGuard | None = None,
) -> float:
    """One pass over the training rows, chunk by chunk (one chunk = the whole split when it is in memory), each
    chunk in a random order; ``steps`` = the number of batches, for progress. Returns the mean training loss
    (of this process's rows; ``parallel`` picks them). ``guard`` checks every step's loss (a fresh
    :class:`LossGuard` when not given)."""
    guard = guard or LossGuard()
    model.train()
    total, rows_seen, step = 0.0, 0, 0
    for chunk in chunks:
        order = torch.randperm(len(chunk), generator=generator).to(chunk.ids.device)
        for rows in parallel.batches(order, batch_size):
            loss = train_step(model, optimizer, chunk.ids[rows], chunk.labels[rows])
            step += 1
            guard.check(loss, epoch, step)
            total, rows_seen = total + loss * len(rows), rows_seen + len(rows)
            if on_step is not None:
                on_step(epoch, step, steps, loss)
    return total / rows_seen


def parquet_chunks(
    data_dir: Path, meta: dict[str, Any], chunk_rows: int, generator: torch.Generator, device: torch.device
) -> Iterator[Split]:
    """The train split streamed from Parquet in chunks of ``chunk_rows`` rows, chunks in a random order; only one
    chunk is in memory at a time."""
    path = data_dir / meta["splits"]["train"]["file"]
    names = [f["name"] for f in meta["fields"]]
    starts = list(range(0, int(meta["splits"]["train"]["rows"]), chunk_rows))
    for i in torch.randperm(len(starts), generator=generator).tolist():
        frame = pl.scan_parquet(path).select([*names, meta["label"]]).slice(starts[i], chunk_rows).collect()
        chunk = split_tensors(frame, meta, path, first_row=starts[i])  # ids in range, labels 0/1
        yield Split(chunk.ids.to(device), chunk.labels.to(device))


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


@dataclass
class Progress:
    """Where a run stands after its last completed epoch (what ``"resume"`` in a checkpoint restores)."""

    epoch: int = 0
    best_auc: float = -math.inf  # the valid AUC of the best epoch
    best_epoch: int = 0
    best_score: float = -math.inf  # the best epoch's monitor_score
    bad_epochs: int = 0


def epoch_path(out: Path, epoch: int) -> Path:
    """``run.pt`` -> ``run.epochN.pt``."""
    return out.with_name(f"{out.stem}.epoch{epoch}{out.suffix}")


def train(
    data_dir: str | Path,
    config: dict[str, Any],
    out: str | Path,
    *,
    resume: dict[str, Any] | None = None,
    save_every_epoch: bool | None = None,
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    parallel: SingleProcess = ONE_PROCESS,
    tensorboard: str | Path | None = None,
) -> dict[str, Any]:
    """Train, checkpointing to ``out`` after every epoch; returns the final checkpoint dict.

    ``resume``: a checkpoint dict from an earlier run of the same config and data; training continues after its
    last completed epoch, keeping its ``save_every_epoch`` unless one is given (default: off) and its
    ``tensorboard`` directory unless another is given.
    ``on_step(epoch, step, steps, loss)`` and ``on_epoch(history_entry)`` report progress.
    A KeyboardInterrupt leaves the checkpoint of the last completed epoch (best weights so far) in ``out``.
    ``parallel``: this process's rank in a data-parallel run (``dcollapse.distributed.from_env``); only the main
    rank writes checkpoints. ``tensorboard``: a directory for per-epoch TensorBoard scalars and the batch spectrum
    (:class:`dcollapse.monitor.TrainingBoard`), written by the main rank.
    """
    config, out, data_dir = full_config(config), Path(out), Path(data_dir).resolve()
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out names the checkpoint file to write (e.g. {out / 'run.pt'})")
    check_world(config, parallel.world)
    device = pick_device(config["device"])

    # Data: every split as one int32 id tensor [N, F] on the device.
    meta = load_meta(data_dir)
    if "train" not in meta["splits"] or "valid" not in meta["splits"]:
        raise UserError(f"{data_dir}: training needs a train and a valid split (have: {', '.join(meta['splits'])})")
    if resume is not None and resume.get("data", {}).get("hash") != meta.get("input_hash"):
        raise UserError(f"{data_dir}: not the dataset the resumed run was trained on (input hash differs)")
    kept = resume["resume"] if resume is not None else {}  # a resumed run keeps its epoch snapshots and logs
    if save_every_epoch is None:
        save_every_epoch = bool(kept.get("save_every_epoch", False))
    tensorboard = tensorboard or kept.get("tensorboard")
    check_model_fits(config, meta, device)
    chunk_rows = int(config["chunk_rows"])  # > 0: stream the train split from Parquet instead of loading it
    splits = {
        name: Split(s.ids.to(device), s.labels.to(device))
        for name in ("train", "valid", "test")
        if name in meta["splits"] and not (name == "train" and chunk_rows)
        for s in [load_split(data_dir, name, meta)]
    }
    train_rows = int(meta["splits"]["train"]["rows"]) if chunk_rows else len(splits["train"])
    batch_size = int(config["batch_size"])
    if chunk_rows:
        sizes = [min(chunk_rows, train_rows - start) for start in range(0, train_rows, chunk_rows)]
    else:
        sizes = [train_rows]
    steps = sum(math.ceil(size / batch_size) for size in sizes)
    probe = snapshot_rows(splits["valid"], int(config["snapshot_rows"]))

    # Model and optimizer (restored to the end of the last completed epoch when resuming).
    torch.manual_seed(int(config["seed"]))
    model = build_model(config, meta).to(device)
    optimizer = make_optimizer(model, config)
    if config["clip_norm"]:
        optimizer = ClipGradients(optimizer, model.parameters(), float(config["clip_norm"]))
    progress, history, best_state = Progress(), [], cpu_state(model)
    if resume is not None:
        state = resume["resume"]
        try:  # checkpoint.load checked the types; whether they fit this model and optimizer shows here
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"--resume: the saved state does not fit the run's model or optimizer ({exc})") from None
        progress = Progress(**{"best_score": state["progress"].get("best_auc", -math.inf), **state["progress"]})
        history, best_state = list(resume["history"]), resume["state_dict"]
    trainer = parallel.wrap(model)
    if config["compile"]:  # the training steps only: evaluation and snapshots run the model as it is
        trainer = OneShape(trainer)

    def run_checkpoint(test: dict[str, float] | None = None) -> dict[str, Any]:
        return checkpoint.ctr_run(config, meta, best_state, history, data_dir, progress.best_epoch, test)

    def make_checkpoint(test: dict[str, float] | None = None) -> dict[str, Any]:
        tensorboard_dir = str(tensorboard) if tensorboard else None  # kept by a resume of this run, as is
        return checkpoint.with_resume(run_checkpoint(test), cpu_state(model), optimizer.state_dict(),
                                      vars(progress).copy(), save_every_epoch=save_every_epoch,
                                      tensorboard=tensorboard_dir)  # fmt: skip

    guard = LossGuard()
    fields = [f["name"] for f in meta["fields"]]
    board = TrainingBoard(tensorboard, fields) if tensorboard and parallel.is_main else None
    for epoch in range(progress.epoch + 1, int(config["epochs"]) + 1):
        if config["patience"] and progress.bad_epochs >= int(config["patience"]):
            break
        start = time.perf_counter()
        generator = parallel.seed_epoch(int(config["seed"]), epoch)
        chunks = parquet_chunks(data_dir, meta, chunk_rows, generator, device) if chunk_rows else [splits["train"]]
        try:
            loss = train_epoch(
                trainer, optimizer, chunks, batch_size, generator, epoch, steps, on_step, parallel=parallel, guard=guard
            )
            train_loss = parallel.mean_loss(loss)
        except Diverged as exc:
            kept = f"{out} keeps epoch {progress.epoch}" if progress.epoch else "no checkpoint was written"
            raise Diverged(f"{exc} ({kept})") from None
        train_seconds = time.perf_counter() - start
        valid = parallel.evaluate(model, splits["valid"])
        collapse = collapse_snapshot(model, probe, config["track"])
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "seconds": time.perf_counter() - start,
            "samples_per_s": train_rows / train_seconds,
            **collapse,
        }
        history.append(entry)

        progress.epoch = epoch
        score = monitor_score(valid, config["monitor"])
        if score > progress.best_score:
            progress.best_score, progress.best_auc, progress.best_epoch = score, valid["auc"], epoch
            progress.bad_epochs = 0
            best_state = cpu_state(model)
        else:
            progress.bad_epochs += 1
            if config["lr_decay"] < 1:
                decay_lr(optimizer, float(config["lr_decay"]))
        if parallel.is_main:
            checkpoint.save(out, make_checkpoint())
        if save_every_epoch and parallel.is_main:
            checkpoint.save(
                epoch_path(out, epoch), {**run_checkpoint(), "state_dict": cpu_state(model), "epoch": epoch}
            )
        if on_epoch is not None:
            on_epoch(entry)
        if board is not None:
            board.log_epoch(entry, model, probe.ids)
    if board is not None:
        board.close()

    # The best model's test metrics, when the dataset has a test split.
    test = None
    if "test" in splits:
        best = build_model(config, meta).to(device)
        best.load_state_dict(best_state)
        test = parallel.evaluate(best, splits["test"], "test")
        test = {"auc": test["auc"], "logloss": test["logloss"]}
    final = make_checkpoint(test)
    if parallel.is_main:
        checkpoint.save(out, final)
    return final
