"""Shared by the AGOP/NFA/NC and richness tests: small MLPs on scikit-learn's bundled digits, tiny CTR checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from _ctr_fixtures import write_dataset
from sklearn.datasets import load_digits
from torch import nn

from dcollapse.train import train

VOCAB = [6, 5, 4, 7]


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(X float32 [n, 64] in [0, 1], labels int64 [n]): the first n of scikit-learn's 8x8 digits."""
    bunch = load_digits()
    return torch.tensor(bunch.data[:n] / 16.0, dtype=torch.float32), torch.tensor(bunch.target[:n])


def mlp(width: int, depth: int, *, gain: float = 1.0, seed: int = 0) -> nn.Sequential:
    """ReLU MLP 64 -> width x depth -> 10 with Xavier-uniform weights of the given gain and zero biases."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dim = 64
    for _ in range(depth):
        layers += [nn.Linear(dim, width), nn.ReLU()]
        dim = width
    layers.append(nn.Linear(dim, 10))
    net = nn.Sequential(*layers)
    for module in net:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, gain=gain)
            nn.init.zeros_(module.bias)
    return net


def train_mse(
    net: nn.Sequential,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    alpha: float = 1.0,
    batch_size: int = 32,
    on_epoch: Callable[[int, nn.Sequential], None] | None = None,
) -> float:
    """SGD on MSE to {-1, +1} one-hot targets; returns train accuracy.

    ``alpha != 1`` trains the lazy (Chizat et al.) model f = alpha * (net - net_at_init) with loss / alpha^2.
    ``on_epoch(epoch, net)`` runs after every epoch (1-based).
    """
    targets = nn.functional.one_hot(labels, 10).float() * 2 - 1
    initial = copy.deepcopy(net).requires_grad_(False)

    def model(inputs: torch.Tensor) -> torch.Tensor:
        return net(inputs) if alpha == 1.0 else alpha * (net(inputs) - initial(inputs))

    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            loss = ((model(x[batch]) - targets[batch]) ** 2).sum(1).mean() / alpha**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch, net)
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def ctr_checkpoint(root: Path, name: str, *, epochs: int = 2, save_every_epoch: bool = False, **config) -> Path:
    """Train a tiny CTR model (emb 4, DNN 8-8) on a planted-interaction dataset under ``root/data`` (written once);
    returns the checkpoint path ``root/name.pt``."""
    data = root / "data"
    if not (data / "meta.json").exists():
        write_dataset(data, VOCAB, {"train": 1200, "valid": 400})
    settings = {"emb_dim": 4, "dnn": [8, 8], "batch_size": 256, "lr": 0.01, "patience": 0, "epochs": epochs}
    out = root / f"{name}.pt"
    train(data, settings | config, out, save_every_epoch=save_every_epoch)
    return out
