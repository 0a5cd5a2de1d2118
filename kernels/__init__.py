"""Triton kernels and their PyTorch references (installed as ``dcollapse.kernels``; imports only torch and triton).

Every public op dispatches on its inputs: CUDA tensors run Triton, CPU tensors run the reference
(see :mod:`dcollapse.kernels.dispatch`). The table-reading ops take ``update=`` a :class:`RowOptimizer`: the
optimizer applied in the backward to the rows a batch read (:mod:`dcollapse.kernels.row_update`).
"""

from dcollapse.kernels.cross import cross_layer
from dcollapse.kernels.dot import fused_pairwise_dot, pairwise_dot
from dcollapse.kernels.fm import bi_interaction, fused_bi_interaction
from dcollapse.kernels.lookup import lookup
from dcollapse.kernels.row_update import RULES, RowOptimizer
from dcollapse.kernels.scatter import scatter_rows
from dcollapse.kernels.spectrum import batched_spectra, gram_spectra, matrix_spectrum, segment_grams

__all__ = [
    "RULES",
    "RowOptimizer",
    "batched_spectra",
    "bi_interaction",
    "cross_layer",
    "fused_bi_interaction",
    "fused_pairwise_dot",
    "gram_spectra",
    "lookup",
    "matrix_spectrum",
    "pairwise_dot",
    "scatter_rows",
    "segment_grams",
]
