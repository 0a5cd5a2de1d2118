"""The plain-language reading of a report's numbers, by fixed, documented rules (docs/reports.md, "Verdict").

- Reference: every spectrum is read against an *untrained* matrix of the same shape, i.i.d. Gaussian entries
  (what ``dcollapse train`` and the common CTR libraries initialise tables with; the metrics do not depend on the
  scale). A field whose IA is below :data:`COLLAPSED` of its reference is *collapsed*, below :data:`PARTLY`
  *partly collapsed*; fields with fewer than :data:`MIN_RANK` possible dimensions are not judged, nor are scalar
  fields (``preprocess --numeric-as scalar``: one vector times the value, rank 1 by construction).
- Flags: runs whose numbers cannot be read as collapse (:func:`run_flags`).
- Variants: the RankMe change against the base run beside the AUC change (:func:`change_line`).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

COLLAPSED = 0.25  # IA below this share of an untrained table's: "collapsed"
PARTLY = 0.5  # below this share: "partly collapsed"
MIN_RANK = 4  # min(vocab, d) below this: too few dimensions to judge
SCALAR = "scalar field"  # the state of a field embedded as one vector x its value: rank 1 by construction
SCALAR_READING = "scalar field (one vector x value): rank 1 by construction, not read"
REFERENCE_ROWS = 1 << 17  # an untrained table's reference uses at most this many rows (values change < 1% beyond)
REFERENCE_SEED = 0
NEAR_CHANCE_AUC = 0.55  # a best validation AUC below this at best epoch <= EARLY_EPOCHS is "near chance"
EARLY_EPOCHS = 2
RANKME_SAME = 0.05  # |Δ RankMe| within 5% reads as "unchanged"
AUC_SAME = 0.001  # |Δ AUC| within 0.001 reads as "no AUC change"
SEED_AUC_GAP = 0.02  # a best valid AUC this far under the median of the other seeds, at best epoch <= EARLY_EPOCHS
CLAIM_LEVEL = 0.95  # the two-sided t interval of a seed-paired change
LOGLOSS_FALLING = 0.01  # the last epoch's valid logloss more than 1% under the one before: stopped while still falling
# flags that keep a run out of a sweep's means (still_improving alone does not: a fixed-length run often ends on it)
EXCLUDING = ("near_chance", "below_other_seeds", "worse_than_base_rate", "logloss_falling")


@dataclass(frozen=True)
class Reference:
    """IA and RankMe of an untrained (i.i.d. Gaussian) matrix of one shape."""

    rows: int
    dim: int
    ia: float
    rankme: float


@functools.lru_cache(maxsize=512)
def untrained_reference(rows: int, dim: int) -> Reference:
    """:class:`Reference` of a seeded Gaussian [min(rows, REFERENCE_ROWS), dim] matrix."""
    import torch

    from dcollapse.metrics.spectrum import information_abundance, rankme, singular_values

    n = max(1, min(rows, REFERENCE_ROWS))
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    s = singular_values(torch.randn(n, dim, generator=generator, dtype=torch.float64))
    return Reference(rows, dim, information_abundance(s), rankme(s))


def field_state(ia: float, vocab_size: int, dim: int, scalar: bool = False) -> str:
    """'collapsed' | 'partly collapsed' | 'not collapsed' | 'not judged' (too few possible dimensions) |
    :data:`SCALAR` (``scalar``: a field embedded as one vector times its value, whose IA is 1 by construction)."""
    if scalar:
        return SCALAR
    if min(vocab_size, dim) < MIN_RANK:
        return "not judged"
    share = ia / untrained_reference(vocab_size, dim).ia
    return "collapsed" if share < COLLAPSED else "partly collapsed" if share < PARTLY else "not collapsed"


def field_lines(fields: list[dict[str, Any]], dim: int) -> list[str]:
    """The verdict on per-field rows (each with "field", "vocab_size", "ia", "untrained", "state")."""
    scalar = [f["field"] for f in fields if f["state"] == SCALAR]
    not_read = [f"field{'s' if len(scalar) > 1 else ''} {', '.join(scalar)}: {SCALAR_READING}"] if scalar else []
    judged = [f for f in fields if f["state"] not in ("not judged", SCALAR)]
    collapsed = [f for f in judged if f["state"] == "collapsed"]
    partly = [f for f in judged if f["state"] == "partly collapsed"]
    if not judged:
        return [f"no other field has {MIN_RANK} or more possible dimensions: nothing to judge" if scalar
                else f"no field has {MIN_RANK} or more possible dimensions: nothing to judge", *not_read]  # fmt: skip
    head = (
        f"{len(collapsed)} of {len(judged)} fields collapsed (IA under {COLLAPSED:.0%} of an untrained table's), "
        f"{len(partly)} partly (under {PARTLY:.0%})"
    )
    worst = sorted(collapsed + partly, key=lambda f: f["ia"] / f["untrained"]["ia"])[:3]
    lines = [head + ("" if worst else ": the tables use their dimensions")]
    lines += [
        f"field {f['field']}: IA {f['ia']:.1f} of {min(f['vocab_size'], dim)} "
        f"(an untrained table of this shape: {f['untrained']['ia']:.1f}): {f['state']}"
        for f in worst
    ]
    return lines + not_read


def batch_line(rankme: float, rows: int, dim: int) -> str:
    """RankMe of the batch matrix Z [rows, dim] against an untrained model's."""
    ref = untrained_reference(rows, dim)
    share = rankme / ref.rankme if ref.rankme else 0.0
    return (
        f"batch matrix Z: RankMe {rankme:.1f} of {min(rows, dim)} dimensions "
        f"(an untrained model's: {ref.rankme:.1f}; {share:.0%} of it)"
    )


