"""Layouts: which tensors of a flat ``{key: Tensor}`` mapping are embedding tables, recognised by key pattern.

Each :class:`Layout` is one regex whose ``name`` group names the table (the feature, for per-feature tables).
The patterns follow each library's own module names:

- dcollapse ``FieldEmbedding``: ``embedding.table`` [sum V_f, d] beside its ``embedding.offsets`` buffer;
- FuxiCTR 2.x ``FeatureEmbeddingDict.embedding_layers.<feature>`` (1.x ``EmbeddingDictLayer.embedding_layer``),
  with ``pretrain_embedding`` / ``id_embedding`` inside pretrained features;
- DeepCTR-Torch ``embedding_dict.<feature>`` (the ``linear_model``'s copy holds first-order weights);
- TorchRec ``EmbeddingBagCollection.embedding_bags.<table>`` / ``EmbeddingCollection.embeddings.<table>``;
- DLRM reference ``emb_l.<k>`` (an ``nn.ModuleList`` of ``EmbeddingBag``);
- one concatenated table: torchfm's ``FeaturesEmbedding.embedding``, RecBole's ``FMEmbedding.embedding``
  (``token_embedding_table``), split into fields by field sizes;
- generic: any other 2-D floating tensor whose key names an embedding.

Width-1 weights (first-order / LR weights [V, 1], FuxiCTR's numeric ``Linear(1, d)`` weight [d, 1]) are never
tables; a tensor sharing storage with an earlier one (shared embeddings) is counted once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dcollapse.sources.tables import Candidate, EmbeddingTable

PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning / wrappers


@dataclass(frozen=True)
class Layout:
    """A library's table keys: ``pattern`` (re.search on the key with :data:`PREFIXES` stripped)."""

    name: str
    pattern: re.Pattern[str]
    concatenated: bool = False  # one table holding every field, split by field sizes
    skip: re.Pattern[str] | None = None  # keys the pattern matches that are not tables, and why
    skip_reason: str = ""


LAYOUTS = (
    Layout("dcollapse", re.compile(r"(?:^|\.)(?P<name>embedding)\.table$"), concatenated=True),
    Layout(
        "fuxictr",
        re.compile(r"(?:^|\.)embedding_layers?\.(?P<name>[^.]+(?:\.(?:pretrain|id)_embedding)?)\.weight$"),
    ),
    Layout(
        "deepctr",
        re.compile(r"(?:^|\.)embedding_dict\.(?P<name>[^.]+)\.weight$"),
        skip=re.compile(r"(?:^|\.)linear_model\."),
        skip_reason="DeepCTR-Torch linear_model: first-order weights",
    ),
    Layout("torchrec", re.compile(r"(?:^|\.)(?:embedding_bags|embeddings)\.(?P<name>[^.]+)\.weight$")),
    Layout("dlrm", re.compile(r"(?:^|\.)(?P<name>emb_l\.\d+)\.weight$")),
    Layout(
        "concatenated",
        re.compile(r"(?:^|\.)(?P<name>(?:token_embedding_table|embedding)\.embedding)\.weight$"),
        concatenated=True,
    ),
)
GENERIC = Layout("generic", re.compile(r"(?P<name>.*emb.*?)(?:\.weight)?$", re.IGNORECASE))
ONLY = Layout("generic", re.compile(r"(?P<name>.+?)(?:\.weight)?$"))  # the one 2-D tensor of a source (a bare array)


def strip_prefixes(key: str) -> str:
    """``key`` without leading wrapper prefixes (:data:`PREFIXES`) and without ``_orig_mod.`` anywhere."""
    key = key.replace("._orig_mod.", ".")
    while key.startswith(PREFIXES):
        key = key[key.index(".") + 1 :]
    return key


def unfit_reason(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` cannot be an embedding table, or None when it can."""
    if tensor.dim() != 2:
        return f"{tensor.dim()}-D, not a [rows, dim] table"
    if not tensor.is_floating_point():
        return f"{str(tensor.dtype).removeprefix('torch.')}, not floating"
    if tensor.shape[1] == 1:
        return "width 1: a first-order weight or a numeric feature's Linear(1, d) weight, not a table"
    if tensor.shape[0] == 0:
        return "no rows"
    return None


def storage_id(tensor: torch.Tensor) -> tuple[int, ...]:
    """Equal for two views of the same data (a table shared by two features); a placeholder is its own."""
    if tensor.is_meta:
        return (id(tensor),)
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), *tensor.shape


def miss_reason(layout: Layout) -> str:
    if layout.name == "generic":
        return "its key names no embedding (--tables chooses it)"
    return f"not a {layout.name} table key"


def detect(keys: list[str]) -> Layout:
    """The first of :data:`LAYOUTS` with a table key among ``keys`` (the stripped keys of the fit tensors).

    Else :data:`GENERIC`, or :data:`ONLY` when there is one fit tensor and its key names no embedding.
    """
    for layout in LAYOUTS:
        if any(layout.pattern.search(k) and not (layout.skip and layout.skip.search(k)) for k in keys):
            return layout
    return ONLY if len(keys) == 1 and not GENERIC.pattern.search(keys[0]) else GENERIC


def select(
    tensors: dict[str, torch.Tensor], regex: str | None = None
) -> tuple[list[EmbeddingTable], Layout, list[Candidate], list[str]]:
    """(tables, layout, candidates, notes): the tables of ``tensors`` by layout, or those whose key matches ``regex``.

    Tables come out in key order; ``name`` is the layout's name for the key (the stripped key for ``regex``
    picks outside the layout). The one note, when any, counts the width-1 weights the layout's pattern matched.
    """
    stripped = {key: strip_prefixes(key) for key in tensors}
    fit = {key: unfit_reason(t) is None for key, t in tensors.items()}
    layout = detect([stripped[k] for k in tensors if fit[k]])
    chooser = re.compile(regex) if regex is not None else None
    tables: list[EmbeddingTable] = []
    candidates: list[Candidate] = []
    seen: dict[tuple, str] = {}
    width_one = 0
    for key, tensor in tensors.items():
        name_key = stripped[key]
        match = layout.pattern.search(name_key)
        reason = unfit_reason(tensor)
        if reason is None and chooser is not None:
            reason = None if chooser.search(name_key) else f"does not match --tables {regex}"
        elif reason is None and (match is None or (layout.skip and layout.skip.search(name_key))):
            reason = layout.skip_reason if match else miss_reason(layout)
        if reason is None and storage_id(tensor) in seen:
            reason = f"shares its storage with {seen[storage_id(tensor)]}"
        if reason is None:
            seen[storage_id(tensor)] = key
            name = match["name"] if match else name_key.removesuffix(".weight")
            tables.append(EmbeddingTable(name, tensor.detach() if tensor.is_meta else tensor.detach().cpu(), key))
        width_one += reason is not None and reason.startswith("width 1") and match is not None
        dtype = str(tensor.dtype).removeprefix("torch.")
        candidates.append(Candidate(key, tuple(tensor.shape), dtype, reason is None, reason or f"{layout.name} table"))
    if chooser is not None and any(not layout.pattern.search(stripped[t.key]) for t in tables):
        layout = GENERIC
    notes = [f"skipped {width_one} width-1 {layout.name} weights (first-order or numeric features, not tables)"]
    return tables, layout, candidates, notes if width_one else []
