"""The optimizers of a CTR training run: dense Adam / Adagrad / SGD (fused where torch has it), sparse table
gradients (``sparse_emb``), the in-backward table update (``fused_update``), gradient-norm clipping and the
learning-rate decay of the paper's recipe. :func:`make_optimizer` builds the one a config asks for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from dcollapse.errors import UserError
from dcollapse.models import CTRModel
from dcollapse.models.embedding import FusedTableOptimizer

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
# sparse_emb: the tables' optimizer. SparseAdam is lazy Adam (rows absent from a batch keep their moments undecayed,
# unlike dense Adam); Adagrad and SGD without momentum leave a row with a zero gradient unchanged, so they are exact.
SPARSE_OPTIMIZERS = {"adam": torch.optim.SparseAdam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
MIN_LR = 1e-6  # lr_decay never goes below this (FuxiCTR's lr_decay min_lr)


class TrainOptimizer(Protocol):
    """What training calls on an optimizer: a ``torch.optim.Optimizer``, or :class:`SparseTableOptimizer`,
    :class:`~dcollapse.models.embedding.FusedTableOptimizer` or :class:`ClipGradients`, which have these methods."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


# --fused-update against the default dense update, as measured (docs/benchmarks.md, "Where --sparse-emb pays": FM,
# Adam, batch 4096 x 39 fields = 160k ids per batch, one thread): a tie up to ~1.3x as many table rows as ids per
# batch, 1.17x faster at 1.9x (3e5 rows), 1.77x at 6x (1e6 rows).
FUSED_PAYS_FROM = 2.0  # table rows per id a batch reads


def update_hint(config: dict[str, Any], table_rows: int, fields: int) -> str | None:
    """A one-line suggestion of ``--fused-update`` for a run whose tables have ``table_rows`` rows over ``fields``
    fields, where it was measured to pay and the run does not use it (None otherwise). Only a hint: with Adam the
    fused update is lazy Adam, not the run's dense Adam."""
    if config.get("fused_update") or config.get("sparse_emb") or config.get("compile"):
        return None
    ids = int(config["batch_size"]) * fields
    if table_rows < FUSED_PAYS_FROM * ids:
        return None
    rule = "the same rule" if config["optimizer"] in ("sgd", "adagrad") else "lazy Adam instead of dense Adam"
    return (
        f"the tables have {table_rows:,} rows, {table_rows / ids:.0f}x the {ids:,} ids a batch reads: --fused-update"
        f" updates only the rows a batch reads ({rule}); it trained FM 1.17x as fast at 3e5 rows and 1.77x at 1e6"
        " (batch 4096 x 39 fields, docs/benchmarks.md)"
    )


def make_optimizer(model: CTRModel, config: dict[str, Any]) -> TrainOptimizer:
    """The optimizer; ``l2_emb`` is an L2 penalty (l2_emb / 2) * ||table||^2 on the embedding tables only.

    With ``sparse_emb`` the model's tables are switched to sparse gradients (``CTRModel.sparse_gradients``) and
    get their own optimizer (:data:`SPARSE_OPTIMIZERS`) that updates only the rows of each batch; the L2 penalty
    then applies lazily, to those rows only. Every other parameter gets the dense optimizer.
    With ``fused_update`` the tables are updated inside the backward instead, rows read only, no table gradient
    (:class:`~dcollapse.models.embedding.FusedTableOptimizer`: exact SGD and Adagrad, lazy Adam for adam).
    """
    tables = model.embedding_parameters()
    ids = {id(p) for p in tables}
    others = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    lr, l2 = float(config["lr"]), float(config["l2_emb"])
    fused = config.get("fused_update", False)
    if fused and (config.get("sparse_emb", False) or config.get("compile", False)):
        raise UserError("--fused-update replaces --sparse-emb and does not work with --compile; drop one")
    if (fused or config.get("sparse_emb", False)) and (config["clip_norm"] or config["lr_decay"] < 1):
        raise UserError(
            f"--clip-norm and --lr-decay need dense table gradients; drop --{'fused-update' if fused else 'sparse-emb'}"
            " or give --clip-norm 0 --lr-decay 1"
        )
    if config.get("sparse_emb", False):
        model.sparse_gradients()
        sparse = SPARSE_OPTIMIZERS[config["optimizer"]](tables, lr=lr)
        return SparseTableOptimizer(sparse, dense_optimizer(config["optimizer"], [{"params": others}], lr), l2)
    if fused:
        dense = dense_optimizer(config["optimizer"], [{"params": others}], lr)
        return FusedTableOptimizer(model.embedding, tables, config["optimizer"], lr, dense, l2)
    groups = [{"params": tables, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]
    return dense_optimizer(config["optimizer"], groups, lr)


def decay_lr(optimizer: Any, factor: float) -> None:
    """Multiply the learning rate of every parameter group of ``optimizer`` (and of the optimizers inside a
    :class:`SparseTableOptimizer` or :class:`ClipGradients`) by ``factor``, never below :data:`MIN_LR`."""
    parts = [getattr(optimizer, name) for name in ("inner", "tables", "dense") if hasattr(optimizer, name)]
    if not parts:
        for group in optimizer.param_groups:
            group["lr"] = max(group["lr"] * factor, MIN_LR)
    for part in parts:
        decay_lr(part, factor)


class ClipGradients:
    """``inner`` (an optimizer) that first clips the gradient norm of ``params`` to ``max_norm`` at every step, as
    FuxiCTR's train_step does between backward and step (``torch.nn.utils.clip_grad_norm_``, all parameters)."""

    def __init__(self, inner: TrainOptimizer, params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
        self.inner, self.params, self.max_norm = inner, [p for p in params if p.requires_grad], max_norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def dense_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over the parameter ``groups``, fused where torch has a fused kernel."""
    try:  # the fused single-pass update is several times faster than the default, on CPU as on CUDA
        return OPTIMIZERS[name](groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return OPTIMIZERS[name](groups, lr=lr)


class SparseTableOptimizer:
    """The optimizer of a ``sparse_emb`` run, with the ``torch.optim.Optimizer`` methods :func:`train` uses.

    ``tables`` steps the embedding tables from their sparse gradients (a [V, d] table's gradient holds the U rows
    the batch read), ``dense`` every other parameter. ``l2`` > 0 adds l2 * row to the gradient of each row the
    batch read, once per step (lazy L2: rows absent from a batch are not decayed, unlike dense weight decay).
    """

    def __init__(self, tables: torch.optim.Optimizer, dense: torch.optim.Optimizer, l2: float = 0.0) -> None:
        self.tables, self.dense, self.l2 = tables, dense, l2

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.tables.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        # torch's sparse optimizers build sparse tensors of valid rows; skipping the invariant checks (explicitly,
        # which also silences torch's warning about it) is what they do by default
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            if self.l2:
                for table in self.tables.param_groups[0]["params"]:
                    if table.grad is not None:
                        grad = table.grad.coalesce()
                        values = grad.values() + self.l2 * table.index_select(0, grad.indices()[0])
                        table.grad = torch.sparse_coo_tensor(grad.indices(), values, table.shape, is_coalesced=True)
            self.tables.step()
        self.dense.step()

    def state_dict(self) -> dict[str, Any]:
        return {"tables": self.tables.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tables.load_state_dict(state["tables"])
        self.dense.load_state_dict(state["dense"])
