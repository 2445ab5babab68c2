"""The store's countables (``store.sources.count()``, ``store.models.count()``, …)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from matchbox_dagster.store.postgres.db import Database


@dataclass(frozen=True)
class Count:
    """A countable backed by one SQL statement returning a single number."""

    db: Database
    sql: str

    def count(self) -> int:
        """Run the count."""
        with self.db.connection() as conn:
            row = conn.execute(self.sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


@dataclass(frozen=True)
class Sources(Count):
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


def attach_countables(store: Any, db: Database) -> None:
    """Set the contract's countable attributes of ``store``, each one SQL count."""
    store.sources = Sources(db, "SELECT count(*) FROM steps WHERE step_type = 'source'")
    store.source_steps = Count(db, "SELECT count(*) FROM steps WHERE step_type = 'source'")
    store.models = Count(db, "SELECT count(*) FROM steps WHERE step_type = 'model'")
    store.resolvers = Count(db, "SELECT count(*) FROM steps WHERE step_type = 'resolver'")
    store.source_clusters = Count(
        db, "SELECT count(*) FROM (SELECT DISTINCT leaf_id FROM source_rows) l"
    )
    # Multi-leaf clusters live in resolver partitions (a row whose root is not its own
    # leaf) and, for judged ones, in clusters/contains.
    store.model_clusters = Count(
        db,
        "SELECT count(*) FROM (SELECT cluster_id FROM clusters UNION "
        "SELECT root_id FROM resolver_leaves WHERE own AND root_id <> leaf_id) c",
    )
    store.all_clusters = Count(
        db,
        "SELECT count(*) FROM (SELECT leaf_id FROM source_rows UNION "
        "SELECT cluster_id FROM clusters UNION "
        "SELECT root_id FROM resolver_leaves WHERE own AND root_id <> leaf_id) a",
    )
    store.creates = Count(
        db,
        "SELECT count(*) FROM (SELECT DISTINCT step_id, root_id FROM resolver_leaves WHERE own) c",
    )
    store.merges = Count(
        db,
        "SELECT count(*) FROM (SELECT root, leaf FROM contains UNION SELECT root_id, leaf_id "
        "FROM resolver_leaves WHERE own AND root_id <> leaf_id) m",
    )
    store.proposes = Count(db, "SELECT count(*) FROM model_edges")
    store.users = Count(db, "SELECT count(*) FROM users")
