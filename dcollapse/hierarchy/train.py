"""Training a hierarchical CNN/LCN on an (S)RHM dataset, and the checkpoint it writes.

Checkpoint (via :func:`dcollapse.checkpoint.save`, kind "hierarchy")::

    {"config": {...TrainConfig...}, "meta": {"grammar": {...}, "encoding": str, "whitening": bool, ...},
     "state_dict": ..., "history": [{"epoch", "train_loss", "train_error", "test_loss", "test_error",
     "seconds"}, ...], "data": {"path": str, "hash": str}, "test": {"error", "loss"}, "kind": "hierarchy",
     "stopped": "loss_threshold" | "max_epochs" | "interrupted"}

The optimiser follows the reference code: plain SGD on the cross-entropy, learning rate ``lr * width``
(mean-field scaling of the readout), optional momentum, no weight decay, no scheduler; training stops once the
epoch's mean train loss is below ``loss_threshold`` or after ``epochs`` epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from dcollapse.errors import UserError
from dcollapse.hierarchy.generator import Grammar, channels, encode, load_data
from dcollapse.hierarchy.models import ARCHS, HierarchicalNet

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainConfig:
    """Every option of ``dcollapse hierarchy train`` (stored verbatim in the checkpoint)."""

    arch: str = "cnn"
    width: int = 256
    train_size: int = 1000
    test_size: int = 2000
    epochs: int = 100
    batch_size: int = 4
    lr: float = 0.1
    momentum: float = 0.0
    loss_threshold: float = 1e-3
    dtype: str = "float32"
    seed: int = 0

    def validate(self, available: int) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"--arch {self.arch!r}: expected one of {', '.join(ARCHS)}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        for name in ("width", "train_size", "test_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} = {getattr(self, name)}: expected a positive integer")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.loss_threshold >= 0):
            raise UserError("--lr must be > 0, --momentum in [0, 1), --loss-threshold >= 0")
        if self.train_size + self.test_size > available:
            raise UserError(
                f"--train-size {self.train_size} + --test-size {self.test_size} exceeds the {available} samples "
                "in the dataset (generate more with `dcollapse synth srhm --samples`)"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def build_model(config: TrainConfig, grammar: Grammar, encoding: str) -> HierarchicalNet:
    """A freshly initialised network (seeded by ``config.seed``) in ``config.dtype``."""
    torch.manual_seed(config.seed)
    net = HierarchicalNet(config.arch, channels(grammar, encoding), config.width, grammar.L, grammar.patch, grammar.n_c)
    return net.to(DTYPES[config.dtype])


def load_model(ckpt: dict[str, Any]) -> tuple[HierarchicalNet, Grammar]:
    """Rebuild the trained network (eval mode, CPU) and its grammar from a loaded hierarchy checkpoint."""
    if ckpt.get("kind") != "hierarchy":
        raise UserError(f"checkpoint kind {ckpt.get('kind')!r}: expected a hierarchy run (`dcollapse hierarchy train`)")
    config = TrainConfig.from_dict(ckpt["config"])
    grammar = Grammar.from_dict(ckpt["meta"]["grammar"])
    net = build_model(config, grammar, ckpt["meta"]["encoding"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not match its config ({str(exc).splitlines()[0][:120]})") from None
    return net.eval(), grammar


@torch.no_grad()
def evaluate(net: HierarchicalNet, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> tuple[float, float]:
    """(mean cross-entropy, error rate) of ``net`` on inputs x [N, C, d], labels y [N]."""
    loss, wrong = 0.0, 0
    for i in range(0, len(y), batch):
        out = net(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        wrong += (out.argmax(dim=1) != y[i : i + batch]).sum().item()
    return loss / len(y), wrong / len(y)


def train(
    config: TrainConfig,
    data_dir: str | Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train on the first ``train_size`` samples of ``data_dir``, test on its last ``test_size``.

    Returns the checkpoint dict (without format/version; pass it to :func:`dcollapse.checkpoint.save`).
    Ctrl-C stops training and returns the weights as they are, with ``stopped = "interrupted"``.
    """
    meta, grammar, symbols, labels = load_data(data_dir)
    config.validate(len(labels))
    dtype = DTYPES[config.dtype]
    encoding, whitening = meta["encoding"], meta["whitening"]
    x_train = encode(grammar, symbols[: config.train_size], encoding, whitening, dtype)
    y_train = torch.as_tensor(labels[: config.train_size])
    x_test = encode(grammar, symbols[len(labels) - config.test_size :], encoding, whitening, dtype)
    y_test = torch.as_tensor(labels[len(labels) - config.test_size :])
    net = build_model(config, grammar, encoding)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr * config.width, momentum=config.momentum)
    order = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    stopped = "max_epochs"
    try:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            net.train()
            total = 0.0
            perm = torch.randperm(config.train_size, generator=order)
            for i in range(0, config.train_size, config.batch_size):
                idx = perm[i : i + config.batch_size]
                loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            train_loss = total / config.train_size
            if not math.isfinite(train_loss):
                raise UserError(f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr")
            net.eval()
            _, train_error = evaluate(net, x_train, y_train)
            test_loss, test_error = evaluate(net, x_test, y_test)
            entry = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_error": train_error,
                "test_loss": test_loss,
                "test_error": test_error,
                "seconds": time.perf_counter() - start,
            }
            history.append(entry)
            if on_epoch is not None:
                on_epoch(entry)
            if train_loss < config.loss_threshold:
                stopped = "loss_threshold"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
    net.eval()
    test_loss, test_error = evaluate(net, x_test, y_test)
    return {
        "config": asdict(config),
        "meta": {k: meta[k] for k in ("grammar", "encoding", "whitening", "samples", "input_hash")},
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "history": history,
        "data": {"path": str(Path(data_dir).resolve()), "hash": meta["input_hash"]},
        "test": {"error": test_error, "loss": test_loss},
        "kind": "hierarchy",
        "stopped": stopped,
    }
