"""Diagnostics beyond embedding spectra: AGOP, neural collapse, Deep RFM, richness and interactions."""
