"""Training throughput (samples/s) of dcollapse models against a straightforward PyTorch implementation.

The baseline is what common CTR libraries do: one ``nn.Embedding`` per field, the id matrix split into per-field
columns, the interaction written in plain PyTorch. Both sides run the same math, BCE, batch and data; ours is a
``CTRModel`` (one concatenated table, ``dcollapse.kernels`` ops) with the optimizer of ``dcollapse.train``. The
variants per model:

- ours dense: the default, exact dense Adam over every table row (fused update);
- ours sparse: ``sparse_emb`` (``--sparse-emb``): sparse table gradients of the batch's unique rows, lazy Adam
  (``torch.optim.SparseAdam``) for the tables, fused dense Adam for the rest;
- ours fused: ``fused_update`` (``--fused-update``): the tables updated inside the backward, rows read only, by
  the kernels' lazy Adam (no table gradient, no optimizer pass over the tables), fused dense Adam for the rest;
- baseline dense: per-field ``nn.Embedding``, ``torch.optim.Adam`` with its defaults;
- baseline sparse: per-field ``nn.Embedding(sparse=True)``, ``SparseAdam`` for the tables, ``Adam`` for the rest;
- "+ compile": the same model under ``torch.compile`` (``--compile``; the optimizer step stays outside), timed
  after the warm-up steps that compile it. ``--no-compile`` leaves these out.

The variants are timed in ``--repeats`` interleaved rounds and each reports its fastest round (less exposed to
other jobs on a shared machine). A second table splits that round's steps into forward (with the loss), backward
and optimizer time.

For models with a DNN it also reports the MLP's achieved GFLOP/s (forward + backward of the hidden layers alone)
against plain ``torch.matmul`` on the same shapes (the practical ceiling on this machine).

    python scripts/bench_train.py                        # Criteo-shaped synthetic ids: 39 fields, emb 16, batch 4096
    python scripts/bench_train.py --data DIR --emb-dim 10 # any preprocessed dataset directory
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from dcollapse.config import full_config
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.models import build_model
from dcollapse.optim import SparseTableOptimizer, make_optimizer

MODELS = {
    "FM": {"model": "fm", "arch": "none"},
    "DeepFM": {"model": "fm", "arch": "parallel", "dnn": [400, 400, 400]},
    "DCNv2-stacked": {"model": "crossnet", "arch": "stacked", "dnn": [400, 400, 400], "cross_layers": 3},
}


class Baseline(nn.Module):
    """Per-field nn.Embedding modules + plain-PyTorch FM / DeepFM / DCNv2-stacked (paper-style heads)."""

    def __init__(self, config: dict, vocab_sizes: list[int], emb_dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.kind = (config["model"], config["arch"])
        self.embeddings = nn.ModuleList(nn.Embedding(v, emb_dim, sparse=sparse) for v in vocab_sizes)
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=1e-4)
        flat = len(vocab_sizes) * emb_dim
        widths = [flat, *config.get("dnn", [])]
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.cross = nn.ModuleList(nn.Linear(flat, flat) for _ in range(config.get("cross_layers", 0)))
        head_in = {("fm", "none"): emb_dim, ("fm", "parallel"): emb_dim + widths[-1]}.get(self.kind, widths[-1])
        self.head = nn.Linear(head_in, 1, bias=self.kind != ("fm", "none"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        E = torch.stack([emb(ids[:, f].long()) for f, emb in enumerate(self.embeddings)], dim=1)  # [B, F, d]
        if self.kind[0] == "fm":
            p = 0.5 * (E.sum(1) ** 2 - (E**2).sum(1))
            if self.kind[1] == "none":
                return p.sum(1)
            return self.head(torch.cat([p, self.mlp(E.flatten(1))], dim=1)).squeeze(-1)
        x0 = x = E.flatten(1)
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(self.mlp(x)).squeeze(-1)


def baseline_optimizer(model: Baseline, sparse: bool) -> torch.optim.Optimizer | SparseTableOptimizer:
    """``torch.optim.Adam`` (defaults) over everything, or SparseAdam for the per-field tables + Adam for the rest."""
    if not sparse:
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    tables = [emb.weight for emb in model.embeddings]
    others = [p for name, p in model.named_parameters() if not name.startswith("embeddings.")]
    return SparseTableOptimizer(torch.optim.SparseAdam(tables, lr=1e-3), torch.optim.Adam(others, lr=1e-3))


def timed_step(model, optimizer, ids: torch.Tensor, labels: torch.Tensor, phases: np.ndarray) -> float:
    """``dcollapse.train.train_step`` with the seconds of forward (+ loss), backward and optimizer added to
    ``phases`` [3]."""
    sync = torch.cuda.synchronize if ids.is_cuda else lambda: None  # device work is asynchronous
    sync()
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = functional.binary_cross_entropy_with_logits(model(ids), labels)
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    optimizer.step()
    value = loss.item()
    phases += (t1 - t0, t2 - t1, time.perf_counter() - t2)
    return value


def throughput(model, optimizer, ids, labels, batch: int, steps: int, warmup: int = 3) -> tuple[float, np.ndarray]:
    """(samples/s over ``steps`` consecutive batches after ``warmup`` steps, ms per step of forward, backward,
    optimizer)."""
    starts = [(i * batch) % (len(ids) - batch + 1) for i in range(warmup + steps)]
    phases = np.zeros(3)
    for s in starts[:warmup]:
        timed_step(model, optimizer, ids[s : s + batch], labels[s : s + batch], phases)
    phases[:] = 0
    begin = time.perf_counter()
    for s in starts[warmup:]:
        timed_step(model, optimizer, ids[s : s + batch], labels[s : s + batch], phases)
    return steps * batch / (time.perf_counter() - begin), phases / steps * 1e3


def timed(fn, repeats: int) -> float:
    fn()
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - begin) / repeats


def mlp_gflops(mlp: nn.Module, linears: list[nn.Linear], batch: int, repeats: int = 5) -> tuple[float, float]:
    """(achieved GFLOP/s of the MLP forward + backward, GFLOP/s of plain matmuls of the same shapes)."""
    flops = sum(3 * 2 * batch * lin.in_features * lin.out_features for lin in linears)
    x = torch.randn(batch, linears[0].in_features, requires_grad=True)

    def run_mlp() -> None:
        mlp(x).sum().backward()

    shapes = [(torch.randn(batch, lin.in_features), torch.randn(lin.out_features, lin.in_features)) for lin in linears]
    grads = [torch.randn(batch, lin.out_features) for lin in linears]

    def run_matmuls() -> None:
        for (a, w), g in zip(shapes, grads, strict=True):
            torch.matmul(a, w.t())  # forward
            torch.matmul(g, w)  # grad input
            torch.matmul(g.t(), a)  # grad weight

    return flops / timed(run_mlp, repeats) / 1e9, flops / timed(run_matmuls, repeats) / 1e9


def criteo_shaped(
    rows: int, fields: int, seed: int, table_rows: int | None = None
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """meta, ids [rows, fields], labels for Criteo-like vocabularies: 13 small binned numeric fields of 60 ids, then
    categorical ones of 10 to 200,000 ids, Zipf(1.2) ids. With ``table_rows`` the categorical fields share the rest
    of a table of that many rows equally, and each field's Zipf head is spread over it by a permutation, as hashed
    Criteo values are (for sweeps over the table size)."""
    rng = np.random.default_rng(seed)
    small, large = min(13, fields), max(fields - 13, 0)
    if table_rows is None:
        sizes = [60] * small + np.geomspace(10, 200_000, large).astype(int).tolist()
    else:
        sizes = [60] * small + [max(1, (table_rows - 60 * small) // max(large, 1))] * large
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    fields_meta = [
        {"name": f"c{i}", "kind": "categorical", "vocab_size": int(v), "offset": int(o)}
        for i, (v, o) in enumerate(zip(sizes, offsets, strict=True))
    ]
    head = [np.minimum(rng.zipf(1.2, rows) - 1, v - 1) for v in sizes]
    if table_rows is not None:
        head = [rng.permutation(v)[h] for v, h in zip(sizes, head, strict=True)]
    ids = np.stack(head, axis=1).astype(np.int32)
    labels = (rng.random(rows) < 0.25).astype(np.float32)
    return {"fields": fields_meta}, torch.from_numpy(ids), torch.from_numpy(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="preprocessed dataset directory (default: Criteo-shaped synthetic ids)")
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--emb-dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--repeats", type=int, default=3, help="timing rounds over the variants in turn; the best round counts"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--variants", default=None, help="comma list of the variants to time (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA runs the Triton kernels)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file (after each model)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    if args.data:
        meta = load_meta(args.data)
        split = load_split(args.data, "train", meta)
        ids, labels, source = split.ids, split.labels, args.data
    else:
        meta, ids, labels = criteo_shaped(args.rows, args.fields, 0)
        source = f"synthetic Criteo-shaped ids, {args.fields} fields"
    vocab = [f["vocab_size"] for f in meta["fields"]]
    ids, labels = ids.to(device), labels.to(device)
    batch = min(args.batch, len(ids))
    print(
        f"# {source}: {len(ids):,} rows, {len(vocab)} fields, {sum(vocab):,} table rows, emb {args.emb_dim}, "
        f"batch {batch}, {args.steps} steps, {args.threads} threads, torch {torch.__version__}, {device}"
    )
    variants = ["ours dense", "ours sparse", "ours fused", "baseline dense", "baseline sparse"]
    if not args.no_compile:
        variants += ["ours dense + compile", "ours sparse + compile", "baseline dense + compile"]
    if args.variants:
        variants = [v for v in variants if v in args.variants.split(",")]
        if "baseline dense" not in variants:
            parser.error("--variants must include 'baseline dense' (the ratios divide by it)")
    columns = ["samples/s", "vs baseline dense", "vs baseline, same variant", "MLP GFLOP/s", "matmul GFLOP/s"]
    print("| model | variant | " + " | ".join(columns) + " |")
    print("|---" * 7 + "|")
    breakdown, results = [], []
    for name in args.models.split(","):
        runs = {}
        for variant in variants:
            sparse = "sparse" in variant
            config = full_config(
                {
                    **MODELS[name],
                    "emb_dim": args.emb_dim,
                    "lr": 1e-3,
                    "optimizer": "adam",
                    "l2_emb": 0.0,
                    "sparse_emb": sparse,
                    "fused_update": variant == "ours fused",
                }
            )
            torch.manual_seed(0)
            if variant.startswith("ours"):
                model = build_model(config, meta).to(device)
                optimizer = make_optimizer(model, config)
            else:
                model = Baseline(config, vocab, args.emb_dim, sparse).to(device)
                optimizer = baseline_optimizer(model, sparse)
            runs[variant] = (torch.compile(model) if variant.endswith("compile") else model, optimizer)
        ours = runs[next(v for v in variants if v.startswith("ours"))][0]
        best = {}  # variant -> (samples/s, phases) of its fastest round; rounds interleave the variants
        for _ in range(args.repeats):
            for variant, (model, optimizer) in runs.items():
                rate, phases = throughput(model, optimizer, ids, labels, batch, args.steps)
                best[variant] = max(best.get(variant, (0.0, None)), (rate, phases), key=lambda run: run[0])
        rates = {variant: rate for variant, (rate, _) in best.items()}
        breakdown += [(name, variant, *phases) for variant, (_, phases) in best.items()]
        gflops = ("-", "-")
        if ours.mlp is not None and device.type == "cpu":
            achieved, ceiling = mlp_gflops(ours.mlp, ours.mlp_linears(), batch)
            gflops = (f"{achieved:.1f}", f"{ceiling:.1f}")
        for variant in variants:
            twin = variant.replace("ours", "baseline")
            same = f"{rates[variant] / rates[twin]:.2f}x" if variant.startswith("ours") and twin in rates else "-"
            print(f"| {name} | {variant} | {rates[variant]:,.0f} | {rates[variant] / rates['baseline dense']:.2f}x "
                  f"| {same} | {gflops[0]} | {gflops[1]} |", flush=True)  # fmt: skip
            results.append({"model": name, "variant": variant, "samples_per_s": rates[variant], "device": str(device),
                            "batch": batch, "emb_dim": args.emb_dim, "table_rows": sum(vocab)})  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print("| model | variant | forward ms | backward ms | optimizer ms | step ms |")
    print("|---|---|---|---|---|---|")
    for name, variant, forward, backward, optimizer in breakdown:
        total = forward + backward + optimizer
        print(f"| {name} | {variant} | {forward:.1f} | {backward:.1f} | {optimizer:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
