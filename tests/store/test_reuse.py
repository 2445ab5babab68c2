"""Shared step data: identical steps store one copy, reference counted; reused steps; lookups."""

from __future__ import annotations

import psycopg
import pytest

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters
from matchbox_dagster.common.dtos import QueryConfig, Step, StepPath, UploadStage, WriteOutcome
from matchbox_dagster.common.errors import MatchboxStepNotFoundError
from matchbox_dagster.common.reuse import MatchboxReuseMismatch, ReusedStep
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import (
    clusters_table,
    edges_table,
    leaf_of,
    model_step,
    resolver_step,
    source_config,
    store_state,
)
from tests.store.test_write_step import ROWS, path, source

MORE = {**ROWS, "dave": ["4"]}
"""ROWS plus a row: the same leaves for keys 1-3, another source fingerprint."""


def sql(store: MatchboxPostgres, query: str, *params: object) -> list[tuple]:
    """Rows of a query on the store's schema."""
    with psycopg.connect(store.db.uri) as conn:
        conn.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(store.db.schema))
        )
        return conn.execute(query, params).fetchall()


def data_id(store: MatchboxPostgres, p: StepPath) -> int:
    """The data id of a step."""
    return sql(
        store,
        "SELECT s.data_id FROM steps s JOIN runs r USING (run_id) JOIN collections c "
        "USING (collection_id) WHERE c.name = %s AND s.run_id = %s AND s.name = %s",
        p.collection,
        p.run,
        p.name,
    )[0][0]


def partitions(store: MatchboxPostgres) -> set[str]:
    """Names of every partition of the bulk tables."""
    return {
        r[0]
        for r in sql(
            store,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            store.db.schema,
        )
    }


def graph_steps(store: MatchboxPostgres, src: StepPath) -> dict[str, tuple[Step, object]]:
    """The steps and payloads of a source "people", a deduper over it and a resolver."""
    leaves = leaf_of(store, src)
    edges = edges_table([(leaves["1"], leaves["2"], 0.9)])
    clusters = clusters_table([[leaves["1"], leaves["2"]], [leaves["3"]]])
    return {
        "dedupe": (model_step(edges, QueryConfig(sources=("people",))), ModelResults(edges)),
        "resolve": (resolver_step(clusters, ("dedupe",)), ResolverClusters(clusters)),
    }


def write_run(
    store: MatchboxPostgres, collection: str, run: int, rows: dict[str, list[str]] = ROWS
) -> tuple[dict[str, StepPath], dict[str, WriteOutcome]]:
    """Write the graph into ``run``; the paths and each write's outcome."""
    src = path(collection, run, "people")
    outcomes = {"people": store.write_step(src, *source(rows))}
    paths = {"people": src}
    for name, (step, payload) in graph_steps(store, src).items():
        paths[name] = path(collection, run, name)
        outcomes[name] = store.write_step(paths[name], step, payload)  # type: ignore[arg-type]
    return paths, outcomes


def reads(store: MatchboxPostgres, paths: dict[str, StepPath]) -> tuple[object, ...]:
    """Everything a run's graph reads back, to compare."""
    people, resolve = paths["people"], paths["resolve"]
    matches = [
        (m.cluster, m.source_id, m.target_id)
        for key in ("1", "3", "absent")
        for m in store.match(key, people, [people], resolve)
    ]
    return (
        matches,
        store.sample_for_eval(10, resolve, "_public")
        .sort_by([("root", "ascending"), ("leaf", "ascending"), ("key", "ascending")])
        .to_pylist(),
        store.get_source_data(paths["people"]).sort_by("key").to_pylist(),
        store.get_model_data(paths["dedupe"]).to_pylist(),
        store.get_resolver_data(paths["resolve"]).sort_by("child_id").to_pylist(),
        store.query(paths["people"], paths["resolve"]).sort_by("key").to_pylist(),
        store.step_statistics(paths["resolve"]),
    )


def test_identical_runs_store_one_copy(store: MatchboxPostgres, collection: str, run: int) -> None:
    """A second run with the same data shares every step's partition: no new rows."""
    first, outcomes = write_run(store, collection, run)
    assert set(outcomes.values()) == {WriteOutcome.STORED}
    before = partitions(store)
    rows = sql(store, "SELECT count(*) FROM source_rows")[0][0]
    second, outcomes = write_run(store, collection, store.create_run(collection).run_id)
    assert set(outcomes.values()) == {WriteOutcome.SHARED}
    assert partitions(store) == before
    assert sql(store, "SELECT count(*) FROM source_rows")[0][0] == rows
    for name in first:
        assert data_id(store, second[name]) == data_id(store, first[name])
        assert store.get_step_stage(second[name]) == UploadStage.COMPLETE
        assert store.step_data_origin(second[name]) == first[name]
        assert store.step_data_origin(first[name]) is None
    assert reads(store, second) == reads(store, first)
    # The same write again: nothing to do.
    step, hashes = source(ROWS)
    assert store.write_step(second["people"], step, hashes) == WriteOutcome.UNCHANGED


