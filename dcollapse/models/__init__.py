"""Feature-interaction models: one field-embedding table, an interaction, and an optional DNN."""

from dcollapse.models.embedding import FieldEmbedding
from dcollapse.models.interactions import BiInteraction, CrossLayer, CrossNet, DotInteraction
from dcollapse.models.mlp import MLP
from dcollapse.models.model import CTRModel, Head, build_model, load_model, model_config

__all__ = [
    "MLP",
    "BiInteraction",
    "CTRModel",
    "CrossLayer",
    "CrossNet",
    "DotInteraction",
    "FieldEmbedding",
    "Head",
    "build_model",
    "load_model",
    "model_config",
]
