"""FM bi-interaction: p = sum_{i<j} e_i * e_j = 0.5 * ((sum_f e)^2 - sum_f e^2), [B, d]."""

from __future__ import annotations

import torch

from dcollapse.kernels.lookup import lookup


def bi_interaction_reference(E: torch.Tensor) -> torch.Tensor:
    """p [B, d] from E [B, F, d]."""
    total = E.sum(dim=1)
    return 0.5 * (total * total - (E * E).sum(dim=1))


def bi_interaction(E: torch.Tensor) -> torch.Tensor:
    """Public op: p [B, d] from E [B, F, d]; its sum over d is the FM second-order term."""
    return bi_interaction_reference(E)


def fused_bi_interaction(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Public op: p [B, d] straight from the table (``table`` [V, d], ``ids`` [B, F], ``offsets`` [F])."""
    return bi_interaction_reference(lookup(table, ids, offsets))
