"""The plain records a source reader returns: named embedding tables and what was found beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel


@dataclass
class EmbeddingTable:
    """One embedding table ``weight`` [R, d] (floating, CPU, detached).

    A concatenated table holds several fields: ``fields`` names them and ``offsets`` (int64 [F]) gives the first
    row of each (field f owns rows ``offsets[f]`` up to ``offsets[f + 1]``, the last one up to R). Both are None
    when the table is one field.
    """

    name: str
    weight: torch.Tensor
    key: str
    fields: list[str] | None = None
    offsets: torch.Tensor | None = None


@dataclass
class Candidate:
    """One tensor of a source as ``--list-tables`` shows it: chosen as a table, or skipped and why."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    chosen: bool
    reason: str


@dataclass
class TableSource:
    """The embedding tables of one source, which reader read it and which layout its keys follow."""

    tables: list[EmbeddingTable]
    reader: str
    layout: str
    path: str | None
    notes: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    checkpoint: dict | None = None
    model: CTRModel | None = None  # the rebuilt model of a dcollapse checkpoint (its forward serves the batch view)
