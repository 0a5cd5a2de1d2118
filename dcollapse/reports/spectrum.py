"""The collapse report of one run: per-field table spectra, the batch matrix Z, the history over training, the CI
gates and the verdict. :func:`analyze` is the public entry point; ``dcollapse spectrum`` prints its document."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcollapse.errors import UserError
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED
from dcollapse.reports import verdict
from dcollapse.reports.runs import Run, batch_matrix, load_fixed_batch, load_run, model_line, model_summary

if TYPE_CHECKING:
    import polars as pl
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCHEMA = "dcollapse.spectrum/2"
BATCH_PANELS = {"Z": "z", "cov(Z)": "covariance"}  # plot panel -> key of the batch document


@dataclass(frozen=True)
class Gates:
    """CI gates: fail when the mean field IA, the batch RankMe of Z or any single field's IA is below a bound."""

    under_ia: float | None = None
    under_rankme: float | None = None
    field_ia: float | None = None

    def __post_init__(self) -> None:
        for option, value in (("--fail-under-ia", self.under_ia), ("--fail-under-rankme", self.under_rankme),
                              ("--fail-field-ia", self.field_ia)):  # fmt: skip
            if value is not None and not math.isfinite(value):
                raise UserError(f"{option}: expected a finite number, got {value}")

    @property
    def requested(self) -> bool:
        return any(v is not None for v in (self.under_ia, self.under_rankme, self.field_ia))


@dataclass
class SpectrumReport:
    """Everything ``dcollapse spectrum`` shows; :meth:`to_dict` is its ``--json`` document (docs/reports.md).

    ``fields``: one row per field (name, vocab size, IA, RankMe, stable rank, normalized spectrum, the untrained
    reference, the state); ``batch``: spectra of Z [B, F*d] of the fixed batch and of cov(Z), None without data.
    """

    checkpoint: str
    source: dict[str, Any]
    model: dict[str, Any] | None
    dataset: dict[str, Any]
    fields: list[dict[str, Any]]
    field_summary: dict[str, Any]
    batch: dict[str, Any] | None
    history: list[dict[str, Any]]
    best_epoch: int | None
    checks: dict[str, Any]
    verdict: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def to_polars(self) -> pl.DataFrame:
        """One row per field: table, field, vocab_size, ia, rankme, stable_rank, untrained_ia, state."""
        import polars as pl

        keys = ("table", "field", "vocab_size", "ia", "rankme", "stable_rank", "state")
        return pl.DataFrame([{**{k: f[k] for k in keys}, "untrained_ia": f["untrained"]["ia"]} for f in self.fields])

    def plot(self, target: str | Path | Axes | None = None) -> Figure:
        """Log normalized spectra, one panel per field (and Z, cov(Z)); ``target``: a file (.png/.pdf/.svg) to
        write, or a matplotlib Axes to draw the overlaid field spectra on; returns the Figure."""
        from dcollapse import plots

        panels = {} if self.batch is None else {k: self.batch[v]["normalized"] for k, v in BATCH_PANELS.items()}
        panels |= {r["field"]: r["normalized"] for r in self.fields}
        subtitles = {r["field"]: f"IA {r['ia']:.2f}" for r in self.fields}
        if self.batch is not None:
            subtitles |= {k: f"RankMe {self.batch[v]['rankme']:.1f}" for k, v in BATCH_PANELS.items()}
        what = model_line(self.model) if self.model else f"{self.source['layout']} tables"
        title = f"{Path(self.checkpoint).name}: {what} — singular values s_i / s_1 (cov(Z): eigenvalues)"
        if target is None or isinstance(target, str | Path):
            return plots.spectrum_grid(panels, target, title, subtitles=subtitles, highlight=list(BATCH_PANELS))
        figure = target.get_figure(root=True)
        if figure is None:
            raise ValueError("the Axes belongs to no figure")
        plots.overlay_on(target, {r["field"]: r["normalized"] for r in self.fields}, title)
        return figure


