"""Dagster component definitions (``defs.yaml``) of the examples, loaded as a dg project."""
