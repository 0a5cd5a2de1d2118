"""File readers: each turns one kind of file (or directory) into a flat ``{key: Tensor}`` mapping.

One registry, :data:`READERS`, tried in order; the first whose ``claims(path)`` is true reads the path. PyTorch
files are only ever read with ``weights_only=True``: a file from a stranger cannot run code here.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcollapse.errors import UserError

NESTED_KEYS = ("state_dict", "model_state_dict", "model")  # Lightning / DLRM reference / RecBole, and plain dicts
SAFETENSORS_INDEX = "model.safetensors.index.json"
DCP_METADATA = ".metadata"
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
STATE_DICT_HOWTO = "save `torch.save(model.state_dict(), path)` instead and read that file"


@dataclass
class Loaded:
    """What a reader found: a flat mapping of tensors, and the raw object when it was a dcollapse checkpoint.

    Readers that can read one tensor at a time (safetensors, DCP) give meta-device placeholders (shape and dtype
    only) and a ``load(keys) -> {key: Tensor}`` that reads just those, so only the chosen tables are read.
    """

    reader: str
    tensors: dict[str, torch.Tensor]
    checkpoint: dict | None = None
    load: Callable[[list[str]], dict[str, torch.Tensor]] | None = None


def tensors_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state_dict inside ``obj``: one nested under :data:`NESTED_KEYS`, or else a bare ``{key: Tensor}``.

    A bare tensor becomes ``{"tensor": t}``; non-tensor entries (``_extra_state``, step counters) are dropped.
    """
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    if not isinstance(obj, Mapping):
        raise UserError(f"{where}: holds a {type(obj).__name__}, not a state_dict or tensor")
    for key in NESTED_KEYS:  # before the top level, which may hold counters such as a "step" tensor
        if isinstance(obj.get(key), Mapping):
            return tensors_of(obj[key], where)
    flat = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if flat:
        return flat
    raise UserError(f"{where}: no tensors found (looked at the top level and under {', '.join(NESTED_KEYS)})")


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """The classes/functions a refused pickle names, read statically (never executed)."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001  a damaged archive: fall back to the refusal message
            pass
    return re.findall(r"GLOBAL ([\w.]+)", str(exc))[:1]


def _refusal(path: Path, exc: Exception) -> UserError:
    names = _unsafe_globals(path, exc)
    if any(name.startswith("torch.nn.modules.") for name in names):
        return UserError(f"{path}: refused to load a whole pickled nn.Module (it could run code); {STATE_DICT_HOWTO}")
    first = names[0] if names else "unknown objects"
    return UserError(
        f"{path}: refused to load: holds Python objects beyond tensors and plain data ({first}); {STATE_DICT_HOWTO}"
    )


def read_torch(path: Path) -> Loaded:
    """A ``torch.save`` file, read with ``weights_only=True`` (memory-mapped when it is a zip archive, so tensors
    that are not tables are never read from disk); a dcollapse checkpoint is validated and kept."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads (or refuses) anyway
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except Exception as exc:  # noqa: BLE001  truncated zip, random bytes: torch fails in many ways
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable PyTorch file (truncated or corrupt? {detail})") from None
    from dcollapse import checkpoint

    if isinstance(obj, dict) and obj.get("format") == checkpoint.FORMAT:
        return Loaded("dcollapse", {}, checkpoint.load(path))
    return Loaded("torch", {path.stem: obj} if isinstance(obj, torch.Tensor) else tensors_of(obj, str(path)))


def safetensors_files(path: Path) -> list[Path]:
    """The shard files of a safetensors path: the file itself, the index's shards, or every file in the directory."""
    if path.is_file():
        return [path]
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{index}: not a safetensors index ({type(exc).__name__})") from None
        return [path / name for name in dict.fromkeys(weight_map.values())]
    return sorted(path.glob("*.safetensors"))


def read_safetensors(path: Path) -> Loaded:
    """A ``.safetensors`` file or a (sharded) directory of them; headers first, tensors on demand."""
    from safetensors import SafetensorError, safe_open

    placeholders: dict[str, torch.Tensor] = {}
    file_of: dict[str, Path] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    view = f.get_slice(key)
                    dtype = SAFETENSORS_DTYPES.get(view.get_dtype(), torch.uint8)
                    placeholders[key] = torch.empty(view.get_shape(), dtype=dtype, device="meta")
                    file_of[key] = file
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{file}: not a readable safetensors file ({str(exc)[:120]})") from None

    def load(keys: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for key in keys:
            try:
                with safe_open(file_of[key], "pt") as f:
                    out[key] = f.get_tensor(key)
            except (SafetensorError, OSError, ValueError) as exc:
                raise UserError(f"{file_of[key]}: cannot read {key} ({str(exc)[:120]})") from None
        return out

    return Loaded("safetensors", placeholders, load=load)


def read_numpy(path: Path) -> Loaded:
    """A ``.npy`` array (named after the file) or the arrays of a ``.npz``; pickled object arrays are refused."""
    try:
        loaded = np.load(path, allow_pickle=False)
        arrays = {path.stem: loaded} if isinstance(loaded, np.ndarray) else {k: loaded[k] for k in loaded.files}
    except ValueError as exc:
        raise UserError(f"{path}: refused or unreadable NumPy file ({str(exc)[:120]})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable NumPy file (truncated or corrupt? {type(exc).__name__})") from None
    return Loaded("numpy", {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()})


def read_dcp(path: Path) -> Loaded:
    """A ``torch.distributed.checkpoint`` directory (e.g. TorchRec's sharded saves), through torch's DCP reader.

    The metadata gives every tensor's global shape; ``load`` reads the chosen ones whole into plain CPU tensors
    (optimizer states and byte entries are never read).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    def dcp_call(call: Callable[[], Any]) -> Any:
        try:
            with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the intent here
                warnings.simplefilter("ignore", UserWarning)
                return call()
        except Exception as exc:  # noqa: BLE001  DCP raises its own CheckpointException and plain errors alike
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: not a readable torch.distributed.checkpoint directory ({first})") from None

    reader = dcp.FileSystemReader(str(path))
    entries = dcp_call(reader.read_metadata).state_dict_metadata
    sizes = {k: (m.size, m.properties.dtype) for k, m in entries.items() if isinstance(m, TensorStorageMetadata)}

    def load(keys: list[str]) -> dict[str, torch.Tensor]:
        state = {key: torch.empty(sizes[key][0], dtype=sizes[key][1]) for key in keys}
        dcp_call(lambda: dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True))
        return state

    placeholders = {key: torch.empty(size, dtype=dtype, device="meta") for key, (size, dtype) in sizes.items()}
    return Loaded("dcp", placeholders, load=load)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


READERS: list[tuple[str, Callable[[Path], bool], Callable[[Path], Loaded]]] = [
    ("dcp", lambda p: p.is_dir() and (p / DCP_METADATA).is_file(), read_dcp),
    (
        "safetensors",
        lambda p: _suffix(p) == ".safetensors" or (p.is_dir() and any(p.glob("*.safetensors"))),
        read_safetensors,
    ),
    ("numpy", lambda p: p.is_file() and _suffix(p) in (".npy", ".npz"), read_numpy),
    ("torch", lambda p: p.is_file(), read_torch),
]


def read_path(path: Path) -> Loaded:
    """Read ``path`` with the first reader of :data:`READERS` that claims it."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    for _, claims, read in READERS:
        if claims(path):
            return read(path)
    raise UserError(f"{path}: a directory without safetensors files or a torch.distributed.checkpoint .metadata")
