"""Triton kernels and their pure-PyTorch references (installed as ``dcollapse.kernels``; imports torch/triton only)."""
