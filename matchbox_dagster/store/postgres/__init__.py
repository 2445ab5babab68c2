"""The PostgreSQL store."""

from matchbox_dagster.store.postgres.adapter import MatchboxPostgres as MatchboxPostgres

__all__ = ["MatchboxPostgres"]
