"""Hierarchical CNN and LCN for (S)RHM inputs: L non-overlapping layers of filter size = stride = S = s(s0+1).

Each layer maps [B, n, C_in] (positions first, channels last) to [B, n / S, H]: every non-overlapping patch of
S positions, flattened to S * C_in numbers, gives pre-activation (patch . w) / sqrt(C_in), then ReLU; no bias;
weights i.i.d. N(0, 1). The CNN shares one weight [H, S * C_in] across patches; the LCN has one per patch,
[n / S, S * C_in, H]. After the last layer one position is left; the readout is mean-field:
y = mean_space(h) . beta / H with beta [H, n_c] ~ N(0, 1).
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("cnn", "lcn")


class HierarchicalNet(nn.Module):
    """CNN or LCN with ``num_layers`` hidden layers over inputs [B, C, S**num_layers]."""

    def __init__(self, arch: str, in_channels: int, width: int, num_layers: int, patch: int, num_classes: int):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch {arch!r}: expected one of {ARCHS}")
        self.arch, self.patch, self.width = arch, patch, width
        self.length = patch**num_layers
        weights = []
        for k in range(num_layers):
            c_in = in_channels if k == 0 else width
            positions = self.length // patch ** (k + 1)
            shape = (width, patch * c_in) if arch == "cnn" else (positions, patch * c_in, width)
            weights.append(nn.Parameter(torch.randn(shape)))
        self.weights = nn.ParameterList(weights)
        self.beta = nn.Parameter(torch.randn(width, num_classes))

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inputs [B, C, d] -> hidden outputs (after ReLU) [B, d / S**k, H] for k = 1..L, then logits [B, n_c]."""
        reps = []
        h = x.transpose(1, 2)  # [B, d, C]
        for w in self.weights:
            b, n, c = h.shape
            patches = h.reshape(b, n // self.patch, self.patch * c)  # [B, n/S, S*C]
            if self.arch == "cnn":
                pre = patches @ w.t()
            else:
                pre = torch.bmm(patches.transpose(0, 1), w).transpose(0, 1)
            h = torch.relu(pre / c**0.5)
            reps.append(h)
        reps.append(h.mean(dim=1) @ self.beta / self.width)
        return reps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_c] for inputs [B, C, d]."""
        return self.representations(x)[-1]


def layer_names(num_layers: int) -> list[str]:
    """Names of the representations returned by :meth:`HierarchicalNet.representations`."""
    return [f"layer{k}" for k in range(1, num_layers + 1)] + ["output"]
