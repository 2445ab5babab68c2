"""Fixtures of the hostile-input corpus: a populated store of its own, and "nothing changed".

The corpus needs a store whose whole content it can compare before and after each refused call,
so it does not share the session store's schema (other tests keep writing there): the store here
lives in its own schema on the session's server (same settings, another ``postgres_schema``),
is populated once, and tests that must change it (scratch steps) undo what they did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from matchbox_dagster.common.arrow import ResolverClusters
from matchbox_dagster.common.dtos import (
    Group,
    MatchboxSnapshot,
    ModelConfig,
    ModelType,
    PermissionType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    User,
)
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.conftest import own_schema_store
from tests.factories import (
    add_model,
    add_source,
    clusters_table,
    edges_table,
    leaf_of,
    model_step,
)
from tests.store.conftest_gov import Populated, populate
from tests.test_helpers_steps import declare_pending_source

READ, WRITE, ADMIN = PermissionType.READ, PermissionType.WRITE, PermissionType.ADMIN


@dataclass
class World:
    """The populated store (authorisation off), a guarded view of it, and what it holds."""

    store: MatchboxPostgres
    guarded: MatchboxPostgres
    data: Populated
    snapshot: MatchboxSnapshot
    draft_crm: StepPath
    pending_source: StepPath
    pending_model: StepPath
    pending_linker: StepPath
    pending_resolver: StepPath
    draft_model: StepPath
    frozen_source: StepPath
    other_crm: StepPath

    def path(self, name: str, run: int | None = None, collection: str | None = None) -> StepPath:
        return StepPath(
            collection=collection or self.data.collection,
            run=self.data.draft_run if run is None else run,
            name=name,
        )


def _extras(store: MatchboxPostgres, data: Populated) -> dict[str, StepPath]:
    """Steps without data in the draft run, an immutable run with an empty step, more users."""
    c, draft = data.collection, data.draft_run
    draft_crm = StepPath(collection=c, run=draft, name="crm")
    lc = leaf_of(store, draft_crm)
    # A model with data in the draft run, so a resolver step can be declared there.
    draft_model = add_model(
        store, c, draft, "draft_dedupe", [(lc["c1"], lc["c9"], 0.7)], QueryConfig(sources=("crm",))
    )
    pending_source = StepPath(collection=c, run=draft, name="pending_src")
    declare_pending_source(store, pending_source)
    add_source(store, c, draft, "erp", {"acme": ["e1"], "beta inc": ["e2"]})
    pending_model = StepPath(collection=c, run=draft, name="pending_dedupe")
    store.create_step(
        model_step(edges_table([(lc["c1"], lc["c9"], 0.5)]), QueryConfig(sources=("crm",))),
        pending_model,
    )
    pending_linker = StepPath(collection=c, run=draft, name="pending_link")
    store.create_step(
        Step(
            step_type=StepType.MODEL,
            fingerprint=b"\x01" * 32,
            config=ModelConfig(
                type=ModelType.LINKER,
                model_class="Hostile",
                left_query=QueryConfig(sources=("crm",)),
                right_query=QueryConfig(sources=("erp",)),
            ),
        ),
        pending_linker,
    )
    pending_resolver = StepPath(collection=c, run=draft, name="pending_resolve")
    store.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=ResolverClusters(clusters_table([[lc["c1"], lc["c9"]]])).fingerprint,
            config=ResolverConfig(inputs=("draft_dedupe",)),
        ),
        pending_resolver,
    )
    # An immutable, non-default run holding a step without data.
    frozen = store.create_run(c).run_id
    frozen_source = StepPath(collection=c, run=frozen, name="late")
    declare_pending_source(store, frozen_source)
    store.set_run_mutable(c, frozen, False)
    # Another collection with data of its own (same rows as companies: shared leaves).
    other_run = store.get_collection("people").runs[0]
    other_crm = add_source(store, "people", other_run, "crm", {"acme": ["p1"], "zeta": ["p9"]})
    # carol may write to companies, dave administers people; eve is in no group but public.
    store.create_group(Group(name="writers", members=[User(user_name="carol")]))
    store.grant_permission("writers", WRITE, c)
    store.create_group(Group(name="people_admins", members=[User(user_name="dave")]))
    store.grant_permission("people_admins", ADMIN, "people")
    store.login(User(user_name="eve"))
    return {
        "draft_crm": draft_crm,
        "pending_source": pending_source,
        "pending_model": pending_model,
        "pending_linker": pending_linker,
        "pending_resolver": pending_resolver,
        "draft_model": draft_model,
        "frozen_source": frozen_source,
        "other_crm": other_crm,
    }


@pytest.fixture(scope="session")
def world(settings: MatchboxSettings) -> Iterator[World]:
    """A populated store in its own schema (see the module docstring)."""
    with throwaway_store(settings) as store:
        guarded = MatchboxPostgres(store.settings.model_copy(update={"authorisation": True}))
        try:
            data = populate(store)
            paths = _extras(store, data)
            yield World(store, guarded, data, store.dump(), **paths)
        finally:
            guarded.close()


@pytest.fixture
def w(world: World) -> World:
    """The world (short name for the many tests that use it)."""
    return world


# --- "nothing changed" ------------------------------------------------------------------------


_CONNECTIONS: dict[str, psycopg.Connection] = {}


def _conn(store: MatchboxPostgres) -> psycopg.Connection:
    """One autocommit connection per schema, kept for the session (observing is frequent)."""
    conn = _CONNECTIONS.get(store.db.schema)
    if conn is None or conn.closed:
        conn = _CONNECTIONS[store.db.schema] = psycopg.connect(store.db.uri, autocommit=True)
    return conn


def _forget(schema: str) -> None:
    conn = _CONNECTIONS.pop(schema, None)
    if conn is not None:
        conn.close()


def relations(store: MatchboxPostgres) -> list[tuple[str, str, str]]:
    """Every relation (table, partition, index, sequence, view) in the store's schema: a
    dropped or created object shows here even if it held no rows. (Not ``public``: other
    sessions share the database and create tables there.)"""
    return [
        (r[0], r[1], r[2])
        for r in _conn(store).execute(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s ORDER BY 1, 2",
            (store.db.schema,),
            prepare=True,
        )
    ]


_DIGESTS: dict[tuple[str, ...], sql.Composed] = {}


def table_digests(
    store: MatchboxPostgres, seen: list[tuple[str, str, str]] | None = None
) -> dict[str, str]:
    """Row count and digest of every table and partition of the schema (one statement), as
    ``tests.factories.store_state`` computes them."""
    seen = relations(store) if seen is None else seen
    tables = tuple(name for _, name, kind in seen if kind in ("r", "p"))
    if not tables:
        return {}
    query = _DIGESTS.get((store.db.schema, *tables))
    if query is None:
        query = _DIGESTS[(store.db.schema, *tables)] = sql.SQL(" UNION ALL ").join(
            sql.SQL(
                "SELECT {name}::text, (SELECT count(*) || ':' || coalesce(md5(string_agg("
                "t::text, '|' ORDER BY t::text)), '') FROM {table} t)"
            ).format(name=sql.Literal(t), table=sql.Identifier(store.db.schema, t))
            for t in tables
        )
    return dict(_conn(store).execute(query, prepare=True).fetchall())


def observe(store: MatchboxPostgres, *, full: bool = False) -> dict[str, Any]:
    """What "the store" is: every table's rows (a digest, as ``store_state``) and every
    relation of its schema; with ``full``, also its ``dump()`` (checksum aside, so two dumps of
    the same content compare equal)."""
    seen = relations(store)
    state: dict[str, Any] = {"tables": table_digests(store, seen), "relations": seen}
    if full:
        data = dict(store.dump().data)
        data.pop("sha256", None)
        state["dump"] = data
    return state


@contextlib.contextmanager
def unchanged(store: MatchboxPostgres, *, full: bool = False) -> Iterator[None]:
    """Assert that the block leaves the store exactly as it found it."""
    before = observe(store, full=full)
    yield
    after = observe(store, full=full)
    assert after["relations"] == before["relations"], "schema objects changed"
    assert after["tables"] == before["tables"], "rows changed"
    if full:
        assert after["dump"] == before["dump"], "dump() changed"


def refused(
    store: MatchboxPostgres,
    call: Callable[[], Any],
    error: type[BaseException] = MatchboxError,
    *,
    full: bool = False,
) -> BaseException:
    """Run ``call``; assert it raises ``error`` (a :class:`MatchboxError` unless said otherwise),
    never a raw driver or library error, and leaves the store unchanged. Returns the error."""
    with unchanged(store, full=full), pytest.raises(BaseException) as info:
        call()
    exc = info.value
    assert isinstance(exc, error), f"expected {error.__name__}, got {type(exc).__module__}." + (
        f"{type(exc).__name__}: {exc}"
    )
    if error is not TypeError:  # TypeError is what the contract asks of restore()
        assert isinstance(exc, MatchboxError), f"untyped {type(exc).__name__}: {exc}"
    assert str(exc).strip(), "an error without a message"
    assert len(str(exc)) < 5000, f"a message of {len(str(exc)):,} characters"
    return exc


def all_refused(
    store: MatchboxPostgres,
    calls: list[tuple[Callable[[], Any], type[BaseException]]],
    *,
    full: bool = False,
) -> list[BaseException]:
    """Several refusals in one "nothing changed" check: each call raises its typed error."""
    errors = []
    with unchanged(store, full=full):
        for call, error in calls:
            with pytest.raises(BaseException) as info:
                call()
            exc = info.value
            assert isinstance(exc, error) and isinstance(exc, MatchboxError), (
                f"expected {error.__name__}, got {type(exc).__module__}.{type(exc).__name__}: {exc}"
            )
            assert len(str(exc)) < 5000, f"a message of {len(str(exc)):,} characters"
            errors.append(exc)
    return errors


@contextlib.contextmanager
def throwaway_store(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """A store in a schema of its own, dropped (and forgotten) on exit."""
    with own_schema_store(settings) as store:
        try:
            yield store
        finally:
            _forget(store.db.schema)


@pytest.fixture(scope="session")
def _scratch_store(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    with throwaway_store(settings) as store:
        yield store


@pytest.fixture
def scratch(_scratch_store: MatchboxPostgres) -> MatchboxPostgres:
    """A store of its own for what must be stored verbatim (never cleared: tests keep to their
    own names, and a clear per test would cost more than the tests)."""
    return _scratch_store
