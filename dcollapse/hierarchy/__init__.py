"""Sparse Random Hierarchy Model: synthetic hierarchical data, CNN/LCN learners, per-layer sensitivities."""
