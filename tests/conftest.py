"""Suite-wide setup: Triton kernels run under the interpreter on CPU, so it must be on before any import of triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
