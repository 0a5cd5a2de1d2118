"""Which implementation an op runs: Triton for CUDA tensors, the PyTorch reference for CPU tensors.

``DCOLLAPSE_KERNELS=triton`` forces Triton (on CPU together with ``TRITON_INTERPRET=1``, for tests);
``DCOLLAPSE_KERNELS=reference`` forces the reference anywhere.
"""

from __future__ import annotations

import os

import torch


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
