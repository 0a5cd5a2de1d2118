"""Harsanyi AND-OR interactions between players and their order-wise dynamics (players of any kind; CTR feature
fields as players are :mod:`dcollapse.diagnostics.field_players`).

Players N = {0..n-1}. A subset T of N is stored as the integer whose bit i is set when player i is
in T, so every "set function" (network outputs v(x_T), interactions I(S), the split terms gamma, q)
is a tensor of shape [2^n, ...] indexed by that bitmask; trailing dimensions (usually [S] samples)
are batched. All transforms run in float64.

Definitions (Li & Zhang 2023; Chen et al. 2024; Zhang et al. 2024):

- masked output v(x_T): players in T keep their values, the others are set to a baseline;
- AND (Harsanyi) interaction ``I_and(S) = sum_{T subset S} (-1)^{|S|-|T|} v_and(x_T)``;
- OR interaction ``I_or(S) = -sum_{T subset S} (-1)^{|S|-|T|} v_or(x_{N minus T})`` for non-empty S,
  ``I_or(empty) = v_or(x_empty)``;
- AND-OR split ``v_and = 0.5 (v + q) + gamma``, ``v_or = 0.5 (v + q) - gamma``, so that universal
  matching holds: ``v(x_T) + q_T = sum_{S subset T} I_and(S) + I_or(empty) + sum_{S cap T != empty} I_or(S)``.

The subset sums are computed with a fast (radix-32 butterfly) Moebius / subset-sum transform,
O(n 2^n) per sample, never with a dense 2^n x 2^n matrix.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from dcollapse.errors import UserError

MAX_PLAYERS = 12
SALIENT_FRACTION = 0.05

# Set functions (tensors [2^n, ...]) and the subset index


def subset_masks(n: int) -> torch.Tensor:
    """bool [2^n, n]: row ``T`` marks the players in subset T (bit i of T = player i)."""
    index = torch.arange(2**n, dtype=torch.int64)
    return (index[:, None] >> torch.arange(n, dtype=torch.int64)) & 1 == 1


def subset_orders(n: int) -> torch.Tensor:
    """int64 [2^n]: |T| for every subset index T."""
    return subset_masks(n).sum(dim=1)


def subset_players(index: int, n: int) -> list[int]:
    """The players (ascending) of the subset with bitmask ``index``."""
    return [i for i in range(n) if index >> i & 1]


def num_players(table: torch.Tensor) -> int:
    """n for a set function of shape [2^n, ...]; raises UserError when dim 0 is not a power of two."""
    size = table.shape[0]
    n = size.bit_length() - 1
    if size < 1 or 2**n != size:
        raise UserError(f"a set function needs 2^n rows (one per subset), got {size}")
    return n


RADIX_BITS = 5  # players per butterfly stage: one batched [32 x 32] matmul per stage

_FACTORS = {  # 2 x 2 factor [out bit, in bit] of each transform, per player
    "moebius": ((1.0, 0.0), (-1.0, 1.0)),
    "zeta": ((1.0, 0.0), (1.0, 1.0)),
    "moebius_transpose": ((1.0, -1.0), (0.0, 1.0)),
}


@functools.cache
def _stage_matrix(name: str, bits: int) -> torch.Tensor:
    """float64 [2^bits, 2^bits]: the Kronecker power of the transform's 2 x 2 factor over ``bits`` players."""
    factor = torch.tensor(_FACTORS[name], dtype=torch.float64)
    out = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(bits):
        out = torch.kron(out, factor)
    return out


def _transform(table: torch.Tensor, name: str) -> torch.Tensor:
    """Apply a product-form transform to a set function [2^n, ...] (float64 result, same shape).

    The 2^n x 2^n matrix is the n-fold Kronecker power of a 2 x 2 factor, so it is applied as a
    radix-32 butterfly: players are taken RADIX_BITS at a time and each stage is one batched matmul
    with a [32 x 32] block, O(n 2^n) multiply-adds (times 32 / RADIX_BITS); no 2^n x 2^n matrix exists.
    """
    n = num_players(table)
    out = table.to(torch.float64)
    columns = out[0].numel() if out.dim() > 1 else 1
    for low in range(0, n, RADIX_BITS):
        bits = min(RADIX_BITS, n - low)
        stage = out.reshape(2 ** (n - low - bits), 2**bits, 2**low * columns)
        out = torch.matmul(_stage_matrix(name, bits), stage)
    return out.reshape(table.shape)


def moebius(values: torch.Tensor) -> torch.Tensor:
    """Moebius transform over subsets, [2^n, ...] -> [2^n, ...]: ``f(S) = sum_{T subset S} (-1)^{|S|-|T|} v(T)``."""
    return _transform(values, "moebius")


