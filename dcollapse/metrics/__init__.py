"""Collapse metrics: spectra of embedding tables, batch representations and gradients."""

# Fixed-batch defaults, here rather than in metrics.collapse so that the CLI shows them without importing torch.
DEFAULT_BATCH_ROWS = 50_000
DEFAULT_SEED = 0
