"""Errors no retry can mend fail at once, with a message naming the server (password hidden);
a server that stays away fails within the retry budget."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import psycopg
import pytest

from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxConnectionError,
    MatchboxDatabaseWriteError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.db import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    CommitInDoubt,
    backoff,
    classify,
)
from tests.faults.cluster import DATABASE, PASSWORD, PASSWORD_ROLE, Cluster, free_port

SECRET = "s3cret-in-the-uri"


def full_text(exc: BaseException) -> str:
    """The exception with its causes, as a traceback would print them."""
    return "".join(traceback.format_exception(exc))


def settings(uri: str, **more: object) -> MatchboxSettings:
    return MatchboxSettings(postgres_uri=uri, postgres_schema="f_permanent", **more)  # type: ignore[arg-type]


def test_unknown_database_fails_at_once(
    cluster: Cluster, retry_log: Callable[[], list[str]]
) -> None:
    uri = f"postgresql://postgres:{SECRET}@127.0.0.1:{cluster.port}/no_such_database"
    started = time.monotonic()
    with pytest.raises(MatchboxConnectionError) as info:
        MatchboxPostgres(settings(uri))
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert 'database "no_such_database" does not exist' in message
    assert f"postgresql://postgres:***@127.0.0.1:{cluster.port}/no_such_database" in message
    assert "not transient" in message
    assert SECRET not in full_text(info.value)
    assert retry_log() == []


def test_wrong_password_fails_at_once(cluster: Cluster, retry_log: Callable[[], list[str]]) -> None:
    wrong = f"postgresql://{PASSWORD_ROLE}:{SECRET}@127.0.0.1:{cluster.port}/{DATABASE}"
    started = time.monotonic()
    with pytest.raises(MatchboxConnectionError, match="password authentication failed") as info:
        MatchboxPostgres(settings(wrong))
    assert time.monotonic() - started < 2
    assert f"{PASSWORD_ROLE}:***@127.0.0.1:{cluster.port}" in str(info.value)
    assert SECRET not in full_text(info.value)
    assert retry_log() == []
    store = MatchboxPostgres(settings(wrong.replace(SECRET, PASSWORD)))  # the right one works
    try:
        assert PASSWORD not in repr(store)
        store.create_collection("with_password")
    finally:
        store.close()


def test_nothing_listening_fails_within_the_retry_budget(
    retry_log: Callable[[], list[str]],
) -> None:
    port = free_port()
    uri = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/{DATABASE}"
    started = time.monotonic()
    with pytest.raises(MatchboxConnectionError) as info:
        MatchboxPostgres(settings(uri, retries=10, retry_max_seconds=2.0))
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 3.0
    message = str(info.value)
    assert "connecting failed after" in message and "Connection refused" in message
    assert f"postgres:***@127.0.0.1:{port}" in message and SECRET not in full_text(info.value)
    assert "MATCHBOX_RETRY_MAX_SECONDS=2" in message
    assert len(retry_log()) >= 2


def test_server_down_longer_than_the_budget_then_back(
    cluster: Cluster, make_store: Callable[..., MatchboxPostgres]
) -> None:
    store = make_store(retries=3, retry_max_seconds=1.5)
    store.create_collection("down")
    cluster.stop()
    try:
        started = time.monotonic()
        with pytest.raises(MatchboxConnectionError, match="list_collections failed after"):
            store.list_collections()
        assert time.monotonic() - started < 2.5
    finally:
        cluster.start()
    assert store.list_collections() == ["down"]  # the same store works again


def test_database_errors_fail_at_once_and_name_the_server(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    retry_log: Callable[[], list[str]],
) -> None:
    store = make_store()
    schema = store.db.schema
    with cluster.admin() as conn:
        conn.execute(
            f"ALTER TABLE {schema}.collections ADD CONSTRAINT no_forbidden "
            "CHECK (name <> 'forbidden')"
        )
    started = time.monotonic()
    with pytest.raises(MatchboxDatabaseWriteError) as info:
        store.create_collection("forbidden")
    assert time.monotonic() - started < 1
    message = str(info.value)
    assert "create_collection" in message and "no_forbidden" in message
    assert "SQLSTATE 23514" in message and "nothing was changed" in message
    assert f"127.0.0.1:{cluster.port}" in message
    assert isinstance(info.value.__cause__, psycopg.errors.CheckViolation)
    assert store.list_collections() == []
    # Our own errors are final too.
    store.create_collection("allowed")
    with pytest.raises(MatchboxCollectionAlreadyExists):
        store.create_collection("allowed")
    assert retry_log() == []


# --- the policy itself ------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_and_capped() -> None:
    for attempt in range(1, 12):
        base = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1))
        waits = [backoff(attempt) for _ in range(200)]
        assert all(base / 2 <= w <= base for w in waits)
        assert len(set(waits)) > 100  # jittered


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (psycopg.errors.SerializationFailure("x"), "transient"),
        (psycopg.errors.DeadlockDetected("x"), "transient"),
        (psycopg.errors.AdminShutdown("x"), "transient"),
        (psycopg.errors.CrashShutdown("x"), "transient"),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), "transient"),
        (psycopg.errors.TooManyConnections("x"), "transient"),
        (psycopg.OperationalError("connection failed: Connection refused"), "transient"),
        (psycopg.OperationalError("server closed the connection unexpectedly"), "transient"),
        (psycopg.OperationalError('FATAL:  database "x" does not exist'), "refused"),
        (psycopg.OperationalError('password authentication failed for user "u"'), "refused"),
        (psycopg.OperationalError("no pg_hba.conf entry for host"), "refused"),
        (psycopg.errors.InvalidPassword("x"), "refused"),
        (psycopg.errors.UniqueViolation("x"), "database"),
        (psycopg.errors.DiskFull("x"), "database"),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "database"),
        (psycopg.errors.LockNotAvailable("x"), "database"),
        (CommitInDoubt("lost"), "transient"),
        (MatchboxCollectionAlreadyExists("x"), None),
        (ValueError("x"), None),
    ],
)
def test_classify(error: BaseException, fault: str | None) -> None:
    assert classify(error) == fault
