"""The spec's small CPU checks for richness (B.3.1, B.3.2) and the NFA (C.5.4) at full size, on scikit-learn's digits.

    python scripts/check_diagnostics.py            # prints one JSON document with every measured number

1. lazy vs rich: 2 hidden ReLU layers of width 512; standard training (rich) vs the output-scaled model
   f = alpha (net - net_init), alpha = 100 (lazy); centred and plain D_LR of the last hidden layer.
2. D_LR and NC1 over the rich run's epochs, with their Spearman rank correlation; and the same for a run trained
   to near-zero loss (cross-entropy, SGD with momentum 0.9, lr 0.1, 200 epochs), the setting spec B.3.2 assumes.
3. NFA: 3 hidden layers of width 512, Xavier gain 0.5, MSE; corr(W_l^T W_l, AGOP_l^{1/2}) per layer over training,
   and NC1 of every hidden layer at the end.
Deep RFM's checks are `dcollapse rfm` and `dcollapse rfm --no-agop`.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

from dcollapse.diagnostics.agop import agop, nfa_correlation
from dcollapse.diagnostics.neural_collapse import nc_stats
from dcollapse.diagnostics.richness import d_lr

SAMPLES = 1000


def mlp(width: int, depth: int, gain: float) -> nn.Sequential:
    torch.manual_seed(0)
    dims = [64] + [width] * depth
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    for module in net:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, gain=gain)
            nn.init.zeros_(module.bias)
    return net


def train(net, x, labels, epochs, lr, alpha=1.0, every=None, on_epoch=None, cross_entropy=False) -> float:
    """SGD on MSE to {-1, +1} one-hot targets (lazy model when alpha != 1), or on cross-entropy with momentum 0.9."""
    targets = nn.functional.one_hot(labels, 10).float() * 2 - 1
    initial = copy.deepcopy(net).requires_grad_(False)

    def model(inputs):
        return net(inputs) if alpha == 1.0 else alpha * (net(inputs) - initial(inputs))

    def objective(outputs, batch):
        if cross_entropy:
            return nn.functional.cross_entropy(outputs, labels[batch])
        return ((outputs - targets[batch]) ** 2).sum(1).mean() / alpha**2

    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9 if cross_entropy else 0.0)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            loss = objective(model(x[batch]), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if on_epoch is not None and epoch % every == 0:
            on_epoch(epoch)
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def last_layer(net, x):
    with torch.no_grad():
        features = net[:-1](x)
    return features, features @ net[-1].weight.T


def main() -> None:
    bunch = load_digits()
    x = torch.tensor(bunch.data[:SAMPLES] / 16.0, dtype=torch.float32)
    labels = torch.tensor(bunch.target[:SAMPLES])
    report: dict = {"samples": SAMPLES}

    def richness_row(net):
        features, outputs = last_layer(net, x)
        row = {"d_lr_centered": d_lr(features, outputs, centered=True), "d_lr": d_lr(features, outputs)}
        return row | {"nc1": nc_stats(features, labels).nc1}

    report["init"] = richness_row(mlp(512, 2, 1.0))
    rich, over_training = mlp(512, 2, 1.0), []
    over_training.append({"epoch": 0, **richness_row(rich)})

    def track(epoch: int) -> None:
        over_training.append({"epoch": epoch, **richness_row(rich)})

    accuracy = train(rich, x, labels, 60, 0.05, every=3, on_epoch=track)
    report["rich"] = {"train_accuracy": accuracy, "epochs": 60, **richness_row(rich)}
    lazy = mlp(512, 2, 1.0)
    accuracy = train(lazy, x, labels, 60, 0.05, alpha=100.0)
    report["lazy_alpha100"] = {"train_accuracy": accuracy, "epochs": 60, **richness_row(lazy)}
    rho = spearmanr([r["d_lr_centered"] for r in over_training], [r["nc1"] for r in over_training]).statistic
    report["over_training"] = {"rows": over_training, "spearman_d_lr_centered_vs_nc1": float(rho)}

    converged, ce_rows = mlp(512, 2, 1.0), []

    def track_ce(epoch: int) -> None:
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(converged(x), labels))
        ce_rows.append({"epoch": epoch, "loss": loss, **richness_row(converged)})

    track_ce(0)
    accuracy = train(converged, x, labels, 200, 0.1, every=10, on_epoch=track_ce, cross_entropy=True)
    rho = spearmanr([r["d_lr_centered"] for r in ce_rows], [r["nc1"] for r in ce_rows]).statistic
    report["over_training_cross_entropy"] = {
        "train_accuracy": accuracy,
        "rows": ce_rows,
        "spearman_d_lr_centered_vs_nc1": float(rho),
    }

    net = mlp(512, 3, 0.5)
    linears = [m for m in net if isinstance(m, nn.Linear)][:-1]
    nfa_rows = []

    def record(epoch):
        net.eval()
        corr = [nfa_correlation(layer.weight, agop(net, x, at=layer)).corr_sqrt_agop for layer in linears]
        nfa_rows.append({"epoch": epoch, "corr_sqrt_agop": corr})

    record(0)
    accuracy = train(net, x, labels, 30, 0.1, every=10, on_epoch=record)
    with torch.no_grad():
        hidden = [net[: 2 * (i + 1)](x) for i in range(len(linears))]
    report["nfa"] = {
        "train_accuracy": accuracy,
        "rows": nfa_rows,
        "hidden_nc1": [nc_stats(h, labels).nc1 for h in hidden],
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
