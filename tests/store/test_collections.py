"""Collections and runs: lifecycle, defaults and their database guarantees."""

from __future__ import annotations

import psycopg
import pytest

from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxCollectionNotFoundError,
    MatchboxDeletionNotConfirmed,
    MatchboxNameError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_source, store_state


def test_collection_lifecycle(store: MatchboxPostgres) -> None:
    store.create_collection("lifecycle")
    assert "lifecycle" in store.list_collections()
    got = store.get_collection("lifecycle")
    assert got.name == "lifecycle" and got.runs == [] and got.default_run is None
    with pytest.raises(MatchboxCollectionAlreadyExists):
        store.create_collection("lifecycle")
    run = store.create_run("lifecycle").run_id
    add_source(store, "lifecycle", run, "s", {"a": ["1"]})
    before = store_state(store)
    with pytest.raises(MatchboxDeletionNotConfirmed, match=f"run {run}"):
        store.delete_collection("lifecycle", certain=False)
    assert store_state(store) == before
    store.delete_collection("lifecycle", certain=True)
    assert "lifecycle" not in store.list_collections()
    with pytest.raises(MatchboxCollectionNotFoundError, match="lifecycle"):
        store.get_collection("lifecycle")
    # The source's data partition went with it.
    state = store_state(store)
    assert not any(name.startswith("source_rows_") for name in set(state) - set(before))
    assert (
        len([t for t in state if t.startswith("source_rows_")])
        == len([t for t in before if t.startswith("source_rows_")]) - 1
    )


@pytest.mark.parametrize(
    "name", ["", "a b", "x;drop table runs", "quote'd", "é", "a" * 201, "slash/ed", "system"]
)
def test_bad_collection_names_are_refused(store: MatchboxPostgres, name: str) -> None:
    before = store_state(store)
    with pytest.raises(MatchboxNameError):
        store.create_collection(name)
    assert store_state(store) == before


def test_run_lifecycle_and_default(store: MatchboxPostgres, collection: str) -> None:
    first = store.create_run(collection)
    assert first.is_mutable and not first.is_default and first.steps == {}
    second = store.create_run(collection)
    assert second.run_id > first.run_id

    with pytest.raises(MatchboxRunNotWriteable, match="mutable"):
        store.set_run_default(collection, first.run_id, True)

    store.set_run_mutable(collection, first.run_id, False)
    promoted = store.set_run_default(collection, first.run_id, True)
    assert promoted.is_default and not promoted.is_mutable
    assert store.get_collection(collection).default_run == first.run_id

    with pytest.raises(MatchboxRunNotWriteable, match="default"):
        store.set_run_mutable(collection, first.run_id, True)

    store.set_run_mutable(collection, second.run_id, False)
    store.set_run_default(collection, second.run_id, True)
    assert store.get_collection(collection).default_run == second.run_id
    assert not store.get_run(collection, first.run_id).is_default

    # Rollback: re-promote the older run.
    store.set_run_default(collection, first.run_id, True)
    assert store.get_collection(collection).default_run == first.run_id

    store.set_run_default(collection, first.run_id, False)
    assert store.get_collection(collection).default_run is None


def test_database_allows_one_default_per_collection(
    store: MatchboxPostgres, collection: str
) -> None:
    runs = [store.create_run(collection).run_id for _ in range(2)]
    for run in runs:
        store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, runs[0], True)
    options = f"-c search_path={store.db.schema}"
    with psycopg.connect(store.db.uri, options=options) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("UPDATE runs SET is_default = true WHERE run_id = %s", (runs[1],))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE runs SET is_mutable = true WHERE run_id = %s", (runs[0],))
    assert store.get_collection(collection).default_run == runs[0]


def test_delete_run(store: MatchboxPostgres, collection: str, run: int) -> None:
    add_source(store, collection, run, "s", {"a": ["1"], "b": ["2"]})
    before = store_state(store)
    with pytest.raises(MatchboxDeletionNotConfirmed, match="s"):
        store.delete_run(collection, run, certain=False)
    assert store_state(store) == before
    store.delete_run(collection, run, certain=True)
    assert store.get_collection(collection).runs == []
    with pytest.raises(MatchboxRunNotFoundError):
        store.get_run(collection, run)


def test_unknown_runs_and_collections(store: MatchboxPostgres, collection: str) -> None:
    with pytest.raises(MatchboxRunNotFoundError, match="999999"):
        store.get_run(collection, 999_999)
    with pytest.raises(MatchboxCollectionNotFoundError):
        store.create_run("no_such_collection")
