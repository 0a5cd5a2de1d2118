"""Field-embedding lookup from one concatenated table: ids [B, F] + offsets [F] -> E [B, F, d]."""

from __future__ import annotations

import torch


def lookup_reference(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """E [B, F, d] = table[ids + offsets]; ``table`` [V, d], ``ids`` int [B, F] local ids, ``offsets`` int64 [F]."""
    return table[ids.long() + offsets]


def lookup(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Public op: E [B, F, d], differentiable with respect to ``table``."""
    return lookup_reference(table, ids, offsets)
