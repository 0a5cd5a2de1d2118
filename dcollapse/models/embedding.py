"""Field embeddings: ONE table [sum_f V_f, d_total] plus per-field offsets, read via ``dcollapse.kernels.lookup``.

Also the optimizer of a ``fused_update`` run (:class:`FusedTableOptimizer`): the tables are updated inside the
backward by :class:`~dcollapse.kernels.RowOptimizer` (only the rows a batch read, no table gradient), every other
parameter by a dense torch optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dcollapse.kernels import RowOptimizer, lookup

INIT_STD = 1e-4  # FuxiCTR's default embedding initialiser: normal(0, 1e-4)
# the training optimizer name -> the in-backward rule of the tables (Adam has no exact sparse form: lazy Adam)
ROW_RULES = {"sgd": "sgd", "adagrad": "adagrad", "adam": "lazy_adam"}


class FieldEmbedding(nn.Module):
    offsets: torch.Tensor  # int64 [F] buffer: the first row of each field in ``table``
    scalar_fields: torch.Tensor  # int64 [S] buffer: the scalar fields (see below), ascending
    scalar_values: torch.Tensor  # float64 [S, max V_f] buffer: the value of every local id of each scalar field

    """F fields in one concatenated table.

    ``num_sets`` = k independent embedding sets of width ``emb_dim`` (multi-embedding, Guo et al. 2024) are stored
    side by side in the columns: ``table`` [sum_f V_f, emb_dim * k], set m owns columns [m*emb_dim, (m+1)*emb_dim).
    ``sparse`` = True makes the table's gradient a sparse tensor of the rows a batch read (see ``lookup``).
    ``row_updates``: the in-backward updates of this model's tables (set by :class:`FusedTableOptimizer`), applied
    while the module is in training mode (:meth:`update_for`).

    Scalar fields (the argument ``scalar_values[f]``, float [V_f]; None for a categorical field) are embedded as
    FuxiCTR embeds a numeric feature, one learned vector per field times the value (a bias-free Linear(1, d)):
    local id k of such a field embeds as ``scalar_values[f][k] * table[offsets[f]]``. The table keeps its shape
    (offsets, checkpoints and every table reader stay as they are): the field's first row is its vector, its other
    V_f - 1 rows are never read and are kept at zero, so the raw table of the field has rank <= 1 like the
    embeddings it produces.
    """

    sparse = False

    def __init__(
        self,
        vocab_sizes: list[int],
        emb_dim: int,
        num_sets: int = 1,
        scalar_values: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        super().__init__()
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError("every field needs a vocabulary of at least one id")
        if emb_dim < 1 or num_sets < 1:
            raise ValueError("emb_dim and num_sets must be >= 1")
        self.num_fields = len(vocab_sizes)
        self.emb_dim = emb_dim
        self.num_sets = num_sets
        self.d_total = emb_dim * num_sets
        self.vocab_sizes = list(vocab_sizes)
        starts = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", starts)
        self.table = nn.Parameter(torch.empty(sum(vocab_sizes), self.d_total))
        nn.init.normal_(self.table, std=INIT_STD)
        self.row_updates: list[RowOptimizer] = []
        values = list(scalar_values) if scalar_values is not None else [None] * len(vocab_sizes)
        if len(values) != len(vocab_sizes):
            raise ValueError(f"{len(values)} scalar_values entries for {len(vocab_sizes)} fields")
        scalar = [f for f, v in enumerate(values) if v is not None]
        width = max((vocab_sizes[f] for f in scalar), default=0)
        table_of_values = torch.zeros(len(scalar), width, dtype=torch.float64)  # cast to the table's dtype when read
        for k, f in enumerate(scalar):
            field_values = np.asarray(values[f], dtype=np.float64)
            if field_values.shape != (vocab_sizes[f],):
                raise ValueError(f"field {f}: {field_values.shape} scalar values for {vocab_sizes[f]} ids")
            table_of_values[k, : vocab_sizes[f]] = torch.from_numpy(field_values)
        self.scalar = scalar  # the scalar fields as a list (the buffer below indexes on the table's device)
        # Derived from meta.json (not saved in checkpoints, so old checkpoints load unchanged).
        self.register_buffer("scalar_fields", torch.tensor(scalar, dtype=torch.int64), persistent=False)
        self.register_buffer("scalar_values", table_of_values, persistent=False)
        self.zero_unused_rows()

    @property
    def has_scalar(self) -> bool:
        """Whether some field is embedded as one vector times its value."""
        return bool(self.scalar)

    def vector_rows(self) -> list[int]:
        """The table row of each scalar field's one vector (the field's first row), in :attr:`scalar` order."""
        return [sum(self.vocab_sizes[:f]) for f in self.scalar]

    @torch.no_grad()
    def zero_unused_rows(self) -> None:
        """Set the rows that no id reads (a scalar field's rows after its first) to zero."""
        for f, start in zip(self.scalar, self.vector_rows(), strict=True):
            self.table[start + 1 : start + self.vocab_sizes[f]] = 0.0

    def update_for(self, table: torch.Tensor) -> RowOptimizer | None:
        """The in-backward update of ``table`` (this module's table or another per-feature table of the model), or
        None: none is set, or the module is in eval mode (evaluation never updates)."""
        if not self.training:
            return None
        return next((update for update in self.row_updates if update.table is table), None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """E [B, F, d_total] from local ids int [B, F]."""
        return self.read(self.table, ids)

    def read(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The rows [B, F, width] of local ids int [B, F] in ``table`` [sum_f V_f, width] (this module's table, or
        another per-feature table laid out like it): a scalar field reads its first row times the id's value."""
        update, sparse = self.update_for(table), self.sparse
        if not self.has_scalar:
            return lookup(table, ids, self.offsets, sparse=sparse, update=update)
        cols = self.scalar_fields
        read = ids.clone()
        read[:, cols] = 0  # a scalar field's one vector: its first row
        rows = lookup(table, read, self.offsets, sparse=sparse, update=update)
        picked = ids[:, cols].long().clamp(0, self.scalar_values.shape[1] - 1)
        value = self.scalar_values.gather(1, picked.T).T  # [B, S]
        scale = torch.ones(ids.shape, dtype=rows.dtype, device=rows.device)
        scale[:, cols] = value.to(rows.dtype)
        return rows * scale.unsqueeze(-1)

    def field_table(self, field: int, embedding_set: int | None = None) -> torch.Tensor:
        """The embeddings field ``field`` can produce, [V_f, d_total] (or [V_f, emb_dim] for one ``embedding_set``):
        a view of ``table`` for a categorical field; for a scalar field, values[:, None] * its one row (rank 1)."""
        start = int(self.offsets[field])
        rows = self.table[start : start + self.vocab_sizes[field]]
        if field in self.scalar:
            k = self.scalar.index(field)
            rows = self.scalar_values[k, : self.vocab_sizes[field], None].to(rows.dtype) * rows[:1]
        if embedding_set is None:
            return rows
        return rows[:, embedding_set * self.emb_dim : (embedding_set + 1) * self.emb_dim]


class FusedTableOptimizer:
    """The optimizer of a ``fused_update`` run, with the ``torch.optim.Optimizer`` methods training uses.

    Attaches one :class:`~dcollapse.kernels.RowOptimizer` per table of ``tables`` to ``embedding`` (rule
    :data:`ROW_RULES` of ``name``, lazy L2 ``l2`` on the rows read); those tables are updated during the backward
    and never get a ``.grad``. :meth:`step` steps ``dense``, the optimizer of every other parameter.
    """

    def __init__(
        self, embedding: FieldEmbedding, tables: list[nn.Parameter], name: str, lr: float,
        dense: torch.optim.Optimizer, l2: float = 0.0,
    ) -> None:  # fmt: skip
        self.embedding, self.dense = embedding, dense
        self.updates = [RowOptimizer(table, ROW_RULES[name], lr, weight_decay=l2) for table in tables]
        embedding.row_updates = self.updates

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()

    def state_dict(self) -> dict[str, Any]:
        return {"tables": [update.state_dict() for update in self.updates], "dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for update, saved in zip(self.updates, state["tables"], strict=True):
            update.load_state_dict(saved)
        self.dense.load_state_dict(state["dense"])
