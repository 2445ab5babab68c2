"""Housekeeping: ``clear`` (every row), ``drop`` (the schema), ``delete_orphans`` (clusters)."""

from __future__ import annotations

from matchbox_dagster.common.errors import MatchboxDeletionNotConfirmed
from matchbox_dagster.store.postgres import core, migrate
from matchbox_dagster.store.postgres.core import logger, partition_name
from matchbox_dagster.store.postgres.db import compose
from matchbox_dagster.store.postgres.defaults import ensure_defaults
from matchbox_dagster.store.postgres.snapshot_layout import (
    BULK_TYPES,
    catalog,
    list_partitions,
    qualified,
    raw_cursor,
)
from matchbox_dagster.store.postgres.snapshot_load import ensure_defaults_raw


class Housekeeping:
    """Clearing and dropping the store, deleting orphan clusters."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def clear(self, certain: bool) -> None:
        """Delete every row and partition, keep the tables, re-create the defaults.

        One transaction; identity sequences are not restarted, so ids are never reused.
        """
        if not certain:
            raise MatchboxDeletionNotConfirmed(
                f"every row of the store in schema {self.db.schema!r}",
                ["all collections, runs, steps and their data", "judgements", "users", "groups"],
            )
        with raw_cursor(self.db) as cur:
            for spec in list_partitions(cur, self.db.schema):
                part = partition_name(BULK_TYPES[spec.table], spec.step_id)
                cur.execute(compose("DROP TABLE {p}", p=part))
            tables = catalog(cur, self.db.schema)
            cur.execute("TRUNCATE " + ", ".join(qualified(self.db.schema, t.name) for t in tables))
            ensure_defaults_raw(cur)
        logger.info("Cleared the store in schema %s", self.db.schema)

    def drop(self, certain: bool) -> None:
        """Drop the store's schema, create it anew with the migrations and the defaults."""
        if not certain:
            raise MatchboxDeletionNotConfirmed(
                f"the schema {self.db.schema!r} and everything in it"
            )
        with self.db.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.db.schema,))
            conn.execute(compose("DROP SCHEMA IF EXISTS {s} CASCADE", s=self.db.schema))
        self.db.dispose()
        migrate.upgrade(self.db.engine, self.db.schema)
        ensure_defaults(self.db)
        logger.info("Dropped and re-created the store in schema %s", self.db.schema)

    def delete_orphans(self) -> int:
        """Delete multi-leaf clusters of ``clusters`` nothing refers to; return how many.

        ``clusters`` holds the clusters judgements were made of (a resolver's own clusters live
        in its partition and go with it). A cluster is kept while a resolver's data, a model's
        edges or a judgement (shown or endorsed) refers to it. Judgements that add clusters wait
        for this to finish (and it for them), so a cluster being re-used is never deleted under
        one.
        """
        with self.db.connection() as conn:
            conn.execute("LOCK TABLE clusters IN SHARE ROW EXCLUSIVE MODE")
            deleted = conn.execute(
                """
                WITH gone AS (
                DELETE FROM clusters c
                WHERE NOT EXISTS (SELECT 1 FROM resolver_leaves r WHERE r.root_id = c.cluster_id)
                  AND NOT EXISTS (SELECT 1 FROM judgements j
                                  WHERE j.shown_cluster_id = c.cluster_id)
                  AND NOT EXISTS (SELECT 1 FROM judgement_groups g
                                  WHERE g.endorsed_cluster_id = c.cluster_id)
                  AND NOT EXISTS (SELECT 1 FROM model_edges e WHERE e.left_id = c.cluster_id)
                  AND NOT EXISTS (SELECT 1 FROM model_edges e WHERE e.right_id = c.cluster_id)
                RETURNING c.cluster_id
                ), dropped AS (DELETE FROM contains WHERE root IN (SELECT cluster_id FROM gone))
                SELECT count(*) FROM gone
                """
            ).fetchone()[0]
        logger.info("Deleted %d orphan cluster(s)", deleted)
        return int(deleted)
