"""Shared plumbing of the store's parts: the context (database, settings), step rows, lookups.

Lookups run inside a caller's transaction on a psycopg connection; retries and permission checks
are the facade's (:mod:`matchbox_dagster.store.postgres.operations`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from matchbox_dagster.common.dtos import (
    BackendResourceType,
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepCollectionNotFound,
    MatchboxStepNotFoundError,
    MatchboxStepRunNotFound,
    MatchboxStepTypeError,
    shown,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres.db import Database
from matchbox_dagster.store.postgres.step_rows import BULK_TABLES as BULK_TABLES
from matchbox_dagster.store.postgres.step_rows import partition_name as partition_name

logger = logging.getLogger("matchbox_dagster.store")


@dataclass(frozen=True)
class StepRow:
    """A step's database row, with its run and collection."""

    step_id: int
    run_id: int
    collection_id: int
    collection: str
    name: str
    step_type: StepType
    stage: UploadStage
    fingerprint: bytes
    config: dict[str, Any]
    description: str | None
    is_mutable: bool
    is_default: bool
    data_id: int
    """Id of the step whose partition holds this step's data (``step_id``: its own)."""

    def path(self) -> StepPath:
        """The step's path."""
        return StepPath(collection=self.collection, run=self.run_id, name=self.name)


STEP_SELECT = """
SELECT s.step_id, s.run_id, r.collection_id, c.name AS collection, s.name, s.step_type,
       s.upload_stage, s.fingerprint, s.config::text AS config, s.description,
       r.is_mutable, r.is_default, s.data_id
FROM steps s JOIN runs r USING (run_id) JOIN collections c USING (collection_id)
WHERE c.name = $1 AND s.run_id = $2 AND s.name = $3
"""
"""A step with its run and collection, by path (``$n`` placeholders: psycopg's RawCursor and
ADBC share it; the config comes back as JSON text)."""


MISSING_SELECT = """
SELECT EXISTS (SELECT 1 FROM collections WHERE name = $1) AS has_collection,
       EXISTS (SELECT 1 FROM runs r JOIN collections c USING (collection_id)
               WHERE c.name = $1 AND r.run_id = $2) AS has_run
"""
"""Which part of a step path is missing (``$n`` placeholders, for psycopg and ADBC)."""


def step_not_found(path: StepPath, row: dict[str, Any] | None = None) -> MatchboxStepNotFoundError:
    """The step-not-found error for ``path``, naming its collection or run if that is missing.

    ``row`` is the result of ``MISSING_SELECT`` (None: the collection's name is invalid, so no
    collection can have it).
    """
    if row is None or not row["has_collection"]:
        return MatchboxStepCollectionNotFound(path, path.collection)
    if not row["has_run"]:
        return MatchboxStepRunNotFound(path, path.collection, path.run)
    return MatchboxStepNotFoundError(path, f"run {path.run} has no step {shown(path.name)}")


def step_from_row(row: dict[str, Any]) -> StepRow:
    """Build a :class:`StepRow` from a dict row of ``STEP_SELECT``."""
    return StepRow(
        step_id=int(row["step_id"]),
        run_id=int(row["run_id"]),
        collection_id=int(row["collection_id"]),
        collection=row["collection"],
        name=row["name"],
        step_type=StepType(row["step_type"]),
        stage=UploadStage(row["upload_stage"]),
        fingerprint=bytes(row["fingerprint"]),
        config=json.loads(row["config"]) if isinstance(row["config"], str) else row["config"],
        description=row["description"],
        is_mutable=bool(row["is_mutable"]),
        is_default=bool(row["is_default"]),
        data_id=int(row["data_id"]),
    )


@dataclass
class Context:
    """What every part of the store shares: the database and the settings.

    One per store; views made by ``as_user`` share it, so a settings change is seen by all.
    """

    db: Database
    settings: MatchboxSettings
    s3_client_factory: Callable[[], Any] | None = None
    """Makes the S3 client for snapshots (None: ``settings.datastore.get_client()``)."""


# --- lookups (psycopg, inside a caller's transaction) -----------------------------------------


def dict_cursor(conn: psycopg.Connection) -> psycopg.Cursor[dict[str, Any]]:
    """A cursor of ``conn`` returning dict rows."""
    return conn.cursor(row_factory=dict_row)


def collection_id(conn: psycopg.Connection, name: str, *, for_update: bool = False) -> int:
    """A collection's id (``MatchboxCollectionNotFoundError`` if missing)."""
    query = "SELECT collection_id FROM collections WHERE name = %s"
    if for_update:
        query += " FOR UPDATE"
    row = conn.execute(query, (name,)).fetchone()
    if row is None:
        raise MatchboxCollectionNotFoundError(name)
    return int(row[0])


def has_collection(conn: psycopg.Connection, name: str) -> bool:
    """Whether a collection of that name exists."""
    return conn.execute("SELECT 1 FROM collections WHERE name = %s", (name,)).fetchone() is not None


def run_row(
    conn: psycopg.Connection, collection: str, run_id: int, *, for_update: bool = False
) -> dict[str, Any]:
    """A run's row (``run_id``, ``collection_id``, ``is_mutable``, ``is_default``)."""
    cid = collection_id(conn, collection)
    query = (
        "SELECT run_id, collection_id, is_mutable, is_default FROM runs "
        "WHERE collection_id = %s AND run_id = %s"
    )
    if for_update:
        query += " FOR UPDATE"
    row = dict_cursor(conn).execute(query, (cid, run_id)).fetchone()
    if row is None:
        raise MatchboxRunNotFoundError(collection, run_id)
    return row


def writable_run(
    conn: psycopg.Connection, collection: str, run_id: int, action: str
) -> dict[str, Any]:
    """A mutable run's row, locked (``MatchboxRunNotWriteable`` if immutable)."""
    run = run_row(conn, collection, run_id, for_update=True)
    if not run["is_mutable"]:
        raise MatchboxRunNotWriteable(collection, run_id, action)
    return run


def step_row(
    conn: psycopg.Connection,
    path: StepPath,
    *,
    expected: StepType | None = None,
    lock: str | None = None,
) -> StepRow:
    """Look a step up; ``lock`` is e.g. ``"FOR UPDATE OF s NOWAIT"``."""
    query = STEP_SELECT + (f" {lock}" if lock else "")
    cursor = psycopg.RawCursor(conn, row_factory=dict_row)
    row = cursor.execute(query, (path.collection, path.run, path.name)).fetchone()
    if row is None:
        missing = cursor.execute(MISSING_SELECT, (path.collection, path.run)).fetchone()
        raise step_not_found(path, missing)
    step = step_from_row(row)
    if expected is not None and step.step_type != expected:
        raise MatchboxStepTypeError(path, step.step_type, expected)
    return step


SYSTEM = BackendResourceType.SYSTEM.value
