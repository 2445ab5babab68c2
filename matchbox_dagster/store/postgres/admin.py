"""Snapshots and housekeeping: dump/restore, clear/drop, orphan clusters, the upload audit.

Snapshots come in two forms with one layout: every table of the store's schema (the partitioned
bulk tables through their parents, so each partition's rows are included), ids preserved, and a
list of the partitions with their indexes.

- :meth:`AdminMixin.dump` / :meth:`AdminMixin.restore`: a JSON-serialisable
  :class:`~matchbox_dagster.common.dtos.MatchboxSnapshot` (rows as lists, ``bytea`` as base64).
- :meth:`AdminMixin.dump_to` / :meth:`AdminMixin.restore_from`: one Parquet file per table in a
  local directory or under ``s3://bucket/prefix``, streamed in batches, with a
  ``manifest.json`` giving each file's row count, size and SHA-256, written last. A restore
  checks every file against the manifest before it writes anything.

A restore is one transaction into a store that holds nothing but the default groups and grants
(a fresh or cleared store): it recreates each step's partition, loads every table in foreign-key
order, builds the partitions' indexes and moves identity sequences past the restored ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from matchbox_dagster.common.dtos import (
    MatchboxBackends,
    MatchboxSnapshot,
    PermissionType,
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxDatastoreError,
    MatchboxDeletionNotConfirmed,
    MatchboxError,
    MatchboxInvalidData,
    MatchboxSnapshotError,
)
from matchbox_dagster.store.postgres import migrate
from matchbox_dagster.store.postgres.auth import default_statements, defaults_document
from matchbox_dagster.store.postgres.core import (
    BULK_TABLES,
    SYSTEM,
    PostgresCore,
    logger,
    partition_name,
)
from matchbox_dagster.store.postgres.db import compose, quote_ident

SNAPSHOT_FORMAT = "matchbox-dagster/postgres"
SNAPSHOT_VERSION = 1
MANIFEST = "manifest.json"
AUTH_TABLES = ("users", "groups", "user_groups", "permissions")
"""Tables a fresh store fills with defaults; every other table starts empty."""

_BULK_TYPES = {table: step_type for step_type, table in BULK_TABLES.items()}

_CASTS = {
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

_ARROW_NATIVE = {
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


# --- upload audit ---------------------------------------------------------------------------


class AuditedStep(BaseModel):
    """A step the upload audit found, with how long it has been in its stage."""

    path: StepPath
    step_type: StepType
    stage: UploadStage
    since: datetime
    minutes: float


class StaleRun(BaseModel):
    """A run that is old, still mutable and not the default."""

    collection: str
    run_id: int
    created_at: datetime
    age_days: float
    steps: int


class UploadAudit(BaseModel):
    """What :meth:`AdminMixin.audit_uploads` found.

    - ``stuck``: PROCESSING for longer than ``uploads_expiry_minutes`` (a crashed writer);
      :meth:`AdminMixin.reset_stuck_uploads` moves them back to READY.
    - ``failed``: back at READY after an upload began (locked, then released without data).
    - ``abandoned``: declared (READY) and never given data for longer than
      ``uploads_expiry_minutes``: e.g. a materialisation that created the step, then died.
    - ``empty_immutable``: without data in an immutable run, so they can never get any.
    - ``stale_runs``: older than ``stale_run_days``, still mutable and not the default.
    """

    checked_at: datetime
    uploads_expiry_minutes: int | None
    stale_run_days: int
    stuck: list[AuditedStep] = Field(default_factory=list)
    failed: list[AuditedStep] = Field(default_factory=list)
    abandoned: list[AuditedStep] = Field(default_factory=list)
    empty_immutable: list[AuditedStep] = Field(default_factory=list)
    stale_runs: list[StaleRun] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return not (
            self.stuck or self.failed or self.abandoned or self.empty_immutable or self.stale_runs
        )

    def counts(self) -> dict[str, int]:
        """How many of each finding (for Dagster metadata)."""
        return {
            "stuck": len(self.stuck),
            "failed": len(self.failed),
            "abandoned": len(self.abandoned),
            "empty_immutable": len(self.empty_immutable),
            "stale_runs": len(self.stale_runs),
        }


# --- catalog ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    type: str
    identity: bool


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[_Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def bulk(self) -> bool:
        return self.name in _BULK_TYPES


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


Cursor = adbc.Cursor | psycopg.RawCursor[Any]
"""Both drivers take ``$n`` placeholders: ADBC for streaming, psycopg for small work."""


def _fetch(cur: Cursor, query: str, *params: Any) -> list[tuple[Any, ...]]:
    if params:
        cur.execute(query, params)
    else:
        cur.execute(query)
    return list(cur.fetchall())


def _catalog(cur: Cursor, schema: str) -> list[_Table]:
    """The schema's tables (bulk tables through their parents) in foreign-key order."""
    columns: dict[str, list[_Column]] = {}
    for table, name, type_, identity in _fetch(cur, _TABLES, schema):
        columns.setdefault(table, []).append(_Column(name, type_, bool(identity)))
    depends: dict[str, set[str]] = {t: set() for t in columns}
    for child, parent in _fetch(cur, _FOREIGN_KEYS, schema):
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
    return [_Table(name, tuple(columns[name])) for name in ordered]


