"""Which implementation an op runs: Triton for CUDA tensors, the PyTorch reference for CPU tensors.

``DCOLLAPSE_KERNELS=triton`` forces Triton (on CPU together with ``TRITON_INTERPRET=1``, for tests);
``DCOLLAPSE_KERNELS=reference`` forces the reference anywhere.
"""

from __future__ import annotations

import os

import torch
import triton

MIN_DOT = 16  # the GPU compiler rejects tl.dot operands with a dimension below 16 (the interpreter does not)


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


def dot_block(n: int, cap: int | None = None) -> int:
    """Tile size for a ``tl.dot`` dimension of extent ``n``: the next power of two, at least 16, at most ``cap``."""
    block = max(MIN_DOT, triton.next_power_of_2(n))
    return block if cap is None else max(MIN_DOT, min(block, cap))


def check_dot_blocks(*blocks: int) -> None:
    """Refuse ``tl.dot`` tiles the GPU compiler would reject (under the interpreter they would silently pass)."""
    if min(blocks) < MIN_DOT:
        raise ValueError(f"tl.dot tile dimensions must be >= {MIN_DOT}, got {blocks}")
