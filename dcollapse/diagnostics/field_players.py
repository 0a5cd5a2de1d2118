"""CTR feature fields as Harsanyi players: what masking a field means, the value function of a CTR model, how the
player fields are chosen, and the interaction analysis of one or several checkpoints of one run
(``dcollapse interactions``; the set-function maths lives in :mod:`dcollapse.diagnostics.harsanyi`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dcollapse.diagnostics import harsanyi as H
from dcollapse.diagnostics.agop import agop
from dcollapse.errors import UserError

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel

DEFAULT_TOP = 10  # players when the model has more than MAX_PLAYERS fields and none were chosen
BASELINE_ROWS = 10_000  # training rows the mean baseline averages over
AGOP_ROWS = 512  # rows the AGOP field ranking averages over
RANKINGS = ("agop", "masking")


BASELINES = ("mean", "oov", "zero")


@dataclass
class FieldInputs:
    """What masking a field replaces: its embedding ``embeddings`` [..., F, d_total] and its first-order logit
    term ``first_order`` [..., F] (textbook FM's per-id weight; zeros for models without one)."""

    embeddings: torch.Tensor
    first_order: torch.Tensor


def field_inputs(model: CTRModel, ids: torch.Tensor) -> FieldInputs:
    """Per-sample field inputs of a CTR model for local ids int [S, F]: embeddings [S, F, d], first order [S, F]."""
    with torch.no_grad():
        emb = model.embed(ids)
        first_order = getattr(model, "first_order", None)
        if first_order is None:
            first = emb.new_zeros(emb.shape[:2])
        else:
            first = model.embedding.read(first_order, ids)[..., 0]  # a scalar field: weight x value
    return FieldInputs(emb, first)


def field_baselines(model: CTRModel, kind: str, ids: torch.Tensor | None = None) -> FieldInputs:
    """Per-field baselines of a CTR model: embeddings [F, d_total], first-order terms [F].

    ``mean``: the field's mean input over the data rows ``ids`` [N, F]; ``oov``: the field's OOV row
    (local id 0); ``zero``: zeros.
    """
    num_fields = model.embedding.num_fields
    if kind == "mean":
        if ids is None or ids.shape[0] == 0:
            raise UserError("the mean baseline needs data rows to average embeddings over")
        parts = [field_inputs(model, chunk) for chunk in ids.split(8192)]
        return FieldInputs(
            torch.stack([p.embeddings.sum(dim=0) for p in parts]).sum(dim=0) / ids.shape[0],
            torch.stack([p.first_order.sum(dim=0) for p in parts]).sum(dim=0) / ids.shape[0],
        )
    if kind == "oov":
        oov = field_inputs(model, torch.zeros(1, num_fields, dtype=torch.int64))
        return FieldInputs(oov.embeddings[0], oov.first_order[0])
    if kind == "zero":
        table = model.embedding.table
        return FieldInputs(table.new_zeros(num_fields, table.shape[1]), table.new_zeros(num_fields))
    raise UserError(f"unknown baseline {kind!r} (expected one of: {', '.join(BASELINES)})")


def field_value_fn(
    model: CTRModel,
    inputs: FieldInputs,
    labels: torch.Tensor,
    players: Sequence[int],
    baseline: FieldInputs,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v(mask) for a CTR model whose players are the fields ``players``.

    ``inputs`` of S samples ([S, F, d], [S, F]) with ``labels`` [S] in {0, 1}; ``baseline`` ([F, d], [F]).
    The returned function maps bool [M, n] (n = len(players)) to the sign-adjusted logit float64 [M, S]:
    ``v = (2 y - 1) * logit = log p(y|x_T) / (1 - p(y|x_T))``. Fields that are not players keep their values.
    """
    sign = (2.0 * labels.to(torch.float64) - 1.0)[None, :]
    player_index = torch.as_tensor(list(players), dtype=torch.int64)
    samples, num_fields, dim = inputs.embeddings.shape

    def value(mask: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(mask.shape[0], num_fields, dtype=torch.bool)
        keep[:, player_index] = mask
        emb = torch.where(keep[:, None, :, None], inputs.embeddings[None], baseline.embeddings[None, None])
        first = torch.where(keep[:, None, :], inputs.first_order[None], baseline.first_order[None, None])
        logits = model.forward_from_embeddings(emb.reshape(-1, num_fields, dim)).reshape(mask.shape[0], samples)
        return (logits + first.sum(dim=-1)).to(torch.float64) * sign

    return value


def masking_drop(model: CTRModel, inputs: FieldInputs, labels: torch.Tensor, baseline: FieldInputs) -> torch.Tensor:
    """float64 [F]: E_x |v(x) - v(x with field f at its baseline)|, the log-odds change from masking each field."""
    num_fields = inputs.embeddings.shape[1]
    value = field_value_fn(model, inputs, labels, range(num_fields), baseline)
    masks = torch.ones(num_fields + 1, num_fields, dtype=torch.bool)
    masks[1:] &= ~torch.eye(num_fields, dtype=torch.bool)
    with torch.no_grad():
        out = value(masks)  # [F + 1, S]
    return (out[:1] - out[1:]).abs().mean(dim=1)


def agop_field_shares(model: CTRModel, ids: torch.Tensor) -> torch.Tensor:
    """float64 [F]: each field's share of the trace of the AGOP of the logit with respect to E [B, F * d].

    ``trace block_f / trace`` = E_x ||d logit / d e_f||^2 / E_x ||d logit / d E||^2 over the rows ``ids`` [B, F].
    """
    emb = field_inputs(model, ids).embeddings
    rows, num_fields, dim = emb.shape
    matrix = agop(lambda flat: model.forward_from_embeddings(flat.reshape(-1, num_fields, dim)), emb.reshape(rows, -1))
    per_field = matrix.diagonal().reshape(num_fields, dim).sum(dim=1)
    total = per_field.sum()
    return per_field / total if total > 0 else torch.full_like(per_field, 1.0 / num_fields)


# ------------------------------------------------------------------------------------------ checkpoints of one run


@dataclass
class EpochRun:
    """One checkpoint: its label, dict, rebuilt model (eval mode, CPU) and the epoch it was saved at."""

    label: str
    ckpt: dict[str, Any]
    model: CTRModel
    epoch: int


def load_epoch_runs(paths: Sequence[str | Path]) -> list[EpochRun]:
    """Load CTR checkpoints of one dataset layout, sorted by epoch (distinct epochs when there are several)."""
    from dcollapse.reports.runs import load_run

    runs = []
    for path in paths:
        loaded = load_run(path)
        ckpt, model = loaded.ckpt, loaded.model
        if ckpt is None or model is None:
            raise UserError(f"{path}: interactions need a `dcollapse train` checkpoint (the model's forward pass)")
        # epoch snapshots name their epoch; a run's main checkpoint holds the best epoch's weights
        history = ckpt.get("history") or []
        epoch = int(ckpt.get("epoch") or ckpt.get("best_epoch") or (history[-1]["epoch"] if history else 0))
        runs.append(EpochRun(loaded.label, ckpt, model, epoch))
    layout = _field_layout(runs[0].ckpt["meta"])
    for run in runs[1:]:
        if _field_layout(run.ckpt["meta"]) != layout:
            raise UserError(f"{run.label}: fields differ from those of {runs[0].label}; give checkpoints of one run")
    runs.sort(key=lambda r: r.epoch)
    epochs = [r.epoch for r in runs]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"two checkpoints were saved at the same epoch ({epochs}); give one run's epoch files")
    return runs


def _field_layout(meta: dict[str, Any]) -> list[tuple[str, int]]:
    return [(f["name"], int(f["vocab_size"])) for f in meta["fields"]]


def dataset_of(run: EpochRun, data: Path | None) -> tuple[Path, list[str]]:
    """(dataset directory, warnings): ``data`` or the stored path, checked against the checkpoint's fields."""
    from dcollapse.reports.runs import check_dataset

    stored = (run.ckpt.get("data") or {}).get("path")
    directory = data if data is not None else Path(stored) if stored else None
    if directory is None or (data is None and not (directory / "meta.json").is_file()):
        raise UserError(f"{run.label}: its dataset {stored or '(none stored)'} is not available; pass --data DIR")
    return directory, check_dataset(directory, run.ckpt, run.label)


@dataclass(frozen=True)
class PlayerChoice:
    """How the players are chosen: by name (``fields``), the ``top`` N by ``rank_by``, or all when few enough."""

    fields: str | None = None
    top: int | None = None
    rank_by: str = "agop"


def choose_players(
    names: list[str], choice: PlayerChoice, run: EpochRun, ids: torch.Tensor, labels: torch.Tensor,
    baseline: FieldInputs,
) -> tuple[list[int], dict[str, Any]]:  # fmt: skip
    """Player fields (indices) and how they were chosen: by name, the top N by AGOP share or masking drop, or all."""
    if choice.fields is not None and choice.top is not None:
        raise UserError("give --fields or --top, not both")
    if choice.fields is not None:
        chosen = [name.strip() for name in choice.fields.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise UserError(f"--fields: no field named {unknown[0]!r} (fields: {', '.join(names)})")
        if len(set(chosen)) != len(chosen) or not chosen:
            raise UserError("--fields: give distinct field names, comma-separated")
        if len(chosen) > H.MAX_PLAYERS:
            raise UserError(f"--fields: at most {H.MAX_PLAYERS} fields (2^n masked inputs), got {len(chosen)}")
        return [names.index(name) for name in chosen], {"by": "fields"}
    top = choice.top
    if top is None:
        if len(names) <= H.MAX_PLAYERS:
            return list(range(len(names))), {"by": "all"}
        top = DEFAULT_TOP
    if not 1 <= top <= min(H.MAX_PLAYERS, len(names)):
        raise UserError(f"--top: expected 1..{min(H.MAX_PLAYERS, len(names))}, got {top}")
    if choice.rank_by == "agop":
        scores = agop_field_shares(run.model, ids[:AGOP_ROWS])
    else:
        scores = masking_drop(run.model, field_inputs(run.model, ids), labels, baseline)
    order = torch.argsort(scores, descending=True)[:top].sort().values.tolist()
    how = {"by": choice.rank_by, "epoch": run.epoch, "scores": dict(zip(names, scores.tolist(), strict=True))}
    if choice.top is None:
        how["note"] = f"{len(names)} fields > {H.MAX_PLAYERS}: analysing the top {top} (use --fields or --top)"
    return order, how


@dataclass(frozen=True)
class InteractionOptions:
    """The masking baseline, and the sparse AND-OR extraction's settings (``sparse`` False: AND only)."""

    baseline: str = "mean"
    sparse: bool = False
    lr: float = 1e-6
    niter: int = 5000
    tau: float = 0.04
    show: int = 10

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise UserError(f"--baseline: expected one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.sparse and (self.niter < 1 or self.lr <= 0 or self.tau < 0):
            raise UserError("--sparse needs --niter >= 1, --lr > 0 and --tau >= 0")


def analyse(
    run: EpochRun, ids: torch.Tensor, labels: torch.Tensor, baseline: FieldInputs, players: list[int],
    options: InteractionOptions, names: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The interaction document of one checkpoint (order distribution, salient share, strongest sets)."""
    value = field_value_fn(run.model, field_inputs(run.model, ids), labels, players, baseline)
    values = H.masked_outputs(value, len(players))
    dense = H.harsanyi(values)
    result = dense
    if options.sparse:
        result = H.sparse_and_or(values, lr=options.lr, niter=options.niter, tau=options.tau)
    dist = H.order_distribution(result)
    top = H.top_interactions(result, options.show)
    return {
        "checkpoint": run.label,
        "epoch": run.epoch,
        "v_full": float(values[-1].mean()),
        "v_empty": float(values[0].mean()),
        "l1": {"and_only": float(dense.strengths().sum(0).mean()), "result": float(result.strengths().sum(0).mean())},
        "max_q": float(result.q.abs().max()),
        "order": {"orders": list(range(1, len(players) + 1)), **dataclasses.asdict(dist)},
        "mean_order": dist.mean_order(),
        "salient_fraction": H.salient_fraction(result),
        "top": [{**dataclasses.asdict(t), "fields": [names[players[i]] for i in t.players]} for t in top],
    }


def interaction_report(
    checkpoints: Sequence[str | Path],
    *,
    data: Path | None = None,
    choice: PlayerChoice = PlayerChoice(),
    options: InteractionOptions = InteractionOptions(),
    samples: int = 32,
    split: str = "train",
    high_order: int | None = None,
    seed: int = 0,
    on_checkpoint: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The ``dcollapse interactions`` document: per checkpoint the order distribution and strongest field sets on
    ``samples`` seeded rows of ``split``; with several epoch checkpoints also the phase boundary and loss gap.

    ``on_checkpoint(label)`` is called after each checkpoint is analysed (for progress).
    """
    from dcollapse.data.dataset import load_meta, load_split
    from dcollapse.metrics.collapse import fixed_batch

    if choice.rank_by not in RANKINGS:
        raise UserError(f"--rank-by: expected {' or '.join(RANKINGS)}, got {choice.rank_by!r}")
    runs = load_epoch_runs(checkpoints)
    last = runs[-1]
    directory, warnings = dataset_of(last, data)
    meta = load_meta(directory)
    names = [f["name"] for f in meta["fields"]]
    rows = load_split(directory, split, meta)
    if len(rows) == 0:
        raise UserError(f"{directory}: split {split!r} has no rows")
    sample = fixed_batch(rows, samples, seed)
    ids, labels = sample.ids.long(), sample.labels
    base_rows = load_split(directory, "train", meta) if "train" in meta["splits"] else rows
    baseline_ids = fixed_batch(base_rows, BASELINE_ROWS, seed).ids.long()
    players, selection = choose_players(
        names, choice, last, ids, labels, field_baselines(last.model, options.baseline, baseline_ids)
    )
    if high_order is not None and not 1 <= high_order <= len(players):
        raise UserError(f"--high-order: expected 1..{len(players)}, got {high_order}")
    results = []
    for run in runs:
        baseline = field_baselines(run.model, options.baseline, baseline_ids)
        results.append(analyse(run, ids, labels, baseline, players, options, names))
        if on_checkpoint is not None:
            on_checkpoint(run.label)
    doc: dict[str, Any] = {
        "schema": "dcollapse.interactions/2",
        "players": [names[i] for i in players],
        "selection": selection,
        "data": str(directory),
        "split": split,
        "samples": len(sample),
        "seed": seed,
        "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "show"},
        "results": results,
        "warnings": warnings,
    }
    if len(runs) > 1:
        distributions = [H.OrderDistribution(r["order"]["positive"], r["order"]["negative"], r["order"]["total"])
                         for r in results]  # fmt: skip
        phase = H.detect_two_phase([r.epoch for r in runs], distributions, high_order)
        history = max((r.ckpt.get("history") or [] for r in runs), key=len)
        doc["phase"] = dataclasses.asdict(phase)
        doc["loss_gap"] = dataclasses.asdict(H.loss_gap(history))
    return doc
