"""matchbox-dagster: entity resolution as Dagster assets on a PostgreSQL store."""

__version__ = "0.1.0"