def zeta(values: torch.Tensor) -> torch.Tensor:
    """Subset-sum transform (inverse of :func:`moebius`): ``g(T) = sum_{S subset T} f(S)``; [2^n, ...]."""
    return _transform(values, "zeta")


def moebius_transpose(values: torch.Tensor) -> torch.Tensor:
    """Transpose of :func:`moebius`: ``h(T) = sum_{S superset T} (-1)^{|S|-|T|} y(S)``; [2^n, ...]."""
    return _transform(values, "moebius_transpose")


def and_interactions(v_and: torch.Tensor) -> torch.Tensor:
    """AND (Harsanyi) interactions I_and [2^n, ...] of the AND component v_and [2^n, ...]."""
    return moebius(v_and)


def or_interactions(v_or: torch.Tensor) -> torch.Tensor:
    """OR interactions I_or [2^n, ...] of the OR component v_or [2^n, ...].

    ``v_or(x_{N minus T})`` is ``v_or`` read backwards (the complement of bitmask T is 2^n - 1 - T).
    """
    out = -moebius(v_or.flip(0))
    out[0] = v_or[0].to(torch.float64)
    return out


def reconstruct_and(iand: torch.Tensor) -> torch.Tensor:
    """v_and(x_T) = sum_{S subset T} I_and(S); [2^n, ...]."""
    return zeta(iand)


def reconstruct_or(ior: torch.Tensor) -> torch.Tensor:
    """v_or(x_T) = I_or(empty) + sum_{S non-empty, S cap T non-empty} I_or(S); [2^n, ...].

    The sum over sets meeting T is the total over non-empty sets minus the sets inside N minus T.
    """
    nonempty = ior.to(torch.float64).clone()
    nonempty[0] = 0.0
    inside_complement = zeta(nonempty).flip(0)
    return ior[0] + nonempty.sum(dim=0) - inside_complement


# Evaluating v on all masked inputs


def masked_outputs(value_fn: Callable[[torch.Tensor], torch.Tensor], n: int, masks_per_call: int = 256) -> torch.Tensor:
    """v(x_T) for every subset T: float64 [2^n, ...].

    ``value_fn(mask)`` takes bool [M, n] (True = the player keeps its value, False = baseline) and
    returns [M, ...] (e.g. [M, S] for S samples at once); it is called on chunks of at most
    ``masks_per_call`` masks, under ``torch.no_grad``.
    """
    if not 1 <= n <= MAX_PLAYERS:
        raise UserError(f"interactions need 1 to {MAX_PLAYERS} players (2^n masked inputs), got {n}")
    masks = subset_masks(n)
    with torch.no_grad():
        parts = [value_fn(masks[i : i + masks_per_call]) for i in range(0, masks.shape[0], masks_per_call)]
    return torch.cat(parts).to(torch.float64)


# The AND-OR decomposition and its sparse extraction


@dataclass
class AndOr:
    """AND-OR interactions of a batch of samples; every tensor float64 [2^n, S], indexed by subset bitmask.

    ``values`` = v(x_T); ``gamma``, ``q`` = the split parameters; ``iand``, ``ior`` = the interactions of
    ``v_and = 0.5 (values + q) + gamma`` and ``v_or = 0.5 (values + q) - gamma``.
    """

    n: int
    values: torch.Tensor
    gamma: torch.Tensor
    q: torch.Tensor
    iand: torch.Tensor
    ior: torch.Tensor

    def reconstruct(self) -> torch.Tensor:
        """Universal matching: v(x_T) + q_T rebuilt from the interactions, float64 [2^n, S]."""
        return reconstruct_and(self.iand) + reconstruct_or(self.ior)

    def strengths(self) -> torch.Tensor:
        """|I| of all 2^(n+1) interactions (AND rows first, then OR): float64 [2^(n+1), S]."""
        return torch.cat([self.iand, self.ior]).abs()


def and_or(values: torch.Tensor, gamma: torch.Tensor | None = None, q: torch.Tensor | None = None) -> AndOr:
    """AND-OR interactions of ``values`` [2^n, S] for given split terms (default 0: half AND, half OR)."""
    values = values.to(torch.float64)
    if values.dim() == 1:
        values = values[:, None]
    n = num_players(values)
    gamma = torch.zeros_like(values) if gamma is None else gamma.to(torch.float64).reshape(values.shape)
    q = torch.zeros_like(values) if q is None else q.to(torch.float64).reshape(values.shape)
    half = 0.5 * (values + q)
    return AndOr(n, values, gamma, q, and_interactions(half + gamma), or_interactions(half - gamma))


