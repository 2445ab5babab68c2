"""Inserting step data: happy paths, every refusal, and atomicity."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import QueryConfig, Step, StepPath, StepType, UploadStage
from matchbox_dagster.common.errors import (
    MatchboxArrowSchemaMismatch,
    MatchboxFingerprintMismatch,
    MatchboxInvalidData,
    MatchboxStepExistingData,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
)
from matchbox_dagster.common.fingerprint import cluster_id, leaf_id
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    clusters_table,
    edges_table,
    hashes_table,
    leaf_of,
    model_step,
    row_hash,
    source_config,
    store_state,
)


def _declare_source(store: MatchboxPostgres, path: StepPath, table: pa.Table) -> None:
    store.create_step(
        Step(
            step_type=StepType.SOURCE,
            fingerprint=SourceHashes(table).fingerprint,
            config=source_config(),
        ),
        path,
    )


def test_source_round_trip_larger_than_a_batch(settings: MatchboxSettings) -> None:
    """More hashes than batch_size, several keys per hash: every key comes back under its hash.

    Sliced Arrow batches with list columns have been seen writing keys under the wrong hash in
    another implementation of this contract; this checks ours key by key.
    """
    small = MatchboxPostgres(settings.model_copy(update={"batch_size": 7}))
    small.create_collection("batches")
    run = small.create_run("batches").run_id
    rows = {f"row-{i}": [f"k{i}-{j}" for j in range(1 + i % 4)] for i in range(100)}
    path = add_source(small, "batches", run, "people", rows)
    stored = small.get_source_data(path)
    assert stored.num_rows == sum(len(v) for v in rows.values())
    by_key = dict(
        zip(stored.column("key").to_pylist(), stored.column("hash").to_pylist(), strict=True)
    )
    leaf_by_key = dict(
        zip(stored.column("key").to_pylist(), stored.column("leaf_id").to_pylist(), strict=True)
    )
    for content, keys in rows.items():
        for key in keys:
            assert by_key[key] == row_hash(content)
            assert len(by_key[key]) == 32
            assert leaf_by_key[key] == leaf_id(row_hash(content))
    small.close()


def test_identical_rows_share_a_leaf_in_any_source(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    a = add_source(store, collection, run, "a", {"alice": ["a1"], "bob": ["a2"]})
    b = add_source(store, collection, run, "b", {"alice": ["b1", "b2"], "carol": ["b3"]})
    la, lb = leaf_of(store, a), leaf_of(store, b)
    assert la["a1"] == lb["b1"] == lb["b2"] == leaf_id(row_hash("alice"))
    assert la["a2"] != lb["b3"]
    other_run = store.create_run(collection).run_id
    c = add_source(store, collection, other_run, "a", {"alice": ["a1"]})
    assert leaf_of(store, c)["a1"] == la["a1"]


BAD_SOURCES = [
    (pa.table({"hash": [b"x" * 16]}), MatchboxArrowSchemaMismatch, "keys"),
    (pa.table({"hash": ["text"], "keys": [["1"]]}), MatchboxArrowSchemaMismatch, "hash"),
    (pa.table({"hash": [b"x" * 16], "keys": [[1]]}), MatchboxArrowSchemaMismatch, "keys"),
    (
        pa.table(
            {"hash": [None, b"y" * 16], "keys": [["1"], ["2"]]},
            schema=pa.schema([("hash", pa.binary()), ("keys", pa.list_(pa.string()))]),
        ),
        MatchboxInvalidData,
        "null",
    ),
    (pa.table({"hash": [b"x" * 16], "keys": [["1", None]]}), MatchboxInvalidData, "null key"),
    (
        pa.table({"hash": [b"x" * 16, b"y" * 16], "keys": [["1"], ["1"]]}),
        MatchboxInvalidData,
        "more than once",
    ),
    (pa.table({"hash": [b"x" * 16], "keys": [["1", "1"]]}), MatchboxInvalidData, "more than once"),
    (
        pa.table({"hash": [b"x" * 16, b"x" * 16], "keys": [["1"], ["2"]]}),
        MatchboxInvalidData,
        "hash row",
    ),
    (pa.table({"hash": [b"", b"y" * 16], "keys": [["1"], ["2"]]}), MatchboxInvalidData, "empty"),
    (
        pa.table(
            {"hash": [b"x" * 16], "keys": [[]]},
            schema=pa.schema([("hash", pa.binary()), ("keys", pa.list_(pa.string()))]),
        ),
        MatchboxInvalidData,
        "at least one key",
    ),
]


@pytest.mark.parametrize(("table", "error", "message"), BAD_SOURCES)
def test_bad_source_data_changes_nothing(
    store: MatchboxPostgres, collection: str, run: int, table: pa.Table, error: type, message: str
) -> None:
    path = StepPath(collection=collection, run=run, name="people")
    _declare_source(store, path, hashes_table({"a": ["1"]}))
    before = store_state(store)
    with pytest.raises(error, match=message):
        store.insert_source_data(path, table)
    assert store_state(store) == before
    assert store.get_step_stage(path) == UploadStage.READY


def test_fingerprint_must_match(store: MatchboxPostgres, collection: str, run: int) -> None:
    path = StepPath(collection=collection, run=run, name="people")
    declared = hashes_table({"a": ["1"], "b": ["2"]})
    _declare_source(store, path, declared)
    before = store_state(store)
    with pytest.raises(MatchboxFingerprintMismatch, match="fingerprint"):
        store.insert_source_data(path, hashes_table({"a": ["1"], "b": ["3"]}))
    assert store_state(store) == before
    # Row and column order do not matter.
    reordered = declared.take([1, 0]).select(["keys", "hash"])
    store.insert_source_data(path, reordered)
    assert store.get_step_stage(path) == UploadStage.COMPLETE


def test_unknown_or_wrong_steps(store: MatchboxPostgres, collection: str, run: int) -> None:
    table = hashes_table({"a": ["1"]})
    with pytest.raises(MatchboxStepNotFoundError):
        store.insert_source_data(StepPath(collection=collection, run=run, name="nope"), table)
    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"]})
    with pytest.raises(MatchboxStepTypeError):
        store.insert_model_data(src, edges_table([(1, 2, 0.5)]))


def test_model_data_round_trip(store: MatchboxPostgres, collection: str, run: int) -> None:
    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"], "c": ["3"]})
    leaves = leaf_of(store, src)
    edges = [(leaves["1"], leaves["2"], 0.75), (leaves["3"], leaves["2"], 0.25)]
    path = add_model(store, collection, run, "dedupe", edges, QueryConfig(sources=("people",)))
    got = store.get_model_data(path)
    assert sorted(
        zip(*(got.column(c).to_pylist() for c in got.column_names), strict=True)
    ) == sorted(edges)
    assert store.proposes.count() >= 2


def _declare_model(store, collection, run, edges, left, right=None, name="m"):
    path = StepPath(collection=collection, run=run, name=name)
    store.create_step(model_step(edges, left, right), path)
    return path


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(0, 1, 1.5)], r"\[0, 1\]"),
        ([(0, 1, -0.1)], r"\[0, 1\]"),
        ([(0, 1, math.nan)], "NaN"),
        ([(0, 0, 0.5)], "self-pair"),
        ([(0, 1, 0.5), (0, 1, 0.6)], "more than once"),
    ],
)
def test_bad_model_results_change_nothing(
    store: MatchboxPostgres, collection: str, run: int, edges: list, message: str
) -> None:
    src = add_source(store, collection, run, "people", {"a": ["1"], "b": ["2"]})
    leaves = list(leaf_of(store, src).values())
    concrete = [(leaves[a], leaves[b], s) for a, b, s in edges]
    path = _declare_model(
        store,
        collection,
        run,
        edges_table([(leaves[0], leaves[1], 0.5)]),
        QueryConfig(sources=("people",)),
    )
    before = store_state(store)
    with pytest.raises(MatchboxInvalidData, match=message):
        store.insert_model_data(path, edges_table(concrete))
    assert store_state(store) == before


def test_model_ids_must_belong_to_the_inputs(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    a = add_source(store, collection, run, "a", {"x": ["1"], "y": ["2"]})
    b = add_source(store, collection, run, "b", {"z": ["3"]})
    la, lb = leaf_of(store, a), leaf_of(store, b)
    # A deduper of `a` scoring a leaf of `b`.
    edges = edges_table([(la["1"], lb["3"], 0.9)])
    path = _declare_model(store, collection, run, edges, QueryConfig(sources=("a",)))
    before = store_state(store)
    with pytest.raises(MatchboxStepInvalidData, match="not ids of its input"):
        store.insert_model_data(path, edges)
    assert store_state(store) == before
    # The same pair is fine for a linker a → b, but not b → a.
    ok = _declare_model(
        store,
        collection,
        run,
        edges,
        QueryConfig(sources=("a",)),
        QueryConfig(sources=("b",)),
        name="link",
    )
    store.insert_model_data(ok, edges)
    flipped = edges_table([(lb["3"], la["1"], 0.9)])
    bad = _declare_model(
        store,
        collection,
        run,
        flipped,
        QueryConfig(sources=("a",)),
        QueryConfig(sources=("b",)),
        name="link_flipped",
    )
    with pytest.raises(MatchboxStepInvalidData, match="left_id"):
        store.insert_model_data(bad, flipped)
    # Ids that exist nowhere.
    ghost = edges_table([(la["1"], 12345, 0.9)])
    path = _declare_model(store, collection, run, ghost, QueryConfig(sources=("a",)), name="ghost")
    with pytest.raises(MatchboxStepInvalidData, match="12345"):
        store.insert_model_data(path, ghost)


def test_resolver_clusters_are_content_addressed_across_runs(
    store: MatchboxPostgres, collection: str
) -> None:
    ids = []
    for _ in range(2):
        run = store.create_run(collection).run_id
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
        res = add_resolver(
            store, collection, run, "resolve", [[leaves["1"], leaves["2"]]], ("dedupe",)
        )
        data = store.get_resolver_data(res)
        assert set(data.column("child_id").to_pylist()) == {leaves["1"], leaves["2"]}
        ids.append(set(data.column("parent_id").to_pylist()))
    assert ids[0] == ids[1] == {cluster_id([leaves["1"], leaves["2"]])}


def test_bad_resolver_data_changes_nothing(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
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
    r1 = add_resolver(store, collection, run, "r1", [[leaves["1"], leaves["2"]]], ("dedupe",))
    c12 = store.get_resolver_data(r1).column("parent_id")[0].as_py()
    add_model(
        store,
        collection,
        run,
        "dedupe2",
        [(c12, leaves["3"], 0.9)],
        QueryConfig(sources=("people",), resolver="r1"),
    )
    cases = [
        ([[leaves["1"], 999]], MatchboxStepInvalidData, "neither"),
        # c12 expands to leaves 1 and 2, so leaf 1 would be in two clusters.
        ([[c12, leaves["3"]], [leaves["1"]]], MatchboxStepInvalidData, "overlap"),
        ([[leaves["1"]], [leaves["1"]]], MatchboxInvalidData, "more than one parent"),
    ]
    for i, (clusters, error, message) in enumerate(cases):
        path = StepPath(collection=collection, run=run, name=f"bad{i}")
        from matchbox_dagster.common.arrow import ResolverClusters
        from matchbox_dagster.common.dtos import ResolverConfig

        table = clusters_table(clusters)
        fingerprint = (
            b"0" * 32 if error is MatchboxInvalidData else ResolverClusters(table).fingerprint
        )
        store.create_step(
            Step(
                step_type=StepType.RESOLVER,
                fingerprint=fingerprint,
                config=ResolverConfig(inputs=("dedupe2",)),
            ),
            path,
        )
        before = store_state(store)
        with pytest.raises(error, match=message):
            store.insert_resolver_data(path, table)
        assert store_state(store) == before


def test_second_insert_is_refused(store: MatchboxPostgres, collection: str, run: int) -> None:
    src = add_source(store, collection, run, "people", {"a": ["1"]})
    before = store_state(store)
    with pytest.raises(MatchboxStepExistingData, match="only once"):
        store.insert_source_data(src, hashes_table({"a": ["1"]}))
    assert store_state(store) == before


def test_empty_data_is_allowed(store: MatchboxPostgres, collection: str, run: int) -> None:
    src = add_source(store, collection, run, "empty", {})
    assert store.query(src).num_rows == 0
    assert store.get_step_stage(src) == UploadStage.COMPLETE


def test_partitions_are_written_in_leaf_order(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """Source rows and a resolver's own rows are stored by leaf id (query() merges them)."""
    rows = {f"row {i}": [f"k{i}", f"j{i}"] for i in range(300)}
    src = add_source(store, collection, run, "people", rows)
    stored = store.get_source_data(src).column("leaf_id").to_pylist()
    assert stored == sorted(stored) and len(set(stored)) == 300
    leaves = sorted(set(stored))
    add_model(
        store,
        collection,
        run,
        "dedupe",
        [(leaves[i], leaves[i + 1], 0.9) for i in range(0, 300, 2)],
        QueryConfig(sources=("people",)),
    )
    # Parents listed against leaf order, so only the store's sort can put them in order.
    pairs = [[leaves[i], leaves[299 - i]] for i in range(150)]
    res = add_resolver(store, collection, run, "resolve", pairs, ("dedupe",))
    own = store.get_resolver_data(res).column("child_id").to_pylist()
    assert own == sorted(own) and len(own) == 300