def field_rows(run: Run) -> list[dict[str, Any]]:
    """One document row per field of every table of ``run`` (spectra from one pass per concatenated table)."""
    import torch

    from dcollapse.data.dataset import is_scalar
    from dcollapse.metrics import collapse

    scalar = {f["name"] for f in ((run.ckpt or {}).get("meta") or {}).get("fields") or [] if is_scalar(f)}
    rows = []
    for table in run.source.tables:
        names = table.fields or [table.name]
        offsets = table.offsets if table.offsets is not None else torch.zeros(1, dtype=torch.int64)
        dim = int(table.weight.shape[1])
        for f in collapse.field_spectra(table.weight, offsets, names):
            ref = verdict.untrained_reference(f.vocab_size, dim)
            rows.append({
                "table": table.name,
                "field": f.field,
                "vocab_size": f.vocab_size,
                **asdict(f.spectrum),
                "untrained": {"ia": ref.ia, "rankme": ref.rankme},
                "state": verdict.field_state(f.spectrum.ia, f.vocab_size, dim, scalar=f.field in scalar),
            })  # fmt: skip
    if not rows:
        raise UserError(f"{run.label}: no embedding table to report")
    return rows


def field_summary(rows: list[dict[str, Any]], run: Run) -> dict[str, Any]:
    import numpy as np

    dims = {int(t.weight.shape[1]) for t in run.source.tables}
    read = [r for r in rows if r["state"] != verdict.SCALAR] or rows  # scalar fields: IA 1 by construction
    ias = np.array([r["ia"] for r in read])
    worst = int(ias.argmin())
    return {
        "dim": dims.pop() if len(dims) == 1 else None,
        "mean_ia": float(ias.mean()),
        "min_ia": float(ias[worst]),
        "min_ia_field": read[worst]["field"],
        "mean_rankme": float(np.mean([r["rankme"] for r in rows])),
    }


def batch_document(run: Run, split: str, size: int, seed: int) -> dict[str, Any] | None:
    """Spectra of Z [B, F*d] of the fixed batch and of cov(Z), with the untrained reference (None without data)."""
    from dcollapse.metrics import collapse

    if run.data is None:
        return None
    ids = load_fixed_batch(run.data, split, size, seed).ids
    z = batch_matrix(run, ids)
    z_stats, cov_stats = collapse.matrix_spectra(z)
    doc = asdict(collapse.BatchSpectrum(split, z.shape[0], z.shape[1], seed, z_stats, cov_stats))
    doc["untrained"] = {"rankme": verdict.untrained_reference(z.shape[0], z.shape[1]).rankme}
    return doc


def dataset_document(run: Run) -> dict[str, Any]:
    stored = (run.ckpt or {}).get("data") or {}
    meta = (run.ckpt or {}).get("meta") or {}
    return {
        "name": meta.get("name"),
        "path": str(run.data) if run.data else stored.get("path"),
        "hash": stored.get("hash") or meta.get("input_hash"),
        "available": run.data is not None,
        "skipped": run.skipped,
    }


def source_document(run: Run) -> dict[str, Any]:
    s = run.source
    tables = [{"name": t.name, "key": t.key, "shape": list(t.weight.shape), "fields": len(t.fields or [t.name])}
              for t in s.tables]  # fmt: skip
    return {"reader": s.reader, "layout": s.layout, "path": s.path, "tables": tables, "notes": list(s.notes)}


def history_document(ckpt: dict[str, Any] | None) -> list[dict[str, Any]]:
    keys = ("epoch", "valid_auc", "valid_logloss", "rankme", "mean_ia")
    return [{key: entry.get(key) for key in keys} for entry in (ckpt or {}).get("history") or []]