def harsanyi(values: torch.Tensor) -> AndOr:
    """AND-only Harsanyi interactions (gamma = v/2, q = 0: v_and = v, v_or = 0) of ``values`` [2^n, S]."""
    values = values.to(torch.float64)
    return and_or(values, gamma=0.5 * values)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: the extraction's many small ops only lose from thread hand-offs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sparse_and_or(
    values: torch.Tensor, lr: float = 1e-6, niter: int = 5000, tau: float = 0.04, momentum: float = 0.9
) -> AndOr:
    """The sparsest AND-OR split of ``values`` [2^n, S] (each column, i.e. sample, independently).

    Minimises ``sum_S |I_and(S)| + sum_S |I_or(S)|`` over gamma and q (both start at 0) with SGD
    (momentum 0.9, PyTorch's convention ``buf = momentum * buf + grad; x -= lr_t * buf``), the learning
    rate decaying log-uniformly from ``lr`` to ``lr / 10`` over ``niter`` steps, and q clipped to
    ``|q_T| <= tau |v(x_N) - v(x_empty)|`` after every step. The descent runs on each sample's v divided
    by its max_T |v(x_T)| (the problem is positively homogeneous: the minimiser scales back exactly), so
    ``lr`` is in units of that normalised v and one default suits models of any logit scale. The L1
    subgradient is ``sign(I)``, pulled back through the transposed transform (exact, no autograd).
    """
    if niter < 1 or lr <= 0 or tau < 0:
        raise UserError(f"sparse extraction needs niter >= 1, lr > 0, tau >= 0 (got {niter}, {lr}, {tau})")
    original = values.to(torch.float64)
    if original.dim() == 1:
        original = original[:, None]
    scale = original.abs().amax(dim=0).clamp(min=torch.finfo(torch.float64).tiny)  # [S]
    values = original / scale
    bound = tau * (values[-1] - values[0]).abs()
    gamma = torch.zeros_like(values)
    q = torch.zeros_like(values)
    buf_gamma = torch.zeros_like(values)
    buf_q = torch.zeros_like(values)
    rates = torch.logspace(math.log10(lr), math.log10(lr) - 1, niter, dtype=torch.float64).tolist()
    samples = values.shape[1]
    with _one_thread():
        for rate in rates:
            half = 0.5 * (values + q)
            # one transform for both parts: I_and = y[:, :S]; I_or(T) = -y[T, S:] for T non-empty
            y = moebius(torch.cat([half + gamma, (half - gamma).flip(0)], dim=1))
            signs = torch.sign(y)  # d|I_or|/d(-y) * -1 = sign(y): the OR minus sign cancels
            signs[0, samples:] = 0.0  # I_or(empty) = v_or(x_empty) does not come from the transform
            grad = moebius_transpose(signs)
            grad_and = grad[:, :samples]
            grad_or = grad[:, samples:].flip(0)
            grad_or[0] += torch.sign(half[0] - gamma[0])
            buf_gamma.mul_(momentum).add_(grad_and - grad_or)
            buf_q.mul_(momentum).add_(0.5 * (grad_and + grad_or))
            gamma.sub_(rate * buf_gamma)
            q.sub_(rate * buf_q)
            q = torch.maximum(torch.minimum(q, bound), -bound)
    return and_or(original, gamma * scale, q * scale)


# Summaries: order-wise strength distribution, salient interactions


@dataclass
class OrderDistribution:
    """Order-wise strength of AND + OR interactions over orders m = 1..n (index m - 1), averaged over samples.

    ``positive[m-1] = E_x sum_{|S|=m} max(I, 0) / Z`` and ``negative[m-1] = E_x sum_{|S|=m} min(I, 0) / Z``
    with ``Z = E_x sum_{S non-empty} |I|`` (so ``sum(positive - negative) = 1``); ``total = Z`` in units
    of v. The empty set (the baseline output, not an interaction between players) is left out.
    """

    positive: list[float]
    negative: list[float]
    total: float

    @property
    def strength(self) -> list[float]:
        """Normalised |I| mass per order m = 1..n."""
        return [p - q for p, q in zip(self.positive, self.negative, strict=True)]

    def mass_from(self, order: int) -> float:
        """Normalised mass of interactions of order >= ``order``."""
        return float(sum(self.strength[order - 1 :]))

    def mean_order(self) -> float:
        """Strength-weighted mean order."""
        return float(sum((m + 1) * s for m, s in enumerate(self.strength)))


def order_distribution(result: AndOr) -> OrderDistribution:
    """Order-wise distribution of the AND and OR interactions of ``result`` (see :class:`OrderDistribution`)."""
    orders = subset_orders(result.n)
    both = torch.cat([result.iand, result.ior])  # [2^(n+1), S]
    order_of = torch.cat([orders, orders])
    per_sample_pos = torch.zeros(result.n + 1, both.shape[1], dtype=torch.float64)
    per_sample_neg = torch.zeros_like(per_sample_pos)
    per_sample_pos.index_add_(0, order_of, both.clamp(min=0))
    per_sample_neg.index_add_(0, order_of, both.clamp(max=0))
    pos = per_sample_pos[1:].mean(dim=1)
    neg = per_sample_neg[1:].mean(dim=1)
    total = float((pos - neg).sum())
    scale = total if total > 0 else 1.0
    return OrderDistribution((pos / scale).tolist(), (neg / scale).tolist(), total)


