"""The per-epoch collapse snapshot's cost against the training epoch it follows, as ``dcollapse train`` runs them.

Each round trains one epoch (``dcollapse.train.train_epoch``, the model and optimizer of ``dcollapse train``) and
then times :func:`dcollapse.evaluation.collapse_snapshot` on the fixed validation batch, twice, and its parts: the probe
batch's embedding, RankMe's spectrum of Z [B, F*d] and the per-field spectra of the table. Rounds alternate, so both
see the same load; every row prints the 1-minute load average. Ratios are snapshot / epoch seconds.

    dcollapse synth ctr --out data/ctr1m --rows 1000000 --fields 39 --vocab 100000 --preprocessed
    python scripts/bench_snapshot.py data/ctr1m --threads 1 --fused-update
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dcollapse.config import full_config
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.evaluation import EVAL_BATCH, collapse_snapshot, snapshot_rows
from dcollapse.metrics.spectrum import field_singular_values, singular_values
from dcollapse.models import build_model
from dcollapse.optim import make_optimizer
from dcollapse.train import seed_epoch, train_epoch


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="preprocessed dataset directory")
    parser.add_argument("--model", default="fm")
    parser.add_argument("--arch", default="none")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--snapshot-rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fused-update", action="store_true", help="train with --fused-update")
    parser.add_argument("--sparse-emb", action="store_true", help="train with --sparse-emb")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = full_config({
        "model": args.model, "arch": args.arch, "batch_size": args.batch_size, "device": "cpu",
        "fused_update": args.fused_update, "sparse_emb": args.sparse_emb,
    })  # fmt: skip
    meta = load_meta(args.data)
    train, valid = load_split(args.data, "train", meta), load_split(args.data, "valid", meta)
    probe = snapshot_rows(valid, args.snapshot_rows)
    torch.manual_seed(0)
    model = build_model(config, meta)
    optimizer = make_optimizer(model, config)
    steps = -(-len(train) // args.batch_size)
    table, offsets = model.embedding.table, model.embedding.offsets
    print(f"{len(train):,} train rows, table {tuple(table.shape)}, probe {tuple(probe.ids.shape)}, "
          f"{args.threads} thread(s), config {config['model']}/{config['arch']} batch {args.batch_size}"
          f"{' fused-update' if args.fused_update else ''}{' sparse-emb' if args.sparse_emb else ''}")  # fmt: skip
    print("round | load | epoch s | snapshot s | ratio | snapshot again s | embed s | RankMe spectrum s | "
          "field spectra s")  # fmt: skip
    for epoch in range(1, args.rounds + 1):
        load = os.getloadavg()[0]
        epoch_s = seconds(lambda e=epoch: train_epoch(model, optimizer, [train], args.batch_size,
                                                      seed_epoch(0, e), e, steps))  # fmt: skip
        model.eval()  # as train() leaves it: the valid evaluation runs between the epoch and the snapshot
        snapshot_s = seconds(lambda: collapse_snapshot(model, probe))
        again_s = seconds(lambda: collapse_snapshot(model, probe))
        with torch.no_grad():
            start = time.perf_counter()
            E = torch.cat([model.embed(probe.ids[i : i + EVAL_BATCH]) for i in range(0, len(probe), EVAL_BATCH)])
            embed_s = time.perf_counter() - start
            rankme_s = seconds(lambda z=E.flatten(1): singular_values(z))
            field_s = seconds(lambda: field_singular_values(table, offsets))
        print(f"{epoch} | {load:.1f} | {epoch_s:.2f} | {snapshot_s:.3f} | {snapshot_s / epoch_s:.1%} | {again_s:.3f} | "
              f"{embed_s:.3f} | {rankme_s:.3f} | {field_s:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
