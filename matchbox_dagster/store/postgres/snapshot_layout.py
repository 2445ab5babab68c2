"""The layout of a snapshot, shared by the JSON and the Parquet form.

Every table of the store's schema (the partitioned bulk tables through their parents, so each
partition's rows are included), ids preserved, and a list of the partitions with their indexes.
Here: the layout's models, the catalog read from PostgreSQL, and the checks of a snapshot's
layout against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
from pydantic import BaseModel, Field, ValidationError

from matchbox_dagster.common.dtos import MatchboxBackends
from matchbox_dagster.common.errors import MatchboxSnapshotError
from matchbox_dagster.store.postgres import migrate
from matchbox_dagster.store.postgres.core import BULK_TABLES
from matchbox_dagster.store.postgres.db import Database, quote_ident

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

SNAPSHOT_FORMAT = "matchbox-dagster/postgres"
SNAPSHOT_VERSION = 1
MANIFEST = "manifest.json"
AUTH_TABLES = ("users", "groups", "user_groups", "permissions")
"""Tables a fresh store fills with defaults; every other table starts empty."""

BULK_TYPES = {table: step_type for step_type, table in BULK_TABLES.items()}

CASTS = {
    "bigint",
    "integer",
    "smallint",
    "boolean",
    "real",
    "double precision",
    "numeric",
    "text",
    "bytea",
    "jsonb",
    "json",
    "date",
    "timestamp with time zone",
    "timestamp without time zone",
}
"""Column types a snapshot can hold (a type outside this list refuses the dump)."""

ARROW_NATIVE = {
    "bigint",
    "integer",
    "smallint",
    "boolean",
    "real",
    "double precision",
    "text",
    "bytea",
    "date",
    "timestamp with time zone",
    "timestamp without time zone",
}
"""Types the Parquet form stores as themselves; others travel as text."""


# --- snapshot layout ------------------------------------------------------------------------


class IndexSpec(BaseModel):
    """An index of a partition: its columns, and whether it is unique."""

    unique: bool
    columns: list[str] = Field(min_length=1)


class PartitionSpec(BaseModel):
    """The partition holding one step's rows of a bulk table."""

    table: str
    step_id: int
    indexes: list[IndexSpec] = Field(default_factory=list)


class TableFile(BaseModel):
    """One table of a streamed snapshot: its Parquet file and what the file must contain."""

    table: str
    file: str
    columns: list[str]
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SnapshotManifest(BaseModel):
    """``manifest.json`` of a streamed snapshot."""

    format: str
    format_version: int
    backend_type: str
    schema_revision: str | None
    created_at: datetime
    partitions: list[PartitionSpec]
    tables: list[TableFile]


# --- catalog ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a table: name, type, whether it is an identity."""

    name: str
    type: str
    identity: bool


@dataclass(frozen=True)
class Table:
    """A table of the schema and its columns."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        """Column names."""
        return [c.name for c in self.columns]

    @property
    def bulk(self) -> bool:
        """Whether the table is partitioned by step."""
        return self.name in BULK_TYPES


_TABLES = """
SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
       a.attidentity <> '' AS identity
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'alembic_version'
ORDER BY c.relname, a.attnum
"""

_FOREIGN_KEYS = """
SELECT s.relname::text, d.relname::text
FROM pg_constraint k
JOIN pg_class s ON s.oid = k.conrelid
JOIN pg_class d ON d.oid = k.confrelid
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE k.contype = 'f' AND n.nspname = $1
"""

_PARTITIONS = """
SELECT p.relname::text AS parent, c.relname::text AS child,
       coalesce((
           SELECT json_agg(json_build_object('unique', x.indisunique, 'columns', x.cols)
                           ORDER BY x.cols::text, x.indisunique)
           FROM (
               SELECT ix.indisunique,
                      json_agg(a.attname::text ORDER BY k.ord) AS cols
               FROM pg_index ix
               CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
               WHERE ix.indrelid = c.oid
               GROUP BY ix.indexrelid, ix.indisunique
           ) x
       ), '[]'::json)::text AS indexes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = $1
ORDER BY 1, 2
"""


Cursor: TypeAlias = "adbc.Cursor | psycopg.RawCursor[Any]"
"""Both drivers take ``$n`` placeholders: ADBC for streaming, psycopg for small work."""


def fetch(cur: Cursor, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` and return every row."""
    if params:
        cur.execute(query, params)
    else:
        cur.execute(query)
    return list(cur.fetchall())


def catalog(cur: Cursor, schema: str) -> list[Table]:
    """The schema's tables (bulk tables through their parents) in foreign-key order."""
    columns: dict[str, list[Column]] = {}
    for table, name, type_, identity in fetch(cur, _TABLES, schema):
        columns.setdefault(table, []).append(Column(name, type_, bool(identity)))
    depends: dict[str, set[str]] = {t: set() for t in columns}
    for child, parent in fetch(cur, _FOREIGN_KEYS, schema):
        if child in depends and parent in depends and child != parent:
            depends[child].add(parent)
    ordered: list[str] = []
    while depends:
        ready = sorted(t for t, deps in depends.items() if not deps - set(ordered))
        if not ready:  # pragma: no cover - a foreign-key cycle; load in name order
            ready = sorted(depends)
        for name in ready:
            ordered.append(name)
            del depends[name]
    return [Table(name, tuple(columns[name])) for name in ordered]