def salient_mask(result: AndOr, fraction: float = SALIENT_FRACTION) -> torch.Tensor:
    """bool [2^(n+1), S] (AND rows, then OR rows): non-empty S with |I(S)| > fraction * the sample's max |I|.

    The two empty sets carry the baseline output v(x_empty), not an interaction: they are never salient and
    do not set the max.
    """
    strength = result.strengths()
    strength[0] = strength[2**result.n] = 0.0
    return strength > fraction * strength.max(dim=0, keepdim=True).values


def salient_fraction(result: AndOr, fraction: float = SALIENT_FRACTION) -> float:
    """Mean over samples of (#salient interactions) / (2^(n+1) - 2), the number of non-empty AND and OR patterns."""
    return float(salient_mask(result, fraction).sum(dim=0).to(torch.float64).mean() / (2 ** (result.n + 1) - 2))


@dataclass
class Interaction:
    """One interaction pattern summarised over samples."""

    kind: str  # "and" | "or"
    players: list[int]
    mean: float  # E_x I(S|x)
    mean_abs: float  # E_x |I(S|x)|
    salient_share: float  # fraction of samples where it is salient


def top_interactions(result: AndOr, k: int = 10, fraction: float = SALIENT_FRACTION) -> list[Interaction]:
    """The ``k`` non-empty interactions with the largest mean |I| over samples."""
    size = 2**result.n
    both = torch.cat([result.iand, result.ior])
    mean_abs = both.abs().mean(dim=1)
    mean_abs[0] = mean_abs[size] = -1.0  # the empty sets are the baseline output, not interactions
    salient = salient_mask(result, fraction).to(torch.float64).mean(dim=1)
    chosen = torch.argsort(mean_abs, descending=True)[: min(k, 2 * size - 2)].tolist()
    return [
        Interaction(
            "and" if i < size else "or",
            subset_players(i % size, result.n),
            float(both[i].mean()),
            float(mean_abs[i]),
            float(salient[i]),
        )
        for i in chosen
    ]


# Two phases over training


def default_high_order(n: int) -> int:
    """m0: the lowest order counted as mid/high order (about n / 2, at least 2, at most n)."""
    return min(n, max(2, n // 2))


@dataclass
class PhaseBoundary:
    """The two-phase detector over a sequence of checkpoints.

    ``high_order_mass[t]`` = H(t), the normalised strength of orders >= ``from_order``; the boundary is
    the checkpoint where H is smallest. ``two_phase`` is True when that minimum is strictly inside the
    sequence and H first falls by at least ``tolerance`` and then rises by at least ``tolerance``.
    """

    epochs: list[int]
    from_order: int
    high_order_mass: list[float]
    boundary_epoch: int
    drop: float  # H(first) - H(boundary)
    rise: float  # H(last) - H(boundary)
    two_phase: bool


def detect_two_phase(
    epochs: Sequence[int],
    distributions: Sequence[OrderDistribution],
    from_order: int | None = None,
    tolerance: float = 0.01,
) -> PhaseBoundary:
    """Locate the phase boundary: the epoch minimising the mid/high-order mass (reconstructed rule)."""
    if len(epochs) != len(distributions) or not epochs:
        raise UserError("the two-phase detector needs one order distribution per epoch (at least one)")
    n = len(distributions[0].positive)
    m0 = default_high_order(n) if from_order is None else from_order
    if not 1 <= m0 <= n:
        raise UserError(f"high-order threshold must be in 1..{n}, got {m0}")
    mass = [d.mass_from(m0) for d in distributions]
    best = min(range(len(mass)), key=mass.__getitem__)
    drop, rise = mass[0] - mass[best], mass[-1] - mass[best]
    inside = 0 < best < len(mass) - 1
    return PhaseBoundary(
        list(epochs), m0, mass, int(epochs[best]), drop, rise, inside and drop >= tolerance and rise >= tolerance
    )


@dataclass
class LossGap:
    """valid logloss - train loss per epoch (from a checkpoint history); ``onset_epoch`` = where it is smallest."""

    epochs: list[int]
    gap: list[float]
    onset_epoch: int | None


def loss_gap(history: Sequence[dict]) -> LossGap:
    """The generalisation gap per epoch and the epoch after which it grows (its minimum)."""
    rows = [h for h in history if "train_loss" in h and "valid_logloss" in h]
    epochs = [int(h["epoch"]) for h in rows]
    gap = [float(h["valid_logloss"]) - float(h["train_loss"]) for h in rows]
    onset = epochs[min(range(len(gap)), key=gap.__getitem__)] if gap else None
    return LossGap(epochs, gap, onset)
