"""CTRModel: FieldEmbedding -> interaction (fm | crossnet | dot) -> arch (none | parallel | stacked DNN) -> head.

The compositions, ``style="paper"`` (the source paper's code; the default):

    model     none                   parallel                          stacked
    fm        sum_d p (no bias)      Linear([p, MLP(flat E)])          Linear(MLP(p))                 (FM/DeepFM/NFM)
    crossnet  Linear(cross(x0))      Linear([cross(x0), MLP(x0)])      Linear(MLP(cross(x0)))
    dot       Linear(dots)           Linear([dots, MLP(flat E)])       Linear(MLP([flat E, dots]))

with p = sum_{i<j} e_i * e_j [B, d], x0 = flat E [B, F*d], dots = <e_i, e_j> for i < j [B, F(F-1)/2].
``style="textbook"`` changes only the FM backbone: a first-order term sum_f w[id_f] and a bias are added, and
DeepFM is the sum of the FM logit and the DNN logit (head weights on p fixed to 1).

Every model is ``logits = head(hidden(E)).squeeze(-1)`` (+ the textbook first-order term, which depends on the ids
only). ``head`` is an ``nn.Linear(H, 1)``; weights fixed to 1 are excluded from training. ``init="xavier"``
re-initialises every linear map as the paper's FuxiCTR code does (:func:`xavier_init`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from dcollapse.config import model_options
from dcollapse.data.dataset import is_scalar, scalar_values
from dcollapse.errors import UserError
from dcollapse.models.embedding import FieldEmbedding
from dcollapse.models.interactions import BiInteraction, CrossLayer, CrossNet, DotInteraction
from dcollapse.models.mlp import MLP

DETACH = (None, "dnn", "interaction")


class Head(nn.Linear):
    """Linear(H, 1) whose first ``fixed`` input weights are 1 and never trained (the FM sum over d as a logit).

    With every weight fixed the weight has ``requires_grad=False``; otherwise the fixed part is detached in forward.
    """

    def __init__(self, in_dim: int, fixed: int = 0, bias: bool = True) -> None:
        super().__init__(in_dim, 1, bias=bias)
        self.fixed = fixed
        self.fix_weights()
        if fixed == in_dim:
            self.weight.requires_grad_(False)

    @torch.no_grad()
    def fix_weights(self) -> None:
        """Set the first ``fixed`` input weights to 1 (again, after a re-initialisation)."""
        self.weight[:, : self.fixed] = 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[B, 1] from h [B, H]."""
        weight = self.weight
        if 0 < self.fixed < self.in_features:
            weight = torch.cat([weight[:, : self.fixed].detach(), weight[:, self.fixed :]], dim=1)
        return functional.linear(h, weight, self.bias)


