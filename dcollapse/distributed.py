"""Data-parallel training with torch.distributed: the ranks of one ``dcollapse train`` run.

Every rank holds the whole model (DistributedDataParallel: gloo on CPU, nccl on CUDA) and reads its share of each
batch. The run is the same run as on one process with the same global ``batch_size`` and seed:

- every rank draws the same per-epoch permutation from ``(seed, epoch)``; each global batch of ``batch_size`` rows
  is cut into ``world`` contiguous shards and rank ``r`` trains on shard ``r``;
- the gradients are those of the mean loss over the global batch, however the rows fall on the ranks: a DDP
  communication hook weights each rank's mean-loss gradient by its share of the batch's rows before summing;
- validation and test metrics come from the predictions of the full split (each rank predicts a slice, all are
  gathered, every rank computes the same AUC), so early stopping decides the same on every rank;
- rank 0 alone writes checkpoints (atomically); a resumed run may use any number of ranks.

What differs from one process: dropout draws differ per rank; BatchNorm statistics are per rank on CPU (on CUDA
the layers become SyncBatchNorm); a last batch of an epoch (or chunk) with fewer rows than ranks is skipped.

:func:`from_env` joins the process group that ``torchrun`` (or :func:`launch`) describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

import json
import os
import signal
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from dcollapse.data.dataset import Split
from dcollapse.device import pick_device
from dcollapse.evaluation import predict, scores
from dcollapse.models import CTRModel
from dcollapse.train import SingleProcess, seed_epoch


class DataParallel(SingleProcess):
    """Rank ``rank`` of ``world`` processes in an initialised default process group, computing on ``device``."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.is_main = rank == 0
        self.grad_scale = 1.0 / world  # this rank's share of the current global batch's rows
        self.rows = 0  # rows this rank trained on since the last mean_loss

    def wrap(self, model: CTRModel) -> DistributedDataParallel:
        """``model`` in DDP (its parameters broadcast from rank 0), with the global-batch-mean gradient hook."""
        if self.device.type == "cuda":  # SyncBatchNorm needs a GPU; it reuses the same parameters and buffers
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        ddp.register_comm_hook(self, _global_mean_allreduce)
        return ddp

    def seed_epoch(self, seed: int, epoch: int) -> torch.Generator:
        """The shuffle generator shared by all ranks; torch's global RNG (dropout) seeded per rank."""
        generator = seed_epoch(seed, epoch)
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0]))
        return generator

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """This rank's contiguous shard of each global batch of ``order`` [N]."""
        for rows in order.split(batch_size):
            if len(rows) < self.world:  # some rank would get no row
                continue
            local = rows.tensor_split(self.world)[self.rank]
            self.grad_scale = len(local) / len(rows)
            self.rows += len(local)
            yield local

    def mean_loss(self, loss: float) -> float:
        """The mean training loss over all ranks' rows, from this rank's mean ``loss`` over its rows."""
        total = torch.tensor([loss * self.rows, self.rows], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        self.rows = 0
        return (total[0] / total[1]).item()

    def evaluate(self, model: CTRModel, split: Split, name: str = "valid") -> dict[str, float]:
        """Metrics of the full ``split``: each rank predicts one slice of the rows, the slices are gathered."""
        parts = split.ids.tensor_split(self.world)
        longest = max(len(p) for p in parts)
        local = torch.zeros(longest, dtype=torch.float64, device=self.device)
        local[: len(parts[self.rank])] = torch.from_numpy(predict(model, parts[self.rank])).to(self.device)
        gathered = [torch.empty_like(local) for _ in parts]
        dist.all_gather(gathered, local)
        probs = torch.cat([g[: len(p)] for g, p in zip(gathered, parts, strict=True)]).cpu().numpy()
        return scores(split.labels.cpu().numpy(), probs, name)


def _global_mean_allreduce(parallel: DataParallel, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: sum over ranks of (rank's rows / global rows) x (gradient of the rank's mean loss),
    i.e. the gradient of the mean loss over the global batch (DDP's default averages ranks with equal weights)."""
    buffer = bucket.buffer().mul_(parallel.grad_scale)
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda future: future.value()[0])


def world_size() -> int:
    """The number of ranks the launcher announced in the environment (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_env(device: str = "auto") -> SingleProcess:
    """This process's place in the run: :class:`SingleProcess` unless a launcher started several ranks, then
    a :class:`DataParallel` rank in a freshly initialised process group (nccl on CUDA, gloo on CPU).

    ``device``: cpu | cuda | auto, as the training config; on CUDA, rank with ``LOCAL_RANK`` k uses GPU k.
    A launcher stops the other ranks with SIGTERM when one fails: the rank then exits through Python, so a
    checkpoint being written is dropped whole (its temporary file removed) and the previous one stays.
    """
    world = world_size()
    if world == 1:
        return SingleProcess()
    target = pick_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return DataParallel(dist.get_rank(), world, target)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class RanksFailed(Exception):
    """A rank of a launched run failed; the other ranks were stopped. ``exitcode`` is the failed rank's."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def launch(nproc: int, command: list[str]) -> None:
    """Run ``command`` (program and arguments) as ``nproc`` ranks on this machine with torch.distributed's elastic
    launcher, as ``torchrun --standalone --nproc-per-node nproc`` does. Each rank gets ``OMP_NUM_THREADS`` = cores
    / nproc unless it is set. Raises :class:`RanksFailed` naming the rank whose failure stopped the run, and
    KeyboardInterrupt on Ctrl-C (the ranks get it too and stop)."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    threads_set = "OMP_NUM_THREADS" in os.environ
    if not threads_set:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        elastic_launch(config, entrypoint=command[0])(*command[1:])
    except ChildFailedError as exc:
        rank, failure = root_cause(exc.failures)
        raise RanksFailed(
            f"rank {rank} of {nproc} failed (exit code {failure.exitcode}): {failure_message(failure)}; "
            "the other ranks were stopped",
            failure.exitcode if failure.exitcode > 0 else 1,
        ) from None
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise RanksFailed(f"stopped by {exc.sigval.name}; the ranks were stopped", 128 + exc.sigval) from None
    finally:
        if not threads_set:
            del os.environ["OMP_NUM_THREADS"]


def root_cause(failures: dict[int, ProcessFailure]) -> tuple[int, ProcessFailure]:
    """The failure that stopped the run: the earliest a rank recorded (see :func:`record_failure`), else the
    earliest. A rank that lost its peers fails after them, and records nothing when torch says so (DistError)."""
    # torch types ProcessFailure.message as str; it is the rank's error file (a dict) when the rank recorded one
    messages: dict[int, Any] = {rank: f.message for rank, f in failures.items()}
    recorded = [(int(m["extraInfo"].get("time_ns", 0)), rank) for rank, m in messages.items() if isinstance(m, dict)]
    if recorded:
        rank = min(recorded)[1]
        return rank, failures[rank]
    return min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))


def failure_message(failure: ProcessFailure) -> str:
    """The one-line message of a recorded failure, or how the process ended."""
    if isinstance(failure.message, dict):
        return str(failure.message.get("message", "")).splitlines()[0]
    if failure.exitcode < 0:
        return f"killed by signal {failure.signal_name()}"
    return "no error recorded (see its output above)"


def record_failure(exc: BaseException) -> None:
    """Write ``exc`` where the elastic launcher looks for a rank's error (``TORCHELASTIC_ERROR_FILE``, in the format
    of torch's ``ErrorHandler`` plus the time in ns, so the first failure is told from the ranks that lost their
    peers after it), unless torch calls it a communication error. No-op outside a launched run."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path is None or isinstance(exc, dist.DistError):
        return
    now = time.time_ns()
    info = {"py_callstack": traceback.format_exc(), "timestamp": str(now // 10**9), "time_ns": str(now)}
    with open(path, "w") as file:
        json.dump({"message": {"message": f"{type(exc).__name__}: {exc}", "extraInfo": info}}, file)
