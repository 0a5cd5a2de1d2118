"""What a report reads: a run (a ``dcollapse train`` checkpoint or any other source of embedding tables), the
dataset its batch metrics use, the fixed evaluation batch, and the facts every report states the same way
(headline metrics, the DNN label, the base run of a variant)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcollapse.errors import UserError
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED

if TYPE_CHECKING:
    import torch

    from dcollapse.data.dataset import Split
    from dcollapse.models.model import CTRModel
    from dcollapse.sources import TableSource

BACKBONES = {"fm": "FM", "crossnet": "CrossNet", "dot": "Dot"}  # display names, in tables and figures
VARIANTS = {"none": "base", "parallel": "+p-DNN", "stacked": "+s-DNN"}


@dataclass
class Run:
    """One thing a report describes: its embedding tables and, for a ``dcollapse train`` checkpoint, its model.

    ``data`` is the dataset directory batch metrics can use (None when unavailable, ``skipped`` says why);
    ``warnings`` are one-line remarks for the reader (e.g. a dataset with another input hash).
    """

    label: str
    source: TableSource
    model: CTRModel | None
    data: Path | None
    skipped: str | None
    warnings: list[str] = field(default_factory=list)
    device: torch.device | None = None  # where the tables and the model live (None: the CPU)

    @property
    def ckpt(self) -> dict[str, Any] | None:
        """The ``dcollapse train`` checkpoint (None for other sources)."""
        return self.source.checkpoint

    @property
    def config(self) -> dict[str, Any]:
        return (self.ckpt or {}).get("config") or {}


def load_run(
    source: Any,
    data: str | Path | None = None,
    *,
    field_dims: Sequence[int] | None = None,
    field_map: str | Path | None = None,
    tables: str | None = None,
    device: str = "auto",
    label: str | None = None,
) -> Run:
    """Read ``source`` (a path, an ``nn.Module``, a state_dict or a tensor) and find the dataset its batch metrics
    can use: ``data`` when given (checked against the run), else the path a ``dcollapse train`` checkpoint stores.
    ``device`` (auto | cpu | cuda) is where the tables, the model and every spectrum are computed; ``label`` names
    the run in reports and messages (default: the path, or the object's type)."""
    from dcollapse.device import pick_device
    from dcollapse.sources import read_tables

    found = read_tables(source, field_dims=list(field_dims) if field_dims else None,
                        field_map=Path(field_map) if field_map else None, tables=tables)  # fmt: skip
    place = pick_device(device)
    if found.model is not None:
        found.model.to(place)
        found.tables[0].weight = found.model.get_parameter("embedding.table").detach()
    else:
        for table in found.tables:
            table.weight = table.weight.to(place)
    label = label or (str(source) if isinstance(source, str | Path) else type(source).__name__)
    ckpt = found.checkpoint
    if ckpt is None:
        run = Run(label, found, None, None, "batch metrics need --data DIR with fields matching the tables")
        run.device = place
        if data is not None:
            run.data, run.skipped = Path(data), None
            match_tables_to_dataset(run)
        return run
    run = Run(label, found, found.model, None, None, device=place)
    if data is not None:
        run.warnings += check_dataset(Path(data), ckpt, label)
        run.data = Path(data)
        return run
    stored = (ckpt.get("data") or {}).get("path")
    if not stored:
        run.skipped = "the checkpoint stores no dataset path (pass --data DIR)"
    elif not (Path(stored) / "meta.json").is_file():
        run.skipped = f"dataset {stored} not found (pass --data DIR)"
    else:
        run.warnings += check_dataset(Path(stored), ckpt, label)
        run.data = Path(stored)
    return run


def check_dataset(data: Path, ckpt: dict[str, Any], ckpt_label: str) -> list[str]:
    """Refuse a dataset whose fields or vocabularies differ from the checkpoint's; return a warning when it was
    built from other input (none for a dataset made with ``preprocess --apply`` from the training dataset)."""
    from dcollapse.data.dataset import load_meta

    meta = load_meta(data)
    want = [(f["name"], int(f["vocab_size"])) for f in ckpt["meta"]["fields"]]
    have = [(f["name"], int(f["vocab_size"])) for f in meta["fields"]]
    if want != have:
        pairs = zip(want, have, strict=False)
        diff = next((f"{w} vs data {h}" for w, h in pairs if w != h), f"{len(want)} vs data {len(have)} fields")
        raise UserError(f"{data}: fields (name, vocab size) differ from those of {ckpt_label} (first: run {diff})")
    trained_on = (ckpt.get("data") or {}).get("hash")
    hashes = {meta.get("input_hash"), (meta.get("vocabulary") or {}).get("input_hash")} - {None}
    if trained_on and hashes and trained_on not in hashes:
        return [f"{data}: input hash differs from the one {ckpt_label} was trained on"]
    return []


def match_tables_to_dataset(run: Run) -> None:
    """Check that a foreign run's per-field tables match the dataset's fields by name, else by order and size;
    reorders nothing, only refuses (UserError) or records why batch metrics are skipped."""
    from dcollapse.data.dataset import load_meta

    assert run.data is not None
    meta = load_meta(run.data)
    have = [(f["name"], int(f["vocab_size"])) for f in meta["fields"]]
    tables = field_tables(run.source)
    names = [name for name, _ in tables]
    sizes = [int(t.shape[0]) for _, t in tables]
    by_name = {name: size for name, size in zip(names, sizes, strict=True)}
    if all(by_name.get(name) == size for name, size in have) and len(have) == len(tables):
        return
    if sizes == [size for _, size in have]:
        return
    run.data, run.skipped = (
        None,
        (
            f"the tables ({len(tables)}: {', '.join(f'{n} {s}' for n, s in list(zip(names, sizes, strict=True))[:4])}"
            f"{' ...' if len(tables) > 4 else ''}) match the fields of --data neither by name nor by order and size"
        ),
    )


def field_tables(source: TableSource) -> list[tuple[str, torch.Tensor]]:
    """(field name, rows [V_f, d]) of every field of every table, in order (views, no copies)."""
    out = []
    for table in source.tables:
        if table.offsets is None or table.fields is None:
            out.append((table.name, table.weight))
            continue
        ends = [*table.offsets.tolist()[1:], table.weight.shape[0]]
        for name, lo, hi in zip(table.fields, table.offsets.tolist(), ends, strict=True):
            out.append((name, table.weight[lo:hi]))
    return out


def batch_matrix(run: Run, ids: torch.Tensor) -> torch.Tensor:
    """Z [B, sum_f d_f]: the run's embeddings of local ids [B, F], concatenated per sample."""
    import torch

    from dcollapse.metrics import collapse

    ids = ids.to(run.device or "cpu")
    if run.model is not None:
        return collapse.batch_matrix(run.model, ids)
    with torch.no_grad():
        parts = [table[ids[:, f].long()] for f, (_, table) in enumerate(field_tables(run.source))]
        return torch.cat(parts, dim=1).float()


def load_fixed_batch(data: str | Path, split: str = "valid", size: int = DEFAULT_BATCH_ROWS,
                     seed: int = DEFAULT_SEED) -> Split:  # fmt: skip
    """The fixed seeded batch of ``split`` every collapse number is measured on (ids [B, F], labels [B])."""
    from dcollapse.data.dataset import load_split
    from dcollapse.metrics.collapse import fixed_batch

    rows = load_split(data, split)
    if len(rows) == 0:
        raise UserError(f"{data}: split {split!r} has no rows")
    return fixed_batch(rows, size, seed)


# ------------------------------------------------------------------------------------ facts stated the same way


def model_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The model settings a report shows (DNN settings only for models with a DNN)."""
    keys = ["model", "arch", "style", "emb_dim", "num_sets"]
    keys += ["cross_layers"] if config.get("model") == "crossnet" else []
    keys += ["dnn", "activation", "norm", "dropout", "residual"] if config.get("arch", "none") != "none" else []
    return {key: config.get(key) for key in keys}


def dnn_label(config: dict[str, Any]) -> str:
    """'3x400 relu', '400-200 gelu BN p=0.1 res' (widths, activation, norm, dropout, residual), '—' without a DNN."""
    if config.get("arch", "none") == "none":
        return "—"
    widths = list(config.get("dnn") or [])
    shape = f"{len(widths)}x{widths[0]}" if len(widths) > 1 and len(set(widths)) == 1 else "-".join(map(str, widths))
    parts = [shape, str(config.get("activation"))]
    parts += [{"batch": "BN", "layer": "LN"}.get(config.get("norm") or "", "")]
    parts += [f"p={config['dropout']:g}" if config.get("dropout") else "", "res" if config.get("residual") else ""]
    return " ".join(part for part in parts if part)


def model_line(config: dict[str, Any]) -> str:
    """'FM +p-DNN, emb 16, DNN 3x400 relu' (with 'x k sets' for multi-embedding)."""
    backbone = BACKBONES.get(config.get("model") or "", str(config.get("model")))
    variant = VARIANTS.get(config.get("arch") or "", str(config.get("arch")))
    sets = f" x {config['num_sets']} sets" if (config.get("num_sets") or 1) > 1 else ""
    dnn = f", DNN {dnn_label(config)}" if config.get("arch", "none") != "none" else ""
    return f"{backbone} {variant}, emb {config.get('emb_dim')}{sets}{dnn}"


def best_entry(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The history entry of the checkpoint's weights (the best epoch; the last one when none is marked)."""
    history = ckpt.get("history") or []
    fallback = history[-1] if history else {}
    return next((h for h in history if h.get("epoch") == ckpt.get("best_epoch")), fallback)


def headline_metrics(ckpt: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(AUC, logloss, split) of a run: the test split when it was evaluated, else the best epoch's validation."""
    test = ckpt.get("test")
    if test:
        return test["auc"], test["logloss"], "test"
    best = best_entry(ckpt)
    return best.get("valid_auc"), best.get("valid_logloss"), "valid"


@dataclass(frozen=True)
class RunKey:
    """What pairs a variant with its base run: same backbone and dataset; then the same width and seed if any."""

    backbone: str | None
    arch: str | None
    dataset: str | None
    emb_dim: int | None
    seed: int | None


def base_index(run: RunKey, candidates: Sequence[RunKey]) -> int | None:
    """Index in ``candidates`` of the base (arch ``none``) run of ``run``, or None (also for a base itself).

    The one rule every report uses: same backbone and dataset, arch ``none``; among those the one with the same
    embedding width, then the same seed, then the first given.
    """
    if run.arch in (None, "none"):
        return None
    bases = [
        i for i, c in enumerate(candidates)
        if c.arch == "none" and c.backbone == run.backbone and c.dataset == run.dataset
    ]  # fmt: skip
    bases.sort(key=lambda i: (candidates[i].emb_dim != run.emb_dim, candidates[i].seed != run.seed))
    return bases[0] if bases else None


def relative_change(value: float | None, base: float | None) -> float | None:
    """value / base - 1, or None when either is missing or the base is not a positive finite number."""
    if value is None or base is None or not math.isfinite(base) or base <= 0:
        return None
    return value / base - 1.0


def tables_listing(source: TableSource) -> dict[str, Any]:
    """The ``--list-tables`` document: every tensor the reader saw, chosen as a table or skipped and why."""
    from dataclasses import asdict

    return {
        "schema": "dcollapse.tables/1",
        "reader": source.reader,
        "layout": source.layout,
        "path": source.path,
        "notes": list(source.notes),
        "candidates": [{**asdict(c), "shape": list(c.shape)} for c in source.candidates],
    }


def load_run_with_batch(source: Any, data: str | Path | None, split: str, size: int, seed: int) -> tuple[Run, Split]:
    """A ``dcollapse train`` run and its fixed seeded batch of ``split`` (for the diagnostics that need the
    model's forward pass and data: AGOP, neural collapse, richness)."""
    run = load_run(source, data, device="cpu")
    if run.model is None:
        raise UserError(f"{run.label}: needs a `dcollapse train` checkpoint (the model's forward pass)")
    if run.data is None:
        raise UserError(f"{run.label}: {run.skipped}")
    return run, load_fixed_batch(run.data, split, size, seed)
