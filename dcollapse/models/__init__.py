"""Feature-interaction models: one field-embedding table, an interaction, and an optional DNN."""
