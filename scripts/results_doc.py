"""docs/results.md from the finished sweeps of scripts/run_experiment.py (tables, plots, claim checks)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dcollapse import plots, sweep
from dcollapse.data.dataset import field_offsets, load_meta, load_split
from dcollapse.metrics.spectrum import rankme, singular_values
from dcollapse.models import build_model
from dcollapse.reports import verdict

VARIANT = {"none": "base", "parallel": "+p-DNN", "stacked": "+s-DNN"}
BACKBONE = {"fm": "FM", "crossnet": "CrossNet"}
# The grid entries with a DNN, as columns of the claims table (the -relu entries exist in the paper recipe only).
CLAIM_ENTRIES = ("fm-parallel", "fm-stacked", "crossnet-parallel", "crossnet-stacked", "crossnet-parallel-relu",
                 "crossnet-stacked-relu")  # fmt: skip
DATASET_NOTES = {
    "criteo": "the 10,000-row Criteo Display Advertising sample (train file 8,000 rows, test file 2,000 rows;"
    " validation carved from train), numeric fields binned `int(ln(v)^2)`, categorical min count 2.",
    "criteo-scalar": "the same rows and splits, the 13 numeric fields as the paper's code embeds them: one learned"
    " vector per field times the value (`--numeric-as scalar`: log1p, min-max scaled on train, 1000 levels).",
    "movielens": "MovieLens-100K ratings as clicks (rating >= 4), user/item/age/gender/occupation/zip/genre/"
    "release year/hour fields, random 80/10/10 split.",
    "synth": "`dcollapse synth ctr` (12 fields, Zipf values, vocabularies 10-1000, planted rank-4 pairwise"
    " interactions and a first-order part), 30,000 rows split 80/10/10.",
    "ipinyou": "the iPinYou RTB sample (libFM, 16 fields named from `featindex.fm.txt`), both files pooled"
    " (47,923 rows, 305 clicks) and split at random 60/15/25: the test file is another slice of the logs whose"
    " values of several fields never occur in the train file; few clicks, so test AUC is noisy.",
}
RECIPE_ROWS = (  # (what, config key, how a value reads)
    ("initialisation of the Linear layers", "init", {"torch": "torch default (Kaiming uniform)",
                                                      "xavier": "xavier_normal_, zero bias"}),
    ("learning rate after an epoch without improvement", "lr_decay", None),
    ("gradient-norm clipping", "clip_norm", None),
    ("L2 on the embeddings, FM / CrossNet", "l2_emb", None),
    ("CrossNet's DNN activation", "activation", None),
)  # fmt: skip


def load_sweep(directory: Path, title: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """(summary, per-run results by run name, summary Markdown) of a finished sweep, summarised afresh from the
    per-run result files in the grid order of its summary.json (plus the failures recorded there)."""
    recorded = json.loads((directory / "summary.json").read_text())
    runs = {}
    for group in recorded["groups"]:  # the seeds kept in the means, then the runs left out of them
        names = [sweep.run_name(group["group"], seed) for seed in group["seeds"]]
        for name in names + [ex["name"] for ex in group.get("excluded", [])]:
            result = json.loads((directory / f"{name}.json").read_text())
            runs[result["name"]] = result
    failed = [{**f, "status": "failed", "group": f["name"].rsplit("-s", 1)[0]} for f in recorded["failed"]]
    summary = sweep.summarize([*runs.values(), *failed])
    return summary, runs, sweep.summary_markdown(summary, title)


def first_order_auc(data_dir: Path) -> float:
    """Test AUC of a logistic regression on the one-hot ids (first order only: no feature interactions)."""
    meta = load_meta(data_dir)
    offsets = field_offsets(meta).numpy()
    width = int(sum(f["vocab_size"] for f in meta["fields"]))

    def one_hot(split: str) -> tuple[sparse.csr_matrix, np.ndarray]:
        rows = load_split(data_dir, split, meta)
        cols = (rows.ids.numpy().astype(np.int64) + offsets).ravel()
        n, f = rows.ids.shape
        x = sparse.csr_matrix((np.ones(n * f), (np.repeat(np.arange(n), f), cols)), shape=(n, width))
        return x, rows.labels.numpy()

    (x, y), (xt, yt) = one_hot("train"), one_hot("test")
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    return float(roc_auc_score(yt, model.predict_proba(xt)[:, 1]))


def bayes_auc(data_dir: Path) -> float | None:
    """Test AUC of the true click probability, for synthetic data with a planted model (else None)."""
    truth = data_dir / "truth.parquet"
    if not truth.is_file():
        return None
    prob = pl.read_parquet(truth).filter(pl.col("split") == "test")["prob"].to_numpy()
    return float(roc_auc_score(load_split(data_dir, "test").labels.numpy(), prob))


def paired(runs: dict[str, dict[str, Any]], group: str, reference: str, key: str, relative: bool) -> list[float]:
    """Per seed: run of ``group`` vs run of ``reference`` with the same seed (ratio - 1 or difference)."""
    values = []
    for result in runs.values():
        if result["group"] != group:
            continue
        other = runs.get(sweep.run_name(reference, result["seed"]))
        if other is None:
            continue
        values.append(result[key] / other[key] - 1.0 if relative else result[key] - other[key])
    return values


def fmt_pm(values: list[float], spec: str = "+.1f", scale: float = 100.0, unit: str = "%") -> str:
    if not values:
        return "—"
    v = np.array(values) * scale
    text = f"{v.mean():{spec}}{unit}"
    return text + (f" ± {v.std(ddof=1):{spec.lstrip('+')}}{unit}" if v.size > 1 else "")


def init_rankme(data_dir: Path, config: dict[str, Any], seeds: int) -> list[float]:
    """RankMe of Z on the fixed validation batch for the untrained model (the weights training starts from)."""
    meta, ids = load_meta(data_dir), sweep.fixed_batch_ids(data_dir)
    values = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model({**config, "seed": seed}, meta)
        with torch.no_grad():
            values.append(rankme(singular_values(model.embed(ids).flatten(1))))
    return values


def spectrum_reach(spectrum: list[float], level: float = 1e-2) -> int:
    """How many normalized cov(Z) eigenvalues are at least ``level``."""
    return int(sum(v >= level for v in spectrum))


def ablation_section(name: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """RankMe and AUC of each DNN part switched alone, relative to the reference DNN (same backbone, arch, seed)."""
    cells = [(m, a) for m in ("fm", "crossnet") for a in ("parallel", "stacked")]
    header = " | ".join(f"{BACKBONE[m]} {VARIANT[a]}" for m, a in cells)
    lines = [f"**{name}**: RankMe change (AUC change) of one DNN part switched, against the reference DNN", ""]
    lines += [f"| switch | {header} |", "|---|" + "---:|" * len(cells)]
    lines.append(
        "| reference DNN vs no DNN | "
        + " | ".join(
            f"{fmt_pm(paired(runs, f'{m}-{a}', f'{m}-none', 'rankme', True))} "
            f"({fmt_pm(paired(runs, f'{m}-{a}', f'{m}-none', 'auc', False), '+.4f', 1.0, '')})"
            for m, a in cells
        )
        + " |"
    )
    for variant, change in sweep.ABLATIONS.items():
        row = []
        for m, a in cells:
            group, ref = f"{m}-{a}-{variant}", f"{m}-{a}"
            rk = fmt_pm(paired(runs, group, ref, "rankme", True))
            auc = fmt_pm(paired(runs, group, ref, "auc", False), "+.4f", 1.0, "")
            row.append(f"{rk} ({auc})")
        lines.append(f"| {variant} ({', '.join(f'{k}={v}' for k, v in change.items())}) | " + " | ".join(row) + " |")
    return [*lines, ""]


def claim_cell(row: dict[str, Any] | None) -> str:
    """A claims-table cell: state, seed-paired Δ RankMe with its t interval, seeds up."""
    if row is None:
        return ""
    n, change, interval = row["paired_seeds"], row["rankme_change"], row["rankme_change_interval"]
    if not n:
        return "not judged (no readable pair)"
    text = f"**{row['claim']}** {change['mean']:+.0%}"
    if interval is not None:
        text += f" [{interval[0]:+.0%}, {interval[1]:+.0%}]"
    return text + f", up {row['rankme_up_seeds']}/{n}"


def curves_figure(runs: dict[str, dict[str, Any]], model: str, path: Path, title: str) -> bool:
    """RankMe per epoch of every grid entry of backbone ``model``: the mean over its seeds at the epochs all of them
    ran (one line per entry); False if there is none."""
    by_group: dict[str, list[list[float]]] = {}
    for r in runs.values():
        if r["config"]["model"] == model and r.get("history"):
            by_group.setdefault(r["group"], []).append([h["rankme"] for h in r["history"]])
    series = {}
    for group, curves in by_group.items():
        common = min(len(c) for c in curves)
        label = f"{group} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        series[label] = (list(range(1, common + 1)), np.mean([c[:common] for c in curves], axis=0).tolist())
    if not series:
        return False
    plots.line_plot(series, path, title, "epoch", "RankMe of Z (fixed validation batch), mean over seeds")
    return True


def recipe_value(config: dict[str, Any], key: str, names: dict[str, str] | None) -> str:
    value = config.get(key)
    if names is not None:
        return names.get(str(value), str(value))
    if key == "lr_decay":
        return "x0.1 (FuxiCTR's reduce_lr_on_plateau)" if value and value < 1 else "unchanged"
    if key == "clip_norm":
        return f"at norm {value:g}" if value else "none"
    return str(value)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def write_results(
    root: Path,
    work: Path,
    docs: Path,
    img: Path,
    sweeps: list[tuple[str, str, str, str]],
    timing: dict[str, Any],
    machine: str,
) -> Path:
    """Write ``docs/results.md`` (and its figures in ``docs/img``) from the finished sweeps of
    ``sweeps`` [(dataset, grid, recipe, command)]; ``timing`` holds each sweep's start, end and load average."""
    (root / img).mkdir(parents=True, exist_ok=True)
    loaded: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, dict[str, Any]], str]] = {}
    for dataset, grid, recipe, _ in sweeps:
        directory = root / work / f"{dataset}-{grid}-{recipe}"
        if (directory / "summary.json").is_file():
            loaded[(dataset, grid, recipe)] = load_sweep(directory, f"{grid} grid, {recipe} recipe, {dataset}")
    datasets = [d for d in dict.fromkeys(d for d, _, _, _ in sweeps) if (root / work / "data" / d).is_dir()]
    metas = {d: load_meta(root / work / "data" / d) for d in datasets}
    done = timing.get("sweeps", {})
    distinct = {(d, r["config"]["recipe"], name): r for (d, _, _), (_, runs, _) in loaded.items()
                for name, r in runs.items()}  # fmt: skip
    spans = [(done[name]["started"], done[name]["ended"]) for name in done]
    wall, reached = 0.0, -math.inf  # the time in which some sweep ran (the union of their intervals)
    for start, end in sorted(spans):
        wall += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    at_once = max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0)
    loads = [v for name in done for v in (done[name]["load_start"], done[name]["load_end"])]
    commits = sorted({done[name]["commit"] for name in done})
    missing = [f"{d}-{g}-{r}" for d, g, r, _ in sweeps if (d, g, r) not in loaded]

    s = sweep.SCALED_SETTINGS
    lines = [
        "# Do parallel and stacked DNNs mitigate dimensional collapse? Results on small samples",
        "",
        "Reproduction, in direction rather than absolute value, of Table 1 of *Understanding DNNs in Feature",
        "Interaction Models: A Dimensional Collapse Perspective* (FM and CrossNet, each without a DNN, with a parallel",
        "DNN and with a stacked DNN) on a Criteo sample (numeric fields binned, and as the paper embeds them),",
        "MovieLens-100K, the iPinYou sample and a synthetic dataset with planted low-rank interactions, each with",
        "two training recipes: dcollapse's default and the paper's code's (`--recipe paper`). Everything here is",
        "regenerated by `scripts/run_experiment.py` (the commands are listed below).",
        "",
        f"Machine: {machine}. {len(distinct)} training runs, {sum(r['seconds'] for r in distinct.values()) / 60:.0f}"
        f" min of run time summed over runs; the sweeps ran side by side (up to {at_once} at a time, one torch thread"
        f" each), {minutes(wall)} of wall time in which some sweep ran, load average"
        f" {min(loads, default=0):.1f}-{max(loads, default=0):.1f} (the 2 cores were shared with other jobs, so"
        f" the per-run times include contention). Code at commit{'s' if len(commits) > 1 else ''}"
        f" {', '.join(commits) or 'unknown'}.",
        "",
    ]
    if missing:
        lines += [f"Not run (no finished sweep): {', '.join(missing)}.", ""]
    lines += [
        "## Data",
        "",
        "| dataset | fields | train / valid / test rows | positive rate (train) | first-order LR test AUC |"
        " Bayes-optimal test AUC |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for d, meta in metas.items():
        sp = meta["splits"]
        rows = " / ".join(f"{sp[k]['rows']:,}" for k in ("train", "valid", "test") if k in sp)
        rate = sp["train"]["positives"] / max(sp["train"]["rows"], 1)
        bayes = bayes_auc(root / work / "data" / d)
        bayes_text = "—" if bayes is None else f"{bayes:.4f}"
        lr = first_order_auc(root / work / "data" / d)
        lines.append(f"| {d} | {len(meta['fields'])} | {rows} | {rate:.3f} | {lr:.4f} | {bayes_text} |")
    lines += [""] + [f"- {d}: {DATASET_NOTES[d]}" for d in metas if d in DATASET_NOTES] + [""]

    configs = {recipe: next(iter(runs.values()))["config"] for (_, _, recipe), (_, runs, _) in loaded.items()}
    by_model = {
        (recipe, r["config"]["model"]): r["config"] for (_, _, recipe), (_, runs, _) in loaded.items()
        for r in runs.values() if r["config"]["arch"] != "none" and not r["group"].endswith("-relu")
    }  # fmt: skip
    lines += [
        "## Settings: the two recipes",
        "",
        f"Both: embedding size {s['emb_dim']} (the paper's Criteo setting); {s['cross_layers']} full-rank cross"
        f" layers; DNN {'-'.join(map(str, s['dnn']))} (dropout {s['dropout']}, no norm) for both the parallel and"
        " the stacked DNN: the paper's [400-500]x3 MLPs have ~0.5M weights against 7,000-80,000 training rows here,",
        f"so the width is halved and the depth kept. Adam, lr {s['lr']:g}, batch {s['batch_size']} (the paper's"
        " 4096 would leave a 7,200-row training split 2 steps per epoch), at most"
        f" {s['epochs']} epochs with early stopping on validation AUC, patience {s['patience']}; the best epoch's"
        " weights are evaluated. Paper-style heads (`--style paper`: FM logit = sum of the bi-interaction vector,"
        " no first-order term; DeepFM/NFM/DCNv2 heads as in the paper's code). Seeds 0..N-1. RankMe is measured on"
        " Z = the flattened field embeddings [B, F*d] of the whole validation split (fewer than the paper's"
        " 50,000 rows). AUC and logloss are on the test split.",
        "",
        "| | " + " | ".join(f"`--recipe {r}`" for r in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for what, key, names in RECIPE_ROWS:
        if key == "l2_emb":
            cells = [" / ".join(f"{by_model[(r, m)]['l2_emb']:g}" for m in ("fm", "crossnet") if (r, m) in by_model)
                     for r in configs]  # fmt: skip
        elif key == "activation":
            cells = [recipe_value(by_model[(r, "crossnet")], key, None) if (r, "crossnet") in by_model else "—"
                     for r in configs]  # fmt: skip
        else:
            cells = [recipe_value(c, key, names) for c in configs.values()]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper recipe also runs CrossNet with ReLU DNNs (`crossnet-parallel-relu`, `crossnet-stacked-relu`)"
        " beside its linear ones. The paper's FM configs set a regularizer key its FM class does not read, so the"
        " paper recipe's FM has no embedding L2.",
        "",
        "## Commands",
        "",
        "```sh",
        *[timing["data_commands"][d] for d in datasets],
        *[command for d, g, r, command in sweeps if (d, g, r) in loaded],
        "```",
        "",
    ]

    lines += [
        "## Which of the paper's claims held here",
        "",
        "Claim: adding a parallel or a stacked DNN raises RankMe of Z (mitigates dimensional collapse). Per dataset,"
        " recipe and DNN entry: **held** (every seed up by more than"
        f" {verdict.RANKME_SAME:.0%} and the {verdict.CLAIM_LEVEL:.0%} t interval above 0), **not held** (no seed"
        " up), **mixed** (otherwise) or **not judged** (fewer than two readable seed pairs), then the mean"
        " seed-paired RankMe change, its t interval and the seeds up. Runs that cannot be read as collapse (near"
        " chance, far below the other seeds, test logloss worse than the base rate, stopped while the valid"
        " logloss still fell fast) are left out, and with them their pair; they are named under each table.",
        "",
    ]
    entries = [e for e in CLAIM_ENTRIES if any(e in {g["group"] for g in v[0]["groups"]} for v in loaded.values())]
    lines += [
        "| dataset | recipe | " + " | ".join(entries) + " | left out |",
        "|---|---|" + "---|" * (len(entries) + 1),
    ]
    for (dataset, grid, recipe), (summary, _, _) in loaded.items():
        if grid != "paper":
            continue
        rows = {g["group"]: g for g in summary["groups"]}
        cells = [claim_cell(rows.get(e)) for e in entries]
        lines.append(f"| {dataset} | {recipe} | " + " | ".join(cells) + f" | {len(summary['excluded'])} |")
    lines += [""]

    lines += ["## Table 1 layout, per dataset and recipe", ""]
    for (dataset, grid, recipe), (summary, runs, markdown) in loaded.items():
        if grid != "paper":
            continue
        lines += [markdown, ""]
        ref = {}
        for model in ("fm", "crossnet"):
            base = runs.get(sweep.run_name(f"{model}-none", 0))
            if base is not None:
                ref[model] = init_rankme(root / work / "data" / dataset, base["config"], 3)
        if ref:
            text = "; ".join(f"{BACKBONE[m]} {fmt_pm(v, '.1f', 1.0, '')}" for m, v in ref.items())
            lines += [f"RankMe of the same batch at initialization (untrained, seeds 0-2): {text}.", ""]
        if summary["excluded"]:
            lines += ["Left out of the means:", ""]
            for ex in summary["excluded"]:
                run_ = runs[ex["name"]]
                why = "; ".join(f["reason"] for f in ex["flags"])
                lines.append(f"- {ex['name']} (test AUC {run_['auc']:.4f}, best epoch {run_['best_epoch']}): {why}")
            lines += [""]
        images = []
        name = f"{dataset}-{grid}-{recipe}"
        for model in ("fm", "crossnet"):
            source = root / work / name / f"spectra-{model}.png"
            if source.is_file():
                target = img / f"{name}-spectra-{model}.png"
                shutil.copy(source, root / target)
                images.append(f"![{dataset} {recipe} {model} spectra]({target.relative_to(docs)})")
            curves = img / f"{name}-rankme-{model}.png"
            if curves_figure(
                runs, model, root / curves, f"RankMe over training: {BACKBONE[model]}, {dataset}, {recipe}"
            ):
                images.append(f"![{dataset} {recipe} {model} RankMe per epoch]({curves.relative_to(docs)})")
        lines += [" ".join(images), ""]

    ablations = [(key, value) for key, value in loaded.items() if key[1] == "ablation"]
    if ablations:
        lines += ["## DNN-component ablation", ""]
    for (dataset, _, recipe), (_, runs, markdown) in ablations:
        lines += ablation_section(f"{dataset}, {recipe} recipe", runs)
        lines += ["<details><summary>Full table</summary>", "", markdown, "</details>", ""]

    failed = [f"{d}-{r}/{f['name']}: {f['error']}" for (d, _, r), (s_, _, _) in loaded.items() for f in s_["failed"]]
    lines += ["Failed runs: " + ("; ".join(failed) if failed else "none."), ""]
    path = root / docs / "results.md"
    text = "\n".join(lines).rstrip() + "\n"
    marker = "<!-- reading -->"
    old = path.read_text() if path.is_file() else ""
    if marker in old:  # a hand-written reading of the numbers below the marker is kept across regenerations
        text += "\n" + old[old.index(marker) :]
    path.write_text(text)
    return path
