"""``match`` by index probes (source_index): the bulk query's answers, no scans, migration 0007;
the inserts build no lookup index, ``index_for_match`` does (once per data partition)."""

from __future__ import annotations

import random

import psycopg
import pytest

from matchbox_dagster.common.dtos import QueryConfig, StepPath, StepType, WriteOutcome
from matchbox_dagster.common.errors import (
    MatchboxStepNotFoundError,
    MatchboxStepNotQueriable,
    MatchboxStepTypeError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, core, migrate, reads, source_index
from matchbox_dagster.store.postgres.core import partition_name
from matchbox_dagster.store.postgres.db import compose
from tests.conftest import own_schema_store
from tests.factories import add_model, add_resolver, add_source, ids_of, leaf_of
from tests.store.test_write_step import source, write_graph

ROWS = 20_000
"""Keys of source ``a``: enough pages that a lookup without an index is a sequential scan."""


def _world(store: MatchboxPostgres, collection: str, run: int) -> dict:
    """Source ``a`` (20k rows, every tenth with a second key), ``b`` (5k rows, one in two
    identical to a row of ``a``), linked, and a resolver putting a third of the leaves in
    clusters of 2–5."""
    a_rows = {f"r{i}": [f"a{i}"] + ([f"a{i}x"] if i % 10 == 0 else []) for i in range(ROWS)}
    b_rows = {f"r{i}" if i % 8 == 0 else f"s{i}": [f"b{i}"] for i in range(0, ROWS, 4)}
    a = add_source(store, collection, run, "a", a_rows)
    b = add_source(store, collection, run, "b", b_rows)
    la, lb = leaf_of(store, a), leaf_of(store, b)
    leaves = sorted(set(la.values()) | set(lb.values()))
    rng = random.Random(7)
    rng.shuffle(leaves)
    clusters, i = [], 0
    while i < len(leaves) // 3:
        size = rng.randint(2, 5)
        clusters.append(leaves[i : i + size])
        i += size
    only_a, only_b = set(la.values()) - set(lb.values()), set(lb.values()) - set(la.values())
    edges = {(x, y, 0.9) for c in clusters for x in c for y in c if x in only_a and y in only_b}
    add_model(
        store,
        collection,
        run,
        "link",
        sorted(edges),
        QueryConfig(sources=("a",)),
        QueryConfig(sources=("b",)),
    )
    r = add_resolver(store, collection, run, "r", clusters, ("link",))
    return {"a": a, "b": b, "r": r}


@pytest.fixture
def world(store: MatchboxPostgres, collection: str, run: int) -> dict:
    """The world, with match's lookup indexes built on both sources."""
    built = _world(store, collection, run)
    assert store.index_for_match(built["a"]) and store.index_for_match(built["b"])
    return built


def _data_id(store: MatchboxPostgres, path: StepPath) -> int:
    with store.db.connection() as conn:
        return core.step_row(conn, path).data_id


def test_match_answers_as_the_bulk_query_does(store: MatchboxPostgres, world: dict) -> None:
    a, b, r = world["a"], world["b"], world["r"]
    ids = {"a": ids_of(store, a, r), "b": ids_of(store, b, r)}
    by_id: dict[str, dict[int, set[str]]] = {"a": {}, "b": {}}
    for name, keys in ids.items():
        for key, entity in keys.items():
            by_id[name].setdefault(entity, set()).add(key)
    rng = random.Random(3)
    clustered = [
        k for k, e in ids["a"].items() if len(by_id["a"][e] | by_id["b"].get(e, set())) > 1
    ]
    sample = [("a", "b", k) for k in rng.sample(clustered, 40) + rng.sample(sorted(ids["a"]), 20)]
    sample += [("b", "a", k) for k in rng.sample(sorted(ids["b"]), 20)]
    assert any(len(by_id["a"][ids["a"][k]]) > 1 for _, _, k in sample)
    for src, tgt, key in sample:
        found, same = store.match(key, world[src], [world[tgt], world[src]], r)
        entity = ids[src][key]
        assert found.cluster == same.cluster == entity
        assert found.source_id == same.source_id == by_id[src][entity]
        assert found.target_id == by_id[tgt].get(entity, set())
        assert same.target_id == by_id[src][entity]
    [missing] = store.match("a-missing", a, [b], r)
    assert missing.cluster is None and missing.source_id == set() == missing.target_id


def _plan(conn: psycopg.Connection, statement: str, params: dict) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement, params))


def _probes_key_hash(store: MatchboxPostgres, spart: str) -> bool:
    """Whether match's key lookup in partition ``spart`` probes its key-hash index."""
    lookup = compose(source_index.KEY_LOOKUP, schema=store.db.schema, part=spart)
    with psycopg.connect(store.db.uri) as conn:
        plan = _plan(conn, lookup, {"key": "a5"})
    return f"Index Scan on {spart}_key_hash" in plan or f"using {spart}_key_hash" in plan


