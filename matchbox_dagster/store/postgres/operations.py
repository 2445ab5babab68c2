"""Declarations of the store's operations: who may call each, and how it is retried.

Every public method of :class:`~matchbox_dagster.store.postgres.adapter.MatchboxPostgres` is
declared with :func:`operation`, e.g.::

    @operation(WRITE.on_path("path"), retry=Retry.when_done(MatchboxStepAlreadyExists))
    def create_step(self, step: Step, path: StepPath) -> None: ...

The decorator, before the body runs, checks the declared permission (when
``settings.authorisation`` is on) on the resource it names: the system, the collection given by
an argument, or the collection of a step-path argument. The whole call — check and body — runs
under :meth:`Database.retry` with the declared policy; a store call made inside another runs
inside its caller's retries, so attempts never multiply.

Where a permission genuinely depends on the data (the caller acting for themself), the rule is
declared as :func:`decided_in_body` with its reason, and the body checks it; calls that need no
permission are declared :func:`public`, with the reason.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from matchbox_dagster.common.dtos import BackendResourceType, PermissionType
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxNotFoundError,
    MatchboxStepCollectionNotFound,
    MatchboxStepExistingData,
    MatchboxStepNotFoundError,
)

F = TypeVar("F", bound=Callable[..., Any])

SYSTEM = BackendResourceType.SYSTEM.value


@dataclass(frozen=True)
class Need:
    """The permission a call needs, and where the resource comes from.

    ``kind`` says where the resource comes from: ``"system"`` (the whole store), ``"name"``
    (the argument is a collection name, or ``"system"``), ``"path"`` (each argument is a step
    path, or a list of them: their collections). A ``"public"`` or ``"body"`` need has no
    permission, only its ``reason``.
    """

    permission: PermissionType | None
    kind: str
    arguments: tuple[str, ...] = ()
    reason: str = ""
    read_unless: str | None = None

    def resources(self, bound: inspect.BoundArguments) -> list[str]:
        """The resources to check, from a call's bound arguments (in order, once each)."""
        if self.kind == "system":
            return [SYSTEM]
        found: list[str] = []
        for name in self.arguments:
            value = bound.arguments[name]
            items = value if isinstance(value, list | tuple) else [value]
            for item in items:
                found.append(str(item) if self.kind == "name" else item.collection)
        return list(dict.fromkeys(found))

    def missing(self, bound: inspect.BoundArguments, collection: str) -> MatchboxStepNotFoundError:
        """The step-not-found error for a path argument whose collection does not exist."""
        paths = [
            item
            for name in self.arguments
            for item in (
                bound.arguments[name]
                if isinstance(bound.arguments[name], list | tuple)
                else [bound.arguments[name]]
            )
            if item.collection == collection
        ]
        return MatchboxStepCollectionNotFound(paths[0], collection)

    def permission_for(self, bound: inspect.BoundArguments) -> PermissionType:
        """The permission to check (READ when a ``read_unless`` argument is false)."""
        assert self.permission is not None
        if self.read_unless is not None and not bound.arguments[self.read_unless]:
            return PermissionType.READ
        return self.permission

    def __str__(self) -> str:
        if self.permission is None:
            return f"{self.kind}: {self.reason}"
        where = "system" if self.kind == "system" else f"{self.kind} {', '.join(self.arguments)}"
        extra = f" (READ when not {self.read_unless})" if self.read_unless else ""
        return f"{self.permission.value.upper()} on {where}{extra}"


@dataclass(frozen=True)
class _Level:
    """A permission level, from which needs are declared (``WRITE.on("collection")``)."""

    permission: PermissionType

    @property
    def on_system(self) -> Need:
        """The permission on the whole store."""
        return Need(self.permission, "system")

    def on(self, argument: str, *, read_unless: str | None = None) -> Need:
        """The permission on the collection named by ``argument`` (or the system).

        With ``read_unless``, READ is enough when that argument is false.
        """
        return Need(self.permission, "name", (argument,), read_unless=read_unless)

    def on_path(self, *arguments: str) -> Need:
        """The permission on the collection of each step path (or list of paths) argument."""
        return Need(self.permission, "path", arguments)


