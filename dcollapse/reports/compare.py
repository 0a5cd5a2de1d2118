"""The comparison of many runs in the source paper's Table 1 layout: AUC, logloss, batch RankMe and field IA per
run, the change of RankMe and AUC against the base run of the same backbone, run flags and the verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcollapse.errors import UserError
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED
from dcollapse.reports import verdict
from dcollapse.reports.runs import (
    BACKBONES,
    VARIANTS,
    Run,
    RunKey,
    base_index,
    batch_matrix,
    best_entry,
    headline_metrics,
    load_fixed_batch,
    model_summary,
    relative_change,
)
from dcollapse.reports.spectrum import dataset_document, field_rows, field_summary

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

SCHEMA = "dcollapse.compare/2"


@dataclass
class CompareReport:
    """``runs``: one row per run, sorted by dataset, backbone and variant; ``datasets``: the labels A, B, ... of
    the datasets the runs come from; ``notes``: one-line remarks; ``verdict``: lines and flagged runs."""

    runs: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    notes: list[str]
    verdict: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def plot(self, path: str | Path | None = None) -> Figure:
        """The normalized eigenvalues of cov(Z) of every run with a batch, one panel per dataset and backbone."""
        from dcollapse import plots

        return plots.compare_overlay(self.to_dict(), path)


def compare_row(run: Run, batches: dict[Path, torch.Tensor], split: str, size: int, seed: int) -> dict[str, Any]:
    """One row of the comparison (RankMe of the fixed batch when the dataset is there, else from the history)."""
    from dcollapse.metrics import collapse

    ckpt, config = run.ckpt or {}, run.config
    summary = field_summary(field_rows(run), run)
    auc, logloss, metrics_split = headline_metrics(ckpt) if run.ckpt else (None, None, None)
    row: dict[str, Any] = {
        "checkpoint": run.label,
        "backbone": config.get("model"),
        "arch": config.get("arch"),
        "variant": VARIANTS.get(config.get("arch") or "", config.get("arch") or "—"),
        "seed": config.get("seed"),
        "model": model_summary(config) if run.ckpt else None,
        "layout": run.source.layout,
        "dataset": dataset_document(run),
        "auc": auc,
        "logloss": logloss,
        "metrics_split": metrics_split,
        "mean_field_ia": summary["mean_ia"],
        "min_field_ia": summary["min_ia"],
        "min_ia_field": summary["min_ia_field"],
        "dim": summary["dim"],
        "batch": None,
        "flags": verdict.run_flags(run.ckpt) if run.ckpt else [],
        "history": [{k: h.get(k) for k in ("epoch", "valid_auc", "rankme")} for h in ckpt.get("history") or []],
    }
    if run.data is not None:
        if run.data not in batches:
            batches[run.data] = load_fixed_batch(run.data, split, size, seed).ids
        z = batch_matrix(run, batches[run.data])
        z_stats, cov_stats = collapse.matrix_spectra(z)
        row["batch"] = asdict(collapse.BatchSpectrum(split, z.shape[0], z.shape[1], seed, z_stats, cov_stats))
        row["rankme"], row["rankme_source"] = z_stats.rankme, "batch"
    elif run.ckpt:
        row["rankme"], row["rankme_source"] = best_entry(ckpt).get("rankme"), "history"
    else:
        row["rankme"], row["rankme_source"] = None, None
    return row


def run_key(row: dict[str, Any]) -> RunKey:
    return RunKey(row["backbone"], row["arch"], row["dataset_label"], (row["model"] or {}).get("emb_dim"), row["seed"])


def add_base_changes(rows: list[dict[str, Any]]) -> None:
    """Each row's RankMe and AUC change against its base run (:func:`~dcollapse.reports.runs.base_index`)."""
    keys = [run_key(r) for r in rows]
    for row, key in zip(rows, keys, strict=True):
        i = base_index(key, keys)
        if i is None:
            row["base"] = row["rankme_change_vs_base"] = row["auc_change_vs_base"] = row["over_training"] = None
            continue
        base = rows[i]
        row["base"] = base["checkpoint"]
        row["rankme_change_vs_base"] = relative_change(row["rankme"], base["rankme"])
        comparable = base["metrics_split"] == row["metrics_split"] and None not in (row["auc"], base["auc"])
        row["auc_change_vs_base"] = row["auc"] - base["auc"] if comparable else None
        row["over_training"] = over_training(row["history"], base["history"])


