"""Collapse metrics: spectra of embedding tables, batch representations and gradients."""