@torch.no_grad()
def xavier_init(model: nn.Module) -> None:
    """FuxiCTR's ``reset_parameters``: every linear map's weight [out, in] xavier_normal_, its bias zero; the
    embedding tables keep N(0, 1e-4). Covers nn.Linear (MLP, head, low-rank cross factors) and the full-rank
    cross layers' W [K, K]; a head's fixed weights stay 1. The vector of a scalar field is FuxiCTR's bias-free
    Linear(1, d) of a numeric feature, a linear map too: N(0, 2 / (1 + d)) per embedding set of width d."""
    for module in model.modules():
        if isinstance(module, FieldEmbedding):
            std = math.sqrt(2.0 / (1 + module.emb_dim))
            for row in module.vector_rows():
                module.table[row].normal_(std=std)
        if isinstance(module, nn.Linear) or (isinstance(module, CrossLayer) and not module.rank):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                module.bias.zero_()
        if isinstance(module, Head):
            module.fix_weights()


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The model keys of ``config`` with defaults filled in, checked by :mod:`dcollapse.config` (the one home of the
    options; bad values raise a one-line UserError)."""
    return model_options(config)


class CTRModel(nn.Module):
    """A feature-interaction CTR model over F categorical fields (see the module docstring for the compositions)."""

    def __init__(
        self,
        config: dict[str, Any],
        vocab_sizes: list[int],
        scalar_values: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """``scalar_values``: per field, the value of each local id of a field embedded as one vector times the
        value (float [V_f]), or None for a categorical field (see :class:`FieldEmbedding`; default: none)."""
        super().__init__()
        c = model_config(config)
        self.config = c
        self.model, self.arch, self.style = c["model"], c["arch"], c["style"]
        self.embedding = FieldEmbedding(vocab_sizes, int(c["emb_dim"]), int(c["num_sets"]), scalar_values)
        F, d, k = len(vocab_sizes), int(c["emb_dim"]), int(c["num_sets"])
        self.interaction: BiInteraction | DotInteraction | CrossNet
        if self.model == "fm":
            self.interaction = BiInteraction(F, d, k)
        elif self.model == "dot":
            self.interaction = DotInteraction(F, d, k)
        else:
            self.interaction = CrossNet(F, d, k, int(c["cross_layers"]), int(c["cross_rank"]))
        z_dim, flat_dim = self.interaction.out_dim, F * d * k

        self.mlp: MLP | None = None
        mlp = {"activation": c["activation"], "norm": c["norm"], "dropout": float(c["dropout"])}
        mlp["residual"] = bool(c["residual"])
        if self.arch == "parallel":
            self.mlp = MLP(flat_dim, c["dnn"], **mlp)
            hidden_dim = z_dim + self.mlp.out_dim
        elif self.arch == "stacked":
            self.mlp = MLP(z_dim + (flat_dim if self.model == "dot" else 0), c["dnn"], **mlp)
            hidden_dim = self.mlp.out_dim
        else:
            hidden_dim = z_dim

        textbook_fm = self.model == "fm" and self.style == "textbook"
        fm_sum = self.model == "fm" and (self.arch == "none" or (textbook_fm and self.arch == "parallel"))
        fm_only_paper = self.model == "fm" and self.arch == "none" and self.style == "paper"
        self.head = Head(hidden_dim, fixed=z_dim if fm_sum else 0, bias=not fm_only_paper)
        self.first_order = nn.Parameter(torch.zeros(sum(vocab_sizes), 1)) if textbook_fm else None
        # E reaches the logit only through the interaction: forward(ids) can use the fused lookup+interaction op
        # (not with scalar fields: their rows are scaled between the lookup and the interaction).
        only_interaction_reads_e = self.arch == "none" or (self.arch == "stacked" and self.model != "dot")
        self._fused = self.interaction.fusable and only_interaction_reads_e and not self.embedding.has_scalar
        if c["init"] == "xavier":
            xavier_init(self)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """E [B, F, d_total] from local ids int [B, F]."""
        return self.embedding(ids)

    def hidden(self, E: torch.Tensor, detach: str | None = None) -> torch.Tensor:
        """The representation [B, H] that ``head`` reads, from E [B, F, d_total].

        ``detach="dnn"`` detaches E where the DNN reads it directly, ``detach="interaction"`` where the interaction
        reads it; the two resulting gradients with respect to E sum to the full gradient.
        """
        if detach not in DETACH:
            raise ValueError(f"detach must be None, 'dnn' or 'interaction', not {detach!r}")
        z = self.interaction(E.detach() if detach == "interaction" else E)
        return self._compose(z, E.detach() if detach == "dnn" else E)

    def _compose(self, z: torch.Tensor, E: torch.Tensor | None) -> torch.Tensor:
        """[B, H] from the interaction output z [B, z_dim] and (where the DNN reads it) E [B, F, d_total]."""
        mlp = self.mlp
        if self.arch == "none" or mlp is None:
            return z
        if self.arch == "stacked" and self.model != "dot":
            return mlp(z)
        if E is None:
            raise ValueError(f"the {self.arch} DNN of a {self.model} model reads the embeddings E")
        if self.arch == "parallel":
            return torch.cat([z, mlp(E.flatten(1))], dim=1)
        return mlp(torch.cat([E.flatten(1), z], dim=1))

    def first_order_logit(self, ids: torch.Tensor) -> torch.Tensor:
        """Textbook FM's first-order term sum_f w[id_f], [B]; zeros when the model has none."""
        if self.first_order is None:
            return ids.new_zeros(ids.shape[0], dtype=self.embedding.table.dtype)
        return self.embedding.read(self.first_order, ids).sum(dim=(1, 2))  # a scalar field: w_f x value

    def forward_from_embeddings(
        self, E: torch.Tensor, detach: str | None = None, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B] from E [B, F, d_total] (``detach`` as in :meth:`hidden`).

        Textbook FM models add a first-order term that depends only on the ids; pass ``ids`` [B, F] to include it
        (it does not change the gradient with respect to E's direction, only the logit's offset).
        """
        logits = self.head(self.hidden(E, detach)).squeeze(-1)
        return logits if ids is None or self.first_order is None else logits + self.first_order_logit(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B] from local ids int [B, F]."""
        interaction = self.interaction
        if self._fused and isinstance(interaction, BiInteraction | DotInteraction) and not self.embedding.sparse:
            table = self.embedding.table
            z = interaction.from_ids(table, ids, self.embedding.offsets, self.embedding.update_for(table))
            h = self._compose(z, None)
        else:
            h = self.hidden(self.embed(ids))
        logits = self.head(h).squeeze(-1)
        return logits if self.first_order is None else logits + self.first_order_logit(ids)

    def mlp_linears(self) -> list[nn.Linear]:
        """The DNN's linear layers, input to output ([] without a DNN)."""
        return self.mlp.linears() if self.mlp is not None else []

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The per-feature tables (embeddings and the textbook first-order weights): what ``l2_emb`` regularises."""
        return [self.embedding.table] + ([self.first_order] if self.first_order is not None else [])

    def sparse_gradients(self, sparse: bool = True) -> CTRModel:
        """With ``sparse``, the tables of :meth:`embedding_parameters` get sparse gradients holding only the rows a
        batch read (for optimizers that update only those rows); the fused lookup + interaction ops are skipped.
        Returns the model."""
        self.embedding.sparse = sparse
        return self


def vocab_sizes(meta: dict[str, Any]) -> list[int]:
    """Per-field vocabulary sizes from meta.json, checked against its offsets (one concatenated table)."""
    sizes = [int(f["vocab_size"]) for f in meta["fields"]]
    offsets = [int(f.get("offset", -1)) for f in meta["fields"]]
    expected = [sum(sizes[:i]) for i in range(len(sizes))]
    if offsets != expected:
        raise UserError("meta.json: field offsets are not the running sums of the vocabulary sizes")
    return sizes


def field_scalar_values(meta: dict[str, Any]) -> list[np.ndarray | None]:
    """Per field of meta.json: the value of each local id (float64 [V_f]) of a field with encoding ``scalar``, else
    None (a field with one learned row per id)."""
    return [scalar_values(f) if is_scalar(f) else None for f in meta["fields"]]


def build_model(config: dict[str, Any], meta: dict[str, Any]) -> CTRModel:
    """A freshly initialised model for ``config`` (missing model keys take their defaults) and meta.json."""
    return CTRModel(config, vocab_sizes(meta), field_scalar_values(meta))


def load_model(ckpt: dict[str, Any]) -> CTRModel:
    """The trained model of a checkpoint dict (from :func:`dcollapse.checkpoint.load`), in eval mode on the CPU."""
    model = build_model(ckpt["config"], ckpt["meta"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise UserError(f"checkpoint weights do not match its config ({first})") from None
    return model.eval()
