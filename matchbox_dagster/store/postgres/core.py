"""Shared plumbing of the PostgreSQL adapter: connections, step lookups, permission hook, retries.

Every public method of the adapter is one unit of work — one transaction, or a sequence of
idempotent ones — and runs under :meth:`Database.retry`: after a transient database error (lost
connection, server restarting, serialization failure, deadlock) the *whole* call runs again, never
a part of a transaction. :class:`PostgresCore` applies this to the public methods of every mixin
when the class is defined; a store call made inside another (e.g. the permission check) runs
inside its caller's retries, so attempts never multiply.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from matchbox_dagster.common.dtos import (
    BackendResourceType,
    DefaultUser,
    PermissionType,
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxCollectionNotFoundError,
    MatchboxGroupAlreadyExistsError,
    MatchboxNotFoundError,
    MatchboxPermissionDenied,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepAlreadyExists,
    MatchboxStepExistingData,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
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

    def path(self) -> StepPath:
        """The step's path."""
        return StepPath(collection=self.collection, run=self.run_id, name=self.name)


STEP_SELECT = """
SELECT s.step_id, s.run_id, r.collection_id, c.name AS collection, s.name, s.step_type,
       s.upload_stage, s.fingerprint, s.config::text AS config, s.description,
       r.is_mutable, r.is_default
FROM steps s JOIN runs r USING (run_id) JOIN collections c USING (collection_id)
WHERE c.name = $1 AND s.run_id = $2 AND s.name = $3
"""
"""A step with its run and collection, by path (``$n`` placeholders: psycopg's RawCursor and
ADBC share it; the config comes back as JSON text)."""


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
    )


# --- retries of whole calls -------------------------------------------------------------------

DONE_IF_COMMIT_LOST: dict[str, tuple[type[BaseException], ...]] = {
    "create_collection": (MatchboxCollectionAlreadyExists,),
    "create_step": (MatchboxStepAlreadyExists,),
    "create_group": (MatchboxGroupAlreadyExistsError,),
    "insert_source_data": (MatchboxStepExistingData,),
    "insert_model_data": (MatchboxStepExistingData,),
    "insert_resolver_data": (MatchboxStepExistingData,),
    "delete_collection": (MatchboxNotFoundError,),
    "delete_run": (MatchboxNotFoundError,),
    "delete_step": (MatchboxNotFoundError,),
    "delete_group": (MatchboxNotFoundError,),
}
"""Calls whose repeat, after an attempt was cut off while committing, raises these errors
exactly when that attempt had succeeded (an insert whose step now holds data — with the declared
fingerprint, which the attempt had checked — a create that finds its object, a delete that does
not): the call then returns normally."""

NOT_REPEATABLE = frozenset({"create_run", "insert_judgement"})
"""Calls that would do their work twice if run again after an attempt was cut off while
committing (a second run, a second judgement): they fail with ``CommitInDoubt`` instead."""

NOT_RETRIED = frozenset({"as_user", "close"})
"""Public methods that do not touch the database."""

_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("matchbox_in_call", default=False)


def retried(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run as one unit under :meth:`Database.retry` (unless inside another call)."""

    @functools.wraps(method)
    def call(self: PostgresCore, *args: Any, **kwargs: Any) -> Any:
        if _IN_CALL.get():
            return method(self, *args, **kwargs)
        token = _IN_CALL.set(True)
        try:
            return self.db.retry(
                name,
                lambda: method(self, *args, **kwargs),
                done_if=DONE_IF_COMMIT_LOST.get(name, ()),
                repeatable=name not in NOT_REPEATABLE,
            )
        finally:
            _IN_CALL.reset(token)

    call.__matchbox_retried__ = True  # type: ignore[attr-defined]
    return call


class PostgresCore:
    """Base of the adapter mixins: settings, database and acting user.

    Subclasses' public methods are wrapped with :func:`retried` when the class is defined.
    """

    settings: MatchboxSettings
    db: Database
    _acting_user: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if (
                name.startswith("_")
                or name in NOT_RETRIED
                or not callable(value)
                or isinstance(value, staticmethod | classmethod | type)
                or getattr(value, "__matchbox_retried__", False)
            ):
                continue
            setattr(cls, name, retried(name, value))

    def as_user(self, user_name: str | None) -> Self:
        """A view of this store whose calls act on behalf of ``user_name``.

        With ``settings.authorisation`` on, each call checks that one of the user's groups holds
        the permission it needs; a call without an acting user acts as the public user.
        """
        view = copy.copy(self)
        view._acting_user = user_name
        return view

    def _authorise(self, permission: PermissionType, resource: str) -> None:
        """Raise :class:`MatchboxPermissionDenied` unless the acting user may do this."""
        if not self.settings.authorisation:
            return
        user = self._acting_user or DefaultUser.PUBLIC.value
        if not self.check_permission(user, permission, resource):  # type: ignore[attr-defined]
            raise MatchboxPermissionDenied(user, permission, resource)

    # --- lookups (psycopg, inside a caller's transaction) -----------------------------------

    @staticmethod
    def _cursor(conn: psycopg.Connection) -> psycopg.Cursor[dict[str, Any]]:
        return conn.cursor(row_factory=dict_row)

    def _collection_id(
        self, conn: psycopg.Connection, name: str, *, for_update: bool = False
    ) -> int:
        query = "SELECT collection_id FROM collections WHERE name = %s"
        if for_update:
            query += " FOR UPDATE"
        row = conn.execute(query, (name,)).fetchone()
        if row is None:
            raise MatchboxCollectionNotFoundError(name)
        return int(row[0])

    def _run_row(
        self, conn: psycopg.Connection, collection: str, run_id: int, *, for_update: bool = False
    ) -> dict[str, Any]:
        collection_id = self._collection_id(conn, collection)
        query = (
            "SELECT run_id, collection_id, is_mutable, is_default FROM runs "
            "WHERE collection_id = %s AND run_id = %s"
        )
        if for_update:
            query += " FOR UPDATE"
        row = self._cursor(conn).execute(query, (collection_id, run_id)).fetchone()
        if row is None:
            raise MatchboxRunNotFoundError(collection, run_id)
        return row

    def _writable_run(
        self, conn: psycopg.Connection, collection: str, run_id: int, action: str
    ) -> dict[str, Any]:
        run = self._run_row(conn, collection, run_id, for_update=True)
        if not run["is_mutable"]:
            raise MatchboxRunNotWriteable(collection, run_id, action)
        return run

    def _step_row(
        self,
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
            self._run_row(conn, path.collection, path.run)  # a clearer error if run/collection
            raise MatchboxStepNotFoundError(path)
        step = step_from_row(row)
        if expected is not None and step.step_type != expected:
            raise MatchboxStepTypeError(path, step.step_type, expected)
        return step

    def _drop_partitions(self, conn: psycopg.Connection, steps: list[tuple[int, str]]) -> None:
        """Drop the data partitions of ``steps`` (``(step_id, step_type)`` pairs)."""
        for step_id, step_type in steps:
            name = partition_name(StepType(step_type), step_id)
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.db.schema, name))
            )


SYSTEM = BackendResourceType.SYSTEM.value
