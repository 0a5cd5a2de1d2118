"""Random Hierarchy Model (RHM) and Sparse RHM (SRHM): grammar, sampling, parsing, encoding, perturbations.

Vocabulary and shapes (one sample is a 1-D sequence of symbols):

- ``v`` informative symbols ``0..v-1`` per level, plus the *empty* symbol ``v`` (SRHM only fills it in);
  ``n_c`` classes at the top; ``m`` synonymous rules per symbol; ``L`` levels; ``s`` informative children per
  rule; ``s0`` uninformative slots attached to every informative child.
- A rule turns one symbol into a *patch* of ``S = s (s0 + 1)`` symbols holding its ``s`` children (in order)
  and ``S - s`` empty symbols. The empty symbol turns into an all-empty patch. The input has
  ``d = S**L`` symbols of which exactly ``s**L`` are informative. ``s0 = 0`` is the RHM.
- Where the children sit inside a patch is an *arrangement*: sparsity type ``A`` puts child ``j`` anywhere in
  its own sub-patch ``[j (s0+1), (j+1)(s0+1))`` ((s0+1)**s arrangements); type ``B`` allows any positions that
  keep the children's order (C(S, s) arrangements).

A sample is fully described by its class and, for every generation depth ``t = 0..L-1`` (0 = the rule applied
to the class), one rule index in ``[0, m)`` and one arrangement index per *informative* node of that depth
(``s**t`` nodes, left to right; choices belong to nodes, not to positions, so moving a node keeps its rule).
Rules are unambiguous (each s-tuple encodes at most one symbol per depth),
so :func:`parse` recovers the class and all choices from the symbols alone; the perturbation operators parse,
re-draw some choices and render again.

Perturbation levels count from the input: level ``l`` (1..L) re-draws the choices of the ``l`` lowest
generation depths ``t = L-l .. L-1``, i.e. "reset from level l on" down to the input. Level 1 swaps every
input patch for a synonym (or moves its informative symbols inside their slots); level L re-draws everything
except the class. A hidden layer k of a hierarchical network can be insensitive to levels l <= k.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcollapse import __version__
from dcollapse.errors import UserError
from dcollapse.io import atomic_path, read_description

DATA_FORMAT = "dcollapse.hierarchy"
DATA_VERSION = 1
DESCRIPTION_FILE = "hierarchy.json"
SAMPLES_FILE = "samples.npz"
ENCODINGS = ("onehot", "all0")
SPARSITY_TYPES = ("A", "B")
_MAX_TUPLES = 10**7  # v**s and S**s above this would make the rule/arrangement tables too large


@dataclass(frozen=True)
class Grammar:
    """The ground truth of one (S)RHM: parameters plus the sampled production rules.

    ``rules[t]`` is int64 ``[n_upper, m, s]``: the ``m`` rules (each an s-tuple of child symbols) of every
    symbol at depth ``t`` (``n_upper = n_c`` at ``t = 0``, ``v`` below); rows of symbols that never occur are -1.
    """

    L: int
    s: int
    s0: int
    v: int
    m: int
    n_c: int
    sparsity: str
    seed: int
    rules: tuple[np.ndarray, ...] = field(repr=False)

    @property
    def patch(self) -> int:
        """S = s (s0 + 1): the length of the patch one rule produces."""
        return self.s * (self.s0 + 1)

    @property
    def length(self) -> int:
        """d = S**L: the input length in symbols."""
        return self.patch**self.L

    @property
    def empty(self) -> int:
        """The empty symbol's id (v)."""
        return self.v

    @property
    def arrangements(self) -> np.ndarray:
        """int64 [n_arr, s]: the patch offsets of the s children for each allowed arrangement (ascending)."""
        return _arrangements(self.s, self.s0, self.sparsity)

    def max_distinct(self) -> int:
        """Number of distinct inputs the grammar can produce: n_c (m n_arr)^((s^L - 1)/(s - 1)).

        Every internal node of the s-ary tree of informative symbols (1 + s + ... + s^(L-1) of them) picks one
        of m rules and one of n_arr arrangements, and distinct choices give distinct inputs (unambiguous rules).
        """
        nodes = sum(self.s**t for t in range(self.L))
        return self.n_c * (self.m * len(self.arrangements)) ** nodes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description (parameters and rules as nested lists)."""
        return {
            "L": self.L,
            "s": self.s,
            "s0": self.s0,
            "v": self.v,
            "m": self.m,
            "n_c": self.n_c,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "rules": [r.tolist() for r in self.rules],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grammar:
        """Inverse of :meth:`to_dict` (validates shapes)."""
        try:
            g = cls(
                L=int(d["L"]),
                s=int(d["s"]),
                s0=int(d["s0"]),
                v=int(d["v"]),
                m=int(d["m"]),
                n_c=int(d["n_c"]),
                sparsity=str(d["sparsity"]),
                seed=int(d["seed"]),
                rules=tuple(np.asarray(r, dtype=np.int64) for r in d["rules"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"grammar description is incomplete or malformed ({type(exc).__name__}: {exc})") from None
        _check_params(g.L, g.s, g.s0, g.v, g.m, g.n_c, g.sparsity)
        for t, r in enumerate(g.rules):
            if r.shape != ((g.n_c if t == 0 else g.v), g.m, g.s):
                raise UserError(f"grammar rules at depth {t} have shape {r.shape}, expected rows x {g.m} x {g.s}")
        if len(g.rules) != g.L:
            raise UserError(f"grammar has {len(g.rules)} rule levels, expected L = {g.L}")
        return g


@dataclass
class Choices:
    """Latent choices of N samples: ``rule[t]``, ``arrangement[t]`` int64 [N, s**t] (informative nodes of depth t)."""

    rule: list[np.ndarray]
    arrangement: list[np.ndarray]


def _check_params(L: int, s: int, s0: int, v: int, m: int, n_c: int, sparsity: str) -> None:
    for name, value, low in (("L", L, 1), ("s", s, 2), ("s0", s0, 0), ("v", v, 2), ("m", m, 1), ("n_c", n_c, 2)):
        if value < low:
            raise UserError(f"hierarchy parameter {name} = {value}: expected an integer >= {low}")
    if sparsity not in SPARSITY_TYPES:
        raise UserError(f"sparsity type {sparsity!r}: expected one of {', '.join(SPARSITY_TYPES)}")
    if v**s > _MAX_TUPLES or (s * (s0 + 1)) ** s > _MAX_TUPLES:
        raise UserError(f"v**s = {v}**{s} or (s(s0+1))**s too large (limit {_MAX_TUPLES})")


def _arrangements(s: int, s0: int, sparsity: str) -> np.ndarray:
    if sparsity == "A":
        slots = itertools.product(range(s0 + 1), repeat=s)
        return np.array([[j * (s0 + 1) + a for j, a in enumerate(c)] for c in slots], dtype=np.int64)
    return np.array(list(itertools.combinations(range(s * (s0 + 1)), s)), dtype=np.int64)


def sample_grammar(L: int, s: int, s0: int, v: int, m: int, n_c: int, sparsity: str = "A", seed: int = 0) -> Grammar:
    """Draw the production rules level by level from the top, as in the RHM.

    For the symbols that occur at the level above (the n_c classes at depth 0), draw ``m`` times as many
    distinct s-tuples of ``[0, v)`` without replacement and give m of them to each symbol: no tuple encodes
    two symbols, so the grammar is unambiguous.
    """
    _check_params(L, s, s0, v, m, n_c, sparsity)
    rng = np.random.default_rng(seed)
    used = np.arange(n_c)
    powers = v ** np.arange(s - 1, -1, -1)
    rules = []
    for t in range(L):
        if m * len(used) > v**s:
            raise UserError(f"not enough s-tuples for unambiguous rules at depth {t}: v**s = {v**s} < {m * len(used)}")
        picks = rng.choice(v**s, size=m * len(used), replace=False)
        tuples = (picks[:, None] // powers) % v
        table = np.full((n_c if t == 0 else v, m, s), -1, dtype=np.int64)
        table[used] = tuples.reshape(len(used), m, s)
        rules.append(table)
        used = np.unique(tuples)
    return Grammar(L, s, s0, v, m, n_c, sparsity, seed, tuple(rules))


def draw_choices(grammar: Grammar, n: int, rng: np.random.Generator) -> Choices:
    """Independent uniform rule and arrangement choices for ``n`` samples at every depth."""
    n_arr = len(grammar.arrangements)
    sizes = [grammar.s**t for t in range(grammar.L)]
    return Choices(
        rule=[rng.integers(0, grammar.m, size=(n, k)) for k in sizes],
        arrangement=[rng.integers(0, n_arr, size=(n, k)) for k in sizes],
    )


def render(grammar: Grammar, labels: np.ndarray, choices: Choices) -> np.ndarray:
    """Expand classes ``labels`` int [N] through the grammar with ``choices``: symbols int64 [N, d]."""
    S, empty = grammar.patch, grammar.empty
    arrangements = grammar.arrangements
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    seq = labels[:, None]
    for t, table in enumerate(grammar.rules):
        where = _informative(seq, empty, grammar.s**t)  # [N, s**t] positions of the informative nodes
        symbols = np.take_along_axis(seq, where, axis=1)
        children = table[symbols, choices.rule[t]]  # [N, s**t, s]
        offsets = arrangements[choices.arrangement[t]] + S * where[..., None]  # [N, s**t, s]
        seq = np.full((n, seq.shape[1] * S), empty, dtype=np.int64)
        np.put_along_axis(seq, offsets.reshape(n, -1), children.reshape(n, -1), axis=1)
    return seq


def _informative(seq: np.ndarray, empty: int, count: int) -> np.ndarray:
    """int64 [N, count]: the positions of the first ``count`` non-empty entries of each row, left to right."""
    return np.argsort(seq == empty, axis=1, kind="stable")[:, :count]


@dataclass
class Parse:
    """Result of :func:`parse`: ``labels`` int64 [N] (-1 where the input is not a sentence of the grammar)."""

    labels: np.ndarray
    choices: Choices


def parse(grammar: Grammar, symbols: np.ndarray) -> Parse:
    """Decode symbols int [N, d] bottom-up with the true rules: the class and every rule/arrangement choice."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.ndim != 2 or symbols.shape[1] != grammar.length:
        raise UserError(f"samples have shape {symbols.shape}, expected [N, {grammar.length}]")
    S, s, v, empty = grammar.patch, grammar.s, grammar.v, grammar.empty
    n = symbols.shape[0]
    arr_index = np.full(S**s, -1, dtype=np.int64)
    arr_index[grammar.arrangements @ (S ** np.arange(s - 1, -1, -1))] = np.arange(len(grammar.arrangements))
    powers = v ** np.arange(s - 1, -1, -1)
    # bool [N]; asarray because numpy's stubs type .all(axis=1) as possibly a scalar
    valid = np.asarray(((symbols >= 0) & (symbols <= empty)).all(axis=1))
    seq = np.where(valid[:, None], symbols, empty)
    rules: list[np.ndarray] = [np.empty(0)] * grammar.L
    arrs: list[np.ndarray] = [np.empty(0)] * grammar.L
    for t in range(grammar.L - 1, -1, -1):
        patches = seq.reshape(n, -1, S)
        filled = patches != empty
        count = filled.sum(axis=2)
        offsets = np.argsort(~filled, axis=2, kind="stable")[..., :s]  # non-empty slots, left to right
        arrangement = arr_index[offsets @ (S ** np.arange(s - 1, -1, -1))]
        children = np.take_along_axis(patches, offsets, axis=2)
        key = np.where(children < v, children, 0) @ powers
        parent, rule = _inverse_rules(grammar.rules[t], v)
        parent, rule = parent[key], rule[key]
        is_empty = count == 0
        ok = is_empty if t > 0 else np.zeros_like(is_empty)
        ok = ok | ((count == s) & (arrangement >= 0) & (parent >= 0) & (children < v).all(axis=2))
        valid &= ok.all(axis=1)
        where = _informative(is_empty, True, s**t)  # the informative nodes of depth t, left to right
        rules[t] = np.take_along_axis(np.maximum(rule, 0), where, axis=1)
        arrs[t] = np.take_along_axis(np.maximum(arrangement, 0), where, axis=1)
        seq = np.where(is_empty | ~ok, empty, parent)
    labels = np.where(valid, seq[:, 0], -1)
    return Parse(labels=labels, choices=Choices(rule=rules, arrangement=arrs))


