"""Training throughput and test AUC of dcollapse against DeepCTR-Torch and torchfm on the same ids and splits.

Every library trains the same model (FM, or DeepFM with a 400x3 ReLU MLP) from the same preprocessed dataset
directory: the same train rows in the same shuffled order (one permutation per epoch, shared), the same batch size,
Adam with the same learning rate, the same embedding size, BCE, one torch thread, no regularisation. They train in
``--rounds`` interleaved rounds (dcollapse, the next library, ..., dcollapse again: each round is the next slice of
every library's steps), so a change in the load of a shared machine reaches all of them alike. After the same
number of epochs each predicts the test split: samples/s counts the timed steps after ``--warmup`` steps, and
the table gives each library's AUC and dcollapse's samples/s as a multiple of it, with the load average.

What one timed step is, per library (the batch's rows are taken from the library's own copy of the train ids
before the clock starts):

- ``dcollapse``: ``dcollapse.train.train_step`` (zero_grad, forward, BCE with logits, backward, optimizer step)
  on a ``CTRModel`` from ``build_model`` with the optimizer ``make_optimizer`` builds for ``fused_update`` (what
  ``dcollapse train --fused-update`` runs): ``style="textbook"`` FM / DeepFM (a first-order term, a bias, and
  for DeepFM the FM logit plus the MLP logit, as in both peers), the tables updated inside the backward by lazy
  Adam (rows the batch read only), fused dense Adam for the rest. int32 ids.
- ``dcollapse-dense``: the same model with the default exact dense Adam over every table row (the peers'
  optimizer rule).
- ``deepctr-torch``: ``deepctr_torch.models.DeepFM`` (``dnn_hidden_units=()`` for FM: its linear part + FM +
  bias), one ``SparseFeat`` per field for both its linear and its DNN/FM columns, ``l2_reg_*=0``; the body of one
  step of its ``BaseModel.fit`` (forward, ``F.binary_cross_entropy`` on its sigmoid output, ``zero_grad``, its
  regularisation and auxiliary losses added, backward, step) with ``torch.optim.Adam`` over all its parameters,
  except that the loss is the batch mean (``fit`` sums it; Adam's update barely depends on the scale) and that
  the float copy of the ids its forward reads (it casts each column back to long) is made once, not per batch.
  Not timed: ``fit``'s DataLoader, progress bar and metrics.
- ``torchfm``: ``FactorizationMachineModel`` / ``DeepFactorizationMachineModel`` (``dropout=0``; its MLP has a
  BatchNorm1d after every hidden Linear, which is torchfm's architecture), int64 local ids (it adds the field
  offsets itself), ``BCELoss`` on its sigmoid output, ``torch.optim.Adam`` over all parameters: the step of its
  example training loop.
- ``per-field``: the self-written per-field baseline of ``scripts/bench_train.py`` (one ``nn.Embedding`` per
  field, the interaction in plain PyTorch, ``torch.optim.Adam``), stepped by ``train_step``. Its heads are the
  paper-style ones (FM: the sum over d of the pairwise term, no first-order term or bias; DeepFM: one Linear over
  [pairwise term, MLP output]), so its AUC is not the same model's.

Peers that are not installed are left out (``pip install 'dcollapse[peers]'`` installs them).

    dcollapse synth ctr --out data/ctr --rows 1000000 --fields 39 --vocab 16000 --preprocessed
    python scripts/bench_peers.py data/ctr                                  # FM and DeepFM, batch 4096 and 1024
    python scripts/bench_peers.py data/ctr --models FM --batches 4096 --profile
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional

from dcollapse.config import full_config
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.errors import UserError
from dcollapse.evaluation import EVAL_BATCH, scores
from dcollapse.models import build_model
from dcollapse.optim import make_optimizer
from dcollapse.train import train_step

MODELS = {"FM": [], "DeepFM": [400, 400, 400]}  # model -> hidden widths of its MLP
PEERS = {"deepctr-torch": "deepctr_torch", "torchfm": "torchfm"}  # library -> module to import
LIBRARIES = ("dcollapse", "dcollapse-dense", *PEERS, "per-field")
FLOAT_EXACT = 2**24  # every integer below this is exact in float32 (DeepCTR-Torch's input tensor)


@dataclass
class Contender:
    """One library's model in a benchmark block.

    ``inputs`` / ``test_inputs`` [N, F]: the train / test ids as this library takes them; ``step(x, y)`` trains on
    one batch (x [B, F] rows of ``inputs``, y float [B]) and returns its loss; ``probs(x)`` [B] are click
    probabilities (called in eval mode without gradients)."""

    library: str
    model: nn.Module
    inputs: torch.Tensor
    test_inputs: torch.Tensor
    step: Callable[[torch.Tensor, torch.Tensor], float]
    probs: Callable[[torch.Tensor], torch.Tensor]
    seconds: float = 0.0  # timed steps only
    samples: int = 0
    steps: int = 0  # all steps, warm-up included
    round_rates: list[float] = field(default_factory=list)  # samples/s of each round's timed steps

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def available(library: str) -> bool:
    """Whether ``library`` can be benchmarked here: the peers are optional, and must import."""
    if library not in PEERS:
        return True
    try:
        importlib.import_module(PEERS[library])
    except ImportError:
        return False
    return True


def deepctr_inputs(ids: torch.Tensor) -> torch.Tensor:
    """ids int [N, F] as DeepCTR-Torch's models take them: float32 [N, F], one column per field in field order
    (its forward casts each column back to long). Ids must be below 2^24 to survive the float."""
    if len(ids) and int(ids.max()) >= FLOAT_EXACT:
        raise UserError(f"deepctr-torch reads ids as float32, exact only below 2^24; this dataset has id {ids.max()}")
    return ids.float()


def deepctr_columns(meta: dict[str, Any], emb_dim: int) -> list[Any]:
    """One DeepCTR-Torch ``SparseFeat`` per field of ``meta``, in field order (its input column order)."""
    from deepctr_torch.inputs import SparseFeat

    return [SparseFeat(f["name"], vocabulary_size=f["vocab_size"], embedding_dim=emb_dim) for f in meta["fields"]]


def dcollapse_contender(
    library: str, meta: dict[str, Any], dnn: list[int], emb_dim: int, lr: float, train_ids, test_ids
) -> Contender:
    """dcollapse's textbook FM / DeepFM with the fused in-backward update (``dcollapse``) or dense Adam."""
    arch = {"arch": "parallel", "dnn": dnn} if dnn else {"arch": "none"}
    config = full_config({"model": "fm", **arch, "style": "textbook", "emb_dim": emb_dim, "lr": lr,
                          "optimizer": "adam", "l2_emb": 0.0, "fused_update": library == "dcollapse"})  # fmt: skip
    model = build_model(config, meta)
    optimizer = make_optimizer(model, config)
    return Contender(library, model, train_ids, test_ids, lambda x, y: train_step(model, optimizer, x, y),
                     lambda x: torch.sigmoid(model(x)))  # fmt: skip


