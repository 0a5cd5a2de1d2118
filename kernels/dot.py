"""Pairwise dot interaction (DLRM/IPNN): the upper triangle i < j of E E^T per sample, [B, F(F-1)/2]."""

from __future__ import annotations

import torch

from dcollapse.kernels.lookup import lookup


def pair_indices(num_fields: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64 [F(F-1)/2] of the strict upper triangle, row-major."""
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1, device=device)
    return rows, cols


def pairwise_dot_reference(E: torch.Tensor) -> torch.Tensor:
    """[B, F(F-1)/2] dots <e_i, e_j> for i < j, from E [B, F, d]."""
    rows, cols = pair_indices(E.shape[1], E.device)
    return torch.bmm(E, E.transpose(1, 2))[:, rows, cols]


def pairwise_dot(E: torch.Tensor) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] from E [B, F, d]."""
    return pairwise_dot_reference(E)


def fused_pairwise_dot(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Public op: [B, F(F-1)/2] straight from the table."""
    return pairwise_dot_reference(lookup(table, ids, offsets))
