"""Sources: anything that holds embedding tables -> named tables [R, d], with field boundaries where known.

:func:`read_tables` reads a dcollapse checkpoint, any PyTorch file (``weights_only=True`` only), safetensors
files and sharded directories, ``.npy`` / ``.npz`` arrays, a ``torch.distributed.checkpoint`` directory, or a
live ``nn.Module`` / state_dict / tensor, and recognises the table keys of FuxiCTR, DeepCTR-Torch, TorchRec,
the DLRM reference, torchfm / RecBole (one concatenated table) and dcollapse itself
(:mod:`dcollapse.sources.layouts`). Anything it cannot read raises a one-line :class:`~dcollapse.errors.UserError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcollapse.errors import UserError
from dcollapse.sources.layouts import Layout, select, unfit_reason
from dcollapse.sources.readers import Loaded, read_path, tensors_of
from dcollapse.sources.tables import Candidate, EmbeddingTable, TableSource

__all__ = ["Candidate", "EmbeddingTable", "TableSource", "read_field_map", "read_tables"]

SPLIT_HOWTO = "pass --field-dims or --field-map to split it into fields"


def read_field_map(path: str | Path) -> list[tuple[str, int | None]]:
    """``[(name, vocab_size or None)]`` in field order from a FuxiCTR ``feature_map.json`` or a dcollapse meta.json.

    FuxiCTR 2.x lists ``"features": [{name: spec}, ...]`` (1.x: ``"feature_specs": {name: spec}``); numeric
    features have no vocabulary (None) and ``"meta"`` features are left out. dcollapse's ``"fields"`` are
    ``[{"name", "vocab_size"}, ...]``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON field map ({type(exc).__name__})") from None
    try:
        if "fields" in doc:
            return [(str(f["name"]), int(f["vocab_size"])) for f in doc["fields"]]
        specs = (
            doc["feature_specs"] if "feature_specs" in doc else {k: v for x in doc["features"] for k, v in x.items()}
        )
        return [
            (str(name), int(spec["vocab_size"]) if "vocab_size" in spec else None)
            for name, spec in specs.items()
            if spec.get("type") != "meta"
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path}: not a field map (expected FuxiCTR's feature_map.json or a dcollapse meta.json; {exc!r:.80})"
        ) from None


def split_table(table: EmbeddingTable, names: list[str], sizes: list[int], where: str) -> EmbeddingTable:
    """``table`` with ``fields`` / ``offsets`` set from per-field row counts (which must add up to its rows)."""
    rows = table.weight.shape[0]
    if not sizes or min(sizes) < 1:
        raise UserError(f"{where}: field sizes must be positive integers, got {sizes}")
    if sum(sizes) != rows:
        raise UserError(f"{where}: {len(sizes)} field sizes add up to {sum(sizes)} rows, but {table.key} has {rows}")
    offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
    return EmbeddingTable(table.name, table.weight, table.key, names, offsets)


def _checkpoint_source(ckpt: dict, path: str | None, options: dict[str, Any]) -> TableSource:
    """The one table of a dcollapse checkpoint: the model's ``embedding.table`` split by its offsets and field names."""
    given = [flag for flag, value in options.items() if value is not None]
    if given:
        raise UserError(f"{path or 'checkpoint'}: a dcollapse checkpoint knows its fields; drop {', '.join(given)}")
    if ckpt.get("kind", "ctr") != "ctr":
        raise UserError(f"{path or 'checkpoint'}: a {ckpt['kind']} checkpoint, not a CTR model with embedding tables")
    from dcollapse.models import load_model

    model = load_model(ckpt)
    names = [f["name"] for f in ckpt["meta"]["fields"]]
    table = EmbeddingTable(
        "embedding", model.embedding.table.detach(), "embedding.table", names, model.embedding.offsets.clone()
    )
    _, _, candidates, _ = select(tensors_of(ckpt["state_dict"], path or "checkpoint"))
    return TableSource([table], "dcollapse", "dcollapse", path, [], candidates, ckpt, model)


def _load(source: Any) -> tuple[Loaded, str | None, str]:
    """(what was read, the path or None, how to name the source in messages)."""
    if isinstance(source, str | Path):
        return read_path(Path(source)), str(source), str(source)
    if isinstance(source, nn.Module):
        where = f"<{type(source).__name__} module>"
        return Loaded("object", dict(source.state_dict())), None, where
    if isinstance(source, Mapping) and source.get("format") == "dcollapse.checkpoint":
        from dcollapse import checkpoint

        missing = [key for key in checkpoint.REQUIRED if key not in source]
        problem = f"lacks {', '.join(missing)}" if missing else checkpoint.contents_problem(dict(source))
        if problem:
            raise UserError(f"<checkpoint dict>: damaged checkpoint: {problem}")
        return Loaded("dcollapse", {}, dict(source)), None, "<checkpoint dict>"
    if isinstance(source, torch.Tensor | Mapping):
        where = f"<{type(source).__name__}>"
        return Loaded("object", tensors_of(source, where)), None, where
    raise UserError(
        f"cannot read embedding tables from a {type(source).__name__} (give a path, module, dict or tensor)"
    )


