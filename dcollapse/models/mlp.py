"""One MLP class for every DNN switch: widths, activation (identity = a purely linear DNN), norm, dropout, residual."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}
NORMS: dict[str, type[nn.Module]] = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class Block(nn.Module):
    """Linear -> norm -> activation -> dropout (FuxiCTR's MLP_Block order); ``residual`` adds the input back."""

    def __init__(self, in_dim: int, out_dim: int, activation: str, norm: str, dropout: float, residual: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = NORMS[norm](out_dim)  # nn.Identity ignores the width
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and in_dim == out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, out_dim] from x [B, in_dim]."""
        y = self.dropout(self.activation(self.norm(self.linear(x))))
        return x + y if self.residual else y


class MLP(nn.Module):
    """Hidden layers only (no output layer, no output activation): x [B, in_dim] -> [B, hidden[-1]].

    ``residual`` adds a skip connection around every block whose input and output widths match.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("an MLP needs at least one hidden layer")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        widths = [in_dim, *hidden]
        self.blocks = nn.Sequential(
            *(Block(a, b, activation, norm, dropout, residual) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, hidden[-1]] from x [B, in_dim]."""
        return self.blocks(x)

    def linears(self) -> list[nn.Linear]:
        """The linear layers, input to output."""
        return [block.linear for block in self.blocks if isinstance(block, Block)]