def _partitions(cur: Cursor, schema: str) -> list[PartitionSpec]:
    specs = []
    for parent, child, indexes in _fetch(cur, _PARTITIONS, schema):
        match = re.fullmatch(re.escape(parent) + r"_(\d+)", child)
        if parent not in _BULK_TYPES or match is None:
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


def _cast_type(table: str, column: _Column) -> str:
    if column.type not in _CASTS:
        raise MatchboxSnapshotError(
            f"Column {table}.{column.name} has type {column.type}, which snapshots do not support."
        )
    return column.type


# --- value checks of the JSON form ------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_base64(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    return True


_VALUE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "bigint": _is_int,
    "integer": _is_int,
    "smallint": _is_int,
    "boolean": lambda v: isinstance(v, bool),
    "real": lambda v: _is_int(v) or isinstance(v, float | str),
    "double precision": lambda v: _is_int(v) or isinstance(v, float | str),
    "numeric": lambda v: _is_int(v) or isinstance(v, float | str),
    "text": lambda v: isinstance(v, str),
    "bytea": _is_base64,
    "date": lambda v: isinstance(v, str),
    "timestamp with time zone": lambda v: isinstance(v, str),
    "timestamp without time zone": lambda v: isinstance(v, str),
}


# --- locations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    """A local directory, or a bucket and key prefix in S3."""

    local: Path | None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, location: str | os.PathLike[str]) -> _Location:
        text = os.fspath(location)
        if text.startswith("s3://"):
            bucket, _, prefix = text[len("s3://") :].partition("/")
            if not bucket:
                raise MatchboxInvalidData(
                    f"S3 location {text!r} names no bucket (s3://bucket/prefix)."
                )
            return cls(local=None, bucket=bucket, prefix=prefix.strip("/"))
        return cls(local=Path(text))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else f"s3://{self.bucket}/{self.prefix}"


@contextmanager
def _datastore(location: _Location, action: str) -> Iterator[None]:
    """Turn a failure of the snapshot location (S3 or the file system) into a typed error.

    The message keeps the service's own words (never credentials, which boto3 does not put in
    its errors) and drops the exception chain.
    """
    try:
        yield
    except MatchboxError:
        raise
    except Exception as exc:
        module = type(exc).__module__.split(".")[0]
        if module not in {"botocore", "boto3", "s3transfer"} and not isinstance(exc, OSError):
            raise
        text = str(exc).strip().splitlines()
        raise MatchboxDatastoreError(
            f"Could not {action} {location}: {text[0] if text else type(exc).__name__}"
        ) from None


