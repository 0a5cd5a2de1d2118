"""Small CPU checks of the Harsanyi AND-OR interaction diagnostics on a tabular MLP (10 input features).

    python scripts/interactions_checks.py sparsity      # salient share after sparse AND-OR extraction
    python scripts/interactions_checks.py two-phase     # order distribution over training, with label noise

Task: x ~ N(0, I_10); logit = 1.5 x0 x1 - x2 + 0.8 x3 x4 x5 + 0.5 x6 - 0.7 x7 x8 (x9 is irrelevant); labels drawn
from sigmoid(2 logit), then a fraction flipped (label noise). Players = the 10 features; masked features take their
training mean; v = the log-odds of the observed label. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn import functional

from dcollapse.diagnostics import harsanyi as H

N_FEATURES = 10


def make_task(rows: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [rows, 10], labels float [rows] in {0, 1}."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, N_FEATURES, generator=gen)
    logit = 1.5 * x[:, 0] * x[:, 1] - x[:, 2] + 0.8 * x[:, 3] * x[:, 4] * x[:, 5]
    logit = logit + 0.5 * x[:, 6] - 0.7 * x[:, 7] * x[:, 8]
    y = (torch.rand(rows, generator=gen) < torch.sigmoid(2 * logit)).float()
    flip = torch.rand(rows, generator=gen) < noise
    return x, torch.where(flip, 1 - y, y)


def make_mlp(seed: int, width: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )  # fmt: skip


def interactions(mlp, x, y, baseline, sparse: bool, niter: int) -> H.AndOr:
    """AND-OR interactions of the MLP's sign-adjusted logit on samples x [S, 10] (features masked to ``baseline``)."""
    sign = (2 * y.double() - 1)[None, :]

    def value(mask: torch.Tensor) -> torch.Tensor:
        inputs = torch.where(mask[:, None, :], x[None], baseline)  # [M, S, 10]
        return mlp(inputs.reshape(-1, N_FEATURES)).reshape(mask.shape[0], -1).double() * sign

    values = H.masked_outputs(value, N_FEATURES)
    return H.sparse_and_or(values, niter=niter) if sparse else H.harsanyi(values)


def losses(mlp, x, y) -> float:
    with torch.no_grad():
        return float(functional.binary_cross_entropy_with_logits(mlp(x).squeeze(-1), y))


def fit_epoch(mlp, optimizer, x, y, batch: int, gen: torch.Generator) -> None:
    for idx in torch.randperm(x.shape[0], generator=gen).split(batch):
        optimizer.zero_grad()
        functional.binary_cross_entropy_with_logits(mlp(x[idx]).squeeze(-1), y[idx]).backward()
        optimizer.step()


def sparsity(args) -> dict:
    x, y = make_task(args.rows + 2000, args.noise, args.seed)
    xtr, ytr, xte, yte = x[: args.rows], y[: args.rows], x[args.rows :], y[args.rows :]
    mlp = make_mlp(args.seed, args.width)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        fit_epoch(mlp, optimizer, xtr, ytr, 64, gen)
    start = time.perf_counter()
    dense = interactions(mlp, xte[: args.samples], yte[: args.samples], xtr.mean(0), False, 0)
    sparse = interactions(mlp, xte[: args.samples], yte[: args.samples], xtr.mean(0), True, args.niter)
    return {
        "check": "sparsity",
        "settings": vars(args),
        "train_loss": losses(mlp, xtr, ytr),
        "test_loss": losses(mlp, xte, yte),
        "patterns": 2 ** (N_FEATURES + 1) - 2,
        "salient_fraction_and_only": H.salient_fraction(dense),
        "salient_fraction_sparse": H.salient_fraction(sparse),
        "l1_and_only": float(dense.strengths().sum(0).mean()),
        "l1_sparse": float(sparse.strengths().sum(0).mean()),
        "max_matching_error": float((sparse.reconstruct() - sparse.values - sparse.q).abs().max()),
        "top": [vars(t) for t in H.top_interactions(sparse, 8)],
        "seconds": time.perf_counter() - start,
    }


def two_phase(args) -> dict:
    x, y = make_task(args.rows + 4000, args.noise, args.seed)
    xtr, ytr, xte, yte = x[: args.rows], y[: args.rows], x[args.rows :], y[args.rows :]
    mlp = make_mlp(args.seed, args.width)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    probe = torch.arange(args.samples)  # fixed training samples
    epochs, dists, history = [], [], []
    for epoch in range(args.epochs + 1):
        if epoch:
            fit_epoch(mlp, optimizer, xtr, ytr, 64, gen)
        history.append({"epoch": epoch, "train_loss": losses(mlp, xtr, ytr), "valid_logloss": losses(mlp, xte, yte)})
        if epoch % args.every == 0:
            result = interactions(mlp, xtr[probe], ytr[probe], xtr.mean(0), not args.and_only, args.niter)
            epochs.append(epoch)
            dists.append(H.order_distribution(result))
    phase = H.detect_two_phase(epochs, dists)
    gap = H.loss_gap(history)
    return {
        "check": "two-phase",
        "settings": vars(args),
        "epochs": epochs,
        "strength_by_order": [[round(s, 4) for s in d.strength] for d in dists],
        "mean_order": [round(d.mean_order(), 3) for d in dists],
        "phase": vars(phase),
        "loss_gap": vars(gap),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["sparsity", "two-phase"])
    parser.add_argument("--rows", type=int, default=None, help="training rows (sparsity 5000, two-phase 1000)")
    parser.add_argument("--noise", type=float, default=None, help="label flip rate (sparsity 0, two-phase 0.2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (sparsity 30, two-phase 40)")
    parser.add_argument("--every", type=int, default=2, help="two-phase: analyse every k-th epoch")
    parser.add_argument("--lr", type=float, default=3e-4, help="two-phase: Adam learning rate")
    parser.add_argument("--width", type=int, default=128, help="MLP hidden width (two hidden layers)")
    parser.add_argument("--samples", type=int, default=16, help="samples whose interactions are averaged")
    parser.add_argument("--niter", type=int, default=5000, help="sparse extraction steps")
    parser.add_argument("--and-only", action="store_true", help="two-phase: AND-only Harsanyi, no extraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sparse_check = args.check == "sparsity"
    args.rows = args.rows or (5000 if sparse_check else 1000)
    args.noise = args.noise if args.noise is not None else (0.0 if sparse_check else 0.2)
    args.epochs = args.epochs or (30 if sparse_check else 40)
    print(json.dumps(sparsity(args) if sparse_check else two_phase(args), indent=1))


if __name__ == "__main__":
    main()
