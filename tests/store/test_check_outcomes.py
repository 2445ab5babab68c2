"""Check outcomes and Dagster attempts in the store: what ``runs`` reads without Dagster."""

from __future__ import annotations

import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import Step, StepPath, StepType
from matchbox_dagster.common.errors import MatchboxStepNotFoundError
from matchbox_dagster.common.runs import RunSummary
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.conftest import own_schema_store
from tests.factories import add_source, hashes_table, source_config, store_state

ROWS = {"a": ["1"], "b": ["2"]}


def summary(store: MatchboxPostgres, collection: str, run: int) -> RunSummary:
    (found,) = [s for s in store.run_summaries(collection) if s.run_id == run]
    return found


def test_outcomes_are_recorded_per_step_and_replaced(
    store: MatchboxPostgres, collection: str
) -> None:
    run = store.run_for_label(collection, "L1").run_id
    path = add_source(store, collection, run, "people", ROWS)
    assert summary(store, collection, run).checks == {}
    store.record_check_outcomes(path, {"source_quality": True, "extra": False})
    assert summary(store, collection, run).checks == {
        "people:source_quality": True,
        "people:extra": False,
    }
    store.record_check_outcomes(path, {"extra": True})  # evaluated again: the latest counts
    assert summary(store, collection, run).checks == {
        "people:source_quality": True,
        "people:extra": True,
    }
    with pytest.raises(MatchboxStepNotFoundError):
        store.record_check_outcomes(path.model_copy(update={"name": "nope"}), {"x": True})
    with pytest.raises(ValueError, match="check name"):
        store.record_check_outcomes(path, {"": True})
    store.delete_step(path, certain=True)  # outcomes go with their step
    assert summary(store, collection, run).checks == {}


def test_an_outcome_older_than_its_step_data_is_not_current(
    store: MatchboxPostgres, collection: str
) -> None:
    run = store.run_for_label(collection, "L1").run_id
    path = StepPath(collection=collection, run=run, name="people")
    table = hashes_table(ROWS)
    step = Step(
        step_type=StepType.SOURCE,
        fingerprint=SourceHashes(table).fingerprint,
        config=source_config("people"),
    )
    store.create_step(step, path)
    store.record_check_outcomes(path, {"source_quality": True})  # before the data is written
    store.insert_source_data(path, table)
    assert summary(store, collection, run).checks == {}
    store.record_check_outcomes(path, {"source_quality": False})
    assert summary(store, collection, run).checks == {"people:source_quality": False}


def test_a_later_dagster_attempt_makes_earlier_outcomes_not_current(
    store: MatchboxPostgres, collection: str
) -> None:
    run = store.run_for_label(collection, "L1").run_id
    other = store.run_for_label(collection, "L2").run_id
    assert store.note_dagster_attempt(collection, "L1", "dagster-1") is True
    assert store.note_dagster_attempt(collection, "L1", "dagster-1") is False  # once per run
    path = add_source(store, collection, run, "people", ROWS)
    store.record_check_outcomes(path, {"source_quality": True})
    first = summary(store, collection, run)
    assert first.dagster_run == "dagster-1" and first.checks == {"people:source_quality": True}
    assert summary(store, collection, other).dagster_run is None  # per label

    assert store.note_dagster_attempt(collection, "L1", "dagster-2") is True
    second = summary(store, collection, run)
    assert second.dagster_run == "dagster-2" and second.checks == {}
    store.record_check_outcomes(path, {"source_quality": True})
    assert summary(store, collection, run).checks == {"people:source_quality": True}

    # A label whose collection does not exist yet notes nothing.
    assert store.note_dagster_attempt("no_such_collection", "L1", "dagster-3") is False
    store.delete_collection(collection, certain=True)  # and the notes go with it
    store.create_collection(collection)
    again = store.run_for_label(collection, "L1").run_id
    assert summary(store, collection, again).dagster_run is None


def test_outcomes_and_attempts_survive_a_snapshot(settings: MatchboxSettings) -> None:
    with own_schema_store(settings) as store:
        store.create_collection("snap")
        run = store.run_for_label("snap", "L1").run_id
        store.note_dagster_attempt("snap", "L1", "dagster-1")
        path = add_source(store, "snap", run, "people", ROWS)
        store.record_check_outcomes(path, {"source_quality": True})
        before, state = store.run_summaries("snap"), store_state(store)
        snapshot = store.dump()
        store.clear(certain=True)
        assert store_state(store) != state
        store.restore(snapshot)
        assert store_state(store) == state
        assert store.run_summaries("snap") == before
        assert before[0].checks == {"people:source_quality": True}