def snapshot_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a JSON snapshot's content (every key but ``sha256``), canonically encoded."""
    content = {k: v for k, v in data.items() if k != "sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the mixin ------------------------------------------------------------------------------------


class AdminMixin(PostgresCore):
    """Snapshots and housekeeping."""

    # --- shared plumbing --------------------------------------------------------------------

    @contextmanager
    def _admin_cursor(self, *, read_only: bool = False) -> Iterator[tuple[Any, adbc.Cursor]]:
        """An ADBC connection in a fresh transaction (repeatable read when ``read_only``)."""
        with self.db.adbc() as conn, conn.cursor() as cur:
            conn.commit()  # end the transaction that set the search path
            if read_only:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn, cur

    @contextmanager
    def _raw_cursor(self, *, read_only: bool = False) -> Iterator[psycopg.RawCursor[Any]]:
        """A pooled connection in one transaction, with ``$n`` placeholders like ADBC."""
        with self.db.connection() as conn:
            if read_only:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with psycopg.RawCursor(conn) as cur:
                yield cur

    def _revision(self) -> str | None:
        return migrate.current_revision(self.db.engine, self.db.schema)

    def _q(self, table: str) -> str:
        return f"{quote_ident(self.db.schema)}.{quote_ident(table)}"

    def _ensure_defaults_raw(self, cur: Cursor) -> None:
        for statement, parameter in default_statements("$1"):
            cur.execute(statement, (parameter,))

    # --- JSON snapshots ---------------------------------------------------------------------

    def dump(self) -> MatchboxSnapshot:
        """The whole store as a JSON-serialisable snapshot (one consistent read).

        ``data`` holds the format, the schema revision, the partitions and, per table, its
        column names and its rows (lists, ordered by every column; ``bytea`` as base64).
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        revision = self._revision()
        with self._raw_cursor(read_only=True) as cur:
            tables = _catalog(cur, self.db.schema)
            partitions = _partitions(cur, self.db.schema)
            data_tables: dict[str, Any] = {}
            for table in tables:
                exprs = []
                for column in table.columns:
                    kind = _cast_type(table.name, column)
                    template = (
                        "translate(encode({c}, 'base64'), E'\\n', '')" if kind == "bytea" else "{c}"
                    )
                    exprs.append(compose(template, c=column.name))
                order = ", ".join(quote_ident(n) for n in table.names)
                query = compose(
                    "SELECT coalesce(jsonb_agg(jsonb_build_array({{exprs}}) ORDER BY {{order}}), "
                    "'[]'::jsonb)::text FROM {t}",
                    t=table.name,
                ).format(exprs=", ".join(exprs), order=order)
                rows = json.loads(_fetch(cur, query)[0][0])
                data_tables[table.name] = {"columns": table.names, "rows": rows}
        data = {
            "format": SNAPSHOT_FORMAT,
            "format_version": SNAPSHOT_VERSION,
            "schema_revision": revision,
            "partitions": [p.model_dump() for p in partitions],
            "tables": data_tables,
        }
        data["sha256"] = snapshot_digest(data)
        return MatchboxSnapshot(backend_type=MatchboxBackends.POSTGRES, data=data)

    def restore(self, snapshot: MatchboxSnapshot) -> None:
        """Load a snapshot into a fresh or cleared store, in one transaction.

        Raises ``TypeError`` for a snapshot of another backend, format or schema revision, and
        :class:`MatchboxSnapshotError` for a damaged snapshot or a store holding data (clear it
        first). The snapshot is checked completely before anything is written.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        data = snapshot.data if isinstance(snapshot.data, dict) else {}
        self._check_header(
            snapshot.backend_type,
            data.get("format"),
            data.get("format_version"),
            data.get("schema_revision"),
        )
        try:
            intact = data.get("sha256") == snapshot_digest(data)
        except (TypeError, ValueError):
            intact = False
        if not intact:
            raise MatchboxSnapshotError(
                "The snapshot's content does not match its SHA-256 checksum (or it has none): it "
                "was altered or damaged since dump(). Nothing was restored."
            )
        with self._raw_cursor() as cur:
            tables = _catalog(cur, self.db.schema)
            partitions = self._check_json(data, tables)
            self._load(cur, tables, partitions, lambda t: self._insert_json(cur, t, data))
        logger.info("Restored a snapshot of %d table(s)", len(tables))

    def _check_header(self, backend_type: Any, fmt: Any, version: Any, revision: Any) -> None:
        if str(backend_type) != MatchboxBackends.POSTGRES.value:
            raise TypeError(
                f"Cannot restore a {backend_type!s} snapshot into the PostgreSQL backend."
            )
        if fmt != SNAPSHOT_FORMAT or version != SNAPSHOT_VERSION:
            raise TypeError(
                f"Snapshot format {fmt!r} version {version!r} is not {SNAPSHOT_FORMAT!r} version "
                f"{SNAPSHOT_VERSION}; this store cannot read it."
            )
        current = self._revision()
        if revision != current:
            raise TypeError(
                f"The snapshot was taken at schema revision {revision!r}, but this store is at "
                f"{current!r}. Restore it into a store at the same revision."
            )

    @staticmethod
    def _check_layout(
        tables: list[_Table], columns: dict[str, list[str]], partitions: Any
    ) -> list[PartitionSpec]:
        """Same tables and columns as the schema; partitions of bulk tables, once each."""
        expected = {t.name: t.names for t in tables}
        if set(columns) != set(expected):
            raise MatchboxSnapshotError(
                f"The snapshot's tables {sorted(columns)} differ from the store's "
                f"{sorted(expected)}."
            )
        for name, names in expected.items():
            if columns[name] != names:
                raise MatchboxSnapshotError(
                    f"Snapshot table {name!r} has columns {columns[name]}, expected {names}."
                )
        try:
            specs = [PartitionSpec.model_validate(p) for p in partitions]
        except (ValidationError, TypeError) as exc:
            raise MatchboxSnapshotError(
                f"The snapshot's partition list is damaged: {exc}"
            ) from None
        seen = set()
        for spec in specs:
            if spec.table not in _BULK_TYPES or (spec.table, spec.step_id) in seen:
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

    @staticmethod
    def _check_steps(
        specs: list[PartitionSpec],
        steps: dict[int, str],
        bulk_step_ids: dict[str, set[int]],
    ) -> None:
        """Each partition belongs to a step of its type; each bulk row to a partition."""
        for spec in specs:
            step_type = steps.get(spec.step_id)
            if step_type != _BULK_TYPES[spec.table].value:
                raise MatchboxSnapshotError(
                    f"The snapshot holds partition {spec.table}/{spec.step_id}, but step "
                    f"{spec.step_id} is {'missing' if step_type is None else 'a ' + step_type}."
                )
        for table, ids in bulk_step_ids.items():
            known = {s.step_id for s in specs if s.table == table}
            stray = sorted(ids - known)
            if stray:
                raise MatchboxSnapshotError(
                    f"Snapshot table {table!r} holds rows of step(s) {stray[:5]} that have no "
                    "partition."
                )

    def _check_json(self, data: dict[str, Any], tables: list[_Table]) -> list[PartitionSpec]:
        """Check a JSON snapshot's layout and every value's type."""
        raw = data.get("tables")
        if not isinstance(raw, dict) or not all(
            isinstance(v, dict)
            and isinstance(v.get("columns"), list)
            and isinstance(v.get("rows"), list)
            for v in raw.values()
        ):
            raise MatchboxSnapshotError("The snapshot's tables are damaged.")
        specs = self._check_layout(
            tables, {k: v["columns"] for k, v in raw.items()}, data.get("partitions", [])
        )
        for table in tables:
            rows = raw[table.name]["rows"]
            width = len(table.columns)
            if not all(isinstance(r, list) and len(r) == width for r in rows):
                raise MatchboxSnapshotError(
                    f"Snapshot table {table.name!r} has rows that are not lists of {width} values."
                )
            for i, column in enumerate(table.columns):
                check = _VALUE_CHECKS.get(_cast_type(table.name, column))
                if check is None:
                    continue
                bad = next((r[i] for r in rows if r[i] is not None and not check(r[i])), None)
                if bad is not None:
                    raise MatchboxSnapshotError(
                        f"Snapshot table {table.name!r} column {column.name!r} holds "
                        f"{str(bad)[:40]!r}, which is not a valid {column.type}."
                    )
        steps_table = next(t for t in tables if t.name == "steps")
        sid, stype = steps_table.names.index("step_id"), steps_table.names.index("step_type")
        steps = {r[sid]: r[stype] for r in raw["steps"]["rows"]}
        bulk = {
            t.name: {r[t.names.index("step_id")] for r in raw[t.name]["rows"]}
            for t in tables
            if t.bulk
        }
        self._check_steps(specs, steps, bulk)
        return specs

    def _insert_json(self, cur: Cursor, table: _Table, data: dict[str, Any]) -> None:
        rows = data["tables"][table.name]["rows"]
        if not rows:
            return
        exprs = []
        for i, column in enumerate(table.columns):
            kind = _cast_type(table.name, column)
            if kind == "bytea":
                exprs.append(f"decode(v->>{i}, 'base64')")
            elif kind in ("jsonb", "json"):
                exprs.append(f"nullif(v->{i}, 'null'::jsonb)::{kind}")
            else:
                exprs.append(f"CAST(v->>{i} AS {kind})")
        query = compose(
            "INSERT INTO {t} ({{cols}}) OVERRIDING SYSTEM VALUE "
            "SELECT {{exprs}} FROM jsonb_array_elements($1::jsonb) AS e(v)",
            t=table.name,
        ).format(cols=", ".join(quote_ident(n) for n in table.names), exprs=", ".join(exprs))
        cur.execute(query, (json.dumps(rows),))

    # --- the shared loader ----------------------------------------------------------------

    def _load(
        self,
        cur: Cursor,
        tables: list[_Table],
        partitions: list[PartitionSpec],
        insert: Callable[[_Table], None],
    ) -> None:
        """Write a checked snapshot: partitions, every table's rows, indexes, sequences."""
        self._refuse_if_not_empty(cur, tables)
        try:
            for name in ("user_groups", "permissions", "users", "groups"):
                cur.execute(compose("DELETE FROM {t}", t=name))
            for spec in partitions:
                self._create_partition(cur, spec)
            for table in tables:
                insert(table)
            # `contains` has no foreign key (bulk speed); check its roots by hand.
            dangling = _fetch(
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
                part = partition_name(_BULK_TYPES[spec.table], spec.step_id)
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
                        self._reset_sequence(cur, table.name, column.name)
            self._ensure_defaults_raw(cur)
        except (adbc.Error, psycopg.Error) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise MatchboxSnapshotError(
                f"The snapshot could not be loaded, so nothing was restored: {message}"
            ) from None

    def _refuse_if_not_empty(self, cur: Cursor, tables: list[_Table]) -> None:
        others = [t.name for t in tables if t.name not in AUTH_TABLES]
        checks = " UNION ALL ".join(
            compose("SELECT {{i}} WHERE EXISTS (SELECT 1 FROM {t})", t=name).format(i=i)
            for i, name in enumerate(others)
        )
        busy = [others[int(r[0])] for r in _fetch(cur, checks)] if checks else []
        extra = _fetch(cur, _NON_DEFAULT_AUTH, defaults_document())[0][0]
        if busy or extra:
            raise MatchboxSnapshotError(
                "The store is not empty"
                + (f" (tables {busy} hold rows)" if busy else "")
                + (f" ({extra} user/group/permission row(s) beyond the defaults)" if extra else "")
                + ". Restore only into a fresh store, or call clear(certain=True) first."
            )

    def _create_partition(self, cur: Cursor, spec: PartitionSpec) -> None:
        sid = int(spec.step_id)
        part = partition_name(_BULK_TYPES[spec.table], sid)
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

    def _reset_sequence(self, cur: Cursor, table: str, column: str) -> None:
        """Move an identity sequence past the table's largest id (never backwards)."""
        query = compose(
            "SELECT setval(s::regclass, greatest(coalesce((SELECT max({c}) FROM {t}), 0), "
            "coalesce(pg_sequence_last_value(s::regclass), 0)) + 1, false) "
            "FROM pg_get_serial_sequence($1, $2) AS s WHERE s IS NOT NULL",
            c=column,
            t=table,
        )
        _fetch(cur, query, self._q(table), column)

    # --- clear, drop, orphans ---------------------------------------------------------------

    def clear(self, certain: bool) -> None:
        """Delete every row and partition, keep the tables, re-create the defaults.

        One transaction; identity sequences are not restarted, so ids are never reused.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        if not certain:
            raise MatchboxDeletionNotConfirmed(
                f"every row of the store in schema {self.db.schema!r}",
                ["all collections, runs, steps and their data", "judgements", "users", "groups"],
            )
        with self._raw_cursor() as cur:
            for spec in _partitions(cur, self.db.schema):
                part = partition_name(_BULK_TYPES[spec.table], spec.step_id)
                cur.execute(compose("DROP TABLE {p}", p=part))
            tables = _catalog(cur, self.db.schema)
            cur.execute("TRUNCATE " + ", ".join(self._q(t.name) for t in tables))
            self._ensure_defaults_raw(cur)
        logger.info("Cleared the store in schema %s", self.db.schema)

    def drop(self, certain: bool) -> None:
        """Drop the store's schema, create it anew with the migrations and the defaults."""
        self._authorise(PermissionType.ADMIN, SYSTEM)
        if not certain:
            raise MatchboxDeletionNotConfirmed(
                f"the schema {self.db.schema!r} and everything in it"
            )
        with self.db.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.db.schema,))
            conn.execute(compose("DROP SCHEMA IF EXISTS {s} CASCADE", s=self.db.schema))
        self.db.dispose()
        migrate.upgrade(self.db.engine, self.db.schema)
        self._ensure_defaults()  # type: ignore[attr-defined]
        logger.info("Dropped and re-created the store in schema %s", self.db.schema)

    def delete_orphans(self) -> int:
        """Delete multi-leaf clusters of ``clusters`` nothing refers to; return how many.

        ``clusters`` holds the clusters judgements were made of (a resolver's own clusters live
        in its partition and go with it). A cluster is kept while a resolver's data, a model's
        edges or a judgement (shown or endorsed) refers to it. Judgements that add clusters wait
        for this to finish (and it for them), so a cluster being re-used is never deleted under
        one.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
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

    # --- streamed snapshots -----------------------------------------------------------------

    def dump_to(self, location: str | os.PathLike[str]) -> SnapshotManifest:
        """Write the store as Parquet files plus ``manifest.json`` to a directory or S3.

        ``location`` is a local directory (created if needed; it must not hold a snapshot) or
        ``s3://bucket/prefix`` (the datastore settings give the S3 client). Tables stream in
        batches through one consistent read; the manifest is written last.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        target = _Location.parse(location)
        with _datastore(target, "write a snapshot to"):
            return self._dump_to(target)

    def _dump_to(self, target: _Location) -> SnapshotManifest:
        client = self.settings.datastore.get_client() if target.bucket else None
        if target.local is not None:
            target.local.mkdir(parents=True, exist_ok=True)
            if (target.local / MANIFEST).exists():
                raise MatchboxSnapshotError(
                    f"{target} already holds a snapshot; write to an empty location."
                )
        elif _s3_exists(client, target.bucket, target.key(MANIFEST)):
            raise MatchboxSnapshotError(
                f"{target} already holds a snapshot; write to an empty location."
            )
        revision = self._revision()
        files: list[TableFile] = []
        with tempfile.TemporaryDirectory(prefix="mb-dump-") as scratch:
            with self._admin_cursor(read_only=True) as (_, cur):
                tables = _catalog(cur, self.db.schema)
                partitions = _partitions(cur, self.db.schema)
                for table in tables:
                    name = f"{table.name}.parquet"
                    out = (target.local or Path(scratch)) / name
                    rows = self._write_parquet(cur, table, out)
                    files.append(
                        TableFile(
                            table=table.name,
                            file=name,
                            columns=table.names,
                            rows=rows,
                            bytes=out.stat().st_size,
                            sha256=_sha256(out),
                        )
                    )
                    if client is not None:
                        client.upload_file(str(out), target.bucket, target.key(name))
                        out.unlink()
            manifest = SnapshotManifest(
                format=SNAPSHOT_FORMAT,
                format_version=SNAPSHOT_VERSION,
                backend_type=MatchboxBackends.POSTGRES.value,
                schema_revision=revision,
                created_at=datetime.now(UTC),
                partitions=partitions,
                tables=files,
            )
            body = manifest.model_dump_json(indent=2).encode()
            if target.local is not None:
                (target.local / MANIFEST).write_bytes(body)
            else:
                client.put_object(Bucket=target.bucket, Key=target.key(MANIFEST), Body=body)
        logger.info(
            "Wrote a snapshot of %d table(s), %d row(s) to %s",
            len(files),
            sum(f.rows for f in files),
            target,
        )
        return manifest

    def _write_parquet(self, cur: adbc.Cursor, table: _Table, out: Path) -> int:
        exprs = []
        for column in table.columns:
            kind = _cast_type(table.name, column)
            template = "{c}" if kind in _ARROW_NATIVE else "CAST({c} AS text) AS {c}"
            exprs.append(compose(template, c=column.name))
        cur.execute(compose("SELECT {{e}} FROM {t}", t=table.name).format(e=", ".join(exprs)))
        reader = cur.fetch_record_batch()
        rows = 0
        with pq.ParquetWriter(out, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows

    def restore_from(self, location: str | os.PathLike[str]) -> None:
        """Restore a snapshot written by :meth:`dump_to`, in one transaction.

        Every file is checked against the manifest (size, SHA-256, row count, columns) before
        anything is written; a damaged, truncated or tampered snapshot raises
        :class:`MatchboxSnapshotError` and leaves the store as it was. Other errors are as for
        :meth:`restore`.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        source = _Location.parse(location)
        with _datastore(source, "read a snapshot from"):
            self._restore_from(source)

    def _restore_from(self, source: _Location) -> None:
        client = self.settings.datastore.get_client() if source.bucket else None
        with tempfile.TemporaryDirectory(prefix="mb-restore-") as scratch:
            manifest = self._read_manifest(source, client)
            self._check_header(
                manifest.backend_type,
                manifest.format,
                manifest.format_version,
                manifest.schema_revision,
            )
            paths = self._fetch_files(source, client, manifest, Path(scratch))
            by_table = {f.table: f for f in manifest.tables}
            if len(by_table) != len(manifest.tables):
                raise MatchboxSnapshotError("The manifest lists a table twice.")
            with self._admin_cursor() as (conn, cur):
                tables = _catalog(cur, self.db.schema)
                specs = self._check_layout(
                    tables, {f.table: f.columns for f in manifest.tables}, manifest.partitions
                )
                self._check_parquet_steps(tables, specs, paths)

                def insert(table: _Table) -> None:
                    self._insert_parquet(cur, table, paths[table.name])

                self._load(cur, tables, specs, insert)
                conn.commit()
        logger.info("Restored a snapshot of %d table(s) from %s", len(manifest.tables), source)

    def _read_manifest(self, source: _Location, client: Any) -> SnapshotManifest:
        try:
            if source.local is not None:
                body = (source.local / MANIFEST).read_bytes()
            else:
                body = client.get_object(Bucket=source.bucket, Key=source.key(MANIFEST))[
                    "Body"
                ].read()
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or _is_missing(exc):
                raise MatchboxSnapshotError(
                    f"No snapshot at {source}: {MANIFEST} is missing."
                ) from None
            raise
        try:
            return SnapshotManifest.model_validate_json(body)
        except ValidationError as exc:
            raise MatchboxSnapshotError(
                f"The manifest at {source} is damaged: {exc.errors()[0]['msg']}"
            ) from None

    def _fetch_files(
        self, source: _Location, client: Any, manifest: SnapshotManifest, scratch: Path
    ) -> dict[str, Path]:
        """Local paths of every table file, each checked against the manifest."""
        paths: dict[str, Path] = {}
        for entry in manifest.tables:
            if Path(entry.file).name != entry.file or not entry.file.endswith(".parquet"):
                raise MatchboxSnapshotError(f"The manifest names an unsafe file {entry.file!r}.")
            if source.local is not None:
                path = source.local / entry.file
                if not path.is_file():
                    raise MatchboxSnapshotError(f"Snapshot file {entry.file!r} is missing.")
            else:
                path = scratch / entry.file
                try:
                    client.download_file(source.bucket, source.key(entry.file), str(path))
                except Exception as exc:
                    if _is_missing(exc):
                        raise MatchboxSnapshotError(
                            f"Snapshot file {entry.file!r} is missing from {source}."
                        ) from None
                    raise
            size = path.stat().st_size
            if size != entry.bytes or _sha256(path) != entry.sha256:
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} does not match its manifest entry "
                    f"({size} bytes; expected {entry.bytes} bytes and SHA-256 "
                    f"{entry.sha256[:12]}…): it was truncated or altered."
                )
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} is not readable Parquet: {exc}"
                ) from None
            if (
                parquet.metadata.num_rows != entry.rows
                or parquet.schema_arrow.names != entry.columns
            ):
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} holds {parquet.metadata.num_rows} row(s) of "
                    f"{parquet.schema_arrow.names}; the manifest says {entry.rows} of "
                    f"{entry.columns}."
                )
            paths[entry.table] = path
        return paths

    def _check_parquet_steps(
        self, tables: list[_Table], specs: list[PartitionSpec], paths: dict[str, Path]
    ) -> None:
        steps = pq.read_table(paths["steps"], columns=["step_id", "step_type"])
        step_types = dict(
            zip(
                steps.column("step_id").to_pylist(),
                steps.column("step_type").to_pylist(),
                strict=True,
            )
        )
        bulk: dict[str, set[int]] = {}
        for table in tables:
            if not table.bulk:
                continue
            ids: set[int] = set()
            for batch in pq.ParquetFile(paths[table.name]).iter_batches(
                batch_size=self.settings.batch_size, columns=["step_id"]
            ):
                ids.update(pc.unique(batch.column(0)).to_pylist())
            bulk[table.name] = ids
        self._check_steps(specs, step_types, bulk)

    def _insert_parquet(self, cur: adbc.Cursor, table: _Table, path: Path) -> None:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            return
        staging = f"mb_restore_{table.name}"
        reader = pa.RecordBatchReader.from_batches(
            parquet.schema_arrow, parquet.iter_batches(batch_size=self.settings.batch_size)
        )
        cur.adbc_ingest(staging, reader, mode="create", temporary=True)
        exprs = ", ".join(
            compose("CAST({c} AS {{kind}})", c=c.name).format(kind=_cast_type(table.name, c))
            for c in table.columns
        )
        cur.execute(
            compose(
                "INSERT INTO {t} ({{cols}}) OVERRIDING SYSTEM VALUE SELECT {{exprs}} FROM {s}",
                t=table.name,
                s=staging,
            ).format(cols=", ".join(quote_ident(n) for n in table.names), exprs=exprs)
        )
        cur.execute(compose("DROP TABLE {s}", s=staging))

    # --- upload audit -----------------------------------------------------------------------

    def audit_uploads(self, stale_run_days: int = 30) -> UploadAudit:
        """Report stuck, failed and abandoned uploads, empty steps of immutable runs, stale runs.

        An operator (or a Dagster sensor) can act on the result, e.g. with
        :meth:`reset_stuck_uploads`.
        """
        self._authorise(PermissionType.READ, SYSTEM)
        if stale_run_days < 0:
            raise MatchboxInvalidData("stale_run_days must be zero or positive")
        expiry = self.settings.uploads_expiry_minutes
        with self.db.connection() as conn:
            checked_at = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            rows = (
                self._cursor(conn)
                .execute(
                    """
                SELECT c.name AS collection, s.run_id, s.name, s.step_type, s.upload_stage,
                       s.stage_updated_at AS since, r.is_mutable,
                       extract(epoch FROM now() - s.stage_updated_at) / 60 AS minutes,
                       CASE
                         WHEN s.upload_stage = 'processing' AND %(expiry)s::int IS NOT NULL
                              AND s.stage_updated_at < now() - make_interval(mins => %(expiry)s)
                           THEN 'stuck'
                         WHEN s.upload_stage = 'ready' AND s.stage_updated_at > s.created_at
                           THEN 'failed'
                         WHEN s.upload_stage = 'ready' AND %(expiry)s::int IS NOT NULL
                              AND s.created_at < now() - make_interval(mins => %(expiry)s)
                           THEN 'abandoned'
                       END AS finding,
                       s.upload_stage = 'ready' AND NOT r.is_mutable AS unfillable
                FROM steps s JOIN runs r USING (run_id) JOIN collections c USING (collection_id)
                WHERE s.upload_stage <> 'complete'
                ORDER BY c.name, s.run_id, s.name
                """,
                    {"expiry": expiry},
                )
                .fetchall()
            )
            runs = (
                self._cursor(conn)
                .execute(
                    """
                SELECT c.name AS collection, r.run_id, r.created_at,
                       extract(epoch FROM now() - r.created_at) / 86400 AS age_days,
                       (SELECT count(*) FROM steps s WHERE s.run_id = r.run_id) AS steps
                FROM runs r JOIN collections c USING (collection_id)
                WHERE r.is_mutable AND NOT r.is_default
                  AND r.created_at < now() - make_interval(days => %s)
                ORDER BY c.name, r.run_id
                """,
                    (stale_run_days,),
                )
                .fetchall()
            )
        audit = UploadAudit(
            checked_at=checked_at, uploads_expiry_minutes=expiry, stale_run_days=stale_run_days
        )
        for row in rows:
            step = AuditedStep(
                path=StepPath(collection=row["collection"], run=row["run_id"], name=row["name"]),
                step_type=StepType(row["step_type"]),
                stage=UploadStage(row["upload_stage"]),
                since=row["since"],
                minutes=float(row["minutes"]),
            )
            if row["finding"] in ("stuck", "failed", "abandoned"):
                getattr(audit, row["finding"]).append(step)
            if row["unfillable"]:
                audit.empty_immutable.append(step)
        audit.stale_runs.extend(
            StaleRun(
                collection=r["collection"],
                run_id=r["run_id"],
                created_at=r["created_at"],
                age_days=float(r["age_days"]),
                steps=int(r["steps"]),
            )
            for r in runs
        )
        return audit

    def reset_stuck_uploads(self) -> int:
        """Move steps stuck in PROCESSING past ``uploads_expiry_minutes`` back to READY.

        Steps whose upload is still running (their row is locked) are left alone. Returns how
        many were reset; with no expiry configured, none are.
        """
        self._authorise(PermissionType.ADMIN, SYSTEM)
        expiry = self.settings.uploads_expiry_minutes
        if expiry is None:
            return 0
        with self.db.connection() as conn:
            rows = conn.execute(
                """
                UPDATE steps SET upload_stage = 'ready', stage_updated_at = now()
                WHERE step_id IN (
                    SELECT step_id FROM steps
                    WHERE upload_stage = 'processing'
                      AND stage_updated_at < now() - make_interval(mins => %s)
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING step_id
                """,
                (expiry,),
            ).fetchall()
        if rows:
            logger.warning("Reset %d upload(s) stuck in PROCESSING to READY", len(rows))
        return len(rows)


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


def _is_missing(exc: BaseException) -> bool:
    """Whether a boto3 error means the object or bucket does not exist."""
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _s3_exists(client: Any, bucket: str | None, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _is_missing(exc):
            return False
        raise
    return True


__all__ = [
    "AdminMixin",
    "AuditedStep",
    "IndexSpec",
    "PartitionSpec",
    "SnapshotManifest",
    "StaleRun",
    "TableFile",
    "UploadAudit",
]