def _apply_field_map(tables: list[EmbeddingTable], fmap: list[tuple[str, int | None]], where: str) -> list[str]:
    """Check per-feature tables against a field map (rows = vocab size); unnamed DLRM tables take its names."""
    vocab = [(name, size) for name, size in fmap if size is not None]
    sizes = dict(vocab)
    if all(t.name.startswith("emb_l.") for t in tables) and len(vocab) == len(tables):
        for table, (name, _) in zip(tables, vocab, strict=True):
            table.name = name
    for table in tables:
        if table.name in sizes and sizes[table.name] != table.weight.shape[0]:
            raise UserError(
                f"{where}: table {table.name} has {table.weight.shape[0]} rows, the field map says {sizes[table.name]}"
            )
    unmatched = [name for name, _ in fmap if name not in {t.name for t in tables}]
    return [f"{len(unmatched)} field-map features have no table ({', '.join(unmatched[:5])})"] if unmatched else []


def _split_fields(
    chosen: list[EmbeddingTable],
    layout: Layout,
    tensors: dict[str, torch.Tensor],
    field_dims: list[int] | None,
    fmap: list[tuple[str, int | None]] | None,
    where: str,
) -> list[str]:
    """Give a concatenated table its fields (from ``field_dims``, the field map, or dcollapse's ``offsets`` buffer),
    or check per-feature tables against the field map; returns notes. Replaces entries of ``chosen``."""
    if field_dims is not None or (fmap is not None and layout.concatenated):
        if len(chosen) != 1:
            raise UserError(
                f"{where}: field sizes split one concatenated table, found {len(chosen)} (pick one: --tables)"
            )
        if field_dims is not None:
            names, sizes = [f"field{i}" for i in range(len(field_dims))], list(field_dims)
        elif fmap is not None:
            names, sizes = (
                [name for name, size in fmap if size is not None],
                [size for _, size in fmap if size is not None],
            )
        chosen[0] = split_table(chosen[0], names, sizes, where)
        return []
    if fmap is not None:
        return _apply_field_map(chosen, fmap, where)
    offsets = tensors.get(chosen[0].key.removesuffix("table") + "offsets") if layout.name == "dcollapse" else None
    if offsets is not None and offsets.dim() == 1:
        sizes = torch.diff(offsets, append=torch.tensor([chosen[0].weight.shape[0]])).tolist()
        chosen[0] = split_table(chosen[0], [f"field{i}" for i in range(len(sizes))], sizes, where)
        return []
    if layout.concatenated:
        return [f"{chosen[0].key} is one concatenated table, reported whole; {SPLIT_HOWTO}"]
    return []


def read_tables(
    source: str | Path | nn.Module | Mapping[str, Any] | torch.Tensor,
    *,
    field_dims: list[int] | None = None,
    field_map: str | Path | None = None,
    tables: str | None = None,
    allow_empty: bool = False,
) -> TableSource:
    """The embedding tables of ``source`` (a path, an ``nn.Module``, a state_dict or checkpoint dict, a tensor).

    ``tables`` (a regex, searched in each key without wrapper prefixes) chooses tables explicitly instead of the
    layout's pattern. ``field_dims`` (rows per field) or ``field_map`` (FuxiCTR feature_map.json / dcollapse
    meta.json) split one concatenated table [sum V_f, d] into fields; with per-feature tables the field map is
    checked against their row counts. ``allow_empty`` returns a source with no tables instead of raising (for
    ``--list-tables``). Raises :class:`UserError` (one line naming the source) for anything unreadable.
    """
    loaded, path, where = _load(source)
    if loaded.checkpoint is not None:
        options = {"--field-dims": field_dims, "--field-map": field_map, "--tables": tables}
        return _checkpoint_source(loaded.checkpoint, path, options)
    if field_dims is not None and field_map is not None:
        raise UserError("give --field-dims or --field-map, not both")
    tensors = loaded.tensors
    if not any(t.dim() == 2 and t.is_floating_point() for t in tensors.values()):
        raise UserError(f"{where}: no 2-D floating tensors among its {len(tensors)} tensors: no embedding table")
    if tables is not None:
        try:
            re.compile(tables)
        except re.error as exc:
            raise UserError(f"--tables {tables!r}: not a valid regular expression ({exc})") from None
    chosen, layout, candidates, notes = select(tensors, tables)
    if loaded.load is not None and chosen:  # placeholders so far: read the chosen tables only
        weights = loaded.load([t.key for t in chosen])
        for table in chosen:
            table.weight = weights[table.key]
    if not chosen and not allow_empty:
        fit = sum(unfit_reason(t) is None for t in tensors.values())
        how = "choose with --tables REGEX" if tables is None else "try another --tables REGEX"
        raise UserError(
            f"{where}: no embedding table recognised among {fit} 2-D floating tensors; {how} (--list-tables)"
        )
    if chosen:
        fmap = read_field_map(field_map) if field_map is not None else None
        notes += _split_fields(chosen, layout, tensors, field_dims, fmap, where)
    return TableSource(chosen, loaded.reader, layout.name, path, notes, candidates)
