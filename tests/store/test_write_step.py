"""``write_step``: one transaction writes a step (lock, checks, replace, insert, stage)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    QueryConfig,
    Step,
    StepPath,
    StepType,
    UploadStage,
    WriteOutcome,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxFingerprintMismatch,
    MatchboxLockError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.writes import Writes
from tests.factories import (
    clusters_table,
    edges_table,
    hashes_table,
    model_step,
    resolver_step,
    source_config,
    store_state,
)


class Injected(RuntimeError):
    """The failure we inject."""


def source(rows: dict[str, list[str]], name: str = "people") -> tuple[Step, SourceHashes]:
    """A source step and its payload."""
    hashes = SourceHashes(hashes_table(rows))
    step = Step(
        step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=source_config(name)
    )
    return step, hashes


ROWS = {"alice": ["1"], "bob": ["2"], "carol": ["3"]}


def path(collection: str, run: int, name: str) -> StepPath:
    """A step path."""
    return StepPath(collection=collection, run=run, name=name)


def write_graph(store: MatchboxPostgres, collection: str, run: int) -> dict[str, StepPath]:
    """A source, a deduper over it and a resolver over that, each by write_step."""
    src = path(collection, run, "people")
    step, hashes = source(ROWS)
    assert store.write_step(src, step, hashes) == WriteOutcome.STORED
    leaves = dict(
        zip(
            store.query(src, return_leaf_id=True).column("key").to_pylist(),
            store.query(src, return_leaf_id=True).column("leaf_id").to_pylist(),
            strict=True,
        )
    )
    edges = edges_table([(leaves["1"], leaves["2"], 0.9)])
    model = path(collection, run, "dedupe")
    outcome = store.write_step(
        model, model_step(edges, QueryConfig(sources=("people",))), ModelResults(edges)
    )
    assert outcome == WriteOutcome.STORED
    clusters = clusters_table([[leaves["1"], leaves["2"]], [leaves["3"]]])
    resolver = path(collection, run, "resolve")
    outcome = store.write_step(
        resolver, resolver_step(clusters, ("dedupe",)), ResolverClusters(clusters)
    )
    assert outcome == WriteOutcome.STORED
    return {"source": src, "model": model, "resolver": resolver}


def test_stored_then_unchanged(store: MatchboxPostgres, collection: str, run: int) -> None:
    """A new step is created and filled; the same write again changes nothing."""
    paths = write_graph(store, collection, run)
    for p in paths.values():
        assert store.get_step_stage(p) == UploadStage.COMPLETE
    assert store.query(paths["source"]).num_rows == 3
    ids = store.query(paths["source"], paths["resolver"]).column("id").to_pylist()
    assert len(set(ids)) == 2
    before = store_state(store)
    step, hashes = source(ROWS)
    assert store.write_step(paths["source"], step, hashes) == WriteOutcome.UNCHANGED
    assert store_state(store) == before


def test_ready_step_without_data_is_filled(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A step declared by create_step (no data yet) with the same fingerprint is STORED into."""
    p = path(collection, run, "people")
    step, hashes = source(ROWS)
    store.create_step(step, p)
    assert store.get_step_stage(p) == UploadStage.READY
    assert store.write_step(p, step, hashes) == WriteOutcome.STORED
    assert store.get_step_stage(p) == UploadStage.COMPLETE
    assert store.query(p).num_rows == 3


def test_replaced_drops_descendants(store: MatchboxPostgres, collection: str, run: int) -> None:
    """New source data replaces the step and deletes the model and resolver built on it."""
    paths = write_graph(store, collection, run)
    step, hashes = source({**ROWS, "dave": ["4"]})
    assert store.write_step(paths["source"], step, hashes) == WriteOutcome.REPLACED
    assert store.query(paths["source"]).num_rows == 4
    assert store.get_step(paths["source"]).fingerprint == hashes.fingerprint
    for name in ("model", "resolver"):
        with pytest.raises(MatchboxStepNotFoundError):
            store.get_step(paths[name])
    assert set(store.get_run(collection, run).steps) == {"people"}


def test_changed_config_alone_replaces(store: MatchboxPostgres, collection: str, run: int) -> None:
    """Same data under another config is a different step: REPLACED, config stored."""
    p = path(collection, run, "people")
    step, hashes = source(ROWS)
    store.write_step(p, step, hashes)
    other = step.model_copy(update={"config": source_config("elsewhere")})
    assert store.write_step(p, other, hashes) == WriteOutcome.REPLACED
    assert store.get_step(p).config == source_config("elsewhere")
    assert store.write_step(p, other, hashes) == WriteOutcome.UNCHANGED


