"""``MatchboxPostgres``: the PostgreSQL implementation of the whole backend contract."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.base import MatchboxDBAdapter
from matchbox_dagster.store.postgres import migrate
from matchbox_dagster.store.postgres.admin import AdminMixin
from matchbox_dagster.store.postgres.auth import AuthMixin
from matchbox_dagster.store.postgres.collections import CollectionsMixin
from matchbox_dagster.store.postgres.db import Database
from matchbox_dagster.store.postgres.evaluation import EvaluationMixin
from matchbox_dagster.store.postgres.query import QueryMixin
from matchbox_dagster.store.postgres.stats import StatsMixin


@dataclass(frozen=True)
class _Count:
    """A countable backed by one SQL statement returning a single number."""

    db: Database
    sql: str

    def count(self) -> int:
        """Run the count."""
        with self.db.connection() as conn:
            row = conn.execute(self.sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


@dataclass(frozen=True)
class _Sources(_Count):
    """Source steps: countable, and listable as ``collection/run/name`` paths."""

    def list_all(self) -> list[str]:
        """Paths of every source step."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT c.name || '/' || s.run_id || '/' || s.name FROM steps s "
                "JOIN runs USING (run_id) JOIN collections c USING (collection_id) "
                "WHERE s.step_type = 'source' ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]


class MatchboxPostgres(
    QueryMixin,
    StatsMixin,
    CollectionsMixin,
    AuthMixin,
    EvaluationMixin,
    AdminMixin,
    MatchboxDBAdapter,
):
    """A matchbox store in PostgreSQL.

    Built from :class:`MatchboxSettings` (the environment by default). Creating it connects,
    starts the embedded server when no URI is set, and brings the schema up to date.

    >>> store = MatchboxPostgres()  # doctest: +SKIP
    >>> store.create_collection("companies")  # doctest: +SKIP
    """

    def __init__(self, settings: MatchboxSettings | None = None) -> None:
        self.settings = settings or MatchboxSettings()
        logging.getLogger("matchbox_dagster").setLevel(self.settings.log_level)
        self.db = Database(self.settings)
        migrate.upgrade(self.db.engine, self.db.schema)
        self._ensure_defaults()
        db = self.db
        self.sources = _Sources(db, "SELECT count(*) FROM steps WHERE step_type = 'source'")
        self.source_steps = _Count(db, "SELECT count(*) FROM steps WHERE step_type = 'source'")
        self.models = _Count(db, "SELECT count(*) FROM steps WHERE step_type = 'model'")
        self.resolvers = _Count(db, "SELECT count(*) FROM steps WHERE step_type = 'resolver'")
        self.source_clusters = _Count(
            db, "SELECT count(*) FROM (SELECT DISTINCT leaf_id FROM source_rows) l"
        )
        # Multi-leaf clusters live in resolver partitions (a row whose root is not its own
        # leaf) and, for judged ones, in clusters/contains.
        self.model_clusters = _Count(
            db,
            "SELECT count(*) FROM (SELECT cluster_id FROM clusters UNION "
            "SELECT root_id FROM resolver_leaves WHERE own AND root_id <> leaf_id) c",
        )
        self.all_clusters = _Count(
            db,
            "SELECT count(*) FROM (SELECT leaf_id FROM source_rows UNION "
            "SELECT cluster_id FROM clusters UNION "
            "SELECT root_id FROM resolver_leaves WHERE own AND root_id <> leaf_id) a",
        )
        self.creates = _Count(
            db,
            "SELECT count(*) FROM (SELECT DISTINCT step_id, root_id FROM resolver_leaves "
            "WHERE own) c",
        )
        self.merges = _Count(
            db,
            "SELECT count(*) FROM (SELECT root, leaf FROM contains UNION SELECT root_id, leaf_id "
            "FROM resolver_leaves WHERE own AND root_id <> leaf_id) m",
        )
        self.proposes = _Count(db, "SELECT count(*) FROM model_edges")
        self.users = _Count(db, "SELECT count(*) FROM users")

    def __repr__(self) -> str:
        return f"MatchboxPostgres({self.db!r})"

    def close(self) -> None:
        """Release pooled connections."""
        self.db.dispose()
