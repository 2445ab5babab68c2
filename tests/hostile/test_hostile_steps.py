"""Calls aimed at the wrong thing: unknown collections, runs and steps, immutable runs, the wrong
step type, steps that already hold data, unconfirmed deletions — and two writers on one step.

Every call is refused with its typed error and changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import (
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxCollectionNotFoundError,
    MatchboxDeletionNotConfirmed,
    MatchboxError,
    MatchboxLockError,
    MatchboxNotFoundError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepAlreadyExists,
    MatchboxStepExistingData,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
    MatchboxStepNotQueriable,
    MatchboxStepTypeError,
    MatchboxStepUpdateError,
    MatchboxTooManySamplesRequested,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.writes import Writes
from tests.factories import clusters_table, edges_table, hashes_table, model_step, source_config
from tests.hostile.conftest import World, refused, unchanged

Call = Callable[[MatchboxPostgres, StepPath], Any]

CALLS_ON_A_PATH: dict[str, Call] = {
    "get_step": lambda s, p: s.get_step(p),
    "get_step_stage": lambda s, p: s.get_step_stage(p),
    "update_step": lambda s, p: s.update_step(
        Step(step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=source_config()), p
    ),
    "delete_step": lambda s, p: s.delete_step(p, certain=True),
    "lock_step_data": lambda s, p: s.lock_step_data(p),
    "unlock_step_data": lambda s, p: s.unlock_step_data(p, complete=True),
    "insert_source_data": lambda s, p: s.insert_source_data(p, hashes_table({"a": ["1"]})),
    "insert_model_data": lambda s, p: s.insert_model_data(p, edges_table([(1, 2, 0.5)])),
    "insert_resolver_data": lambda s, p: s.insert_resolver_data(p, clusters_table([[1, 2]])),
    "get_source_data": lambda s, p: s.get_source_data(p),
    "get_model_data": lambda s, p: s.get_model_data(p),
    "get_resolver_data": lambda s, p: s.get_resolver_data(p),
    "query": lambda s, p: s.query(p),
    "step_statistics": lambda s, p: s.step_statistics(p),
    "sample_for_eval": lambda s, p: s.sample_for_eval(5, p, "alice"),
    "create_step": lambda s, p: s.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=b"\x00" * 32,
            config=ResolverConfig(inputs=("dedupe_crm",)),
        ),
        p,
    ),
}

WHERE = {
    "unknown collection": lambda w: StepPath(collection="nowhere", run=w.data.run, name="crm"),
    "unknown run": lambda w: StepPath(collection=w.data.collection, run=987654321, name="crm"),
    "unknown step": lambda w: w.path("nope"),
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("call", list(CALLS_ON_A_PATH))
def test_calls_on_paths_that_do_not_exist(w: World, call: str, where: str) -> None:
    path = WHERE[where](w)
    exc = refused(w.store, lambda: CALLS_ON_A_PATH[call](w.store, path), MatchboxNotFoundError)
    if where == "unknown collection":
        assert isinstance(exc, MatchboxCollectionNotFoundError | MatchboxStepNotFoundError)


RUN_CALLS: dict[str, Callable[[MatchboxPostgres, str, int], Any]] = {
    "get_run": lambda s, c, r: s.get_run(c, r),
    "set_run_mutable": lambda s, c, r: s.set_run_mutable(c, r, False),
    "set_run_default": lambda s, c, r: s.set_run_default(c, r, True),
    "delete_run": lambda s, c, r: s.delete_run(c, r, certain=True),
}


@pytest.mark.parametrize("run", [987654321, 0, -1, 2**63 - 1, 2**63, -(2**70)])
@pytest.mark.parametrize("call", list(RUN_CALLS))
def test_calls_on_runs_that_do_not_exist(w: World, call: str, run: int) -> None:
    refused(w.store, lambda: RUN_CALLS[call](w.store, "companies", run), MatchboxRunNotFoundError)


@pytest.mark.parametrize("run", [2**63, -(2**63) - 1, 10**30])
def test_paths_with_ids_beyond_bigint_are_refused_by_the_dto(run: int) -> None:
    with pytest.raises(ValueError):
        StepPath(collection="companies", run=run, name="crm")


# --- immutable runs ---------------------------------------------------------------------------


def _immutable_writes(w: World) -> dict[str, Callable[[], Any]]:
    s, c = w.store, w.data.collection
    frozen, default = w.frozen_source, w.data.crm
    step = s.get_step(default)
    return {
        "create_step in the default run": lambda: s.create_step(step, w.path("new", w.data.run)),
        "create_step in a frozen run": lambda: s.create_step(step, w.path("new", frozen.run)),
        "update_step": lambda: s.update_step(step.model_copy(update={"description": "x"}), default),
        "delete_step": lambda: s.delete_step(default, certain=True),
        "delete_step unconfirmed": lambda: s.delete_step(frozen, certain=False),
        "lock_step_data": lambda: s.lock_step_data(frozen),
        "insert_source_data": lambda: s.insert_source_data(frozen, hashes_table({"x": ["1"]})),
        "insert into the default run": lambda: s.insert_source_data(
            default, hashes_table({"x": ["1"]})
        ),
        "insert model data into the default run": lambda: s.insert_model_data(
            w.data.link, edges_table([])
        ),
        "insert resolver data into the default run": lambda: s.insert_resolver_data(
            w.data.r_all, clusters_table([])
        ),
        "make the default run mutable": lambda: s.set_run_mutable(c, w.data.run, True),
        "make a mutable run the default": lambda: s.set_run_default(c, w.data.draft_run, True),
    }


IMMUTABLE = [
    "create_step in the default run",
    "create_step in a frozen run",
    "update_step",
    "delete_step",
    "delete_step unconfirmed",
    "lock_step_data",
    "insert_source_data",
    "insert into the default run",
    "insert model data into the default run",
    "insert resolver data into the default run",
    "make the default run mutable",
    "make a mutable run the default",
]


@pytest.mark.parametrize("write", IMMUTABLE)
def test_writes_to_an_immutable_run_are_refused(w: World, write: str) -> None:
    exc = refused(w.store, _immutable_writes(w)[write], MatchboxRunNotWriteable)
    assert "immutable" in str(exc) or "mutable" in str(exc)


# --- wrong step types -------------------------------------------------------------------------


def _wrong_types(w: World) -> dict[str, Callable[[], Any]]:
    s, d = w.store, w.data
    return {
        "source data into a model step": lambda: s.insert_source_data(
            w.pending_model, hashes_table({"x": ["1"]})
        ),
        "source data into a resolver step": lambda: s.insert_source_data(
            w.pending_resolver, hashes_table({"x": ["1"]})
        ),
        "model data into a source step": lambda: s.insert_model_data(
            w.pending_source, edges_table([(1, 2, 0.5)])
        ),
        "model data into a resolver step": lambda: s.insert_model_data(
            w.pending_resolver, edges_table([(1, 2, 0.5)])
        ),
        "resolver data into a source step": lambda: s.insert_resolver_data(
            w.pending_source, clusters_table([[1, 2]])
        ),
        "resolver data into a model step": lambda: s.insert_resolver_data(
            w.pending_model, clusters_table([[1, 2]])
        ),
        "query a model as a source": lambda: s.query(d.link),
        "query through a source as resolver": lambda: s.query(d.crm, d.erp),
        "query through a model as resolver": lambda: s.query(d.crm, d.link),
        "match through a source as resolver": lambda: s.match("c1", d.crm, [d.erp], d.erp),
        "match with a model as target": lambda: s.match("c1", d.crm, [d.link], d.r_all),
        "source data of a resolver": lambda: s.get_source_data(d.r_all),
        "model data of a source": lambda: s.get_model_data(d.crm),
        "resolver data of a model": lambda: s.get_resolver_data(d.link),
        "sample a source": lambda: s.sample_for_eval(5, d.crm, "alice"),
        "change a step's type": lambda: s.update_step(
            Step(
                step_type=StepType.RESOLVER,
                fingerprint=b"\x01" * 32,
                config=ResolverConfig(inputs=("draft_dedupe",)),
            ),
            w.pending_model,
        ),
        "a model reading a model as its source": lambda: s.create_step(
            Step(
                step_type=StepType.MODEL,
                fingerprint=b"\x01" * 32,
                config=ModelConfig(
                    type=ModelType.DEDUPER,
                    model_class="X",
                    left_query=QueryConfig(sources=("draft_dedupe",)),
                ),
            ),
            w.path("bad_model"),
        ),
        "a resolver reading a source": lambda: s.create_step(
            Step(
                step_type=StepType.RESOLVER,
                fingerprint=b"\x01" * 32,
                config=ResolverConfig(inputs=("crm",)),
            ),
            w.path("bad_resolver"),
        ),
        "a model resolved through a model": lambda: s.create_step(
            Step(
                step_type=StepType.MODEL,
                fingerprint=b"\x01" * 32,
                config=ModelConfig(
                    type=ModelType.DEDUPER,
                    model_class="X",
                    left_query=QueryConfig(sources=("crm",), resolver="draft_dedupe"),
                ),
            ),
            w.path("bad_model2"),
        ),
    }


WRONG_TYPES = [
    "source data into a model step",
    "source data into a resolver step",
    "model data into a source step",
    "model data into a resolver step",
    "resolver data into a source step",
    "resolver data into a model step",
    "query a model as a source",
    "query through a source as resolver",
    "query through a model as resolver",
    "match through a source as resolver",
    "match with a model as target",
    "source data of a resolver",
    "model data of a source",
    "resolver data of a model",
    "sample a source",
    "change a step's type",
    "a model reading a model as its source",
    "a resolver reading a source",
    "a model resolved through a model",
]


@pytest.mark.parametrize("call", WRONG_TYPES)
def test_wrong_step_types_are_refused(w: World, call: str) -> None:
    expected = MatchboxStepUpdateError if call == "change a step's type" else MatchboxStepTypeError
    refused(w.store, _wrong_types(w)[call], expected)


# --- other state errors -----------------------------------------------------------------------


def _state_errors(w: World) -> dict[str, tuple[Callable[[], Any], type[BaseException]]]:
    s, d = w.store, w.data
    step = s.get_step(w.draft_crm)
    return {
        "insert into a step holding data": (
            lambda: s.insert_source_data(w.draft_crm, hashes_table({"acme": ["c1"]})),
            MatchboxStepExistingData,
        ),
        "lock a step holding data": (
            lambda: s.lock_step_data(w.draft_crm),
            MatchboxStepExistingData,
        ),
        "unlock a complete step back to ready": (
            lambda: s.unlock_step_data(w.draft_crm, complete=False),
            MatchboxStepExistingData,
        ),
        "model data into a model holding data": (
            lambda: s.insert_model_data(w.draft_model, edges_table([])),
            MatchboxStepExistingData,
        ),
        "query a step without data": (lambda: s.query(w.pending_source), MatchboxStepNotQueriable),
        "query through a resolver without data": (
            lambda: s.query(w.draft_crm, w.pending_resolver),
            MatchboxStepNotQueriable,
        ),
        "query through a resolver of another run": (
            lambda: s.query(w.draft_crm, d.r_all),
            MatchboxStepInvalidData,
        ),
        "query through a resolver not reading the source": (
            lambda: s.query(d.erp, d.r_crm),
            MatchboxStepInvalidData,
        ),
        "create a step twice": (
            lambda: s.create_step(step, w.draft_crm),
            MatchboxStepAlreadyExists,
        ),
        "create a collection twice": (
            lambda: s.create_collection("companies"),
            MatchboxCollectionAlreadyExists,
        ),
        "a step reading a step that does not exist": (
            lambda: s.create_step(
                Step(
                    step_type=StepType.RESOLVER,
                    fingerprint=b"\x01" * 32,
                    config=ResolverConfig(inputs=("ghost",)),
                ),
                w.path("orphan"),
            ),
            MatchboxStepNotFoundError,
        ),
        "update a step's fingerprint": (
            lambda: s.update_step(
                step.model_copy(update={"fingerprint": b"\x09" * 32}), w.draft_crm
            ),
            MatchboxStepUpdateError,
        ),
        "update a step's inputs": (
            lambda: s.update_step(
                s.get_step(w.pending_resolver).model_copy(
                    update={"config": ResolverConfig(inputs=("pending_dedupe",))}
                ),
                w.pending_resolver,
            ),
            MatchboxStepUpdateError,
        ),
        "too many samples": (
            lambda: s.sample_for_eval(101, d.r_all, "alice"),
            MatchboxTooManySamplesRequested,
        ),
        "delete a collection unconfirmed": (
            lambda: s.delete_collection("companies", certain=False),
            MatchboxDeletionNotConfirmed,
        ),
        "delete a run unconfirmed": (
            lambda: s.delete_run("companies", d.draft_run, certain=False),
            MatchboxDeletionNotConfirmed,
        ),
        "delete a step unconfirmed": (
            lambda: s.delete_step(w.draft_crm, certain=False),
            MatchboxDeletionNotConfirmed,
        ),
        "delete a group unconfirmed": (
            lambda: s.delete_group("analysts"),
            MatchboxDeletionNotConfirmed,
        ),
        "clear unconfirmed": (lambda: s.clear(certain=False), MatchboxDeletionNotConfirmed),
        "drop unconfirmed": (lambda: s.drop(certain=False), MatchboxDeletionNotConfirmed),
        "validate ids that do not exist": (
            lambda: s.validate_ids([1, 2, 3]),
            MatchboxNotFoundError,
        ),
        "a run label too long": (
            lambda: s.run_for_label("companies", "x" * 201),
            MatchboxError,
        ),
        "an audit of runs older than a negative age": (
            lambda: s.audit_uploads(stale_run_days=-1),
            MatchboxError,
        ),
    }


STATE_ERRORS = [
    "insert into a step holding data",
    "lock a step holding data",
    "unlock a complete step back to ready",
    "model data into a model holding data",
    "query a step without data",
    "query through a resolver without data",
    "query through a resolver of another run",
    "query through a resolver not reading the source",
    "create a step twice",
    "create a collection twice",
    "a step reading a step that does not exist",
    "update a step's fingerprint",
    "update a step's inputs",
    "too many samples",
    "delete a collection unconfirmed",
    "delete a run unconfirmed",
    "delete a step unconfirmed",
    "delete a group unconfirmed",
    "clear unconfirmed",
    "drop unconfirmed",
    "validate ids that do not exist",
    "a run label too long",
    "an audit of runs older than a negative age",
]


@pytest.mark.parametrize("case", STATE_ERRORS)
def test_state_errors(w: World, case: str) -> None:
    call, error = _state_errors(w)[case]
    refused(w.store, call, error)


def test_negative_limits_and_sample_sizes(w: World) -> None:
    """Plain ``ValueError`` today: recorded here so a change to a typed error is deliberate."""
    with unchanged(w.store):
        with pytest.raises(ValueError):
            w.store.query(w.data.crm, limit=-1)
        with pytest.raises(ValueError):
            w.store.sample_for_eval(-1, w.data.r_all, "alice")


# --- two writers on one step ------------------------------------------------------------------


def _hold_inside_insert(
    monkeypatch: pytest.MonkeyPatch, entered: threading.Event, release: threading.Event
) -> None:
    """Make the thread named ``first`` pause inside its insert, after it took the step's lock
    (when it starts streaming rows), until ``release`` is set."""
    original = Writes._ingest

    def paused(self: Any, cur: Any, table: str, data: pa.Table, **kwargs: Any) -> None:
        if threading.current_thread().name == "first":
            entered.set()
            assert release.wait(20), "the test never released the first writer"
        original(self, cur, table, data, **kwargs)

    monkeypatch.setattr(Writes, "_ingest", paused)


def _writers(w: World, kind: str) -> tuple[StepPath, Callable[[], None]]:
    """A fresh step of ``kind`` in the draft run and the insert both writers attempt."""
    s = w.store
    if kind == "source":
        table = hashes_table({f"row{i}": [f"k{i}"] for i in range(50)})
        path = w.path("raced_source")
        s.create_step(
            Step(
                step_type=StepType.SOURCE,
                fingerprint=SourceHashes(table).fingerprint,
                config=source_config("raced"),
            ),
            path,
        )
        return path, lambda: s.insert_source_data(path, table)
    leaves = s.query(w.draft_crm, return_leaf_id=True).column("leaf_id").to_pylist()
    if kind == "model":
        edges = edges_table([(leaves[0], leaves[1], 0.9)])
        path = w.path("raced_model")
        s.create_step(model_step(edges, QueryConfig(sources=("crm",))), path)
        return path, lambda: s.insert_model_data(path, edges)
    from matchbox_dagster.common.arrow import ResolverClusters

    clusters = clusters_table([leaves[:2]])
    path = w.path("raced_resolver")
    s.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=ResolverClusters(clusters).fingerprint,
            config=ResolverConfig(inputs=("draft_dedupe",)),
        ),
        path,
    )
    return path, lambda: s.insert_resolver_data(path, clusters)


@pytest.mark.parametrize("kind", ["source", "model", "resolver"])
def test_two_writers_on_one_step_one_wins_the_other_gets_the_lock_error(
    w: World, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path, insert = _writers(w, kind)
    try:
        entered, release = threading.Event(), threading.Event()
        _hold_inside_insert(monkeypatch, entered, release)
        outcome: list[BaseException | None] = []

        def first() -> None:
            try:
                insert()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=first, name="first")
        thread.start()
        try:
            assert entered.wait(20), "the first writer never reached its COPY"
            # The second writer: refused at once, and the first's work is not disturbed.
            for second in (insert, lambda: w.store.lock_step_data(path)):
                with pytest.raises(MatchboxLockError):
                    second()
            assert w.store.get_step_stage(path) == UploadStage.READY
        finally:
            release.set()
            thread.join(30)
        assert outcome == [None], outcome
        assert w.store.get_step_stage(path) == UploadStage.COMPLETE
        # After the winner committed, another attempt finds the data there.
        with pytest.raises(MatchboxStepExistingData):
            insert()
    finally:
        w.store.delete_step(path, certain=True)


def test_writers_racing_freely_exactly_one_wins(w: World) -> None:
    """Four threads insert the same step at once: one wins; each other gets the lock error or,
    if it came after the winner committed, finds the data there. Never a partial or double
    load."""
    path, insert = _writers(w, "source")
    try:
        barrier = threading.Barrier(4)
        results: list[BaseException | None] = []

        def attempt() -> None:
            barrier.wait(10)
            try:
                insert()
                results.append(None)
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results.count(None) == 1, results
        assert all(
            isinstance(r, MatchboxLockError | MatchboxStepExistingData) for r in results if r
        ), results
        assert w.store.get_source_data(path).num_rows == 50
    finally:
        w.store.delete_step(path, certain=True)