def gate_failures(report: SpectrumReport, gates: Gates) -> list[str]:
    """One reason per violated gate (mean field IA, batch RankMe, any single field's IA but a scalar field's)."""
    failures = []
    summary = report.field_summary
    if gates.under_ia is not None and summary["mean_ia"] < gates.under_ia:
        failures.append(f"mean field IA {summary['mean_ia']:.3f} < {gates.under_ia:g}")
    if gates.under_rankme is not None and report.batch is not None:
        if report.batch["z"]["rankme"] < gates.under_rankme:
            failures.append(f"batch RankMe {report.batch['z']['rankme']:.2f} < {gates.under_rankme:g}")
    if gates.field_ia is not None:
        low = [r for r in report.fields if r["ia"] < gates.field_ia and r["state"] != verdict.SCALAR]
        if low:
            names = ", ".join(f"{r['field']} {r['ia']:.3f}" for r in low[:5]) + (" ..." if len(low) > 5 else "")
            failures.append(f"{len(low)} field(s) with IA < {gates.field_ia:g}: {names}")
    return failures


def verdict_document(fields: list[dict[str, Any]], batch: dict[str, Any] | None, run: Run) -> dict[str, Any]:
    """{"lines": plain-language reading, "flags": [{"flag", "reason"}], "collapsed_fields": int}."""
    dims = {int(t.weight.shape[1]) for t in run.source.tables}
    lines = verdict.field_lines(fields, max(dims))
    if batch is not None:
        lines.append(verdict.batch_line(batch["z"]["rankme"], batch["rows"], batch["dim"]))
    flags = verdict.run_flags(run.ckpt) if run.ckpt else []
    lines += [f"caution: {f['reason']}" for f in flags]
    collapsed = sum(f["state"] == "collapsed" for f in fields)
    return {"lines": lines, "flags": flags, "collapsed_fields": collapsed}


def spectrum_report(
    run: Run,
    *,
    split: str = "valid",
    batch: int = DEFAULT_BATCH_ROWS,
    seed: int = DEFAULT_SEED,
    gates: Gates | None = None,
) -> SpectrumReport:
    """The report of a loaded :class:`Run` (see :func:`analyze` for any source)."""
    gates = gates or Gates()
    if gates.under_rankme is not None and run.data is None:
        raise UserError(f"--fail-under-rankme needs the batch matrix, but {run.skipped}")
    fields = field_rows(run)
    batch_doc = batch_document(run, split, batch, seed)
    report = SpectrumReport(
        checkpoint=run.label,
        source=source_document(run),
        model=model_summary(run.config) if run.ckpt else None,
        dataset=dataset_document(run),
        fields=fields,
        field_summary=field_summary(fields, run),
        batch=batch_doc,
        history=history_document(run.ckpt),
        best_epoch=(run.ckpt or {}).get("best_epoch"),
        checks={},
        verdict=verdict_document(fields, batch_doc, run),
        warnings=run.warnings,
    )
    failures = gate_failures(report, gates)
    report.checks = {"requested": gates.requested, "passed": not failures, "failures": failures}
    return report


def analyze(
    source: Any,
    *,
    data: str | Path | None = None,
    split: str = "valid",
    batch: int = DEFAULT_BATCH_ROWS,
    seed: int = DEFAULT_SEED,
    field_dims: list[int] | None = None,
    field_map: str | Path | None = None,
    tables: str | None = None,
    device: str = "auto",
) -> SpectrumReport:
    """The collapse report of anything that holds embedding tables.

    ``source``: a ``dcollapse train`` checkpoint, any PyTorch / safetensors / numpy file or a
    ``torch.distributed.checkpoint`` directory, an ``nn.Module``, a state_dict or a tensor [V, d].
    ``data``: a dcollapse dataset directory for the batch view (RankMe of Z [B, F*d] on ``batch`` rows of
    ``split``); a checkpoint of ``dcollapse train`` finds its own. ``field_dims`` / ``field_map`` split one
    concatenated table into fields; ``tables``: a regex choosing the tables by key; ``device``: auto | cpu | cuda.

    Example::

        report = dcollapse.analyze("runs/deepfm.pt")
        print(report.verdict["lines"][0]); report.to_polars(); report.plot("spectrum.png")
    """
    run = load_run(source, data, field_dims=field_dims, field_map=field_map, tables=tables, device=device)
    return spectrum_report(run, split=split, batch=batch, seed=seed)
