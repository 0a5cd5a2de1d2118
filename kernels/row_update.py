"""Optimizer-in-backward for embedding tables: the update rule applied to each row a batch read, in place.

A :class:`RowOptimizer` owns one table [V, d] and its optimizer state. The table-reading ops
(:func:`dcollapse.kernels.lookup`, ``fused_bi_interaction``, ``fused_pairwise_dot``) take it as ``update=``; their
backward then sums the gradient of every distinct row once (the sorted segment reduction of
:mod:`dcollapse.kernels.scatter` on the Triton path, ``torch.unique`` + ``index_add_`` on the reference path) and
applies the rule to those rows only: no dense [V, d] gradient exists and ``table.grad`` stays None. One op should
read a table per step (each reading op's backward is one update step); an op that saved the table and runs its
backward after the update raises autograd's in-place modification error instead of using stale rows.

Rules (g = the row's summed gradient + ``weight_decay`` * row, i.e. L2 applied lazily to the rows read):

* ``sgd``: w -= lr g. Exact: the same as dense SGD (without momentum), whose update of an unread row is zero.
* ``adagrad``: s += g^2, w -= lr g / (sqrt(s) + eps), elementwise. Exact: the same as ``torch.optim.Adagrad``.
* ``rowwise_adagrad``: one state value per row, s += mean_d(g^2), w -= lr g / (sqrt(s) + eps) (FBGEMM's
  EXACT_ROWWISE_ADAGRAD; 4 bytes of state per row instead of 4 d).
* ``lazy_adam``: Adam's moments of the rows read only (``torch.optim.SparseAdam``'s rule): an unread row keeps
  its moments undecayed and does not move, unlike dense Adam. Bias corrections use the step count t of this
  optimizer: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps).
"""

from __future__ import annotations

from typing import Any

import torch

RULES = ("sgd", "adagrad", "rowwise_adagrad", "lazy_adam")
DEFAULT_EPS = {"sgd": 0.0, "adagrad": 1e-10, "rowwise_adagrad": 1e-10, "lazy_adam": 1e-8}  # torch's defaults


class RowOptimizer:
    """The in-backward update of ``table`` [V, d] by ``rule`` (see the module docstring); state float32 (float64
    for a float64 table): ``adagrad`` s [V, d], ``rowwise_adagrad`` s [V], ``lazy_adam`` m, v [V, d]."""

    def __init__(
        self,
        table: torch.Tensor,
        rule: str,
        lr: float,
        *,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"row update rule must be one of {', '.join(RULES)}, not {rule!r}")
        if lr <= 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError("need lr > 0, weight_decay >= 0 and betas in [0, 1)")
        self.table, self.rule, self.lr = table, rule, float(lr)
        self.eps = DEFAULT_EPS[rule] if eps is None else float(eps)
        self.betas, self.weight_decay = (float(betas[0]), float(betas[1])), float(weight_decay)
        self.steps = 0  # rows-update calls so far (lazy Adam's t)
        self.compute_dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
        shapes = {"sgd": [], "adagrad": [table.shape], "rowwise_adagrad": [table.shape[:1]]}
        shapes["lazy_adam"] = [table.shape] * 2
        self.state = [torch.zeros(s, dtype=self.compute_dtype, device=table.device) for s in shapes[rule]]

    def next_step_size(self) -> float:
        """Advance the step count and return this step's scale of the update: lr, or for lazy Adam
        lr sqrt(1 - b2^t) / (1 - b1^t)."""
        self.steps += 1
        if self.rule != "lazy_adam":
            return self.lr
        b1, b2 = self.betas
        return self.lr * (1 - b2**self.steps) ** 0.5 / (1 - b1**self.steps)

    @torch.no_grad()
    def apply_reference(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Update the distinct ``rows`` int64 [U] of the table from their summed gradients ``grad`` [U, d]
        (PyTorch ops; the Triton kernel in :mod:`dcollapse.kernels.scatter` computes the same)."""
        step = self.next_step_size()
        w = self.table.index_select(0, rows).to(self.compute_dtype)
        g = grad.to(w.dtype) + self.weight_decay * w if self.weight_decay else grad.to(w.dtype)
        if self.rule == "sgd":
            w.add_(g, alpha=-step)
        elif self.rule in ("adagrad", "rowwise_adagrad"):
            (s,) = self.state
            s_rows = s.index_select(0, rows)
            s_rows.addcmul_(g, g) if self.rule == "adagrad" else s_rows.add_((g * g).mean(1))
            s.index_copy_(0, rows, s_rows)
            denom = s_rows.sqrt().add_(self.eps)
            w.addcdiv_(g, denom if self.rule == "adagrad" else denom[:, None], value=-step)
        else:
            m, v = self.state
            b1, b2 = self.betas
            m_rows = m.index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
            v_rows = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
            m.index_copy_(0, rows, m_rows)
            v.index_copy_(0, rows, v_rows)
            w.addcdiv_(m_rows, v_rows.sqrt().add_(self.eps), value=-step)
        self.table.index_copy_(0, rows, w.to(self.table.dtype))

    def state_dict(self) -> dict[str, Any]:
        """The rule, its step count and state tensors (plain data: loadable with ``weights_only=True``)."""
        return {"rule": self.rule, "steps": self.steps, "state": [s.clone() for s in self.state]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rule"] != self.rule or len(state["state"]) != len(self.state):
            raise ValueError(f"optimizer state of rule {state['rule']!r} does not fit a {self.rule!r} update")
        self.steps = int(state["steps"])
        for mine, saved in zip(self.state, state["state"], strict=True):
            mine.copy_(saved)