def test_immutable_run_refused_with_nothing_changed(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """On an immutable run, new data is refused (start a new run); the same data is UNCHANGED."""
    paths = write_graph(store, collection, run)
    store.set_run_mutable(collection, run, False)
    before = store_state(store)
    step, hashes = source({**ROWS, "dave": ["4"]})
    with pytest.raises(MatchboxRunNotWriteable, match=r"immutable.*create_run"):
        store.write_step(paths["source"], step, hashes)
    new = path(collection, run, "other")
    with pytest.raises(MatchboxRunNotWriteable):
        store.write_step(new, *source(ROWS, "other"))
    assert store_state(store) == before
    same, same_hashes = source(ROWS)
    assert store.write_step(paths["source"], same, same_hashes) == WriteOutcome.UNCHANGED


@pytest.mark.parametrize("wrong", ["model_payload", "table", "fingerprint", "unknown_ids"])
def test_wrong_payload_refused_with_nothing_written(
    store: MatchboxPostgres, collection: str, run: int, wrong: str
) -> None:
    """A payload of another type, another fingerprint, or ids the inputs do not give."""
    src = path(collection, run, "people")
    store.write_step(src, *source(ROWS))
    before = store_state(store)
    edges = edges_table([(10, 11, 0.5)])  # not leaves of "people"
    model = model_step(edges, QueryConfig(sources=("people",)))
    target = path(collection, run, "dedupe")
    if wrong == "model_payload":
        with pytest.raises(MatchboxStepInvalidData, match="must be SourceHashes"):
            store.write_step(src, source(ROWS)[0], ModelResults(edges))
    elif wrong == "table":
        with pytest.raises(MatchboxStepInvalidData, match="must be ModelResults"):
            store.write_step(target, model, edges)  # type: ignore[arg-type]
    elif wrong == "fingerprint":
        other = ModelResults(edges_table([(10, 11, 0.6)]))
        with pytest.raises(MatchboxFingerprintMismatch):
            store.write_step(target, model, other)
    else:
        with pytest.raises(MatchboxStepInvalidData, match="not ids of its input"):
            store.write_step(target, model, ModelResults(edges))
    assert store_state(store) == before
    with pytest.raises(MatchboxStepNotFoundError):
        store.get_step(target)


def test_unknown_run_or_collection(store: MatchboxPostgres, collection: str) -> None:
    """The run must exist."""
    step, hashes = source(ROWS)
    with pytest.raises(MatchboxRunNotFoundError):
        store.write_step(path(collection, 999_999, "people"), step, hashes)
    with pytest.raises(MatchboxCollectionNotFoundError):
        store.write_step(path("no_such_collection", 1, "people"), step, hashes)


def test_failure_after_load_leaves_store_as_before(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replace that dies after its partition was loaded keeps nothing: old graph intact."""
    paths = write_graph(store, collection, run)
    before = store_state(store)
    original = Writes._ingest
    loaded: list[int] = []

    def ingest_then_die(self, cur, name, data, *, temporary=False):
        original(self, cur, name, data, temporary=temporary)
        cur.execute(f'SELECT count(*) AS n FROM "{name}"')
        loaded.append(cur.fetch_arrow_table().column("n")[0].as_py())
        raise Injected("died after the load")

    monkeypatch.setattr(Writes, "_ingest", ingest_then_die)
    step, hashes = source({**ROWS, "dave": ["4"]})
    with pytest.raises(Injected):
        store.write_step(paths["source"], step, hashes)
    assert loaded == [4]  # the new rows were in the partition when it died
    assert store_state(store) == before
    monkeypatch.setattr(Writes, "_ingest", original)
    assert store.write_step(paths["source"], step, hashes) == WriteOutcome.REPLACED


def test_failure_of_a_new_step_leaves_no_step(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step row created in the transaction goes with the failed load."""
    before = store_state(store)

    def die(self, cur, name, data, *, temporary=False):
        raise Injected("died during the load")

    monkeypatch.setattr(Writes, "_ingest", die)
    p = path(collection, run, "people")
    with pytest.raises(Injected):
        store.write_step(p, *source(ROWS))
    assert store_state(store) == before
    with pytest.raises(MatchboxStepNotFoundError):
        store.get_step(p)


def test_concurrent_identical_writes_store_once(
    store: MatchboxPostgres, collection: str, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads write the same step at once: one STORED, the other waits, then UNCHANGED."""
    original = Writes._ingest
    inside = threading.Event()

    def slow_ingest(self, cur, name, data, *, temporary=False):
        inside.set()
        time.sleep(0.5)  # the other writer arrives while this one holds the lock
        original(self, cur, name, data, temporary=temporary)

    monkeypatch.setattr(Writes, "_ingest", slow_ingest)
    p = path(collection, run, "people")
    outcomes: list[WriteOutcome | BaseException] = []

    def write() -> None:
        try:
            outcomes.append(store.write_step(p, *source(ROWS)))
        except BaseException as exc:  # recorded and asserted below
            outcomes.append(exc)

    first = threading.Thread(target=write)
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=write)
    second.start()
    first.join(30)
    second.join(30)
    assert sorted(map(str, outcomes)) == ["stored", "unchanged"], outcomes
    assert store.query(p).num_rows == 3


@pytest.fixture
def impatient(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """A store that waits at most 0.3 s for another write of a step."""
    adapter = MatchboxPostgres(settings.model_copy(update={"step_lock_timeout_seconds": 0.3}))
    yield adapter
    adapter.close()


def test_lock_held_past_the_bound_raises_lock_error(
    impatient: MatchboxPostgres, collection: str, run: int
) -> None:
    """Another transaction holds the step's write lock longer than the bound."""
    store = impatient
    p = path(collection, run, "people")
    db = store.db
    import json

    key = json.dumps([db.schema, p.collection, p.run, p.name])
    before = store_state(store)
    with psycopg.connect(db.uri) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        started = time.monotonic()
        with pytest.raises(MatchboxLockError, match=r"after 0\.3s.*Retry"):
            store.write_step(p, *source(ROWS))
        waited = time.monotonic() - started
        other.rollback()
    assert 0.25 <= waited < 5
    assert store_state(store) == before
    assert store.write_step(p, *source(ROWS)) == WriteOutcome.STORED  # free again
