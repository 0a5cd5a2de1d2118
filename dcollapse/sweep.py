"""Sweeps: a grid of training configs x seeds, run one after another in-process, resumable, summarised.

A grid is an ordered mapping ``name -> config`` (``dcollapse train`` options). :func:`plan` expands it with seeds
into :class:`RunSpec` s (``<name>-s<seed>``), fills in and checks every option with :mod:`dcollapse.config` and
checks ``RUNS_DIR`` against it; :func:`run_sweep` trains the runs still to do and writes, per run,

- ``RUNS_DIR/<run>.pt``: the checkpoint of ``dcollapse train`` (resumed when a run was interrupted);
- ``RUNS_DIR/<run>.json``: the run's result (config, AUC/logloss, batch RankMe, mean IA, cov(Z) spectrum), written
  last, so its presence with the same config marks the run finished and a restarted sweep skips it.

A run that raises is recorded as failed and the sweep goes on. :func:`summarize` aggregates the results of every
seed of a grid entry (mean and sample std), with the RankMe change against the base run (arch ``none``) of the
same backbone and seed; :func:`write_summary` writes ``summary.json``, ``summary.md`` and one overlay PNG of the
normalized cov(Z) spectra per backbone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcollapse import checkpoint, plots
from dcollapse.config import Options, did_you_mean, full_config, merged, toml_options
from dcollapse.data.dataset import load_meta
from dcollapse.errors import UserError
from dcollapse.io import atomic_path, read_toml
from dcollapse.metrics import collapse
from dcollapse.models import load_model
from dcollapse.reports import verdict
from dcollapse.reports.compare import over_training
from dcollapse.reports.runs import RunKey, base_index, best_entry, dnn_label, headline_metrics, load_fixed_batch
from dcollapse.train import train

# The paper's settings (SPEC-collapse: emb 10, 3 cross layers, MLP [400,400,400]-[500,500,500], dropout 0.1,
# Adam 1e-3, early stopping patience 2, L2 on embeddings 5e-6 (FM) / 1e-5 (DCNv2)) scaled to samples of 10^4-10^5
# rows: a narrower MLP (200 per layer, depth 3 kept) and smaller batches (256 instead of 4096) so that an epoch has
# enough optimizer steps; at most 30 epochs.
SCALED_SETTINGS: dict[str, Any] = {
    "emb_dim": 10,
    "dnn": [200, 200, 200],
    "activation": "relu",
    "dropout": 0.1,
    "cross_layers": 3,
    "batch_size": 256,
    "epochs": 30,
    "patience": 2,
    "lr": 1e-3,
    "style": "paper",
}
L2_EMB = {"fm": 5e-6, "crossnet": 1e-5}
# --recipe paper: the L2 the paper's code applies. Its FM class reads `embedding_regularizer`, the FM configs set
# `regularizer` (5e-6 Criteo, 1e-6 Avazu), which nothing reads: no L2. DCNv2's Criteo config sets
# embedding_regularizer 1e-5 (its Avazu config 0).
PAPER_L2_EMB = {"fm": 0.0, "crossnet": 1e-5}
BACKBONES = ("fm", "crossnet")
ARCHS = ("none", "parallel", "stacked")
# One DNN part switched at a time, against the reference DNN of SCALED_SETTINGS.
ABLATIONS: dict[str, dict[str, Any]] = {
    "linear": {"activation": "identity"},
    "depth1": {"dnn": [200]},
    "narrow": {"dnn": [50, 50, 50]},
    "nodropout": {"dropout": 0.0},
    "batchnorm": {"norm": "batch"},
    "layernorm": {"norm": "layer"},
    "residual": {"residual": True},
}
FIXED_BATCH_SPLIT = "valid"


def paper_grid(recipe: str = "default") -> dict[str, dict[str, Any]]:
    """The paper's Table 1: FM and CrossNet, each with no DNN, a parallel DNN and a stacked DNN (6 entries).

    ``recipe`` "paper": every entry trains with ``--recipe paper`` and :data:`PAPER_L2_EMB`; the CrossNet DNNs are
    linear as in the paper's code, and ``crossnet-parallel-relu`` / ``crossnet-stacked-relu`` add the ReLU DNNs
    beside them (8 entries)."""
    if recipe == "default":
        return {
            f"{model}-{arch}": {**SCALED_SETTINGS, "model": model, "arch": arch, "l2_emb": L2_EMB[model]}
            for model in BACKBONES
            for arch in ARCHS
        }
    settings = {key: value for key, value in SCALED_SETTINGS.items() if key != "activation"}
    grid = {
        f"{model}-{arch}": {**settings, "model": model, "arch": arch, "l2_emb": PAPER_L2_EMB[model], "recipe": recipe}
        for model in BACKBONES
        for arch in ARCHS
    }
    for arch in ARCHS[1:]:
        grid[f"crossnet-{arch}-relu"] = {**grid[f"crossnet-{arch}"], "activation": "relu"}
    return grid


def ablation_grid(recipe: str = "default") -> dict[str, dict[str, Any]]:
    """The paper grid plus, for every backbone x (parallel, stacked), each of :data:`ABLATIONS` switched alone."""
    grid = paper_grid(recipe)
    for model in BACKBONES:
        for arch in ARCHS[1:]:
            for variant, change in ABLATIONS.items():
                grid[f"{model}-{arch}-{variant}"] = {**grid[f"{model}-{arch}"], **change}
    return grid


GRIDS: dict[str, Callable[[str], dict[str, dict[str, Any]]]] = {"paper": paper_grid, "ablation": ablation_grid}


def read_grid_file(path: Path) -> dict[str, dict[str, Any]]:
    """A grid from TOML: an optional ``[base]`` table applied to every run, and one ``[runs.<name>]`` table per run
    (option keys with dashes or underscores; a bad value is named by its file, line and key).

    Example::

        [base]
        emb_dim = 8
        epochs = 5

        [runs.fm-none]
        model = "fm"

        [runs.deepfm]
        model = "fm"
        arch = "parallel"
        dnn = [64, 64]
    """
    raw = read_toml(path, "grid")
    unknown = sorted(set(raw) - {"base", "runs"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; expected [base] and [runs.<name>]")
    base, runs = raw.get("base", {}), raw.get("runs", {})
    if not isinstance(base, dict) or not isinstance(runs, dict) or not runs:
        raise UserError(f"{path}: expected at least one [runs.<name>] table (and optionally a [base] table)")
    for name, options in runs.items():
        if not isinstance(options, dict):
            raise UserError(f"{path}: runs.{name} must be a table of options")
    base_options = toml_options(path, base, ("base",))
    return {
        name: merged(base_options, toml_options(path, options, ("runs", name)))
        for name, options in runs.items()
    }


def load_grid(grid: str, recipe: str = "default") -> dict[str, dict[str, Any]]:
    """``paper``, ``ablation`` (built for ``recipe``) or the path of a TOML grid file."""
    if grid in GRIDS:
        return GRIDS[grid](recipe)
    path = Path(grid)
    if path.suffix.lower() != ".toml":
        hint = did_you_mean(grid, GRIDS)
        raise UserError(f"--grid must be one of {', '.join(GRIDS)} or a .toml grid file, not {grid!r}{hint}")
    return read_grid_file(path)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: grid entry ``group`` trained with ``seed``, saved as ``RUNS_DIR/<name>.pt``."""

    name: str
    group: str
    seed: int
    config: dict[str, Any]


