"""dcollapse: measure dimensional collapse of embeddings in feature-interaction models."""

__version__ = "0.1.0"
