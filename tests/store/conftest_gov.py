"""Fixtures for the governance tests (auth, evaluation, admin): stores in their own schemas.

These tests clear, drop and restore whole stores, so they never share the session store.
Import the fixtures with ``from tests.store.conftest_gov import *``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest

from matchbox_dagster.common.dtos import (
    Group,
    Judgement,
    MatchboxSnapshot,
    PermissionGrant,
    PermissionType,
    QueryConfig,
    StepPath,
    User,
)
from matchbox_dagster.common.settings import DatastoreSettings, MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.conftest import drop_schema, postgres_uri
from tests.factories import add_model, add_resolver, add_source, leaf_of

__all__ = [
    "Cached",
    "Guarded",
    "Populated",
    "_guarded_pair",
    "gov",
    "gov_backend",
    "guarded",
    "moto_s3",
    "populate",
    "sql",
]


def _settings(**extra: object) -> MatchboxSettings:
    schema = f"mbt_{uuid.uuid4().hex[:10]}"
    return MatchboxSettings(
        postgres_uri=postgres_uri(), postgres_schema=schema, batch_size=1000, **extra
    )


@pytest.fixture(scope="module")
def gov_backend() -> Iterator[MatchboxPostgres]:
    """A store in its own schema for one test module (authorisation off)."""
    adapter = MatchboxPostgres(_settings())
    yield adapter
    adapter.close()
    drop_schema(adapter.db.schema)


@pytest.fixture
def gov(gov_backend: MatchboxPostgres) -> MatchboxPostgres:
    """The module's store, cleared: only the default groups and grant."""
    gov_backend.clear(certain=True)
    return gov_backend


@dataclass(frozen=True)
class Cached:
    """A populated store's snapshot and what :func:`populate` returned for it."""

    data: Populated
    snapshot: MatchboxSnapshot

    def restore_into(self, store: MatchboxPostgres) -> Populated:
        """Clear ``store`` and load the populated state (much faster than populating)."""
        store.clear(certain=True)
        store.restore(self.snapshot)
        return self.data


def cache_populated(
    store: MatchboxPostgres, extra: Callable[[MatchboxPostgres, Populated], None] | None = None
) -> Cached:
    """Populate a cleared ``store`` once (plus ``extra``) and keep its snapshot."""
    store.clear(certain=True)
    data = populate(store)
    if extra is not None:
        extra(store, data)
    return Cached(data, store.dump())


@dataclass
class Guarded:
    """One schema seen twice: ``open`` (authorisation off, for set-up) and ``store`` (on)."""

    open: MatchboxPostgres
    store: MatchboxPostgres


@pytest.fixture(scope="module")
def _guarded_pair() -> Iterator[Guarded]:
    settings = _settings()
    open_store = MatchboxPostgres(settings)
    store = MatchboxPostgres(settings.model_copy(update={"authorisation": True}))
    yield Guarded(open_store, store)
    store.close()
    open_store.close()
    drop_schema(settings.postgres_schema)


@pytest.fixture
def guarded(_guarded_pair: Guarded) -> Guarded:
    """A cleared store with authorisation on, and an unguarded view of it."""
    _guarded_pair.open.clear(certain=True)
    return _guarded_pair


def sql(store: MatchboxPostgres, query: str, params: tuple = ()) -> list[tuple]:
    """Run SQL in the store's schema (autocommit); rows if any."""
    with psycopg.connect(store.db.uri, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(store.db.schema))
        )
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@dataclass
class Populated:
    """Paths and ids of the data :func:`populate` made."""

    collection: str
    run: int
    crm: StepPath
    erp: StepPath
    r_crm: StepPath
    r_all: StepPath
    link: StepPath
    draft_run: int
    lc: dict[str, int]
    le: dict[str, int]


def populate(store: MatchboxPostgres) -> Populated:
    """Users, a group, grants, two collections, sources, models, resolvers and judgements."""
    store.login(User(user_name="alice", email="alice@example.com"))  # first user: admin
    store.login(User(user_name="bob"))
    store.create_group(
        Group(name="analysts", description="Reads companies", members=[User(user_name="bob")])
    )
    collection = "companies"
    store.create_collection(
        collection, [PermissionGrant(group_name="analysts", permission=PermissionType.READ)]
    )
    run = store.create_run(collection).run_id
    crm = add_source(
        store,
        collection,
        run,
        "crm",
        {"acme": ["c1"], "acme ltd": ["c2"], "beta": ["c3"], "gamma": ["c4"], "acme co": ["c5"]},
    )
    erp = add_source(
        store, collection, run, "erp", {"acme": ["e1"], "beta inc": ["e2"], "delta": ["e3"]}
    )
    lc, le = leaf_of(store, crm), leaf_of(store, erp)
    add_model(
        store,
        collection,
        run,
        "dedupe_crm",
        [(lc["c1"], lc["c2"], 0.9), (lc["c2"], lc["c5"], 0.8), (lc["c3"], lc["c4"], 0.1)],
        QueryConfig(sources=("crm",)),
    )
    r_crm = add_resolver(
        store, collection, run, "r_crm", [[lc["c1"], lc["c2"], lc["c5"]]], ("dedupe_crm",)
    )
    link = add_model(
        store,
        collection,
        run,
        "link",
        [(lc["c3"], le["e2"], 0.95), (lc["c4"], le["e3"], 0.3)],
        QueryConfig(sources=("crm",), resolver="r_crm"),
        QueryConfig(sources=("erp",)),
    )
    r_all = add_resolver(store, collection, run, "r_all", [[lc["c3"], le["e2"]]], ("link",))
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)
    draft_run = store.create_run(collection).run_id
    add_source(store, collection, draft_run, "crm", {"acme": ["c1"], "zeta": ["c9"]})
    store.create_collection("people")
    store.create_run("people")
    store.insert_judgement(
        "alice",
        Judgement(
            shown=[lc["c1"], lc["c2"], lc["c5"]],
            endorsed=[[lc["c1"], lc["c2"]], [lc["c5"]]],
            tag="round-1",
        ),
    )
    store.insert_judgement(
        "bob", Judgement(shown=[lc["c3"], le["e2"]], endorsed=[[lc["c3"], le["e2"]]])
    )
    return Populated(collection, run, crm, erp, r_crm, r_all, link, draft_run, lc, le)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[DatastoreSettings]:
    """A real S3-compatible server (moto) on loopback, and datastore settings for it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield DatastoreSettings(
            host="127.0.0.1",
            port=port,
            access_key_id="testing",
            secret_access_key="testing",
            default_region="us-east-1",
            cache_bucket_name="snapshots",
        )
    finally:
        server.stop()