def list_partitions(cur: Cursor, schema: str) -> list[PartitionSpec]:
    """The partitions of the bulk tables, with their indexes."""
    specs = []
    for parent, child, indexes in fetch(cur, _PARTITIONS, schema):
        match = re.fullmatch(re.escape(parent) + r"_(\d+)", child)
        if parent not in BULK_TYPES or match is None:
            raise MatchboxSnapshotError(
                f"Table {child!r} is a partition of {parent!r} that the store did not create; "
                "detach or drop it before taking a snapshot."
            )
        specs.append(
            PartitionSpec(
                table=parent,
                step_id=int(match.group(1)),
                indexes=[IndexSpec(**ix) for ix in json.loads(indexes)],
            )
        )
    return specs


def cast_type(table: str, column: Column) -> str:
    """A column's type, if snapshots support it."""
    if column.type not in CASTS:
        raise MatchboxSnapshotError(
            f"Column {table}.{column.name} has type {column.type}, which snapshots do not support."
        )
    return column.type


# --- cursors, revision, checks --------------------------------------------------------------


@contextmanager
def adbc_cursor(db: Database, *, read_only: bool = False) -> Iterator[tuple[Any, adbc.Cursor]]:
    """An ADBC connection in a fresh transaction (repeatable read when ``read_only``)."""
    with db.adbc() as conn, conn.cursor() as cur:
        conn.commit()  # end the transaction that set the search path
        if read_only:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn, cur


@contextmanager
def raw_cursor(db: Database, *, read_only: bool = False) -> Iterator[psycopg.RawCursor[Any]]:
    """A pooled connection in one transaction, with ``$n`` placeholders like ADBC."""
    with db.connection() as conn:
        if read_only:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with psycopg.RawCursor(conn) as cur:
            yield cur


def revision(db: Database) -> str | None:
    """The store's schema revision."""
    return migrate.current_revision(db.engine, db.schema)


def qualified(schema: str, table: str) -> str:
    """``schema.table``, quoted."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def check_header(db: Database, backend_type: Any, fmt: Any, version: Any, taken_at: Any) -> None:
    """Refuse (``TypeError``) a snapshot of another backend, format or schema revision."""
    if str(backend_type) != MatchboxBackends.POSTGRES.value:
        raise TypeError(f"Cannot restore a {backend_type!s} snapshot into the PostgreSQL backend.")
    if fmt != SNAPSHOT_FORMAT or version != SNAPSHOT_VERSION:
        raise TypeError(
            f"Snapshot format {fmt!r} version {version!r} is not {SNAPSHOT_FORMAT!r} version "
            f"{SNAPSHOT_VERSION}; this store cannot read it."
        )
    current = revision(db)
    if taken_at != current:
        raise TypeError(
            f"The snapshot was taken at schema revision {taken_at!r}, but this store is at "
            f"{current!r}. Restore it into a store at the same revision."
        )


def check_layout(
    tables: list[Table], columns: dict[str, list[str]], partitions: Any
) -> list[PartitionSpec]:
    """Same tables and columns as the schema; partitions of bulk tables, once each."""
    expected = {t.name: t.names for t in tables}
    if set(columns) != set(expected):
        raise MatchboxSnapshotError(
            f"The snapshot's tables {sorted(columns)} differ from the store's {sorted(expected)}."
        )
    for name, names in expected.items():
        if columns[name] != names:
            raise MatchboxSnapshotError(
                f"Snapshot table {name!r} has columns {columns[name]}, expected {names}."
            )
    try:
        specs = [PartitionSpec.model_validate(p) for p in partitions]
    except (ValidationError, TypeError) as exc:
        raise MatchboxSnapshotError(f"The snapshot's partition list is damaged: {exc}") from None
    seen = set()
    for spec in specs:
        if spec.table not in BULK_TYPES or (spec.table, spec.step_id) in seen:
            raise MatchboxSnapshotError(
                f"The snapshot lists partition {spec.table}/{spec.step_id} that is not a "
                "bulk table's or is listed twice."
            )
        seen.add((spec.table, spec.step_id))
        for index in spec.indexes:
            unknown = set(index.columns) - set(expected[spec.table])
            if unknown:
                raise MatchboxSnapshotError(
                    f"An index of partition {spec.table}/{spec.step_id} names unknown "
                    f"column(s) {sorted(unknown)}."
                )
    return specs


def check_steps(
    specs: list[PartitionSpec],
    steps: dict[int, str],
    bulk_step_ids: dict[str, set[int]],
) -> None:
    """Each partition holds the data of steps of its type; each bulk row is in a partition.

    ``steps`` maps data ids (the ids partitions are named by) to step types.
    """
    for spec in specs:
        step_type = steps.get(spec.step_id)
        if step_type != BULK_TYPES[spec.table].value:
            raise MatchboxSnapshotError(
                f"The snapshot holds partition {spec.table}/{spec.step_id}, but no step's data "
                f"is {spec.step_id}" + ("" if step_type is None else f" (a {step_type})") + "."
            )
    for table, ids in bulk_step_ids.items():
        known = {s.step_id for s in specs if s.table == table}
        stray = sorted(ids - known)
        if stray:
            raise MatchboxSnapshotError(
                f"Snapshot table {table!r} holds rows of step(s) {stray[:5]} that have no "
                "partition."
            )