def run_name(group: str, seed: int) -> str:
    return f"{group}-s{seed}"


def plan(
    grid: Mapping[str, Mapping[str, Any]], seeds: int, overrides: Mapping[str, Any] | None = None
) -> list[RunSpec]:
    """Expand ``grid`` into runs for seeds 0..seeds-1 (``overrides`` replace options of every entry), configs
    completed and validated; a bad entry raises a UserError naming it."""
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, not {seeds}")
    specs = []
    for group, options in grid.items():
        if not group or any(ch in group for ch in "/\\") or group.startswith("."):
            raise UserError(f"grid entry {group!r}: names must be plain file names")
        if "seed" in options:
            raise UserError(f"grid entry {group}: 'seed' is set by --seeds, remove it from the grid")
        for seed in range(seeds):
            try:
                run_config = full_config(merged(options, overrides or {}, {"seed": seed}))
            except UserError as exc:  # options from a grid file are named by file, line and key already
                raise exc if isinstance(options, Options) else UserError(f"grid entry {group}: {exc}") from None
            specs.append(RunSpec(run_name(group, seed), group, seed, run_config))
    return specs


def result_path(runs_dir: Path, spec: RunSpec) -> Path:
    return runs_dir / f"{spec.name}.json"


def checkpoint_path(runs_dir: Path, spec: RunSpec) -> Path:
    return runs_dir / f"{spec.name}.pt"