@pytest.mark.parametrize("delete_first", ["first", "second"])
def test_deleting_one_run_keeps_the_others_data(
    store: MatchboxPostgres, collection: str, run: int, delete_first: str
) -> None:
    """Either run can go; the other reads as before; the partitions go with the last user."""
    runs = {"first": run, "second": store.create_run(collection).run_id}
    graphs = {k: write_run(store, collection, r)[0] for k, r in runs.items()}
    expected = reads(store, graphs["first"])
    shared = partitions(store)
    keep = "second" if delete_first == "first" else "first"
    store.delete_run(collection, runs[delete_first], certain=True)
    assert partitions(store) == shared
    assert reads(store, graphs[keep]) == expected
    assert store.step_data_origin(graphs[keep]["people"]) is None  # no earlier user remains
    ids = {data_id(store, p) for p in graphs[keep].values()}
    store.delete_run(collection, runs[keep], certain=True)
    gone = {p for p in shared if int(p.rsplit("_", 1)[1]) in ids}
    assert len(gone) == 3 and not gone & partitions(store)


def test_deleting_a_shared_step_or_collection(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """delete_step keeps data another run uses; delete_collection removes it all."""
    first, _ = write_run(store, collection, run)
    second, _ = write_run(store, collection, store.create_run(collection).run_id)
    before = partitions(store)
    store.delete_step(first["people"], certain=True)  # with its descendants
    assert partitions(store) == before
    assert store.query(second["people"], second["resolve"]).num_rows == 3
    store.delete_collection(collection, certain=True)
    assert len(before - partitions(store)) == 3


def test_changed_data_or_inputs_are_not_shared(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """New source rows are stored; a model with the same edges over changed inputs is too."""
    first, _ = write_run(store, collection, run)
    second, outcomes = write_run(store, collection, store.create_run(collection).run_id, MORE)
    # Same edges and clusters (keys 1-3 keep their leaves), but the input "people" changed:
    # a resolver's partition holds what it inherits, a model's ids are its inputs'.
    assert outcomes == dict.fromkeys(outcomes, WriteOutcome.STORED)
    for name in first:
        assert data_id(store, second[name]) != data_id(store, first[name])
        assert store.step_data_origin(second[name]) is None
    assert store.query(second["people"]).num_rows == 4


def test_other_collections_never_share(store: MatchboxPostgres, collection: str, run: int) -> None:
    """Content addressing stays inside a collection."""
    first, _ = write_run(store, collection, run)
    other = f"{collection}_b"
    store.create_collection(other)
    second, outcomes = write_run(store, other, store.create_run(other).run_id)
    assert set(outcomes.values()) == {WriteOutcome.STORED}
    assert data_id(store, second["people"]) != data_id(store, first["people"])


def test_replacing_a_shared_step_keeps_the_original(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A mutable run's shared source replaced by new rows: the other run's data stays."""
    first, _ = write_run(store, collection, run)
    second, _ = write_run(store, collection, store.create_run(collection).run_id)
    expected = reads(store, first)
    assert store.write_step(second["people"], *source(MORE)) == WriteOutcome.REPLACED
    assert reads(store, first) == expected
    assert store.query(second["people"]).num_rows == 4
    # And back to the original rows: shared again (the replaced step's partition is gone).
    assert store.write_step(second["people"], *source(ROWS)) == WriteOutcome.SHARED
    assert data_id(store, second["people"]) == data_id(store, first["people"])


# --- ReusedStep ----------------------------------------------------------------------------


def test_reused_step_shares_the_named_data(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A ReusedStep payload writes no data: the step points at the named step's."""
    first, _ = write_run(store, collection, run)
    second_run = store.create_run(collection).run_id
    rows = sql(store, "SELECT count(*) FROM source_rows")[0][0]
    for name, p in first.items():
        step = store.get_step(p)
        target = path(collection, second_run, name)
        assert store.write_step(target, step, ReusedStep(from_path=p)) == WriteOutcome.SHARED
        assert store.step_data_origin(target) == p
    assert sql(store, "SELECT count(*) FROM source_rows")[0][0] == rows
    second = {name: path(collection, second_run, name) for name in first}
    assert reads(store, second) == reads(store, first)
    again = store.write_step(
        second["dedupe"], store.get_step(first["dedupe"]), ReusedStep(from_path=first["dedupe"])
    )
    assert again == WriteOutcome.UNCHANGED


def test_reused_step_mismatches_write_nothing(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """Another type, config, fingerprint, collection, inputs or no data: typed error."""
    first, _ = write_run(store, collection, run)
    changed, _ = write_run(store, collection, store.create_run(collection).run_id, MORE)
    target_run = store.create_run(collection).run_id
    src_step = store.get_step(first["people"])
    other_config = Step(
        step_type=src_step.step_type,
        fingerprint=src_step.fingerprint,
        config=source_config("elsewhere"),
    )
    other_print = source(MORE)[0]
    declared = path(collection, target_run, "declared")
    store.create_step(source(MORE, "declared")[0], declared)  # READY, no data
    other = f"{collection}_b"
    store.create_collection(other)
    elsewhere, _ = write_run(store, other, store.create_run(other).run_id)
    # The deduper over "people": its input in target_run must be like first's.
    store.write_step(path(collection, target_run, "people"), *source(MORE))
    cases = [
        ("p2", src_step, first["dedupe"], "is a model step"),
        ("p2", other_config, first["people"], "config differs"),
        ("p2", other_print, first["people"], "fingerprint"),
        ("p2", src_step, elsewhere["people"], "in collection"),
        ("declared", store.get_step(declared), declared, "no complete data"),
        ("dedupe", store.get_step(first["dedupe"]), first["dedupe"], "inputs"),
    ]
    assert store.get_step(changed["dedupe"]).fingerprint == cases[-1][1].fingerprint
    before = store_state(store)
    for name, step, origin, why in cases:
        with pytest.raises(MatchboxReuseMismatch, match=why):
            store.write_step(path(collection, target_run, name), step, ReusedStep(from_path=origin))
        assert store_state(store) == before, why
    with pytest.raises(MatchboxStepNotFoundError):
        store.write_step(
            path(collection, target_run, "x"),
            src_step,
            ReusedStep(from_path=path(collection, run, "missing")),
        )
    assert store_state(store) == before


# --- find_reusable_step --------------------------------------------------------------------


def promoted(store: MatchboxPostgres, collection: str, run: int) -> None:
    """Make ``run`` immutable and the default."""
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)


def test_find_reusable_step(store: MatchboxPostgres, collection: str, run: int) -> None:
    """The default run's step, when its config and its inputs' fingerprints are unchanged."""
    first, _ = write_run(store, collection, run)
    new = store.create_run(collection).run_id
    dedupe = store.get_step(first["dedupe"]).config.model_dump(mode="json")
    wanted = path(collection, new, "dedupe")
    store.write_step(path(collection, new, "people"), *source(ROWS))
    assert store.find_reusable_step(wanted, dedupe, ["people"]) is None  # no default run
    promoted(store, collection, run)
    assert store.find_reusable_step(wanted, dedupe, ["people"]) == first["dedupe"]
    # Each failing condition.
    other = {**dedupe, "model_settings": {"threshold": 0.75}}
    assert store.find_reusable_step(wanted, other, ["people"]) is None
    assert store.find_reusable_step(path(collection, new, "nope"), dedupe, []) is None
    assert store.find_reusable_step(wanted, dedupe, ["people", "absent"]) is None
    store.write_step(path(collection, new, "people"), *source(MORE))  # input changed
    assert store.find_reusable_step(wanted, dedupe, ["people"]) is None


def test_find_reusable_step_needs_complete_steps(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """The run's input must hold data, and so must the default run's step."""
    first, _ = write_run(store, collection, run)
    resolver = store.get_step(first["resolve"])
    waiting = path(collection, run, "waiting")
    store.create_step(
        Step(step_type=resolver.step_type, fingerprint=b"\x01" * 32, config=resolver.config),
        waiting,
    )
    promoted(store, collection, run)
    new = store.create_run(collection).run_id
    store.create_step(source(ROWS)[0], path(collection, new, "people"))  # READY
    dedupe = store.get_step(first["dedupe"]).config.model_dump(mode="json")
    assert store.find_reusable_step(path(collection, new, "dedupe"), dedupe, ["people"]) is None
    store.write_step(path(collection, new, "people"), *source(ROWS))
    assert (
        store.find_reusable_step(path(collection, new, "dedupe"), dedupe, ["people"])
        == (first["dedupe"])
    )
    config = resolver.config.model_dump(mode="json")
    assert store.find_reusable_step(path(collection, new, "waiting"), config, []) is None
