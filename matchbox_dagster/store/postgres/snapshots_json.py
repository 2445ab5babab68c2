"""JSON snapshots: ``dump`` and ``restore`` of a :class:`MatchboxSnapshot`.

Rows as lists ordered by every column, ``bytea`` as base64, and a SHA-256 of the content; a
restore checks the header, the checksum, the layout and every value's type before it writes
anything, then loads in one transaction (:mod:`~matchbox_dagster.store.postgres.snapshot_load`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any

from matchbox_dagster.common.dtos import MatchboxBackends, MatchboxSnapshot
from matchbox_dagster.common.errors import MatchboxSnapshotError
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import logger
from matchbox_dagster.store.postgres.db import compose, quote_ident
from matchbox_dagster.store.postgres.snapshot_layout import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    Cursor,
    PartitionSpec,
    Table,
    cast_type,
    catalog,
    check_header,
    check_layout,
    check_steps,
    fetch,
    list_partitions,
    raw_cursor,
    revision,
)
from matchbox_dagster.store.postgres.snapshot_load import load


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


def snapshot_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a JSON snapshot's content (every key but ``sha256``), canonically encoded."""
    content = {k: v for k, v in data.items() if k != "sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class JsonSnapshots:
    """``dump`` and ``restore``."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def dump(self) -> MatchboxSnapshot:
        """The whole store as a JSON-serialisable snapshot (one consistent read).

        ``data`` holds the format, the schema revision, the partitions and, per table, its
        column names and its rows (lists, ordered by every column; ``bytea`` as base64).
        """
        taken_at = revision(self.db)
        with raw_cursor(self.db, read_only=True) as cur:
            tables = catalog(cur, self.db.schema)
            partitions = list_partitions(cur, self.db.schema)
            data_tables: dict[str, Any] = {}
            for table in tables:
                exprs = []
                for column in table.columns:
                    kind = cast_type(table.name, column)
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
                rows = json.loads(fetch(cur, query)[0][0])
                data_tables[table.name] = {"columns": table.names, "rows": rows}
        data = {
            "format": SNAPSHOT_FORMAT,
            "format_version": SNAPSHOT_VERSION,
            "schema_revision": taken_at,
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
        data = snapshot.data if isinstance(snapshot.data, dict) else {}
        check_header(
            self.db,
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
        with raw_cursor(self.db) as cur:
            tables = catalog(cur, self.db.schema)
            partitions = self._check_json(data, tables)
            load(cur, self.db.schema, tables, partitions, lambda t: self._insert_json(cur, t, data))
        logger.info("Restored a snapshot of %d table(s)", len(tables))

    def _check_json(self, data: dict[str, Any], tables: list[Table]) -> list[PartitionSpec]:
        """Check a JSON snapshot's layout and every value's type."""
        raw = data.get("tables")
        if not isinstance(raw, dict) or not all(
            isinstance(v, dict)
            and isinstance(v.get("columns"), list)
            and isinstance(v.get("rows"), list)
            for v in raw.values()
        ):
            raise MatchboxSnapshotError("The snapshot's tables are damaged.")
        specs = check_layout(
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
                check = _VALUE_CHECKS.get(cast_type(table.name, column))
                if check is None:
                    continue
                bad = next((r[i] for r in rows if r[i] is not None and not check(r[i])), None)
                if bad is not None:
                    raise MatchboxSnapshotError(
                        f"Snapshot table {table.name!r} column {column.name!r} holds "
                        f"{str(bad)[:40]!r}, which is not a valid {column.type}."
                    )
        steps_table = next(t for t in tables if t.name == "steps")
        # Partitions are named by data ids (a step's own id, or the one it shares).
        sid, stype = steps_table.names.index("data_id"), steps_table.names.index("step_type")
        steps = {r[sid]: r[stype] for r in raw["steps"]["rows"]}
        bulk = {
            t.name: {r[t.names.index("step_id")] for r in raw[t.name]["rows"]}
            for t in tables
            if t.bulk
        }
        check_steps(specs, steps, bulk)
        return specs

    def _insert_json(self, cur: Cursor, table: Table, data: dict[str, Any]) -> None:
        rows = data["tables"][table.name]["rows"]
        if not rows:
            return
        exprs = []
        for i, column in enumerate(table.columns):
            kind = cast_type(table.name, column)
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