def _inverse_rules(table: np.ndarray, v: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables tuple key (base-v number) -> (parent symbol, rule index); -1 where the tuple is no rule."""
    _, m, s = table.shape
    parent = np.full(v**s, -1, dtype=np.int64)
    rule = np.full(v**s, -1, dtype=np.int64)
    rows = np.flatnonzero((table >= 0).all(axis=(1, 2)))
    keys = table[rows] @ (v ** np.arange(s - 1, -1, -1))  # [rows, m]
    parent[keys] = rows[:, None]
    rule[keys] = np.arange(m)[None, :]
    return parent, rule


def sample(grammar: Grammar, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct samples drawn i.i.d. (balanced classes per round, then de-duplicated).

    Returns symbols int64 [n, d] and labels int64 [n] in a seeded random order. Raises when ``n`` exceeds
    the number of distinct inputs the grammar can produce.
    """
    limit = grammar.max_distinct()
    if n > limit:
        raise UserError(f"asked for {n} distinct samples but this grammar has only {limit}")
    rng = np.random.default_rng(seed)
    xs, ys = np.empty((0, grammar.length), dtype=np.int64), np.empty(0, dtype=np.int64)
    while len(ys) < n:
        draw = max(2 * (n - len(ys)), 64)
        y = rng.permutation(np.arange(draw) % grammar.n_c)
        x = render(grammar, y, draw_choices(grammar, draw, rng))
        xs, ys = np.concatenate([xs, x]), np.concatenate([ys, y])
        _, first = np.unique(xs, axis=0, return_index=True)
        keep = np.sort(first)  # keep the first occurrence, in draw order
        xs, ys = xs[keep], ys[keep]
    order = rng.permutation(len(ys))[:n]
    return xs[order], ys[order]


def perturb(grammar: Grammar, symbols: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Re-draw the ``kind`` choices ("synonyms" or "positions") of the ``level`` lowest depths (see module doc).

    symbols int [N, d] -> int64 [N, d]; the class (and, for "positions", every rule; for "synonyms", every
    arrangement) is kept. Raises when an input does not parse under the grammar.
    """
    if kind not in ("synonyms", "positions"):
        raise UserError(f"perturbation kind {kind!r}: expected synonyms or positions")
    if not 1 <= level <= grammar.L:
        raise UserError(f"perturbation level {level}: expected 1..{grammar.L}")
    parsed = parse(grammar, symbols)
    if (parsed.labels < 0).any():
        raise UserError("cannot perturb: some samples are not sentences of this grammar")
    fresh = draw_choices(grammar, len(parsed.labels), np.random.default_rng(seed))
    choices = parsed.choices
    for t in range(grammar.L - level, grammar.L):
        if kind == "synonyms":
            choices.rule[t] = fresh.rule[t]
        else:
            choices.arrangement[t] = fresh.arrangement[t]
    return render(grammar, parsed.labels, choices)


def gaussian_like(x: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Noise control: x + eta with eta Gaussian in direction and ||eta_i|| = ||reference_i - x_i|| per sample.

    x, reference: encoded inputs [N, C, d]; returns [N, C, d] of x's dtype.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    flat = noise.flatten(1)
    target = (reference - x).flatten(1).to(torch.float64).norm(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True) * target
    return x + flat.view_as(x).to(x.dtype)


def channels(grammar: Grammar, encoding: str) -> int:
    """Input channels of an encoding: v + 1 for ``onehot`` (empty has its own channel), v for ``all0``."""
    return grammar.v + 1 if encoding == "onehot" else grammar.v


def encode(
    grammar: Grammar, symbols: np.ndarray, encoding: str = "all0", whitening: bool = True, dtype=torch.float32
) -> torch.Tensor:
    """Symbols int [N, d] -> inputs [N, C, d] (C = :func:`channels`).

    ``onehot``: one channel per symbol incl. the empty one; ``all0``: the empty symbol is the all-zero vector.
    Whitening maps x -> x (1 + 1/sqrt(C-1)) - 1/sqrt(C-1); without it the one-hot is multiplied by v.
    """
    if encoding not in ENCODINGS:
        raise UserError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    c = channels(grammar, encoding)
    sym = torch.as_tensor(np.asarray(symbols), dtype=torch.int64)
    x = torch.nn.functional.one_hot(sym, num_classes=grammar.v + 1)[..., :c].to(dtype)  # [N, d, C]
    x = x.permute(0, 2, 1).contiguous()
    if whitening:
        a = (c - 1) ** -0.5
        return x * (1 + a) - a
    return x * grammar.v


# ----------------------------------------------------------------------------------------------- storage


def save_data(
    out_dir: str | Path,
    grammar: Grammar,
    symbols: np.ndarray,
    labels: np.ndarray,
    *,
    encoding: str,
    whitening: bool,
    sample_seed: int,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write ``DIR/hierarchy.json`` (grammar + description) and ``DIR/samples.npz`` (symbols, labels) atomically."""
    with atomic_path(out_dir, directory=True, overwrite=overwrite, replaces=DESCRIPTION_FILE) as tmp:
        np.savez(tmp / SAMPLES_FILE, symbols=symbols.astype(np.int16), labels=labels.astype(np.int64))
        meta = {
            "format": DATA_FORMAT,
            "version": DATA_VERSION,
            "grammar": grammar.to_dict(),
            "encoding": encoding,
            "whitening": bool(whitening),
            "sample_seed": sample_seed,
            "samples": int(len(labels)),
            "length": grammar.length,
            "informative": grammar.s**grammar.L,
            "max_distinct": grammar.max_distinct(),
            "file": SAMPLES_FILE,
            "input_hash": _file_hash(tmp / SAMPLES_FILE),
            "dcollapse_version": __version__,
        }
        (tmp / DESCRIPTION_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_data(data_dir: str | Path) -> tuple[dict[str, Any], Grammar, np.ndarray, np.ndarray]:
    """Read a dataset written by :func:`save_data`: (description, grammar, symbols int64 [N, d], labels int64 [N])."""
    data_dir = Path(data_dir)
    meta = read_description(data_dir, DESCRIPTION_FILE, DATA_FORMAT, "hierarchy dataset", "run `dcollapse synth srhm`")
    grammar = Grammar.from_dict(meta.get("grammar", {}))
    samples = data_dir / str(meta.get("file", SAMPLES_FILE))
    try:
        with np.load(samples, allow_pickle=False) as z:
            symbols, labels = z["symbols"].astype(np.int64), z["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{samples}: unreadable samples file ({type(exc).__name__})") from None
    if symbols.shape != (len(labels), grammar.length):
        raise UserError(f"{samples}: symbols have shape {symbols.shape}, expected [{len(labels)}, {grammar.length}]")
    if ((labels < 0) | (labels >= grammar.n_c)).any() or ((symbols < 0) | (symbols > grammar.empty)).any():
        raise UserError(f"{samples}: labels or symbols outside the grammar's ranges")
    return meta, grammar, symbols, labels


def check_dataset(data_dir: str | Path) -> dict[str, Any]:
    """``dcollapse hierarchy check``: does a saved dataset match its grammar? {"samples", "decoded_match" (share of
    labels the grammar decodes back), "informative_ok" (s^L informative positions in every sample), "distinct"
    (no repeated sample), "informative" (s^L), "passed"}."""
    _, grammar, symbols, labels = load_data(data_dir)
    decoded = parse(grammar, symbols).labels
    informative = (symbols != grammar.empty).sum(axis=1)
    result: dict[str, Any] = {
        "samples": len(labels),
        "decoded_match": float((decoded == labels).mean()),
        "informative_ok": bool((informative == grammar.s**grammar.L).all()),
        "distinct": bool(len(np.unique(symbols, axis=0)) == len(labels)),
        "informative": int(grammar.s**grammar.L),
    }
    result["passed"] = result["decoded_match"] == 1 and result["informative_ok"] and result["distinct"]
    return result


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def predicted_sample_complexity(grammar: Grammar, arch: str) -> int:
    """The paper's scaling law without its O(1) prefactor: (s0+1)^L n_c m^L (LCN), (s0+1)^2 n_c m^L (CNN)."""
    power = grammar.L if arch == "lcn" else 2
    return (grammar.s0 + 1) ** power * grammar.n_c * grammar.m**grammar.L


def describe(grammar: Grammar) -> dict[str, Any]:
    """Derived sizes for reports: input length, informative positions, arrangements per patch, distinct inputs."""
    return {
        "length": grammar.length,
        "informative": grammar.s**grammar.L,
        "arrangements_per_patch": len(grammar.arrangements),
        "max_distinct": grammar.max_distinct(),
        "log10_max_distinct": math.log10(grammar.max_distinct()),
    }
