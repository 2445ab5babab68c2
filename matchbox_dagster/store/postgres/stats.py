"""Step statistics computed in the database (an extension of the contract, for checks and UIs).

One aggregate over the step's own partition, so a check costs a scan in PostgreSQL, not a
transfer of the whole step to the client.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from matchbox_dagster.common.dtos import PermissionType, StepPath, StepType, UploadStage
from matchbox_dagster.store.postgres.core import PostgresCore, partition_name

_QUERIES = {
    StepType.SOURCE: sql.SQL(
        "SELECT count(*) AS rows, count(DISTINCT key) AS distinct_keys, "
        "count(*) FILTER (WHERE key IS NULL) AS null_keys, count(DISTINCT leaf_id) AS leaves "
        "FROM {}"
    ),
    StepType.MODEL: sql.SQL(
        "SELECT count(*) AS rows, min(score) AS min_score, max(score) AS max_score, "
        "count(*) FILTER (WHERE score < 0 OR score > 1 OR score = 'NaN') AS out_of_range "
        "FROM {}"
    ),
    StepType.RESOLVER: sql.SQL(
        "SELECT count(*) AS rows, count(DISTINCT root_id) AS clusters FROM {}"
    ),
}
"""Constant statements; only the (quoted) partition name is spliced in."""


class StatsMixin(PostgresCore):
    """``step_statistics``: counts and ranges of a step's stored data."""

    def step_statistics(self, path: StepPath) -> dict[str, Any]:
        """Upload stage and aggregates of a step's stored rows.

        Sources: ``rows`` (keys), ``distinct_keys``, ``null_keys``, ``leaves``; models: ``rows``,
        ``min_score``, ``max_score``, ``out_of_range``; resolvers: ``rows`` (leaf assignments),
        ``clusters``. A step without data has ``rows`` 0.
        """
        self._authorise(PermissionType.READ, path.collection)
        with self.db.connection() as conn:
            step = self._step_row(conn, path)
            stats: dict[str, Any] = {"stage": step.stage, "step_type": step.step_type}
            if step.stage != UploadStage.COMPLETE:
                return {**stats, "rows": 0}
            table = sql.Identifier(self.db.schema, partition_name(step.step_type, step.step_id))
            cursor = conn.execute(_QUERIES[step.step_type].format(table))
            names = [d.name for d in cursor.description or []]
            row = cursor.fetchone() or ()
        values = dict(zip(names, row, strict=True))
        return {
            **stats,
            **{
                k: (float(v) if k.endswith("score") and v is not None else v)
                for k, v in values.items()
            },
        }