def read_result(runs_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The finished result of ``spec`` in ``runs_dir``, or None; a result with another config raises a UserError."""
    path = result_path(runs_dir, spec)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not a valid result file (delete it to redo the run)") from None
    if result.get("config") != spec.config:
        raise UserError(
            f"{path}: this run was made with other settings; use another --out or the same grid and options"
        )
    return result


def resume_state(runs_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The checkpoint of an interrupted run of ``spec`` to continue from, or None to start afresh."""
    path = checkpoint_path(runs_dir, spec)
    if not path.is_file():
        return None
    ckpt = checkpoint.load(path)
    if ckpt.get("config") != spec.config:
        raise UserError(f"{path}: a checkpoint with other settings; use another --out or the same grid and options")
    return ckpt if "resume" in ckpt else None


def run_result(spec: RunSpec, ckpt: dict[str, Any], ids: Any, seconds: float) -> dict[str, Any]:
    """The result document of a finished run: metrics of the best epoch's weights and the spectra of its fixed
    batch Z = flat embeddings [B, F*d] of ``ids`` [B, F]."""
    model = load_model(ckpt)
    batch = collapse.batch_spectra(model, ids, FIXED_BATCH_SPLIT, collapse.DEFAULT_SEED)
    best = best_entry(ckpt)
    auc, logloss, split = headline_metrics(ckpt)
    return {
        "name": spec.name,
        "group": spec.group,
        "seed": spec.seed,
        "status": "ok",
        "config": spec.config,
        "dataset": {"name": ckpt["meta"].get("name"), "path": ckpt["data"]["path"], "hash": ckpt["data"]["hash"]},
        "auc": auc,
        "logloss": logloss,
        "metrics_split": split,
        "valid_auc": best["valid_auc"],
        "rankme": batch.z.rankme,
        "mean_ia": best["mean_ia"],
        "field_ia": best["field_ia"],
        "best_epoch": ckpt["best_epoch"],
        "epochs_run": len(ckpt["history"]),
        "seconds": seconds,
        "batch_rows": batch.rows,
        "cov_spectrum": [float(v) for v in batch.covariance.normalized],
        "flags": verdict.run_flags(ckpt),
        "history": [{key: h.get(key) for key in HISTORY_KEYS} for h in ckpt["history"]],
    }


HISTORY_KEYS = ("epoch", "valid_auc", "valid_logloss", "rankme", "mean_ia")  # per epoch, kept in a run's result


def fixed_batch_ids(data_dir: Path) -> Any:
    """ids int32 [B, F]: the fixed validation batch every run's RankMe and spectrum is measured on (the rows
    ``dcollapse compare`` draws by default)."""
    if FIXED_BATCH_SPLIT not in load_meta(data_dir)["splits"]:
        raise UserError(f"{data_dir}: a sweep needs a {FIXED_BATCH_SPLIT} split")
    return load_fixed_batch(data_dir, FIXED_BATCH_SPLIT).ids


Event = Callable[[str, RunSpec, dict[str, Any] | None], None]


def run_sweep(
    data_dir: str | Path,
    specs: list[RunSpec],
    runs_dir: str | Path,
    *,
    on_event: Event | None = None,
    on_epoch: Callable[[RunSpec, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every run of ``specs`` not finished in ``runs_dir``, one after another; returns one result per spec.

    ``on_event(kind, spec, result)`` reports "skip" (finished earlier), "start", "done" and "fail" (the result then
    has status "failed" and a one-line "error"); ``on_epoch(spec, history_entry)`` reports training progress.
    Every existing result and checkpoint is checked against its config before anything runs. A KeyboardInterrupt
    stops the sweep (the interrupted run resumes from its last epoch next time); any other exception fails one run.
    """
    data_dir, runs_dir = Path(data_dir).resolve(), Path(runs_dir)
    data_hash = load_meta(data_dir).get("input_hash")  # a bad dataset fails the whole sweep, not each run
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: exists and is not a directory")
    runs_dir.mkdir(parents=True, exist_ok=True)
    finished = {spec.name: read_result(runs_dir, spec) for spec in specs}
    for spec in specs:
        if finished[spec.name] is not None and finished[spec.name]["dataset"]["hash"] != data_hash:
            raise UserError(f"{result_path(runs_dir, spec)}: trained on another dataset; use another --out")
    resumes = {spec.name: resume_state(runs_dir, spec) for spec in specs if finished[spec.name] is None}
    ids = fixed_batch_ids(data_dir)
    emit = on_event or (lambda kind, spec, result: None)
    results = []
    for spec in specs:
        result = finished[spec.name]
        if result is not None:
            emit("skip", spec, result)
            results.append(result)
            continue
        emit("start", spec, None)
        start = time.perf_counter()
        try:
            ckpt = train(
                data_dir,
                spec.config,
                checkpoint_path(runs_dir, spec),
                resume=resumes[spec.name],
                on_epoch=None if on_epoch is None else lambda entry, spec=spec: on_epoch(spec, entry),
            )
            result = run_result(spec, ckpt, ids, time.perf_counter() - start)
            with atomic_path(result_path(runs_dir, spec)) as tmp:
                tmp.write_text(json.dumps(result, indent=1))
        except Exception as exc:  # one failed run must not stop the sweep
            message = (str(exc).strip().splitlines() or [""])[0]
            result = {
                "name": spec.name,
                "group": spec.group,
                "seed": spec.seed,
                "status": "failed",
                "config": spec.config,
                "error": f"{type(exc).__name__}: {message}",
            }
            emit("fail", spec, result)
        else:
            emit("done", spec, result)
        results.append(result)
    return results


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
            "dataset": runs[0]["dataset"] if runs else None,
            "metrics_split": runs[0]["metrics_split"] if runs else None,
        }
        for metric in METRICS:
            row[metric] = mean_std([r[metric] for r in runs])
        paired = [(r, base_index(run_key(r), keys)) for r in runs]
        paired = [(r, ok[i]) for r, i in paired if i is not None]
        paired = [(r, b) for r, b in paired if b["seed"] == r["seed"] and not excluded(flags[b["name"]])]
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
        lines += ["", "Does the DNN raise RankMe? (the change paired by seed; held: every seed up by more than "
                  f"{verdict.RANKME_SAME:.0%} and the interval above 0; not held: no seed up; otherwise mixed)", ""]
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