def over_training(run: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The RankMe change against the base beyond the best epochs, from both training histories (RankMe of the
    same fixed validation batch every epoch):

    - ``epochs`` / ``changes`` / ``signs``: at every epoch both runs have, rankme / base rankme - 1, and its sign
      pattern ("+" up, "-" down, "=" within ±5%), e.g. "++-";
    - ``matched_auc``: at the highest validation AUC both runs reached, the RankMe of each run's first epoch that
      reached it (``auc``, ``epoch``, ``base_epoch``, ``change``). None when a history is missing.
    """
    runs = {h["epoch"]: h for h in run if h.get("rankme") is not None}
    bases = {h["epoch"]: h for h in base if h.get("rankme") is not None}
    common = sorted(set(runs) & set(bases))
    if not common:
        return None
    changes = [relative_change(runs[e]["rankme"], bases[e]["rankme"]) for e in common]
    signs = "".join("?" if c is None else "=" if abs(c) <= verdict.RANKME_SAME else "+" if c > 0 else "-"
                    for c in changes)  # fmt: skip
    matched = None
    aucs = [h["valid_auc"] for h in runs.values() if h.get("valid_auc") is not None]
    base_aucs = [h["valid_auc"] for h in bases.values() if h.get("valid_auc") is not None]
    if aucs and base_aucs:
        target = min(max(aucs), max(base_aucs))
        first = next(e for e in sorted(runs) if (runs[e].get("valid_auc") or -1) >= target)
        base_first = next(e for e in sorted(bases) if (bases[e].get("valid_auc") or -1) >= target)
        change = relative_change(runs[first]["rankme"], bases[base_first]["rankme"])
        matched = {"auc": target, "epoch": first, "base_epoch": base_first, "change": change}
    return {"epochs": common, "changes": changes, "signs": signs, "matched_auc": matched}


def label_datasets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each row a ``dataset_label`` (A, B, ... by input hash or path; '—' for tables without a dataset)."""
    datasets: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["dataset"]["hash"] or row["dataset"]["path"]
        if key is None:
            row["dataset_label"] = "—"
            continue
        info = {k: row["dataset"][k] for k in ("name", "hash", "path")}
        row["dataset_label"] = datasets.setdefault(key, {"label": chr(ord("A") + len(datasets) % 26), **info})["label"]
    return list(datasets.values())


def compare_report(
    runs: list[Run], *, split: str = "valid", batch: int = DEFAULT_BATCH_ROWS, seed: int = DEFAULT_SEED
) -> CompareReport:
    """The comparison of loaded runs (dcollapse checkpoints and foreign tables alike)."""
    if not runs:
        raise UserError("compare: no runs given")
    batches: dict[Path, torch.Tensor] = {}
    rows = [compare_row(run, batches, split, batch, seed) for run in runs]
    datasets = label_datasets(rows)
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    order = [*VARIANTS, None]
    rows.sort(key=lambda r: (r["dataset_label"], backbones.index(r["backbone"]), order.index(r["arch"])))
    add_base_changes(rows)
    notes = []
    if len(datasets) > 1:
        names = "; ".join(f"{d['label']} = {d['name']} ({(d['hash'] or '')[:15]}, {d['path']})" for d in datasets)
        notes.append(f"runs come from {len(datasets)} different datasets: {names}. RankMe changes compare within one")
    notes += [f"{Path(r['checkpoint']).name}: batch metrics skipped: {r['dataset']['skipped']}"
              for r in rows if r["batch"] is None]  # fmt: skip
    notes += [w for run in runs for w in run.warnings]
    return CompareReport(rows, datasets, notes, compare_verdict(rows))


def compare_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"lines": one change line per variant with a base + one per flagged run, "flagged": [checkpoint, ...]}."""
    lines = []
    for r in rows:
        name = Path(r["checkpoint"]).name
        line = verdict.change_line(name, r["rankme_change_vs_base"], r["auc_change_vs_base"], r["metrics_split"])
        if line:
            lines.append(line + verdict.training_clause(r["over_training"]))
    flagged = [r for r in rows if r["flags"]]
    lines += [f"caution: {Path(r['checkpoint']).name}: " + "; ".join(f["reason"] for f in r["flags"]) for r in flagged]
    if not lines:
        lines.append("no run has a base run (arch none) of the same backbone and dataset to compare against")
    return {"lines": lines, "flagged": [r["checkpoint"] for r in flagged]}


def variant_name(row: dict[str, Any]) -> str:
    """'FM +p-DNN' for a dcollapse run, the layout for foreign tables."""
    if row["backbone"] is None:
        return f"{row['layout']} tables"
    return f"{BACKBONES.get(row['backbone'], row['backbone'])} {row['variant']}"
