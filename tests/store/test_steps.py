"""Steps: creation rules, lineage, updates, deletion and upload stages."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import (
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxDeletionNotConfirmed,
    MatchboxLockError,
    MatchboxRunNotWriteable,
    MatchboxStepAlreadyExists,
    MatchboxStepExistingData,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
    MatchboxStepUpdateError,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    edges_table,
    hashes_table,
    leaf_of,
    model_step,
    source_config,
    store_state,
)


def _source_step(rows: dict[str, list[str]]) -> Step:
    return Step(
        step_type=StepType.SOURCE,
        fingerprint=SourceHashes(hashes_table(rows)).fingerprint,
        config=source_config(),
        description="people from the CRM",
    )


def test_create_get_update_step(store: MatchboxPostgres, collection: str, run: int) -> None:
    path = StepPath(collection=collection, run=run, name="crm")
    step = _source_step({"a": ["1"]})
    store.create_step(step, path)
    got = store.get_step(path)
    assert got == step
    assert store.get_step_stage(path) == UploadStage.READY
    assert store.get_run(collection, run).steps == {"crm": step}

    with pytest.raises(MatchboxStepAlreadyExists):
        store.create_step(step, path)

    updated = step.model_copy(update={"description": "people, cleaned"})
    store.update_step(updated, path)
    assert store.get_step(path).description == "people, cleaned"

    with pytest.raises(MatchboxStepUpdateError, match="fingerprint"):
        store.update_step(updated.model_copy(update={"fingerprint": b"x" * 32}), path)
    assert store.get_step(path).fingerprint == step.fingerprint


def test_parents_must_exist_and_have_the_right_type(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    edges = edges_table([(1, 2, 0.9)])
    path = StepPath(collection=collection, run=run, name="dedupe")
    before = store_state(store)
    with pytest.raises(MatchboxStepNotFoundError, match="must be created first"):
        store.create_step(model_step(edges, QueryConfig(sources=("missing",))), path)
    assert store_state(store) == before

    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"]})
    # A resolver cannot read a source directly.
    with pytest.raises(MatchboxStepTypeError):
        store.create_step(
            Step(
                step_type=StepType.RESOLVER,
                fingerprint=b"0" * 32,
                config=ResolverConfig(inputs=(src.name,)),
            ),
            StepPath(collection=collection, run=run, name="bad_resolver"),
        )
    # Parents must be in the same run.
    other_run = store.create_run(collection).run_id
    with pytest.raises(MatchboxStepNotFoundError):
        store.create_step(
            model_step(edges, QueryConfig(sources=("people",))),
            StepPath(collection=collection, run=other_run, name="dedupe"),
        )


def test_delete_step_takes_descendants(store: MatchboxPostgres, collection: str, run: int) -> None:
    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"], "c": ["3"]})
    leaves = leaf_of(store, src)
    add_model(
        store,
        collection,
        run,
        "dedupe",
        [(leaves["1"], leaves["2"], 0.9)],
        QueryConfig(sources=("people",)),
    )
    add_resolver(store, collection, run, "resolve", [[leaves["1"], leaves["2"]]], ("dedupe",))
    before = store_state(store)
    with pytest.raises(MatchboxDeletionNotConfirmed, match="dedupe, resolve"):
        store.delete_step(src, certain=False)
    assert store_state(store) == before
    store.delete_step(StepPath(collection=collection, run=run, name="dedupe"), certain=True)
    assert set(store.get_run(collection, run).steps) == {"people"}
    after = store_state(store)
    dropped = {t for t in before if t not in after}
    assert len(dropped) == 2 and all(
        t.startswith(("model_edges_", "resolver_leaves_")) for t in dropped
    )


def test_immutable_run_refuses_every_write(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    path = StepPath(collection=collection, run=run, name="crm")
    step = _source_step({"a": ["1"]})
    store.create_step(step, path)
    store.set_run_mutable(collection, run, False)
    before = store_state(store)
    writes = [
        lambda: store.create_step(step, StepPath(collection=collection, run=run, name="other")),
        lambda: store.update_step(step.model_copy(update={"description": "x"}), path),
        lambda: store.delete_step(path, certain=True),
        lambda: store.lock_step_data(path),
        lambda: store.insert_source_data(path, hashes_table({"a": ["1"]})),
    ]
    for write in writes:
        with pytest.raises(MatchboxRunNotWriteable, match="immutable"):
            write()
    assert store_state(store) == before


def test_upload_stages(store: MatchboxPostgres, collection: str, run: int) -> None:
    path = StepPath(collection=collection, run=run, name="crm")
    rows = {"a": ["1"]}
    store.create_step(_source_step(rows), path)
    store.lock_step_data(path)
    assert store.get_step_stage(path) == UploadStage.PROCESSING
    with pytest.raises(MatchboxLockError, match="already being uploaded"):
        store.lock_step_data(path)
    store.unlock_step_data(path, complete=False)
    assert store.get_step_stage(path) == UploadStage.READY
    store.lock_step_data(path)
    store.insert_source_data(path, hashes_table(rows))
    assert store.get_step_stage(path) == UploadStage.COMPLETE
    store.unlock_step_data(path, complete=True)  # idempotent after the insert completed
    with pytest.raises(MatchboxStepExistingData):
        store.lock_step_data(path)
    with pytest.raises(MatchboxStepExistingData):
        store.insert_source_data(path, hashes_table(rows))


def test_concurrent_upload_fails_at_once(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A second writer gets a lock error immediately instead of waiting or corrupting."""
    path = StepPath(collection=collection, run=run, name="crm")
    rows = {"a": ["1"], "b": ["2"]}
    store.create_step(_source_step(rows), path)
    holding = threading.Event()
    release = threading.Event()

    def hold_row_lock() -> None:
        # Stand in for an insert in progress: it holds the step's row lock.
        with psycopg.connect(store.db.uri, options=f"-c search_path={store.db.schema}") as conn:
            conn.execute(
                "SELECT 1 FROM steps WHERE run_id = %s AND name = 'crm' FOR UPDATE", (run,)
            )
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold_row_lock)
    thread.start()
    try:
        assert holding.wait(10)
        for attempt in (
            lambda: store.lock_step_data(path),
            lambda: store.insert_source_data(path, hashes_table(rows)),
        ):
            started = time.perf_counter()
            with pytest.raises(MatchboxLockError):
                attempt()
            assert time.perf_counter() - started < 2.0
    finally:
        release.set()
        thread.join()
    assert store.get_step_stage(path) == UploadStage.READY
    store.insert_source_data(path, hashes_table(rows))
    assert store.get_step_stage(path) == UploadStage.COMPLETE