def base_rate_logloss(positives: int, rows: int) -> float | None:
    """Logloss of always predicting the positive rate p of a split: -p log p - (1-p) log(1-p)."""
    if rows <= 0 or positives <= 0 or positives >= rows:
        return None
    p = positives / rows
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def run_flags(ckpt: dict[str, Any]) -> list[dict[str, str]]:
    """Reasons a ``dcollapse train`` run's numbers cannot be read as collapse, each {"flag", "reason"}:

    - ``near_chance``: best epoch <= EARLY_EPOCHS with a best validation AUC under NEAR_CHANCE_AUC;
    - ``worse_than_base_rate``: the headline logloss is worse than predicting the training split's positive rate;
    - ``still_improving``: the best epoch is the last epoch run (training had not converged);
    - ``logloss_falling``: besides, the last epoch's valid logloss is more than LOGLOSS_FALLING under the epoch
      before (stopped while the loss still fell fast).
    """
    from dcollapse.reports.runs import best_entry, headline_metrics

    flags = []
    history = ckpt.get("history") or []
    best = best_entry(ckpt)
    epoch, auc = best.get("epoch"), best.get("valid_auc")
    if epoch is not None and auc is not None and epoch <= EARLY_EPOCHS and auc < NEAR_CHANCE_AUC:
        flags.append({"flag": "near_chance", "reason": f"best epoch {epoch} with valid AUC {auc:.3f} (near chance)"})
    _, logloss, split = headline_metrics(ckpt)
    train = ((ckpt.get("meta") or {}).get("splits") or {}).get("train") or {}
    floor = base_rate_logloss(int(train.get("positives") or 0), int(train.get("rows") or 0))
    if logloss is not None and floor is not None and logloss > floor:
        flags.append({
            "flag": "worse_than_base_rate",
            "reason": f"{split} logloss {logloss:.4f} is worse than predicting the base rate ({floor:.4f})",
        })  # fmt: skip
    if history and epoch is not None and epoch == history[-1].get("epoch"):
        flags.append({
            "flag": "still_improving",
            "reason": f"still improving at the last epoch ({epoch} of {len(history)}): more epochs may change it",
        })  # fmt: skip
        losses = [h.get("valid_logloss") for h in history[-2:]]
        if len(losses) == 2 and None not in losses and losses[1] < (1 - LOGLOSS_FALLING) * losses[0]:
            flags.append({
                "flag": "logloss_falling",
                "reason": f"valid logloss still fell {1 - losses[1] / losses[0]:.1%} in the last epoch "
                f"({losses[0]:.4f} -> {losses[1]:.4f})",
            })  # fmt: skip
    return flags


def seed_flags(best_epoch: int | None, auc: float | None, other_aucs: list[float]) -> list[dict[str, str]]:
    """The flag a run gets against the other seeds of its grid entry: ``below_other_seeds`` when it stopped at best
    epoch <= EARLY_EPOCHS with a best valid AUC more than SEED_AUC_GAP under the median of ``other_aucs``."""
    if best_epoch is None or auc is None or not other_aucs or best_epoch > EARLY_EPOCHS:
        return []
    median = statistics.median(other_aucs)
    if auc >= median - SEED_AUC_GAP:
        return []
    return [{
        "flag": "below_other_seeds",
        "reason": f"best epoch {best_epoch} with valid AUC {auc:.3f}, over {SEED_AUC_GAP} under the other seeds' "
        f"median {median:.3f}",
    }]  # fmt: skip


def claim_state(changes: list[float], interval: tuple[float, float] | None) -> str:
    """'held' | 'not held' | 'mixed' | 'not judged' for the claim "the DNN raises RankMe", from the seed-paired
    RankMe changes and their CLAIM_LEVEL t interval: held when every seed is up by more than RANKME_SAME and the
    interval lies above 0; not held when no seed is up by more than RANKME_SAME; mixed otherwise; not judged with
    fewer than two seeds."""
    if len(changes) < 2 or interval is None:
        return "not judged"
    up = sum(c > RANKME_SAME for c in changes)
    if up == len(changes) and interval[0] > 0:
        return "held"
    return "not held" if up == 0 else "mixed"


def change_line(name: str, rankme_change: float | None, auc_change: float | None, split: str) -> str | None:
    """'deepfm.pt: Δ RankMe +42% with Δ AUC +0.004 (test): raises RankMe at no AUC cost' (None without a base)."""
    if rankme_change is None:
        return None
    if rankme_change > RANKME_SAME:
        effect = "raises RankMe"
    elif rankme_change < -RANKME_SAME:
        effect = "lowers RankMe"
    else:
        effect = f"leaves RankMe unchanged (within ±{RANKME_SAME:.0%})"
    if auc_change is None:
        cost = "(no AUC to compare)"
    elif auc_change < -AUC_SAME:
        cost = f"at an AUC cost of {-auc_change:.4f}"
    elif auc_change > AUC_SAME:
        cost = "and raises AUC"
    else:
        cost = "at no AUC cost"
    auc_text = "" if auc_change is None else f" with Δ AUC {auc_change:+.4f} ({split})"
    return f"{name}: Δ RankMe {rankme_change:+.0%}{auc_text}: the DNN {effect} {cost}"


def training_clause(over: dict[str, Any] | None) -> str:
    """'; over training: +++ (every common epoch up), at matched valid AUC 0.712: +38%' ('' without histories)."""
    if over is None:
        return ""
    pattern = over["signs"]
    agree = " (every common epoch)" if len(set(pattern)) == 1 and len(pattern) > 1 else ""
    text = f"; per epoch {pattern}{agree}"
    matched = over["matched_auc"]
    if matched is not None and matched["change"] is not None:
        text += f", at matched valid AUC {matched['auc']:.4f}: {matched['change']:+.0%}"
    return text
