"""Suite-wide setup, before anything imports torch or triton.

Triton kernels run under the interpreter on CPU; each pytest-xdist worker uses one thread (two workers on two
cores would otherwise oversubscribe them).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
