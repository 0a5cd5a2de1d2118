"""How a CTR model is scored during and after training: click probabilities, AUC and logloss (scikit-learn), and
the per-epoch collapse snapshot (RankMe of the fixed validation batch, per-field IA, tracked diagnostics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from dcollapse.data.dataset import Split
from dcollapse.diagnostics.richness import richness_snapshot
from dcollapse.errors import UserError
from dcollapse.metrics import DEFAULT_SEED
from dcollapse.metrics.collapse import fixed_batch
from dcollapse.metrics.spectrum import field_singular_values, information_abundance, rankme, singular_values
from dcollapse.models import CTRModel

SNAPSHOT_SEED = DEFAULT_SEED  # the collapse-snapshot batch is the reports' default batch, whatever --seed
EVAL_BATCH = 65_536


@torch.no_grad()
def predict(model: CTRModel, ids: torch.Tensor, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Click probabilities float64 [N] for ids int [N, F] (model in eval mode)."""
    model.eval()
    logits = [model(ids[i : i + batch_size]).double().cpu() for i in range(0, len(ids), batch_size)]
    return torch.sigmoid(torch.cat(logits)).numpy() if logits else np.zeros(0)


def evaluate(model: CTRModel, split: Split, name: str = "valid") -> dict[str, float]:
    """{"auc", "logloss", "rows"} of ``model`` on ``split`` (scikit-learn's metrics)."""
    return scores(split.labels.cpu().numpy(), predict(model, split.ids), name)


def scores(labels: np.ndarray, probs: np.ndarray, name: str = "valid") -> dict[str, float]:
    """{"auc", "logloss", "rows"} of click probabilities ``probs`` [N] against ``labels`` [N]."""
    if len(np.unique(labels)) < 2:
        raise UserError(f"{name} split: AUC needs both clicks and non-clicks, found only label {labels[:1]}")
    return {"auc": float(roc_auc_score(labels, probs)), "logloss": float(log_loss(labels, probs)), "rows": len(labels)}


@torch.no_grad()
def collapse_snapshot(model: CTRModel, batch: Split, track: Sequence[str] = ()) -> dict[str, Any]:
    """RankMe of Z = flat embeddings [B, F*d_total] of the fixed batch (ids [B, F], labels [B]), per-field
    information abundance of each field's table [V_f, d_total] (its mean over the fields but the scalar ones as
    ``mean_ia``), and the extra
    diagnostics named in ``track`` (see ``TRACKABLE``) on the same embeddings."""
    chunks = [model.embed(batch.ids[i : i + EVAL_BATCH]) for i in range(0, len(batch), EVAL_BATCH)]
    E = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # [B, F, d_total]; one chunk is not copied
    spectra = field_singular_values(model.embedding.table, model.embedding.offsets)  # [F, d_total]
    field_ia = [information_abundance(s) for s in spectra]
    scalar = set(model.embedding.scalar)  # IA 1 by construction: left out of the mean when other fields exist
    read = [ia for f, ia in enumerate(field_ia) if f not in scalar] or field_ia
    snapshot = {
        "rankme": rankme(singular_values(E.flatten(1))),
        "field_ia": field_ia,
        "mean_ia": float(np.mean(read)),
    }
    if "richness" in track:
        snapshot |= richness_snapshot(model, E, batch.labels)
    return snapshot


def snapshot_rows(valid: Split, rows: int) -> Split:
    """The fixed validation batch: up to ``rows`` rows drawn with a constant seed (ids [B, F], labels [B]); the
    same rows the reports measure by default."""
    return fixed_batch(valid, rows, SNAPSHOT_SEED)
