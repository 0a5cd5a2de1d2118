"""The summary of a sweep: per grid entry the mean and std over seeds, the seed-paired change against the base
run with its interval and sign count, the claim per backbone, flagged runs kept out, and the written
summary.json / summary.md / spectra PNGs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcollapse import plots
from dcollapse.io import atomic_path
from dcollapse.reports import verdict
from dcollapse.reports.compare import over_training
from dcollapse.reports.runs import RunKey, base_index, dnn_label


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """{"mean", "std" (sample std, None for one value), "n"} of finite ``values`` (mean None when empty)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {
        "mean": float(v.mean()) if v.size else None,
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "n": int(v.size),
    }


METRICS = ("auc", "logloss", "rankme", "mean_ia", "best_epoch")


def t_interval(values: list[float], level: float = verdict.CLAIM_LEVEL) -> tuple[float, float] | None:
    """The two-sided Student t interval of the mean of ``values`` (None for fewer than two)."""
    if len(values) < 2:
        return None
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def run_flags(ok: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Every finished run's flags by name: those of its result (:func:`verdict.run_flags`) and
    :func:`verdict.seed_flags` against the other seeds of its grid entry."""
    flags = {}
    for r in ok:
        others = [o["valid_auc"] for o in ok if o["group"] == r["group"] and o["name"] != r["name"]]
        flags[r["name"]] = list(r.get("flags") or []) + verdict.seed_flags(r["best_epoch"], r["valid_auc"], others)
    return flags


def excluded(flags: list[dict[str, str]]) -> bool:
    """Whether ``flags`` keep a run out of the means (:data:`verdict.EXCLUDING`)."""
    return any(f["flag"] in verdict.EXCLUDING for f in flags)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per grid entry (in grid order): mean and std over seeds of :data:`METRICS`, of the RankMe change
    ``rankme / rankme(base) - 1`` and of the AUC change ``auc - auc(base)``, both against the run with the same
    backbone whose arch is ``none`` (the one rule of :func:`~dcollapse.reports.runs.base_index`: the same width
    and seed when there is one), and the mean normalized cov(Z) spectrum.

    Runs whose flags (:func:`run_flags`) say they cannot be read as collapse are kept out of every mean and listed
    under ``excluded``. The RankMe change is seed-paired (a base of another seed is not used): its
    :data:`verdict.CLAIM_LEVEL` t interval (``rankme_change_interval``), the seeds up by more than
    ``verdict.RANKME_SAME`` (``rankme_up_seeds`` of ``paired_seeds``), the change over training per seed
    (``over_training``: at every common epoch and at matched valid AUC, :func:`~dcollapse.reports.compare.
    over_training`) and the ``claim`` "the DNN raises RankMe" (:func:`verdict.claim_state`)."""
    ok = [r for r in results if r["status"] == "ok"]
    flags = run_flags(ok)
    keys = [run_key(r) for r in ok]
    groups: dict[str, dict[str, Any]] = {}
    for r in results:
        groups.setdefault(r["group"], {"runs": []})["runs"].append(r)
    rows = []
    for group, entry in groups.items():
        finished = [r for r in entry["runs"] if r["status"] == "ok"]
        runs = [r for r in finished if not excluded(flags[r["name"]])]
        config = entry["runs"][0]["config"]
        row: dict[str, Any] = {
            "group": group,
            "model": config["model"],
            "arch": config["arch"],
            "config": {k: v for k, v in config.items() if k != "seed"},
            "seeds": [r["seed"] for r in runs],
            "failed": [{"name": r["name"], "error": r["error"]} for r in entry["runs"] if r["status"] != "ok"],
            "excluded": [{"name": r["name"], "flags": flags[r["name"]]} for r in finished if r not in runs],
            "flags": {r["name"]: [f["flag"] for f in flags[r["name"]]] for r in finished if flags[r["name"]]},
            "dataset": finished[0]["dataset"] if finished else None,
            "metrics_split": finished[0]["metrics_split"] if finished else None,
        }
        for metric in METRICS:
            row[metric] = mean_std([r[metric] for r in runs])
        indexed = [(r, base_index(run_key(r), keys)) for r in runs]
        with_base = [(r, ok[i]) for r, i in indexed if i is not None]
        paired = [(r, b) for r, b in with_base if b["seed"] == r["seed"] and not excluded(flags[b["name"]])]
        changes = [r["rankme"] / b["rankme"] - 1.0 for r, b in paired if b["rankme"] > 0]
        row["rankme_change"] = mean_std(changes)
        row["rankme_change_interval"] = t_interval(changes)
        row["auc_change"] = mean_std([r["auc"] - b["auc"] for r, b in paired])
        row["paired_seeds"] = len(changes)
        row["rankme_up_seeds"] = sum(c > verdict.RANKME_SAME for c in changes)
        row["over_training"] = [
            {"seed": r["seed"], **over} for r, b in paired
            if (over := over_training(r.get("history") or [], b.get("history") or [])) is not None
        ]  # fmt: skip
        row["claim"] = verdict.claim_state(changes, row["rankme_change_interval"]) if config["arch"] != "none" else None
        spectra = [np.array(r["cov_spectrum"]) for r in runs]
        width = min((s.size for s in spectra), default=0)
        row["cov_spectrum"] = np.mean([s[:width] for s in spectra], axis=0).tolist() if spectra else []
        rows.append(row)
    summary = {
        "schema": "dcollapse.sweep/1",
        "runs": len(results),
        "ok": len(ok),
        "failed": [{"name": r["name"], "error": r["error"]} for r in results if r["status"] != "ok"],
        "excluded": [ex for row in rows for ex in row["excluded"]],
        "groups": rows,
    }
    return summary | {"claims": claim_lines(summary)}


def claim_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line per grid entry with a DNN, backbone by backbone: the claim "the DNN raises RankMe" held / not held /
    mixed, with the seed-paired change, its interval, the sign count, the change at matched valid AUC and the
    per-epoch sign pattern of each seed, e.g. ``fm-parallel: held: Δ RankMe +45% (95% t interval +20% to +70%),
    up in 3/3 seeds; at matched valid AUC +30% (up in 3/3); per epoch s0 +++, s1 +++, s2 ++=``."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in summary["groups"]):
        for row in (r for r in summary["groups"] if r["model"] == model and r["arch"] != "none"):
            n, change, interval = row["paired_seeds"], row["rankme_change"], row["rankme_change_interval"]
            if not n:
                lines.append(f"{row['group']}: not judged: no seed has both this run and its base readable")
                continue
            text = f"{row['group']}: {row['claim']}: Δ RankMe {change['mean']:+.0%}"
            if interval is not None:
                text += f" ({verdict.CLAIM_LEVEL:.0%} t interval {interval[0]:+.0%} to {interval[1]:+.0%})"
            text += f", up in {row['rankme_up_seeds']}/{n} seed{'s' if n > 1 else ''}"
            matched = [o["matched_auc"]["change"] for o in row["over_training"]
                       if o["matched_auc"] is not None and o["matched_auc"]["change"] is not None]  # fmt: skip
            if matched:
                up = sum(c > verdict.RANKME_SAME for c in matched)
                text += f"; at matched valid AUC {np.mean(matched):+.0%} (up in {up}/{len(matched)})"
            if row["over_training"]:
                text += "; per epoch " + ", ".join(f"s{o['seed']} {o['signs']}" for o in row["over_training"])
            lines.append(text)
    if summary["excluded"]:
        names = ", ".join(
            f"{ex['name']} ({', '.join(f['flag'] for f in ex['flags'] if f['flag'] in verdict.EXCLUDING)})"
            for ex in summary["excluded"]
        )
        lines.append(f"left out of the means (cannot be read as collapse): {names}")
    return lines


def pm(stat: Mapping[str, Any], spec: str = ".4f", percent: bool = False) -> str:
    """'mean ± std' (or 'mean' for one seed, '—' when missing)."""
    if stat["mean"] is None:
        return "—"
    scale, suffix = (100.0, "%") if percent else (1.0, "")
    text = f"{stat['mean'] * scale:{'+' if percent else ''}{spec}}{suffix}"
    return text if stat["std"] is None else f"{text} ± {stat['std'] * scale:{spec.lstrip('+')}}{suffix}"


def run_key(result: Mapping[str, Any]) -> RunKey:
    """What pairs a run with its base (one dataset per sweep)."""
    config = result["config"]
    return RunKey(config["model"], config["arch"], None, config["emb_dim"], result["seed"])


SUMMARY_COLUMNS = (
    "run", "DNN", "seeds", "AUC", "logloss", "RankMe", "Δ RankMe vs base", "Δ AUC vs base", "mean IA", "best epoch"
)  # fmt: skip


def summary_cells(row: Mapping[str, Any]) -> list[str]:
    """The cells of one grid entry in :data:`SUMMARY_COLUMNS` order."""
    failed = f" ({len(row['failed'])} failed)" if row["failed"] else ""
    failed += f" ({len(row['excluded'])} left out)" if row.get("excluded") else ""
    return [
        row["group"],
        dnn_label(row["config"]),
        f"{len(row['seeds'])}{failed}",
        pm(row["auc"]),
        pm(row["logloss"]),
        pm(row["rankme"], ".1f"),
        pm(row["rankme_change"], ".1f", percent=True),
        pm(row["auc_change"], "+.4f"),
        pm(row["mean_ia"], ".2f"),
        pm(row["best_epoch"], ".1f"),
    ]


def summary_markdown(summary: Mapping[str, Any], title: str) -> str:
    """The summary as a Markdown section: one table row per grid entry, then the failures."""
    split = {row["metrics_split"] for row in summary["groups"]} - {None}
    monitor = "/".join(sorted({row["config"].get("monitor", "auc") for row in summary["groups"]}))
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(SUMMARY_COLUMNS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(summary_cells(row)) + " |" for row in summary["groups"]]
    lines += [
        "",
        f"Mean ± sample std over seeds. AUC and logloss on the {'/'.join(sorted(split)) or '?'} split (best epoch by"
        f" the validation {monitor.replace('auc', 'AUC')}); RankMe of Z = flat embeddings of the fixed validation"
        " batch; Δ against the base run (no DNN) of the same backbone and seed.",
    ]
    lines += [f"- failed: {f['name']}: {f['error']}" for f in summary["failed"]]
    claims = summary.get("claims") or []
    if claims:
        lines += [
            "",
            "Does the DNN raise RankMe? (the change paired by seed; held: every seed up by more than "
            f"{verdict.RANKME_SAME:.0%} and the interval above 0; not held: no seed up; otherwise mixed)",
            "",
        ]
        lines += [f"- {line}" for line in claims]
    return "\n".join(lines) + "\n"


def write_summary(summary: Mapping[str, Any], runs_dir: str | Path, title: str) -> dict[str, Path]:
    """``summary.json``, ``summary.md`` and ``spectra-<backbone>.png`` (mean normalized cov(Z) spectrum of every
    grid entry of that backbone, log scale) in ``runs_dir``; returns the paths written."""
    runs_dir = Path(runs_dir)
    written = {"json": runs_dir / "summary.json", "md": runs_dir / "summary.md"}
    with atomic_path(written["json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(written["md"]) as tmp:
        tmp.write_text(summary_markdown(summary, title))
    for model in dict.fromkeys(row["model"] for row in summary["groups"]):
        series = {row["group"]: row["cov_spectrum"] for row in summary["groups"] if row["model"] == model}
        series = {name: values for name, values in series.items() if values}
        if series:
            path = runs_dir / f"spectra-{model}.png"
            title_line = f"{title}: normalized eigenvalues of cov(Z), {model}, mean over seeds"
            plots.overlay_spectra(series, path, title_line, ylabel=plots.EIGEN_YLABEL)
            written[f"png-{model}"] = path
    return written