def test_the_insert_builds_no_lookup_index_and_index_for_match_does(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    world = _world(store, collection, run)
    a, b, r = world["a"], world["b"], world["r"]
    parts = {p: partition_name(StepType.SOURCE, _data_id(store, world[p])) for p in ("a", "b")}
    for part in parts.values():
        assert not _indexes(store, part) & {f"{part}_key_hash", f"{part}_leaf"}
    assert not _probes_key_hash(store, parts["a"])
    keys = ("a0", "a0x", "a7", "a12", "a1999", "nobody")
    scanned = {k: store.match(k, a, [b, a], r) for k in keys}  # correct by scanning
    assert scanned["a0"][1].target_id == {"a0", "a0x"}
    assert store.index_for_match(a) is True
    assert _indexes(store, parts["a"]) >= {f"{parts['a']}_key_hash", f"{parts['a']}_leaf"}
    assert _probes_key_hash(store, parts["a"])
    assert store.index_for_match(a) is False  # idempotent: present already
    assert store.index_for_match(b) is True
    assert {k: store.match(k, a, [b, a], r) for k in keys} == scanned


def test_index_for_match_works_on_the_data_partition_and_raises_typed_errors(
    store: MatchboxPostgres, collection: str
) -> None:
    first, second = (store.create_run(collection).run_id for _ in range(2))
    step, hashes = source({f"k{i}": [str(i)] for i in range(50)})
    p1, p2 = (StepPath(collection=collection, run=n, name="people") for n in (first, second))
    assert store.write_step(p1, step, hashes) == WriteOutcome.STORED
    assert store.write_step(p2, step, hashes) == WriteOutcome.SHARED
    assert _data_id(store, p2) == _data_id(store, p1)
    assert store.index_for_match(p2) is True  # builds on the shared partition, p1's
    assert store.index_for_match(p1) is False
    with pytest.raises(MatchboxStepNotFoundError):
        store.index_for_match(StepPath(collection=collection, run=first, name="nobody"))
    empty = StepPath(collection=collection, run=first, name="empty")
    store.create_step(source({"x": ["1"]}, "empty")[0], empty)
    with pytest.raises(MatchboxStepNotQueriable):  # declared, no data yet
        store.index_for_match(empty)
    graph = write_graph(store, collection, store.create_run(collection).run_id)
    with pytest.raises(MatchboxStepTypeError):
        store.index_for_match(graph["model"])


def test_every_lookup_of_match_is_an_index_probe(store: MatchboxPostgres, world: dict) -> None:
    schema = store.db.schema
    spart = partition_name(StepType.SOURCE, _data_id(store, world["a"]))
    rpart = partition_name(StepType.RESOLVER, _data_id(store, world["r"]))
    leaf = leaf_of(store, world["a"])["a5"]
    lookup = compose(source_index.KEY_LOOKUP, schema=schema, part=spart)
    with psycopg.connect(store.db.uri) as conn:
        # The key lookup on a fresh partition (no statistics yet), as match runs it.
        plan = _plan(conn, lookup, {"key": "a5"})
        assert f"Index Scan on {spart}_key_hash" in plan or f"using {spart}_key_hash" in plan
        assert "Seq Scan" not in plan, plan
        # Without the index, the planner would scan the whole partition.
        conn.execute(compose("DROP INDEX {schema}.{ix}", schema=schema, ix=f"{spart}_key_hash"))
        assert "Seq Scan" in _plan(conn, lookup, {"key": "a5"})
        conn.rollback()
        # match's other statements, under match's settings: no sequential scan anywhere.
        conn.execute(reads._PROBES_ONLY)
        plans = {
            "leaf keys": _plan(
                conn,
                compose(source_index.LEAF_KEYS, schema=schema, part=spart),
                {"leaves": [leaf, leaf + 1]},
            ),
            "root of leaf": _plan(
                conn, compose(reads._ROOT_OF_LEAF, schema=schema, part=rpart), {"leaf": leaf}
            ),
            "leaves of root": _plan(
                conn, compose(reads._LEAVES_OF_ROOT, schema=schema, part=rpart), {"root": leaf}
            ),
        }
        assert f"{spart}_leaf " in plans["leaf keys"], plans
        assert all("Seq Scan" not in p for p in plans.values()), plans
        conn.rollback()


def _indexes(store: MatchboxPostgres, part: str) -> set[str]:
    with psycopg.connect(store.db.uri) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                (store.db.schema, part),
            )
        }


def test_migration_0007_indexes_partitions_stored_before_it(settings: MatchboxSettings) -> None:
    with own_schema_store(settings) as own:
        own.create_collection("c")
        run = own.create_run("c").run_id
        world = _world(own, "c", run)
        a, b, r = world["a"], world["b"], world["r"]
        before = {k: own.match(k, a, [b], r) for k in ("a0", "a0x", "a7", "a12", "nobody")}
        parts = [partition_name(StepType.SOURCE, _data_id(own, p)) for p in (a, b)]
        wanted = {p: {f"{p}_key_hash", f"{p}_leaf"} for p in parts}
        engine, schema = own.db.engine, own.db.schema
        # Back to 0006: the source partitions are as a store before 0007 left them.
        migrate.downgrade(engine, schema, "0006")
        for part in parts:
            assert not _indexes(own, part) & wanted[part]
        assert {k: own.match(k, a, [b], r) for k in before} == before  # by scanning
        migrate.upgrade(engine, schema)
        assert migrate.current_revision(engine, schema) == migrate.HEAD
        for part in parts:
            assert _indexes(own, part) >= wanted[part]
        assert {k: own.match(k, a, [b], r) for k in before} == before
