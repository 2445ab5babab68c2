"""Shared step data under failures and concurrency; snapshots and the migration keep it."""

from __future__ import annotations

import threading
import time

import pytest

from matchbox_dagster.common.dtos import WriteOutcome
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, data_refs, migrate, reuse
from matchbox_dagster.store.postgres.writes import Writes
from tests.conftest import own_schema_store
from tests.factories import store_state
from tests.store.test_reuse import MORE, ROWS, data_id, partitions, path, reads, source, write_run


class Injected(RuntimeError):
    """The failure we inject."""


def test_failure_after_sharing_leaves_store_as_before(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies after pointing its step at shared data keeps nothing."""
    write_run(store, collection, run)
    second = store.create_run(collection).run_id
    before = store_state(store)
    original = reuse.share

    def share_then_die(cur, step, shared):
        original(cur, step, shared)
        raise Injected("died after sharing")

    monkeypatch.setattr(reuse, "share", share_then_die)
    with pytest.raises(Injected):
        store.write_step(path(collection, second, "people"), *source(ROWS))
    assert store_state(store) == before
    monkeypatch.setattr(reuse, "share", original)
    outcome = store.write_step(path(collection, second, "people"), *source(MORE))
    assert outcome == WriteOutcome.STORED


def test_failed_replace_of_a_shared_step_keeps_both_runs(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing a shared step dies mid-load: both runs read as before."""
    first, _ = write_run(store, collection, run)
    second, _ = write_run(store, collection, store.create_run(collection).run_id)
    expected = reads(store, first)
    before = store_state(store)

    def die(self, cur, name, data, *, temporary=False):
        raise Injected("died during the load")

    monkeypatch.setattr(Writes, "_ingest", die)
    with pytest.raises(Injected):
        store.write_step(second["people"], *source(MORE))
    assert store_state(store) == before
    assert reads(store, first) == expected == reads(store, second)


def test_failed_delete_drops_nothing(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run delete that dies after releasing the data keeps the run and its partitions."""
    first, _ = write_run(store, collection, run)
    before = store_state(store)
    original = data_refs.release

    def release_then_die(cur, schema, held):
        assert original(cur, schema, held)  # dropped the run's partitions
        raise Injected("died after dropping")

    monkeypatch.setattr(data_refs, "release", release_then_die)
    with pytest.raises(Injected):
        store.delete_run(collection, run, certain=True)
    assert store_state(store) == before
    assert store.query(first["people"], first["resolve"]).num_rows == 3


def test_delete_waits_for_a_writer_sharing_its_data(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner run is deleted while another run's write shares its data: the data stays."""
    first, _ = write_run(store, collection, run)
    owned = data_id(store, first["people"])
    second = store.create_run(collection).run_id
    shared = threading.Event()
    original = reuse.share

    def slow_share(cur, step, data):
        original(cur, step, data)
        shared.set()
        time.sleep(1.0)  # the delete arrives while this write holds the row it shares

    monkeypatch.setattr(reuse, "share", slow_share)
    outcomes: list[object] = []
    target = path(collection, second, "people")
    writer = threading.Thread(
        target=lambda: outcomes.append(store.write_step(target, *source(ROWS)))
    )
    writer.start()
    assert shared.wait(30)
    store.delete_run(collection, run, certain=True)  # waits for the writer's commit
    writer.join(30)
    assert outcomes == [WriteOutcome.SHARED]
    assert data_id(store, target) == owned
    assert store.query(target).num_rows == 3


def test_writer_after_a_deleting_owner_stores_its_own(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that finds the data it would share being deleted waits, then stores a copy."""
    write_run(store, collection, run)
    second = store.create_run(collection).run_id
    dropping = threading.Event()
    original = data_refs.release

    def slow_release(cur, schema, held):
        dropped = original(cur, schema, held)
        dropping.set()
        time.sleep(1.0)  # the write arrives while the delete is uncommitted
        return dropped

    monkeypatch.setattr(data_refs, "release", slow_release)
    deleter = threading.Thread(target=lambda: store.delete_run(collection, run, certain=True))
    deleter.start()
    assert dropping.wait(30)
    target = path(collection, second, "people")
    outcome = store.write_step(target, *source(ROWS))
    deleter.join(30)
    assert outcome == WriteOutcome.STORED
    assert store.query(target).num_rows == 3


def test_concurrent_deletes_of_the_last_users_drop_the_data(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs' shared steps deleted at once: the second delete sees the first, no leak.

    (Run deletes of one collection queue on its row anyway; step deletes lock only their run.)
    """
    first, _ = write_run(store, collection, run)
    second, _ = write_run(store, collection, store.create_run(collection).run_id)
    ids = {data_id(store, p) for p in first.values()}
    released = threading.Event()
    original = data_refs.release

    def slow_release(cur, schema, held):
        dropped = original(cur, schema, held)
        if not released.is_set():
            released.set()
            time.sleep(1.0)  # the other delete checks the counts meanwhile
        return dropped

    monkeypatch.setattr(data_refs, "release", slow_release)
    deleter = threading.Thread(target=lambda: store.delete_step(first["people"], certain=True))
    deleter.start()
    assert released.wait(30)
    store.delete_step(second["people"], certain=True)
    deleter.join(30)
    left = {int(p.rsplit("_", 1)[1]) for p in partitions(store)}
    assert not ids & left


def test_snapshots_keep_shared_data(settings: MatchboxSettings, tmp_path) -> None:
    """Shared partitions (one whose first owner is gone too) round-trip; sharing goes on."""
    with own_schema_store(settings) as store:
        store.create_collection("alpha")
        runs = [store.create_run("alpha").run_id for _ in range(3)]
        graphs = [write_run(store, "alpha", r)[0] for r in runs]
        store.delete_run("alpha", runs[0], certain=True)
        expected = [reads(store, g) for g in graphs[1:]]
        snapshot = store.dump()
        store.dump_to(tmp_path / "snap")
        for restore in (
            lambda: store.restore(snapshot),
            lambda: store.restore_from(tmp_path / "snap"),
        ):
            store.clear(certain=True)
            restore()
            assert [reads(store, g) for g in graphs[1:]] == expected
            assert data_id(store, graphs[1]["people"]) == data_id(store, graphs[2]["people"])
            _, outcomes = write_run(store, "alpha", store.create_run("alpha").run_id)
            assert set(outcomes.values()) == {WriteOutcome.SHARED}


def test_downgrade_refuses_shared_data(settings: MatchboxSettings) -> None:
    """Below 0006 a step cannot share data: refused while one does, fine once none does."""
    with own_schema_store(settings) as store:
        store.create_collection("alpha")
        runs = [store.create_run("alpha").run_id for _ in range(2)]
        for r in runs:
            write_run(store, "alpha", r)
        engine, schema = store.db.engine, store.db.schema
        with pytest.raises(Exception, match="share another"):
            migrate.downgrade(engine, schema, "0005")
        assert migrate.current_revision(engine, schema) == migrate.HEAD
        store.delete_run("alpha", runs[1], certain=True)
        migrate.downgrade(engine, schema, "0005")
        migrate.upgrade(engine, schema)
        assert migrate.current_revision(engine, schema) == migrate.HEAD
        store.db.dispose()
        graph, outcomes = write_run(store, "alpha", store.create_run("alpha").run_id)
        assert set(outcomes.values()) == {WriteOutcome.SHARED}
        assert store.query(graph["people"], graph["resolve"]).num_rows == 3
