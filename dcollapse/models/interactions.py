"""Feature interactions on field embeddings E [B, F, d_total] (d_total = emb_dim * num_sets).

With k = ``num_sets`` > 1 (multi-embedding) every set gets its own interaction and the k outputs are averaged,
so ``out_dim`` never depends on k. The math lives in the public ops of :mod:`dcollapse.kernels`.
"""

from __future__ import annotations

import typing

import torch
from torch import nn

from dcollapse.kernels import bi_interaction, cross_layer, fused_bi_interaction, fused_pairwise_dot, pairwise_dot


class BiInteraction(nn.Module):
    """FM second order, per dimension: p = sum_{i<j} e_i * e_j, [B, emb_dim]; sum_d p is the FM pairwise term."""

    fusable = True

    def __init__(self, num_fields: int, emb_dim: int, num_sets: int = 1) -> None:
        super().__init__()
        self.emb_dim, self.num_sets, self.out_dim = emb_dim, num_sets, emb_dim

    def _average_sets(self, p: torch.Tensor) -> torch.Tensor:
        """[B, emb_dim * k] -> [B, emb_dim], the mean over the k sets."""
        return p if self.num_sets == 1 else p.view(p.shape[0], self.num_sets, self.emb_dim).mean(dim=1)

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        """p [B, emb_dim] from E [B, F, emb_dim * k]."""
        return self._average_sets(bi_interaction(E))

    def from_ids(self, table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, update=None) -> torch.Tensor:
        """Same as ``forward(lookup(table, ids, offsets, update=update))`` without materialising E."""
        return self._average_sets(fused_bi_interaction(table, ids, offsets, update))


class DotInteraction(nn.Module):
    """DLRM/IPNN pairwise dots <e_i, e_j>, i < j row-major, [B, F(F-1)/2].

    The dot over all k sets' columns is the sum of the per-set dots, so dividing by k gives their mean.
    """

    fusable = True

    def __init__(self, num_fields: int, emb_dim: int, num_sets: int = 1) -> None:
        super().__init__()
        self.num_sets = num_sets
        self.out_dim = num_fields * (num_fields - 1) // 2

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        """[B, F(F-1)/2] from E [B, F, emb_dim * k]."""
        dots = pairwise_dot(E)
        return dots if self.num_sets == 1 else dots / self.num_sets

    def from_ids(self, table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, update=None) -> torch.Tensor:
        """Same as ``forward(lookup(table, ids, offsets, update=update))`` without materialising E."""
        dots = fused_pairwise_dot(table, ids, offsets, update)
        return dots if self.num_sets == 1 else dots / self.num_sets


class CrossLayer(nn.Module):
    """One DCNv2 cross layer on K = F * emb_dim: x_{l+1} = x0 * (W x_l + b) + x_l.

    ``rank`` = 0: full W [K, K] (``.weight``, ``.bias``). ``rank`` = r > 0: W = U V^T with ``.u`` = Linear(r, K)
    (its bias is b) and ``.v`` = Linear(K, r, bias=False).
    """

    def __init__(self, dim: int, rank: int = 0) -> None:
        super().__init__()
        self.rank = rank
        if rank:
            self.v = nn.Linear(dim, rank, bias=False)
            self.u = nn.Linear(rank, dim)
        else:
            # PyTorch's default nn.Linear init; the paper's FuxiCTR code re-initialises every nn.Linear, its
            # CrossNetV2 layers included, with xavier_normal_ and a zero bias (BaseModel.reset_parameters), which
            # is init="xavier" here (dcollapse.models.model.xavier_init)
            lin = nn.Linear(dim, dim)
            self.weight, self.bias = lin.weight, lin.bias

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [K, K], b [K])."""
        if self.rank:
            return self.u.weight @ self.v.weight, self.u.bias
        return self.weight, self.bias

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, K] from x0, x [B, K]."""
        weight, bias = self.weight_and_bias()
        return cross_layer(x0, x, weight, bias)


class CrossNet(nn.Module):
    """``num_layers`` cross layers on x0 = flatten(E_m) [B, F * emb_dim] for each set m; output [B, F * emb_dim].

    ``sets[m][l]`` is layer l of set m (each set has its own weights); the k outputs are averaged.
    """

    fusable = False

    def __init__(self, num_fields: int, emb_dim: int, num_sets: int = 1, num_layers: int = 3, rank: int = 0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("a cross network needs at least one layer")
        self.num_fields, self.emb_dim, self.num_sets = num_fields, emb_dim, num_sets
        self.out_dim = num_fields * emb_dim
        self.sets = nn.ModuleList(
            nn.ModuleList(CrossLayer(self.out_dim, rank) for _ in range(num_layers)) for _ in range(num_sets)
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        """[B, F * emb_dim] from E [B, F, emb_dim * k]."""
        B = E.shape[0]
        per_set = E.reshape(B, self.num_fields, self.num_sets, self.emb_dim)
        outputs = []
        for m, layers in enumerate(self.sets):
            x0 = per_set[:, :, m].reshape(B, self.out_dim)
            x = x0
            for layer in typing.cast(nn.ModuleList, layers):
                x = layer(x0, x)
            outputs.append(x)
        return outputs[0] if self.num_sets == 1 else torch.stack(outputs).mean(dim=0)
