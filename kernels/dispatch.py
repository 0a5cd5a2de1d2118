"""Which implementation an op runs, and the launch choices shared by the kernels.

CUDA tensors run Triton, CPU tensors run the PyTorch reference. ``DCOLLAPSE_KERNELS=triton`` forces Triton (on CPU
together with ``TRITON_INTERPRET=1``, for tests); ``DCOLLAPSE_KERNELS=reference`` forces the reference anywhere.

Precision: the kernels accumulate in float32 for float32/bfloat16/float16 inputs and in float64 for float64 inputs
(:func:`acc_dtype`), so a float64 table is computed in float64, never silently rounded to float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # the GPU compiler rejects tl.dot operands with a dimension below 16 (the interpreter does not)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op should run its Triton kernel on ``tensor``'s device."""
    choice = os.environ.get("DCOLLAPSE_KERNELS", "auto").lower()
    if choice == "reference":
        return False
    if choice == "triton":
        return True
    if choice != "auto":
        raise ValueError(f"DCOLLAPSE_KERNELS must be auto, triton or reference, not {choice!r}")
    return tensor.is_cuda


def interpreting() -> bool:
    """True under the Triton CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def num_warps(values_per_program: int) -> int:
    """Warps for a program holding ``values_per_program`` fp32 tile values live: one warp per 512 values, 1 to 8
    (so no thread holds more than about 16 tile values: no register spills on sm_90)."""
    return max(1, min(8, triton.next_power_of_2(max(1, values_per_program // 512))))


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton accumulator for inputs of ``dtype``: float64 for float64, else float32."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"the kernels take float32, float64, bfloat16 or float16 tensors, not {dtype}")
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for operands loaded from ``dtype`` and upcast to :func:`acc_dtype`: tf32x3
    (three tf32 MMAs, about fp32 accuracy, on the tensor cores) for the float32 accumulator, ieee for float64."""
    return "ieee" if dtype == torch.float64 else "tf32x3"


def dot_block(n: int, cap: int | None = None) -> int:
    """Tile size for a ``tl.dot`` dimension of extent ``n``: the next power of two, at least 16, at most ``cap``."""
    block = max(MIN_DOT, triton.next_power_of_2(n))
    return block if cap is None else max(MIN_DOT, min(block, cap))


def check_dot_blocks(*blocks: int) -> None:
    """Refuse ``tl.dot`` tiles the GPU compiler would reject (under the interpreter they would silently pass)."""
    if min(blocks) < MIN_DOT:
        raise ValueError(f"tl.dot tile dimensions must be >= {MIN_DOT}, got {blocks}")


def check_ids(ids: torch.Tensor, offsets: torch.Tensor, num_rows: int) -> None:
    """Refuse local ids outside their field's vocabulary: ``ids`` int [B, F], field f owns the table rows
    [offsets[f], offsets[f + 1]) (the last field runs to ``num_rows``). One reduction and one host sync."""
    if ids.dim() != 2 or offsets.shape != (ids.shape[1],):
        shapes = f"ids {tuple(ids.shape)}, offsets {tuple(offsets.shape)}"
        raise ValueError(f"ids must be [B, F] with offsets [F], got {shapes}")
    if ids.dtype not in (torch.int32, torch.int64) or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids and offsets must be int32 or int64, not {ids.dtype} and {offsets.dtype}")
    if ids.numel() == 0:
        return
    ends = torch.cat([offsets[1:], offsets.new_tensor([num_rows])])
    vocab = (ends - offsets).to(ids.device)
    bad = (ids < 0) | (ids >= vocab)
    if bool(bad.any()):
        b, f = (int(v) for v in bad.nonzero()[0])
        where = f"id {int(ids[b, f])} of sample {b}, field {f}"
        raise ValueError(f"{where} is outside that field's vocabulary [0, {int(vocab[f])})")
