"""Data: preprocessing raw CTR files with Polars, synthetic data, and loading preprocessed datasets."""
