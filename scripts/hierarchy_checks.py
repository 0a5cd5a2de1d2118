"""Spec checks A.7.3-4 for the Sparse Random Hierarchy Model (slow; not a test).

For each s0: generate SRHM(v = m = n_c, s, L) data, train one CNN (or LCN) per training-set size, and record
test error, the measured P* (50 % test error) against the predicted (s0+1)^2 n_c m^L (CNN) or
(s0+1)^L n_c m^L (LCN), and the per-layer sensitivities at initialisation, at the smallest and at the
largest P. Writes one JSON document (--out) and prints a short summary.

    python scripts/hierarchy_checks.py --s0 0,1,2 --width 64 --out hierarchy_checks.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from dcollapse.hierarchy.curve import crossing, learning_curve
from dcollapse.hierarchy.generator import predicted_sample_complexity, sample, sample_grammar, save_data
from dcollapse.hierarchy.sensitivity import measure
from dcollapse.hierarchy.train import TrainConfig, build_model

DEFAULT_SIZES = {0: "50,100,200,300,400,600,800", 1: "100,300,600,1000,3000,6000", 2: "300,1000,2000,3000,6000"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--s0", default="0,1,2", help="comma-separated s0 values")
    ap.add_argument("--vocab", type=int, default=6, help="v = m = n_c")
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=40, help="minimum epochs per run")
    ap.add_argument("--min-steps", type=int, default=3000, help="raise the epochs of small P to this many SGD steps")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument("--sizes", action="append", default=[], help="S0:P1,P2,... (overrides the default grid)")
    ap.add_argument("--samples", type=int, default=300, help="samples for the sensitivity measure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grids = {**DEFAULT_SIZES, **{int(k): v for k, v in (s.split(":") for s in args.sizes)}}
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    v = args.vocab
    for s0 in (int(x) for x in args.s0.split(",")):
        sizes = [int(x) for x in grids[s0].split(",")]
        grammar = sample_grammar(args.levels, args.patch, s0, v, v, v, "A", seed=0)
        total = min(max(sizes) + args.test_size, grammar.max_distinct())
        config = TrainConfig(
            arch=args.arch, width=args.width, train_size=1, test_size=total - max(sizes), epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=0,
        )  # fmt: skip
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            symbols, labels = sample(grammar, total, seed=1)
            save_data(Path(tmp) / "data", grammar, symbols, labels, encoding="all0", whitening=True, sample_seed=1)
            init = measure(build_model(config, grammar, "all0").eval(), grammar, "all0", True, args.samples, seed=1)

            def show(p, s0=s0):
                print(
                    f"s0={s0} P={p.train_size}: {p.epochs} ep ({p.stopped}) test err {p.test_error:.3f} "
                    f"S_L(1) syn {p.last_hidden('synonyms'):.3f} pos {p.last_hidden('positions'):.3f}",
                    flush=True,
                )

            points = []
            for size in sizes:  # small P gets more epochs: every run makes at least --min-steps SGD steps
                epochs = min(args.max_epochs, max(args.epochs, math.ceil(args.min_steps * args.batch_size / size)))
                sized = replace(config, epochs=epochs)
                points += learning_curve(Path(tmp) / "data", sized, [size], args.samples, on_point=show)[0]
        summary = {
            "arch": args.arch,
            "s0": s0,
            "p_star": crossing([p.train_size for p in points], [p.test_error for p in points]),
            "predicted": predicted_sample_complexity(grammar, args.arch),
            "seconds": time.perf_counter() - start,
        }
        summary["test_size"] = config.test_size
        report["runs"].append({**summary, "init": asdict(init), "points": [asdict(p) for p in points]})
        print(f"s0={s0}: measured P* {summary['p_star']}, predicted (no prefactor) {summary['predicted']}", flush=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