READ = _Level(PermissionType.READ)
WRITE = _Level(PermissionType.WRITE)
ADMIN = _Level(PermissionType.ADMIN)


def public(reason: str) -> Need:
    """No permission needed, because ``reason``."""
    return Need(None, "public", reason=reason)


def decided_in_body(reason: str) -> Need:
    """The permission depends on the data; the body checks it as ``reason`` says."""
    return Need(None, "body", reason=reason)


@dataclass(frozen=True)
class Retry:
    """How a call is run again after a transient database error.

    ``repeatable``: whether it may run again after an attempt's commit was lost (otherwise it
    raises ``CommitInDoubt``); ``done_if``: errors that, after a lost commit, mean the lost
    attempt had succeeded; ``database``: False for calls that touch no database (never retried).
    """

    repeatable: bool = True
    done_if: tuple[type[BaseException], ...] = field(default=())
    database: bool = True

    @classmethod
    def when_done(cls, *errors: type[BaseException]) -> Retry:
        """Retried; after a lost commit, ``errors`` mean the lost attempt had succeeded."""
        return cls(done_if=errors)

    def __str__(self) -> str:
        if not self.database:
            return "local (no database)"
        if not self.repeatable:
            return "once after a lost commit (CommitInDoubt)"
        if self.done_if:
            return "idempotent; done if " + ", ".join(e.__name__ for e in self.done_if)
        return "idempotent"


IDEMPOTENT = Retry()
"""Run again after transient errors (a repeat does the same work, or none)."""

NOT_REPEATABLE = Retry(repeatable=False)
"""Would do its work twice if run again after a lost commit: raises ``CommitInDoubt``."""

LOCAL = Retry(database=False)
"""Touches no database: not retried."""

GONE_IF_DONE = Retry.when_done(MatchboxNotFoundError)
"""A delete: after a lost commit, finding nothing means the lost attempt had deleted it."""

STORED_IF_DONE = Retry.when_done(MatchboxStepExistingData)
"""An insert: after a lost commit, finding the step's data (whose fingerprint the attempt had
checked) means the lost attempt had stored it."""


@dataclass(frozen=True)
class Operation:
    """A method's declaration: its name, permission rule and retry policy."""

    name: str
    need: Need
    retry: Retry


_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("matchbox_in_call", default=False)


def operation(need: Need, *, retry: Retry) -> Callable[[F], F]:
    """Declare a store method: authorise ``need`` before the body, run it under ``retry``.

    The instance provides ``_authorise(permission, resource)`` and ``db`` (for retries).
    """

    def declare(method: F) -> F:
        name = method.__name__
        signature = inspect.signature(method)

        def attempt(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if need.permission is not None:
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                permission = need.permission_for(bound)
                for resource in need.resources(bound):
                    try:
                        self._authorise(permission, resource)
                    except MatchboxCollectionNotFoundError:
                        if need.kind != "path":
                            raise
                        raise need.missing(bound, resource) from None
            return method(self, *args, **kwargs)

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not retry.database or _IN_CALL.get():
                return attempt(self, args, kwargs)
            token = _IN_CALL.set(True)
            try:
                return self.db.retry(
                    name,
                    lambda: attempt(self, args, kwargs),
                    done_if=retry.done_if,
                    repeatable=retry.repeatable,
                )
            finally:
                _IN_CALL.reset(token)

        call.__matchbox_operation__ = Operation(name, need, retry)  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return declare


def declaration(method: Any) -> Operation | None:
    """The :class:`Operation` declared on a method, if any."""
    return getattr(method, "__matchbox_operation__", None)


__all__ = [
    "ADMIN",
    "GONE_IF_DONE",
    "IDEMPOTENT",
    "LOCAL",
    "NOT_REPEATABLE",
    "READ",
    "STORED_IF_DONE",
    "WRITE",
    "Need",
    "Operation",
    "Retry",
    "decided_in_body",
    "declaration",
    "operation",
    "public",
]
