"""Writing a checked snapshot into an empty store, in the caller's transaction.

Shared by both snapshot forms: it recreates each step's partition, loads every table in
foreign-key order (through a per-table ``insert``), builds the partitions' indexes (a source
partition's lookup indexes when the dumped one had them, the others' from the snapshot's
list), moves identity sequences past the restored ids and puts back the default groups and
grants.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from matchbox_dagster.common.dtos import StepType
from matchbox_dagster.common.errors import MatchboxSnapshotError
from matchbox_dagster.store.postgres.core import partition_name
from matchbox_dagster.store.postgres.db import adbc_dbapi, compose, quote_ident
from matchbox_dagster.store.postgres.defaults import default_statements, defaults_document
from matchbox_dagster.store.postgres.snapshot_layout import (
    AUTH_TABLES,
    BULK_TYPES,
    Cursor,
    PartitionSpec,
    Table,
    fetch,
    qualified,
)
from matchbox_dagster.store.postgres.source_index import index_source_partition

_NON_DEFAULT_AUTH = """
WITH d AS (SELECT $1::jsonb AS d)
SELECT
  (SELECT count(*) FROM users u WHERE NOT EXISTS (
      SELECT 1 FROM d, jsonb_array_elements(d.d->'members') x
      WHERE x->>'user_name' = u.user_name))
+ (SELECT count(*) FROM groups g WHERE NOT EXISTS (
      SELECT 1 FROM d, jsonb_array_elements(d.d->'groups') x WHERE x->>'name' = g.name))
+ (SELECT count(*) FROM user_groups ug JOIN users u USING (user_id) JOIN groups g USING (group_id)
   WHERE NOT EXISTS (
      SELECT 1 FROM d, jsonb_array_elements(d.d->'members') x
      WHERE x->>'user_name' = u.user_name AND x->>'group' = g.name))
+ (SELECT count(*) FROM permissions p JOIN groups g USING (group_id)
   WHERE NOT (p.is_system AND EXISTS (
      SELECT 1 FROM d, jsonb_array_elements(d.d->'grants') x
      WHERE x->>'group' = g.name AND x->>'permission' = p.permission)))
"""


def load(
    cur: Cursor,
    schema: str,
    tables: list[Table],
    partitions: list[PartitionSpec],
    insert: Callable[[Table], None],
) -> None:
    """Write a checked snapshot: partitions, every table's rows, indexes, sequences."""
    refuse_if_not_empty(cur, tables)
    try:
        for name in ("user_groups", "permissions", "users", "groups"):
            cur.execute(compose("DELETE FROM {t}", t=name))
        for spec in partitions:
            create_partition(cur, spec)
        for table in tables:
            insert(table)
        # `contains` has no foreign key (bulk speed); check its roots by hand.
        dangling = fetch(
            cur,
            "SELECT count(*) FROM contains c WHERE NOT EXISTS "
            "(SELECT 1 FROM clusters k WHERE k.cluster_id = c.root)",
        )[0][0]
        if dangling:
            raise MatchboxSnapshotError(
                f"The snapshot's contains table has {dangling} row(s) whose root is not a "
                "cluster, so nothing was restored."
            )
        for spec in partitions:
            part = partition_name(BULK_TYPES[spec.table], spec.step_id)
            if BULK_TYPES[spec.table] == StepType.SOURCE:
                # A source partition's lookup indexes (an expression B-tree among them) are
                # the store's own, not plain column lists: built as index_for_match builds
                # them, when the dumped partition had them.
                if spec.indexes:
                    index_source_partition(cur, part)  # type: ignore[arg-type]
                continue
            for index in spec.indexes:
                cur.execute(
                    compose("CREATE {{unique}}INDEX ON {p} ({{cols}})", p=part).format(
                        unique="UNIQUE " if index.unique else "",
                        cols=", ".join(quote_ident(c) for c in index.columns),
                    )
                )
        for table in tables:
            for column in table.columns:
                if column.identity:
                    reset_sequence(cur, schema, table.name, column.name)
        ensure_defaults_raw(cur)
    except (adbc_dbapi().Error, psycopg.Error) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise MatchboxSnapshotError(
            f"The snapshot could not be loaded, so nothing was restored: {message}"
        ) from None


def refuse_if_not_empty(cur: Cursor, tables: list[Table]) -> None:
    """Refuse to restore into a store holding anything beyond the defaults."""
    others = [t.name for t in tables if t.name not in AUTH_TABLES]
    checks = " UNION ALL ".join(
        compose("SELECT {{i}} WHERE EXISTS (SELECT 1 FROM {t})", t=name).format(i=i)
        for i, name in enumerate(others)
    )
    busy = [others[int(r[0])] for r in fetch(cur, checks)] if checks else []
    extra = fetch(cur, _NON_DEFAULT_AUTH, defaults_document())[0][0]
    if busy or extra:
        raise MatchboxSnapshotError(
            "The store is not empty"
            + (f" (tables {busy} hold rows)" if busy else "")
            + (f" ({extra} user/group/permission row(s) beyond the defaults)" if extra else "")
            + ". Restore only into a fresh store, or call clear(certain=True) first."
        )


def create_partition(cur: Cursor, spec: PartitionSpec) -> None:
    """Create and attach a step's partition of a bulk table."""
    sid = int(spec.step_id)
    part = partition_name(BULK_TYPES[spec.table], sid)
    cur.execute(
        compose(
            "CREATE TABLE {p} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
            p=part,
            t=spec.table,
        )
    )
    cur.execute(
        compose(
            "ALTER TABLE {p} ALTER COLUMN step_id SET DEFAULT {{sid}}, "
            "ADD CHECK (step_id = {{sid}})",
            p=part,
        ).format(sid=sid)
    )
    cur.execute(
        compose(
            "ALTER TABLE {t} ATTACH PARTITION {p} FOR VALUES IN ({{sid}})", t=spec.table, p=part
        ).format(sid=sid)
    )


def reset_sequence(cur: Cursor, schema: str, table: str, column: str) -> None:
    """Move an identity sequence past the table's largest id (never backwards)."""
    query = compose(
        "SELECT setval(s::regclass, greatest(coalesce((SELECT max({c}) FROM {t}), 0), "
        "coalesce(pg_sequence_last_value(s::regclass), 0)) + 1, false) "
        "FROM pg_get_serial_sequence($1, $2) AS s WHERE s IS NOT NULL",
        c=column,
        t=table,
    )
    fetch(cur, query, qualified(schema, table), column)


def ensure_defaults_raw(cur: Cursor) -> None:
    """Create the default groups and grants in the caller's transaction."""
    for statement, parameter in default_statements("$1"):
        cur.execute(statement, (parameter,))
