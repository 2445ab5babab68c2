"""Failures injected in the middle of inserts leave the store exactly as it was."""

from __future__ import annotations

import pyarrow as pa
import pytest

from matchbox_dagster.common.dtos import QueryConfig, StepPath, UploadStage
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.db import compose
from matchbox_dagster.store.postgres.writes import Writes
from tests.factories import (
    add_model,
    add_source,
    clusters_table,
    hashes_table,
    leaf_of,
    resolver_step,
    store_state,
)
from tests.test_helpers_steps import declare_pending_source


class Injected(RuntimeError):
    """The failure we inject."""


@pytest.fixture
def small_batches(settings: MatchboxSettings) -> MatchboxPostgres:
    adapter = MatchboxPostgres(settings.model_copy(update={"batch_size": 3}))
    yield adapter
    adapter.close()


def test_failure_mid_copy_leaves_no_rows(
    small_batches: MatchboxPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COPY stream dies after some batches reached the server: nothing is kept."""
    store = small_batches
    store.create_collection("atomic_copy")
    run = store.create_run("atomic_copy").run_id
    path = StepPath(collection="atomic_copy", run=run, name="people")
    rows = {f"row{i}": [f"k{i}"] for i in range(20)}
    from matchbox_dagster.common.arrow import SourceHashes
    from matchbox_dagster.common.dtos import Step, StepType
    from tests.factories import source_config

    table = hashes_table(rows)
    store.create_step(
        Step(
            step_type=StepType.SOURCE,
            fingerprint=SourceHashes(table).fingerprint,
            config=source_config(),
        ),
        path,
    )
    original = Writes._ingest
    sent: list[int] = []

    def failing_ingest(self, cur, name, data, *, temporary=False):
        def batches():
            for i, batch in enumerate(data.to_batches(max_chunksize=3)):
                if i == 3:
                    raise Injected("writer died mid-COPY")
                sent.append(batch.num_rows)
                yield batch

        reader = pa.RecordBatchReader.from_batches(data.schema, batches())
        cur.adbc_ingest(name, reader, mode="append", db_schema_name=self.db.schema)

    before = store_state(store)
    monkeypatch.setattr(Writes, "_ingest", failing_ingest)
    with pytest.raises(Exception, match="writer died mid-COPY"):
        store.insert_source_data(path, table)
    assert sum(sent) == 9  # three batches went out before the failure
    assert store_state(store) == before
    assert store.get_step_stage(path) == UploadStage.READY
    monkeypatch.setattr(Writes, "_ingest", original)
    store.insert_source_data(path, table)  # the step can be retried
    assert store.query(path).num_rows == 20


def test_failure_after_clusters_written_rolls_them_back(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver insert that dies after loading its partition keeps none of it."""
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
    table = clusters_table([[leaves["1"], leaves["2"], leaves["3"]]])
    path = StepPath(collection=collection, run=run, name="resolve")
    store.create_step(resolver_step(table, ("dedupe",)), path)
    before = store_state(store)
    original = Writes._ingest

    def failing_ingest(self, cur, name, data, *, temporary=False):
        original(self, cur, name, data, temporary=temporary)
        cur.execute(compose("SELECT count(*) AS n FROM {t}", t=name))
        assert cur.fetch_arrow_table().column("n")[0].as_py() == 3  # the leaves were loaded
        raise Injected("crash after the partition load")

    monkeypatch.setattr(Writes, "_ingest", failing_ingest)
    with pytest.raises(Injected):
        store.insert_resolver_data(path, table)
    assert store_state(store) == before
    monkeypatch.setattr(Writes, "_ingest", original)
    store.insert_resolver_data(path, table)
    assert len(set(store.query(src, path).column("id").to_pylist())) == 1


def test_failure_after_edges_copied_rolls_back_model(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edges reached their new table, then the writer died before attaching it."""
    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"]})
    leaves = leaf_of(store, src)
    from tests.factories import edges_table, model_step

    edges = edges_table([(leaves["1"], leaves["2"], 0.5)])
    path = StepPath(collection=collection, run=run, name="dedupe")
    store.create_step(model_step(edges, QueryConfig(sources=("people",))), path)
    before = store_state(store)
    original = Writes._ingest

    def ingest_then_die(self, cur, name, data, *, temporary=False):
        original(self, cur, name, data, temporary=temporary)
        cur.execute(f'SELECT count(*) AS n FROM "{name}"')
        assert cur.fetch_arrow_table().column("n")[0].as_py() == 1  # the row is there
        raise Injected("died before attach")

    monkeypatch.setattr(Writes, "_ingest", ingest_then_die)
    with pytest.raises(Injected):
        store.insert_model_data(path, edges)
    assert store_state(store) == before
    assert store.get_step_stage(path) == UploadStage.READY
    monkeypatch.setattr(Writes, "_ingest", original)
    store.insert_model_data(path, edges)
    assert store.get_model_data(path).num_rows == 1


def test_pending_step_helper_is_queryable_after_insert(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    path = StepPath(collection=collection, run=run, name="pending")
    declare_pending_source(store, path)
    store.insert_source_data(path, hashes_table({"x": ["1"]}))
    assert store.query(path).column("key").to_pylist() == ["1"]
