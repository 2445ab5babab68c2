"""How a source partition is searched by key and by leaf: its indexes and ``match``'s lookups.

``match`` looks one key up at a time, in partitions of up to tens of millions of keys; without
an index each call scans the partition (~0.1 s a million keys). Two indexes, built by
:func:`index_for_match` in their own short transaction after the insert has committed (the
insert stays a bulk load; ``match`` is correct, only slower, before they exist), make every
lookup of ``match`` an index probe:

* a B-tree on ``hashtextextended(key, 0)``, a fixed-width 64-bit hash of the key, probed with
  the key's hash and then the key rechecked (a hash collision costs a recheck, never a wrong
  answer); built with up to two parallel workers;
* a B-tree on ``leaf_id``: rows are stored in leaf order, so it is built from presorted input
  (a third of the key-hash B-tree's cost).

Server CPU seconds at 1M keys, serial builds (raw COPY of the same rows: 0.3): key-hash B-tree
0.7 (a 0.1 ms probe); B-tree on ``key`` 2.0–2.2 under the C.UTF-8 collation, 1.3 with
``COLLATE "C"``; hash index on ``key`` 1.7–1.9; BRIN bloom on ``key`` 0.2 but ~10 ms a probe at
1M (it reads every range's filter); B-tree on ``leaf_id`` 0.25, BRIN on it 0.1, but at 10M keys
a BRIN probe for a cluster's leaves took 8–11 ms (it reads every range summary once per leaf and
rechecks whole page ranges), the B-tree 0.2 ms. Measured on 2026-12-06, see bench/README.md.

Migration 0007 builds the same indexes on partitions stored before it. Only partition names
made from integer ids are spliced into the SQL; keys and ids travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import psycopg

from matchbox_dagster.common.dtos import SourceStepPath, StepType, UploadStage
from matchbox_dagster.common.errors import MatchboxStepDeletedWhileReading, MatchboxStepNotQueriable
from matchbox_dagster.store.postgres.core import partition_name, step_row
from matchbox_dagster.store.postgres.db import Database, compose

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

SORT_MEMORY = "256MB"
"""``maintenance_work_mem`` of the index builds: PostgreSQL gives a parallel B-tree build at
least 32 MB a process, so the default 64 MB allows one worker, this two."""

SOURCE_INDEXES = (
    "SET LOCAL maintenance_work_mem = '" + SORT_MEMORY + "'",
    "CREATE INDEX {index_key} ON {table} (hashtextextended(key, 0))",
    "CREATE INDEX {index_leaf} ON {table} (leaf_id)",
)
"""The indexes of a source partition (``{table}``), built after its bulk load."""

KEY_LOOKUP = (
    "SELECT leaf_id FROM {schema}.{part} "
    "WHERE hashtextextended(key, 0) = hashtextextended(%(key)s, 0) AND key = %(key)s"
)
"""The leaf of one key in a source partition: a probe of the key-hash index, then the key."""

LEAF_KEYS = "SELECT key FROM {schema}.{part} WHERE leaf_id = ANY(%(leaves)s)"
"""The keys of some leaves in a source partition (through its index on ``leaf_id``)."""


def index_names(table: str) -> dict[str, str]:
    """The names of a source partition's indexes (from its table name)."""
    return {"index_key": f"{table}_key_hash", "index_leaf": f"{table}_leaf"}


def index_source_partition(cur: adbc.Cursor, table: str) -> None:
    """Build a freshly loaded source partition's indexes (in the caller's transaction)."""
    for statement in SOURCE_INDEXES:
        cur.execute(compose(statement, table=table, **index_names(table)))


PRESENT = "SELECT indexname FROM pg_indexes WHERE schemaname = %(schema)s AND tablename = %(table)s"
"""The names of a table's indexes."""

LOCK_PARTITION = "LOCK TABLE {schema}.{table} IN SHARE ROW EXCLUSIVE MODE"
"""Serialises builds of one partition's indexes (reads, hence ``match``, go on meanwhile)."""


def index_for_match(db: Database, path: SourceStepPath) -> bool:
    """Build the lookup indexes of a source step's data partition unless present.

    One short transaction: the step is looked up (``MatchboxStepNotFoundError``,
    ``MatchboxStepTypeError`` for a step that is not a source, ``MatchboxStepNotQueriable``
    for one without complete data), its data partition (possibly shared with other steps) is
    locked against a concurrent build, and the missing indexes are built. True when it built
    any, False when both were there.
    """
    with db.connection() as conn:
        step = step_row(conn, path, expected=StepType.SOURCE)
        if step.stage != UploadStage.COMPLETE:
            raise MatchboxStepNotQueriable(path, step.stage)
        table = partition_name(StepType.SOURCE, step.data_id)
        try:
            conn.execute(compose(LOCK_PARTITION, schema=db.schema, table=table))
        except psycopg.errors.UndefinedTable:  # its data was dropped since the look-up
            raise MatchboxStepDeletedWhileReading(path) from None
        names = index_names(table)
        present = {r[0] for r in conn.execute(PRESENT, {"schema": db.schema, "table": table})}
        if set(names.values()) <= present:
            return False
        conn.execute(SOURCE_INDEXES[0])
        for statement, name in zip(SOURCE_INDEXES[1:], names.values(), strict=True):
            if name not in present:
                conn.execute(compose(statement, table=table, **names))  # search_path: the schema
        return True


def key_leaf(conn: psycopg.Connection, schema: str, data_id: int, key: str) -> int | None:
    """The leaf of ``key`` in the source partition of ``data_id``, or None if it is absent."""
    part = partition_name(StepType.SOURCE, data_id)
    row = conn.execute(compose(KEY_LOOKUP, schema=schema, part=part), {"key": key}).fetchone()
    return None if row is None else int(row[0])


def leaf_keys(
    conn: psycopg.Connection, schema: str, data_ids: Iterable[int], leaves: list[int]
) -> dict[int, set[str]]:
    """The keys of ``leaves`` in each source partition of ``data_ids``."""
    found: dict[int, set[str]] = {}
    for data_id in sorted(set(data_ids)):
        part = partition_name(StepType.SOURCE, data_id)
        found[data_id] = {
            r[0]
            for r in conn.execute(compose(LEAF_KEYS, schema=schema, part=part), {"leaves": leaves})
        }
    return found
