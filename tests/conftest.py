"""Shared fixtures: a real PostgreSQL store in a throwaway schema per test session.

Tests use ``MATCHBOX_POSTGRES_URI`` when set, else the server every machine (and CI) has on
127.0.0.1:5432 with trust auth and a database named ``test``. A missing server is a failure,
never a skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.postgres import MatchboxPostgres

DEFAULT_TEST_URI = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_uri() -> str:
    """The PostgreSQL server tests run against."""
    return os.environ.get("MATCHBOX_POSTGRES_URI") or DEFAULT_TEST_URI


def drop_schema(schema: str) -> None:
    """Drop a throwaway schema and everything in it.

    A whole test session leaves thousands of partitions; dropping them in one statement takes
    a lock per relation and can exhaust the server's lock table (``max_locks_per_transaction``
    × connections, 6,400 by default). So tables go first, 200 per transaction, then the
    schema. (A schema left behind is not harmless: ADBC reads all of ``pg_type`` on connect,
    ~0.3 s per connection with 7,000 types against 0.03 s.)
    """
    ident = psycopg.sql.Identifier(schema)
    with psycopg.connect(postgres_uri(), autocommit=True) as conn:
        partitions = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relispartition",
                (schema,),
            )
        ]
        for start in range(0, len(partitions), 200):
            with conn.transaction():
                for name in partitions[start : start + 200]:
                    conn.execute(
                        psycopg.sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
                            ident, psycopg.sql.Identifier(name)
                        )
                    )
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))


@contextlib.contextmanager
def own_schema_store(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """A store in a fresh schema of its own (empty shared tables), dropped on exit."""
    own = settings.model_copy(update={"postgres_schema": f"mbt_{uuid.uuid4().hex[:10]}"})
    store = MatchboxPostgres(own)
    try:
        yield store
    finally:
        store.close()
        drop_schema(own.postgres_schema)


@pytest.fixture(scope="session")
def settings() -> Iterator[MatchboxSettings]:
    """Settings for a store in this session's own schema (dropped at the end)."""
    schema = f"mbt_{uuid.uuid4().hex[:10]}"
    yield MatchboxSettings(postgres_uri=postgres_uri(), postgres_schema=schema, batch_size=1000)
    drop_schema(schema)


@pytest.fixture(scope="session")
def store(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """The session's store."""
    adapter = MatchboxPostgres(settings)
    yield adapter
    adapter.close()


@pytest.fixture
def collection(store: MatchboxPostgres) -> str:
    """A fresh collection for one test."""
    name = f"c_{uuid.uuid4().hex[:10]}"
    store.create_collection(name)
    return name


@pytest.fixture
def run(store: MatchboxPostgres, collection: str) -> int:
    """A fresh mutable run of the test's collection."""
    return store.create_run(collection).run_id


@pytest.fixture(scope="session")
def mb_resource(settings: MatchboxSettings) -> MatchboxResource:
    """The matchbox resource pointing at the session's store schema."""
    assert settings.postgres_uri is not None
    return MatchboxResource(
        postgres_uri=settings.postgres_uri.get_secret_value(),
        postgres_schema=settings.postgres_schema,
    )


@pytest.fixture(scope="session")
def mb_store(mb_resource: MatchboxResource) -> MatchboxPostgres:
    """The store the resource gives the assets (the same adapter object)."""
    return mb_resource.get_store()
