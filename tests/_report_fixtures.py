"""Tiny synthetic datasets and checkpoints in the `dcollapse train` format, for the report tests.

The checkpoints are trained here by a short plain loop (a few seconds) so the report tests do not depend on the
training command's speed; they hold exactly the keys the model contract names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F_nn
from sklearn.metrics import log_loss, roc_auc_score

from dcollapse import checkpoint
from dcollapse.config import MODEL_DEFAULTS
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.data.synth import write_ctr_dataset
from dcollapse.metrics import collapse
from dcollapse.models import build_model

VOCAB = [12, 40, 7, 60, 25]


def make_dataset(directory: Path, rows: int = 2000, seed: int = 0, vocab: list[int] = VOCAB) -> Path:
    """A preprocessed synthetic dataset (train/valid/test) with one field per entry of ``vocab``."""
    write_ctr_dataset(directory, rows, len(vocab), seed, vocab_sizes=vocab)
    return directory


def _evaluate(model: torch.nn.Module, data: Path, split: str) -> tuple[float, float]:
    rows = load_split(data, split)
    with torch.no_grad():
        prob = torch.sigmoid(model(rows.ids)).double().numpy()
    labels = rows.labels.numpy()
    return float(roc_auc_score(labels, prob)), float(log_loss(labels, prob, labels=[0, 1]))


def make_run(data: Path, out: Path, model: str = "fm", arch: str = "none", epochs: int = 2, **config) -> Path:
    """Train a small model for a few epochs and save a checkpoint with history, test metrics and data path."""
    meta = load_meta(data)
    cfg = {**MODEL_DEFAULTS, "model": model, "arch": arch, "emb_dim": 8, "dnn": [16, 16], "seed": 0, **config}
    torch.manual_seed(cfg["seed"])
    net = build_model(cfg, meta)
    train = load_split(data, "train", meta)
    valid_ids = load_split(data, "valid", meta).ids
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(train))
        for lo in range(0, len(train), 256):
            idx = order[lo : lo + 256]
            loss = F_nn.binary_cross_entropy_with_logits(net(train.ids[idx]), train.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        auc, ll = _evaluate(net, data, "valid")
        field_ia = [f.spectrum.ia for f in collapse.model_field_spectra(net, meta)]
        rankme = collapse.batch_spectra(net, valid_ids).z.rankme
        history.append(
            {"epoch": epoch, "train_loss": loss.item(), "valid_auc": auc, "valid_logloss": ll, "seconds": 0.1,
             "samples_per_s": 1.0, "rankme": rankme, "field_ia": field_ia, "mean_ia": sum(field_ia) / len(field_ia)}
        )  # fmt: skip
    test_auc, test_ll = _evaluate(net, data, "test")
    test = {"auc": test_auc, "logloss": test_ll}
    checkpoint.save(out, checkpoint.ctr_run(cfg, meta, net.state_dict(), history, Path(data).resolve(), epochs, test))
    return out
