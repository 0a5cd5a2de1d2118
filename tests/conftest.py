"""Suite-wide setup, before anything imports torch or triton.

Triton kernels run under the interpreter on CPU unless ``TRITON_INTERPRET=0`` is set (on a CUDA machine: then the
kernel tests run on the GPU, see the ``device`` fixture); each pytest-xdist worker uses one thread (two workers on
two cores would otherwise oversubscribe them).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def device():
    """Where kernel tests build their inputs: CUDA when present and the interpreter is off, else the CPU (the
    Triton interpreter)."""
    import torch

    from dcollapse.kernels.dispatch import interpreting

    return torch.device("cuda" if torch.cuda.is_available() and not interpreting() else "cpu")