def deepctr_contender(meta: dict[str, Any], dnn: list[int], emb_dim: int, lr: float, train_ids, test_ids) -> Contender:
    """DeepCTR-Torch's DeepFM (without hidden units: FM) and the body of its ``fit`` step (see the module doc)."""
    from deepctr_torch.models import DeepFM

    columns = deepctr_columns(meta, emb_dim)
    model = DeepFM(columns, columns, dnn_hidden_units=tuple(dnn), l2_reg_linear=0.0, l2_reg_embedding=0.0,
                   l2_reg_dnn=0.0, device="cpu")  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        y_pred = model(x).squeeze(-1)
        optimizer.zero_grad()
        loss = functional.binary_cross_entropy(y_pred, y)
        total = loss + model.get_regularization_loss() + model.aux_loss
        total.backward()
        optimizer.step()
        return loss.item()

    return Contender("deepctr-torch", model, deepctr_inputs(train_ids), deepctr_inputs(test_ids), step,
                     lambda x: model(x).squeeze(-1))  # fmt: skip


def torchfm_contender(meta: dict[str, Any], dnn: list[int], emb_dim: int, lr: float, train_ids, test_ids) -> Contender:
    """torchfm's FM / DeepFM and the step of its example loop (BCELoss on its sigmoid output, Adam)."""
    from torchfm.model.dfm import DeepFactorizationMachineModel
    from torchfm.model.fm import FactorizationMachineModel

    dims = [f["vocab_size"] for f in meta["fields"]]
    if dnn:
        model: nn.Module = DeepFactorizationMachineModel(dims, emb_dim, tuple(dnn), dropout=0.0)
    else:
        model = FactorizationMachineModel(dims, emb_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = functional.binary_cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Contender("torchfm", model, train_ids.long(), test_ids.long(), step, model)


def per_field_contender(meta: dict[str, Any], dnn: list[int], emb_dim: int, lr: float, train_ids, test_ids):
    """The per-field plain-PyTorch baseline of ``scripts/bench_train.py`` with ``torch.optim.Adam``."""
    from bench_train import Baseline

    arch = {"model": "fm", "arch": "parallel", "dnn": dnn} if dnn else {"model": "fm", "arch": "none"}
    model = Baseline(arch, [f["vocab_size"] for f in meta["fields"]], emb_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return Contender("per-field", model, train_ids, test_ids, lambda x, y: train_step(model, optimizer, x, y),
                     lambda x: torch.sigmoid(model(x)))  # fmt: skip


def contender(library: str, meta: dict[str, Any], dnn: list[int], emb_dim: int, lr: float, train_ids, test_ids):
    """A freshly initialised ``library`` model (seed 0) and its step; ids int32 [N, F] as loaded."""
    torch.manual_seed(0)
    if library.startswith("dcollapse"):
        return dcollapse_contender(library, meta, dnn, emb_dim, lr, train_ids, test_ids)
    build = {"deepctr-torch": deepctr_contender, "torchfm": torchfm_contender, "per-field": per_field_contender}
    return build[library](meta, dnn, emb_dim, lr, train_ids, test_ids)


def schedule(rows: int, batch: int, epochs: int, rounds: int) -> list[list[tuple[int, int]]]:
    """The (epoch, first row) of every batch, cut into ``rounds`` consecutive slices of near-equal length."""
    starts = [(epoch, s) for epoch in range(epochs) for s in range(0, rows, batch)]
    cuts = np.linspace(0, len(starts), min(rounds, len(starts)) + 1).round().astype(int)
    return [starts[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def train_interleaved(
    contenders: list[Contender], labels: torch.Tensor, batch: int, epochs: int, rounds: int, warmup: int, seed: int = 0
) -> None:
    """Train every contender ``epochs`` epochs over the same shuffled rows, round by round in turn; the steps
    after each contender's first ``warmup`` are timed (into ``seconds``, ``samples`` and ``round_rates``)."""
    orders = [torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + e)) for e in range(epochs)]
    for slice_ in schedule(len(labels), batch, epochs, rounds):
        for c in contenders:
            c.model.train()
            seconds, samples = 0.0, 0
            for epoch, start in slice_:
                rows = orders[epoch][start : start + batch]
                x, y = c.inputs[rows], labels[rows]
                begin = time.perf_counter()
                c.step(x, y)
                elapsed = time.perf_counter() - begin
                c.steps += 1
                if c.steps > warmup:
                    seconds, samples = seconds + elapsed, samples + len(rows)
            c.seconds, c.samples = c.seconds + seconds, c.samples + samples
            if samples:
                c.round_rates.append(samples / seconds)


@torch.no_grad()
def test_scores(c: Contender, labels: torch.Tensor) -> dict[str, float]:
    """{"auc", "logloss", "rows"} of the contender's click probabilities on its test inputs."""
    c.model.eval()
    probs = [c.probs(c.test_inputs[i : i + EVAL_BATCH]).double() for i in range(0, len(c.test_inputs), EVAL_BATCH)]
    return scores(labels.numpy(), torch.cat(probs).clamp(1e-7, 1 - 1e-7).numpy(), "test")


def bayes_auc(data: Path, labels: torch.Tensor) -> float | None:
    """AUC of the planted click probabilities on the test split of a ``dcollapse synth ctr`` dataset, else None."""
    truth = data / "truth.parquet"
    if not truth.exists():
        return None
    prob = pl.read_parquet(truth).filter(pl.col("split") == "test")["prob"].to_numpy()
    return float(roc_auc_score(labels.numpy(), prob)) if len(prob) == len(labels) else None


def profile_step(c: Contender, labels: torch.Tensor, batch: int, steps: int, warmup: int) -> str:
    """torch.profiler's table (self CPU time) of ``steps`` training steps of ``c`` after ``warmup`` steps."""
    from torch.profiler import ProfilerActivity, profile

    starts = [(i * batch) % max(len(labels) - batch + 1, 1) for i in range(warmup + steps)]
    c.model.train()
    for s in starts[:warmup]:
        c.step(c.inputs[s : s + batch], labels[s : s + batch])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in starts[warmup:]:
            c.step(c.inputs[s : s + batch], labels[s : s + batch])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="preprocessed dataset directory (train and test splits)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--batches", default="4096,1024", help="comma list of batch sizes")
    parser.add_argument("--libraries", default=None, help=f"comma list of {', '.join(LIBRARIES)} (default: all "
                        "installed; dcollapse must be first, the ratios divide by it)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per (model, batch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps of each library")
    parser.add_argument("--train-rows", type=int, default=0, help="use the first N train rows only (0 = all)")
    parser.add_argument("--emb-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also profile dcollapse's FM step (torch.profiler)")
    args = parser.parse_args(argv)
    try:
        run(args, parser)
    except UserError as exc:
        print(f"bench_peers: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    models, batches = args.models.split(","), args.batches.split(",")
    if any(m not in MODELS for m in models):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if not all(b.isdigit() and int(b) > 0 for b in batches):
        parser.error("--batches: positive integers, comma-separated")
    for name in ("epochs", "rounds", "emb_dim", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.train_rows < 0 or not args.lr > 0:
        parser.error("--warmup and --train-rows must be >= 0 and --lr > 0")
    if args.libraries is None:
        libraries = [lib for lib in LIBRARIES if available(lib)]
        for lib in LIBRARIES:
            if not available(lib):
                print(f"# {lib}: not installed or not importable, left out (pip install 'dcollapse[peers]')")
    else:
        libraries = args.libraries.split(",")
        unknown = [lib for lib in libraries if lib not in LIBRARIES]
        if unknown or libraries[0] != "dcollapse":
            parser.error(f"--libraries: comma list starting with dcollapse, from {', '.join(LIBRARIES)}")
        missing = [lib for lib in libraries if not available(lib)]
        if missing:
            raise UserError(f"{', '.join(missing)}: not installed or not importable (pip install 'dcollapse[peers]')")
    torch.set_num_threads(args.threads)

    meta = load_meta(args.data)
    for split in ("train", "test"):
        if split not in meta["splits"]:
            raise UserError(f"{args.data}: no {split} split (the benchmark trains on train and scores test)")
    train, test = load_split(args.data, "train", meta), load_split(args.data, "test", meta)
    train_ids, train_labels = train.ids, train.labels
    if args.train_rows:
        train_ids, train_labels = train_ids[: args.train_rows], train_labels[: args.train_rows]
    vocab = [f["vocab_size"] for f in meta["fields"]]
    bayes = bayes_auc(args.data, test.labels)
    print(f"# {args.data}: {len(train_labels):,} train rows, {len(test):,} test rows, {len(vocab)} fields, "
          f"{sum(vocab):,} table rows, emb {args.emb_dim}, Adam lr {args.lr:g}, {args.epochs} epoch(s), "
          f"{args.rounds} interleaved rounds, {args.warmup} warm-up steps, {args.threads} thread(s), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs"
          + (f"; planted model's test AUC {bayes:.4f}" if bayes is not None else ""))  # fmt: skip
    print("| library | model | batch | samples/s | round min-max | test AUC | logloss | dcollapse x | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    fm_block: tuple[Contender, int] | None = None
    for model_name in models:
        for batch in map(int, batches):
            at_start = load()
            block = [contender(lib, meta, MODELS[model_name], args.emb_dim, args.lr, train_ids, test.ids)
                     for lib in libraries]  # fmt: skip
            train_interleaved(block, train_labels, batch, args.epochs, args.rounds, args.warmup)
            span = f"{at_start} -> {load()}"
            ours = block[0].rate
            for c in block:
                result = test_scores(c, test.labels)
                spread = f"{min(c.round_rates):,.0f}-{max(c.round_rates):,.0f}" if c.round_rates else "-"
                print(f"| {c.library} | {model_name} | {batch} | {c.rate:,.0f} | {spread} | {result['auc']:.4f} "
                      f"| {result['logloss']:.4f} | {ours / c.rate:.2f}x | {span} |", flush=True)  # fmt: skip
            if model_name == "FM" and fm_block is None:
                fm_block = (block[0], batch)
    if args.profile:
        if fm_block is None:
            parser.error("--profile profiles the FM step: include FM in --models")
        c, batch = fm_block
        fresh = contender(c.library, meta, [], args.emb_dim, args.lr, train_ids, test.ids)
        print(f"\n# torch.profiler: 20 {fresh.library} FM steps of batch {batch} after 5, load {load()}")
        print(profile_step(fresh, train_labels, batch, steps=20, warmup=5))


if __name__ == "__main__":
    main()
