"""Synthetic CTR data with a planted, known click model (ground truth for tests and demos).

Each of ``F`` fields draws its value from a Zipf law over ``V_f`` values (value ``v`` in ``[0, V_f)``, rank ``v + 1``,
probability proportional to ``(v + 1) ** -zipf``). The true logit of a row ``x`` is

    logit(x) = bias + sum_f w_f[x_f]                                        (first order)
             + pairwise_scale / sqrt(P) * sum_{(i, j) in pairs} <u_i[x_i], u_j[x_j]>
             + higher_scale / sqrt(T) * sum_{(i, j, k) in triples} sum_r t_i[x_i, r] t_j[x_j, r] t_k[x_k, r]
             + noise_std * eps,  eps ~ N(0, 1) per row (not observable from the features)

with low-rank true embeddings ``u_f`` [V_f, rank] and ``t_f`` [V_f, rank] scaled so that every planted interaction term
has unit variance; ``first_order_scale``, ``pairwise_scale`` and ``higher_scale`` are therefore (approximately) the
standard deviations of the three parts. The label is Bernoulli(sigmoid(logit)).

The recorded ``prob`` is the click probability given the features, ``E_eps[sigmoid(logit)]`` (exact up to
Gauss-Hermite quadrature), so ranking rows by ``prob`` gives the Bayes-optimal AUC.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dcollapse.data.formats import LABEL
from dcollapse.errors import UserError
from dcollapse.io import atomic_path

SPLITS = ("train", "valid", "test")


@dataclass
class CTRTruth:
    """Planted ground truth for ``rows`` generated rows.

    ``logit`` float64 [N] (without the unobservable noise), ``prob`` float64 [N] = P(click | features),
    ``structure``: the planted parameters as a JSON-serialisable dict (vocab sizes, pairs, triples, weights).
    """

    logit: np.ndarray
    prob: np.ndarray
    structure: dict[str, Any] = field(default_factory=dict)

    def bayes_auc(self, labels: np.ndarray) -> float:
        """AUC of the Bayes-optimal scorer (``prob``) against ``labels`` [N]."""
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, self.prob))


def field_names(fields: int) -> list[str]:
    """Column names of the synthetic fields: ``f1 .. fF``."""
    return [f"f{k + 1}" for k in range(fields)]


def default_vocab_sizes(fields: int) -> list[int]:
    """Vocabulary sizes spread geometrically from 5 to 200 over the fields (small and larger fields)."""
    return [int(round(v)) for v in np.geomspace(5, 200, fields)]


def make_ctr(
    rows: int,
    fields: int,
    seed: int = 0,
    *,
    vocab_sizes: list[int] | None = None,
    zipf: float = 1.1,
    rank: int = 4,
    pairs: int | None = None,
    triples: int = 0,
    bias: float = -1.0,
    first_order_scale: float = 0.5,
    pairwise_scale: float = 1.5,
    higher_scale: float = 0.7,
    noise_std: float = 0.0,
) -> tuple[pl.DataFrame, CTRTruth]:
    """Generate ``rows`` synthetic CTR rows.

    Returns ``(frame, truth)``: ``frame`` has an int8 ``label`` column and one Int64 column per field (``f1..fF``,
    values in ``[0, V_f)``, 0 = most frequent); ``truth`` holds the per-row true logit/probability [rows] and the
    planted structure. ``pairs`` = number of planted field pairs (default: all ``F(F-1)/2``), ``triples`` = number of
    planted third-order interactions (default 0). Deterministic in ``seed``.
    """
    if rows < 1 or fields < 2:
        raise UserError(f"synth: need rows >= 1 and fields >= 2 (got rows={rows}, fields={fields})")
    if rank < 1 or zipf <= 0:
        raise UserError(f"synth: need rank >= 1 and zipf > 0 (got rank={rank}, zipf={zipf})")
    sizes = list(vocab_sizes) if vocab_sizes is not None else default_vocab_sizes(fields)
    if len(sizes) != fields or min(sizes) < 1:
        raise UserError(f"synth: need {fields} vocabulary sizes >= 1 (got {sizes})")
    all_pairs = list(itertools.combinations(range(fields), 2))
    all_triples = list(itertools.combinations(range(fields), 3))
    n_pairs = len(all_pairs) if pairs is None else pairs
    if not 0 <= n_pairs <= len(all_pairs) or not 0 <= triples <= len(all_triples):
        raise UserError(
            f"synth: pairs must be in [0, {len(all_pairs)}] and triples in [0, {len(all_triples)}] "
            f"for {fields} fields (got pairs={n_pairs}, triples={triples})"
        )
    rng = np.random.default_rng(seed)

    # Structure first (independent of `rows`, so the same seed plants the same model at any size).
    w = [rng.normal(0.0, first_order_scale / np.sqrt(fields), size=v) for v in sizes]
    u = [rng.normal(0.0, rank**-0.25, size=(v, rank)) for v in sizes]  # <u_i, u_j> has unit variance
    t = [rng.normal(0.0, rank ** (-1.0 / 6.0), size=(v, rank)) for v in sizes]  # triple products: unit variance
    pair_idx = sorted(rng.choice(len(all_pairs), size=n_pairs, replace=False).tolist())
    triple_idx = sorted(rng.choice(len(all_triples), size=triples, replace=False).tolist()) if triples else []
    chosen_pairs = [all_pairs[i] for i in pair_idx]
    chosen_triples = [all_triples[i] for i in triple_idx]

    # Zipf-distributed values per field.
    x = np.empty((rows, fields), dtype=np.int64)
    for f, v in enumerate(sizes):
        p = np.arange(1, v + 1, dtype=np.float64) ** -zipf
        x[:, f] = rng.choice(v, size=rows, p=p / p.sum())

    logit = np.full(rows, bias, dtype=np.float64)
    for f in range(fields):
        logit += w[f][x[:, f]]
    if chosen_pairs:
        inter = sum(np.einsum("nr,nr->n", u[i][x[:, i]], u[j][x[:, j]]) for i, j in chosen_pairs)
        logit += pairwise_scale / np.sqrt(len(chosen_pairs)) * inter
    if chosen_triples:
        inter = sum(np.einsum("nr,nr,nr->n", t[i][x[:, i]], t[j][x[:, j]], t[k][x[:, k]]) for i, j, k in chosen_triples)
        logit += higher_scale / np.sqrt(len(chosen_triples)) * inter
    prob = _marginal_sigmoid(logit, noise_std)
    noisy = logit + noise_std * rng.standard_normal(rows) if noise_std > 0 else logit
    labels = (rng.random(rows) < _sigmoid(noisy)).astype(np.int8)

    names = field_names(fields)
    frame = pl.DataFrame({LABEL: labels, **{n: x[:, f] for f, n in enumerate(names)}})
    structure = {
        "rows": rows,
        "fields": names,
        "vocab_sizes": sizes,
        "seed": seed,
        "zipf": zipf,
        "rank": rank,
        "bias": bias,
        "first_order_scale": first_order_scale,
        "pairwise_scale": pairwise_scale,
        "higher_scale": higher_scale,
        "noise_std": noise_std,
        "pairs": [[names[i], names[j]] for i, j in chosen_pairs],
        "triples": [[names[i], names[j], names[k]] for i, j, k in chosen_triples],
        "first_order": [wf.tolist() for wf in w],
        "pair_embeddings": [uf.tolist() for uf in u],
        "triple_embeddings": [tf.tolist() for tf in t] if chosen_triples else [],
    }
    return frame, CTRTruth(logit=logit, prob=prob, structure=structure)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _marginal_sigmoid(logit: np.ndarray, noise_std: float) -> np.ndarray:
    """E[sigmoid(logit + noise_std * eps)], eps ~ N(0, 1), by 40-point Gauss-Hermite quadrature; [N] -> [N]."""
    if noise_std <= 0:
        return _sigmoid(logit)
    nodes, weights = np.polynomial.hermite.hermgauss(40)
    vals = _sigmoid(logit[:, None] + np.sqrt(2.0) * noise_std * nodes[None, :])
    return vals @ weights / np.sqrt(np.pi)


def split_assignment(rows: int, valid_frac: float, test_frac: float, seed: int) -> np.ndarray:
    """int8 [rows]: 0 = train, 1 = valid, 2 = test; a seeded random partition with exact split sizes."""
    if valid_frac < 0 or test_frac < 0 or valid_frac + test_frac >= 1:
        raise UserError(f"need valid/test fractions >= 0 with sum < 1 (got {valid_frac}, {test_frac})")
    n_valid, n_test = int(round(rows * valid_frac)), int(round(rows * test_frac))
    order = np.random.default_rng(seed).permutation(rows)
    split = np.zeros(rows, dtype=np.int8)
    split[order[:n_valid]] = 1
    split[order[n_valid : n_valid + n_test]] = 2
    return split


def write_ctr_csv(path: str | Path, rows: int, fields: int, seed: int = 0, *, overwrite: bool = True, **kwargs: Any):
    """Write raw synthetic CTR data to ``path`` (CSV: ``label`` + one column per field) plus two sidecars.

    ``<path>.truth.parquet``: per row (same order as the CSV) the true ``logit`` and ``prob``;
    ``<path>.truth.json``: the planted structure. Returns the :class:`CTRTruth`.
    """
    path = Path(path)
    frame, truth = make_ctr(rows, fields, seed, **kwargs)
    truth_pq, truth_json = _sidecars(path)
    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        atomic_path(truth_pq, overwrite=overwrite) as tmp_pq,
        atomic_path(truth_json, overwrite=overwrite) as tmp_json,
    ):
        frame.write_csv(tmp)
        pl.DataFrame({"logit": truth.logit, "prob": truth.prob}).write_parquet(tmp_pq)
        tmp_json.write_text(json.dumps(truth.structure) + "\n")
    return truth


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".truth.parquet"), path.with_name(path.name + ".truth.json")


def write_ctr_dataset(
    out_dir: str | Path,
    rows: int,
    fields: int,
    seed: int = 0,
    *,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    overwrite: bool = True,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Write a ready preprocessed dataset (``meta.json`` + train/valid/test Parquet) of synthetic CTR data.

    The field value ``v`` (Zipf rank - 1) becomes local id ``v + 2`` (0 = OOV, 1 = missing; vocab size ``V_f + 2``).
    Also writes ``truth.parquet`` (columns ``split``, ``logit``, ``prob`` in row order of the split files) and
    ``truth.json`` (planted structure) into the directory. Returns ``{split: prob float64 [N_split]}``, the true
    click probabilities in the row order of each split file. ``kwargs`` go to :func:`make_ctr`.
    """
    from dcollapse.data.dataset import write_dataset

    frame, truth = make_ctr(rows, fields, seed, **kwargs)
    split = split_assignment(rows, valid_frac, test_frac, seed)
    names = field_names(fields)
    ids = frame.with_columns([(pl.col(n) + 2).cast(pl.Int32) for n in names])
    parts = {s: ids.filter(pl.Series(split == k)) for k, s in enumerate(SPLITS) if (split == k).any()}
    probs = {s: truth.prob[split == k] for k, s in enumerate(SPLITS) if s in parts}
    fields_meta = [
        {"name": n, "kind": "categorical", "vocab_size": v + 2}
        for n, v in zip(names, truth.structure["vocab_sizes"], strict=True)
    ]
    options = {"synth": "ctr", "rows": rows, "fields": fields, "seed": seed, "valid_frac": valid_frac,
               "test_frac": test_frac, **kwargs}  # fmt: skip
    truth_frame = pl.concat(
        [
            pl.DataFrame({"split": s, "logit": truth.logit[split == k], "prob": truth.prob[split == k]})
            for k, s in enumerate(SPLITS)
            if s in parts
        ]
    )
    write_dataset(
        out_dir,
        parts,
        fields_meta,
        name=f"synth-ctr-{fields}f-seed{seed}",
        options=options,
        input_hash=_structure_hash(truth.structure),
        overwrite=overwrite,
        extra_files={
            "truth.parquet": lambda p: truth_frame.write_parquet(p),
            "truth.json": lambda p: p.write_text(json.dumps(truth.structure) + "\n"),
        },
    )
    return probs


def _structure_hash(structure: dict[str, Any]) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()
