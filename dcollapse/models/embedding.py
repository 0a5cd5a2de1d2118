"""Field embeddings: ONE table [sum_f V_f, d_total] plus per-field offsets, read via ``dcollapse.kernels.lookup``."""

from __future__ import annotations

import torch
from torch import nn

from dcollapse.kernels import lookup

INIT_STD = 1e-4  # FuxiCTR's default embedding initialiser: normal(0, 1e-4)


class FieldEmbedding(nn.Module):
    """F fields in one concatenated table.

    ``num_sets`` = k independent embedding sets of width ``emb_dim`` (multi-embedding, Guo et al. 2024) are stored
    side by side in the columns: ``table`` [sum_f V_f, emb_dim * k], set m owns columns [m*emb_dim, (m+1)*emb_dim).
    ``sparse`` = True makes the table's gradient a sparse tensor of the rows a batch read (see ``lookup``).
    """

    sparse = False

    def __init__(self, vocab_sizes: list[int], emb_dim: int, num_sets: int = 1) -> None:
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

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """E [B, F, d_total] from local ids int [B, F]."""
        return lookup(self.table, ids, self.offsets, sparse=self.sparse)

    def field_table(self, field: int, embedding_set: int | None = None) -> torch.Tensor:
        """Rows of one field, [V_f, d_total] (or [V_f, emb_dim] for one ``embedding_set``); a view of ``table``."""
        start = int(self.offsets[field])
        rows = self.table[start : start + self.vocab_sizes[field]]
        if embedding_set is None:
            return rows
        return rows[:, embedding_set * self.emb_dim : (embedding_set + 1) * self.emb_dim]
