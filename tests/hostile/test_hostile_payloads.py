"""Malformed Arrow data for the three inserts and the payload types of ``common/arrow.py``.

Every case is refused with a typed ``MatchboxError`` naming the problem, and the store is
exactly as it was (rows, partitions, indexes, ``dump()``).
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.common.errors import (
    MatchboxArrowSchemaMismatch,
    MatchboxError,
    MatchboxFingerprintMismatch,
    MatchboxInvalidData,
    MatchboxStepInvalidData,
)
from tests.factories import (
    clusters_table,
    edges_table,
    hashes_table,
    leaf_of,
    model_step,
    source_config,
)
from tests.hostile.conftest import World, refused, unchanged

BIN, STR = pa.large_binary(), pa.large_string()
KEYS = pa.large_list(STR)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def src(hashes: Any, keys: Any, **extra: Any) -> pa.Table:
    return pa.table({"hash": hashes, "keys": keys, **extra})


def edges(left: Any, right: Any, score: Any) -> pa.Table:
    return pa.table({"left_id": left, "right_id": right, "score": score})


def bad_utf8_keys() -> pa.Array:
    """Two keys, the second of which is the bytes ``ff fe``: not UTF-8, built without checks."""
    offsets = pa.array([0, 2, 4], pa.int64()).buffers()[1]
    strings = pa.LargeStringArray.from_buffers(2, offsets, pa.py_buffer(b"ok\xff\xfe"))
    return pa.LargeListArray.from_arrays(pa.array([0, 1, 2], pa.int64()), strings)


def bad_utf8_strings() -> pa.Array:
    offsets = pa.array([0, 3], pa.int32()).buffers()[1]
    return pa.StringArray.from_buffers(1, offsets, pa.py_buffer(b"\xc3\x28\xa0"))


H2 = pa.array([digest("a"), digest("b")], BIN)
K2 = pa.array([["k1"], ["k2"]], KEYS)
BIG = 200_000

# --- source hashes ----------------------------------------------------------------------------

SOURCE_CASES: dict[str, Callable[[], Any]] = {
    "no keys column": lambda: pa.table({"hash": H2}),
    "no hash column": lambda: pa.table({"keys": K2}),
    "no columns at all": lambda: pa.table({}),
    "columns misnamed": lambda: pa.table({"Hash": H2, "Keys": K2}),
    "hash as string": lambda: src(pa.array(["a", "b"]), K2),
    "hash as int64": lambda: src(pa.array([1, 2]), K2),
    "hash as list of binary": lambda: src(pa.array([[b"a"], [b"b"]]), K2),
    "keys as plain string": lambda: src(H2, pa.array(["k1", "k2"])),
    "keys as list of int": lambda: src(H2, pa.array([[1], [2]])),
    "keys as list of binary": lambda: src(H2, pa.array([[b"k1"], [b"k2"]])),
    "keys nested twice": lambda: src(H2, pa.array([[["k1"]], [["k2"]]])),
    "keys dictionary-encoded": lambda: src(
        H2, pa.array([["k1"], ["k2"]], pa.list_(pa.dictionary(pa.int8(), pa.string())))
    ),
    "keys as a map": lambda: src(H2, pa.array([[("k", "v")], [("l", "w")]], pa.map_(STR, STR))),
    "keys as fixed-size list": lambda: src(H2, pa.array([["k1"], ["k2"]], pa.list_(STR, 1))),
    "null hash": lambda: src(pa.array([digest("a"), None], BIN), K2),
    "null key list": lambda: src(H2, pa.array([["k1"], None], KEYS)),
    "null key in a list": lambda: src(H2, pa.array([["k1"], ["k2", None]], KEYS)),
    "empty hash": lambda: src(pa.array([digest("a"), b""], BIN), K2),
    "hash without keys": lambda: src(H2, pa.array([["k1"], []], KEYS)),
    "hash listed twice": lambda: src(pa.array([digest("a"), digest("a")], BIN), K2),
    "key under two hashes": lambda: src(H2, pa.array([["k1"], ["k1"]], KEYS)),
    "key twice under one hash": lambda: src(H2, pa.array([["k1", "k1"], ["k2"]], KEYS)),
    "key not UTF-8": lambda: src(H2, bad_utf8_keys()),
    "two hash columns": lambda: pa.Table.from_arrays([H2, H2, K2], names=["hash", "hash", "keys"]),
    "a dict, not a table": lambda: {"hash": [b"a"], "keys": [["k"]]},
    "None": lambda: None,
    "a pandas frame": lambda: pd.DataFrame({"hash": [b"a"], "keys": [["k"]]}),
    "a list of rows": lambda: [(b"a", ["k"])],
    "polars frame of ints": lambda: pl.DataFrame({"hash": [1, 2], "keys": [[1], [2]]}),
    "polars categorical keys": lambda: pl.DataFrame(
        {"hash": [b"a", b"b"], "keys": [["k1"], ["k2"]]},
        schema={"hash": pl.Binary, "keys": pl.List(pl.Categorical)},
    ),
    "record batch without keys": lambda: pa.RecordBatch.from_pydict({"hash": H2}),
    "huge batch, one duplicate key at the end": lambda: src(
        pa.array([digest(str(i)) for i in range(BIG)], BIN),
        pa.array([[f"k{i}"] for i in range(BIG - 1)] + [["k0"]], KEYS),
    ),
    "huge batch, one null key at the end": lambda: src(
        pa.array([digest(str(i)) for i in range(BIG)], BIN),
        pa.array([[f"k{i}"] for i in range(BIG - 1)] + [[None]], KEYS),
    ),
}

SCHEMA_ERRORS = {
    "no keys column",
    "no hash column",
    "no columns at all",
    "columns misnamed",
    "hash as string",
    "hash as int64",
    "hash as list of binary",
    "keys as plain string",
    "keys as list of int",
    "keys as list of binary",
    "keys nested twice",
    "keys dictionary-encoded",
    "keys as a map",
    "keys as fixed-size list",
    "two hash columns",
    "a dict, not a table",
    "None",
    "a pandas frame",
    "a list of rows",
    "polars frame of ints",
    "polars categorical keys",
    "record batch without keys",
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_bad_source_hashes_are_refused(w: World, case: str) -> None:
    table = SOURCE_CASES[case]()
    error = MatchboxArrowSchemaMismatch if case in SCHEMA_ERRORS else MatchboxInvalidData
    if not case.startswith("huge"):  # the insert builds the payload itself
        with pytest.raises(error):
            SourceHashes(table)
    exc = refused(w.store, lambda: w.store.insert_source_data(w.pending_source, table), error)
    if case.startswith("huge"):
        assert "k0" in str(exc) or "null" in str(exc)


def test_extra_source_columns_are_dropped_not_stored() -> None:
    table = src(H2, K2, secret=pa.array(["x", "y"]), hash_2=H2)
    assert SourceHashes(table).table.column_names == ["hash", "keys"]


# --- model results ----------------------------------------------------------------------------

I2 = pa.array([1, 3], pa.int64())
J2 = pa.array([2, 4], pa.int64())
S2 = pa.array([0.5, 0.25], pa.float32())

MODEL_CASES: dict[str, Callable[[], Any]] = {
    "no score column": lambda: pa.table({"left_id": I2, "right_id": J2}),
    "no left_id column": lambda: pa.table({"right_id": J2, "score": S2}),
    "no columns at all": lambda: pa.table({}),
    "score as string": lambda: edges(I2, J2, pa.array(["0.5", "0.25"])),
    "score as int": lambda: edges(I2, J2, pa.array([0, 1])),
    "score as bool": lambda: edges(I2, J2, pa.array([True, False])),
    "score as decimal": lambda: edges(I2, J2, pa.array([decimal.Decimal("0.5")] * 2)),
    "ids as float": lambda: edges(pa.array([1.0, 3.0]), J2, S2),
    "ids as string": lambda: edges(pa.array(["1", "3"]), J2, S2),
    "ids as timestamps": lambda: edges(pa.array([1, 3], pa.timestamp("s")), J2, S2),
    "ids as structs": lambda: edges(pa.array([{"id": 1}, {"id": 3}]), J2, S2),
    "id beyond int64": lambda: edges(pa.array([2**64 - 1, 3], pa.uint64()), J2, S2),
    "two score columns": lambda: pa.Table.from_arrays(
        [I2, J2, S2, S2], names=["left_id", "right_id", "score", "score"]
    ),
    "null left_id": lambda: edges(pa.array([1, None], pa.int64()), J2, S2),
    "null score": lambda: edges(I2, J2, pa.array([0.5, None], pa.float32())),
    "NaN score": lambda: edges(I2, J2, pa.array([0.5, float("nan")])),
    "+inf score": lambda: edges(I2, J2, pa.array([0.5, float("inf")])),
    "-inf score": lambda: edges(I2, J2, pa.array([float("-inf"), 0.5])),
    "negative score": lambda: edges(I2, J2, pa.array([-0.01, 0.5])),
    "score above one": lambda: edges(I2, J2, pa.array([1.0001, 0.5], pa.float32())),
    "score 1e300 (inf as float32)": lambda: edges(I2, J2, pa.array([1e300, 0.5])),
    "score -1e30": lambda: edges(I2, J2, pa.array([-1e30, 0.5], pa.float32())),
    "self-pair": lambda: edges(pa.array([1, 3]), pa.array([1, 4]), S2),
    "pair scored twice": lambda: edges(pa.array([1, 1]), pa.array([2, 2]), pa.array([0.5, 0.6])),
    "a pandas frame": lambda: pd.DataFrame({"left_id": [1], "right_id": [2], "score": [0.5]}),
    "None": lambda: None,
    "huge batch, a NaN at the end": lambda: edges(
        pa.array(np.arange(BIG, dtype=np.int64)),
        pa.array(np.arange(BIG, dtype=np.int64) + BIG),
        pa.array(np.r_[np.full(BIG - 1, 0.5), np.nan]),
    ),
    "huge batch, a self-pair at the end": lambda: edges(
        pa.array(np.arange(BIG, dtype=np.int64)),
        pa.array(np.r_[np.arange(BIG - 1, dtype=np.int64) + BIG, BIG - 1]),
        pa.array(np.full(BIG, 0.5, dtype=np.float32)),
    ),
}

MODEL_SCHEMA_ERRORS = {
    "no score column",
    "no left_id column",
    "no columns at all",
    "score as string",
    "score as int",
    "score as bool",
    "score as decimal",
    "ids as float",
    "ids as string",
    "ids as timestamps",
    "ids as structs",
    "id beyond int64",
    "two score columns",
    "a pandas frame",
    "None",
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_results_are_refused(w: World, case: str) -> None:
    table = MODEL_CASES[case]()
    error = MatchboxArrowSchemaMismatch if case in MODEL_SCHEMA_ERRORS else MatchboxInvalidData
    with pytest.raises(error):
        ModelResults(table)
    refused(w.store, lambda: w.store.insert_model_data(w.pending_model, table), error)


def test_scores_at_the_edges_are_kept() -> None:
    kept = ModelResults(edges(I2, J2, pa.array([0.0, 1.0], pa.float32())))
    assert kept.table.column("score").to_pylist() == [0.0, 1.0]


# --- resolver clusters ------------------------------------------------------------------------

RESOLVER_CASES: dict[str, Callable[[], Any]] = {
    "no child_id column": lambda: pa.table({"parent_id": I2}),
    "parent as string": lambda: pa.table({"parent_id": ["a", "b"], "child_id": I2}),
    "child as float": lambda: pa.table({"parent_id": I2, "child_id": [1.5, 2.5]}),
    "child beyond int64": lambda: pa.table(
        {"parent_id": I2, "child_id": pa.array([2**63, 1], pa.uint64())}
    ),
    "null child": lambda: pa.table({"parent_id": I2, "child_id": pa.array([1, None])}),
    "null parent": lambda: pa.table({"parent_id": pa.array([None, 1]), "child_id": I2}),
    "child under two parents": lambda: pa.table({"parent_id": [0, 1], "child_id": [5, 5]}),
    "child twice under one parent": lambda: pa.table({"parent_id": [0, 0], "child_id": [5, 5]}),
    "two child columns": lambda: pa.Table.from_arrays(
        [I2, J2, J2], names=["parent_id", "child_id", "child_id"]
    ),
    "huge batch, a repeated child at the end": lambda: pa.table(
        {
            "parent_id": np.arange(BIG, dtype=np.int64) // 2,
            "child_id": np.r_[np.arange(BIG - 1, dtype=np.int64), 0],
        }
    ),
}

RESOLVER_SCHEMA_ERRORS = {
    "no child_id column",
    "parent as string",
    "child as float",
    "child beyond int64",
    "two child columns",
}


@pytest.mark.parametrize("case", list(RESOLVER_CASES))
def test_bad_resolver_clusters_are_refused(w: World, case: str) -> None:
    table = RESOLVER_CASES[case]()
    error = MatchboxArrowSchemaMismatch if case in RESOLVER_SCHEMA_ERRORS else MatchboxInvalidData
    with pytest.raises(error):
        ResolverClusters(table)
    refused(w.store, lambda: w.store.insert_resolver_data(w.pending_resolver, table), error)


# --- valid tables whose ids or text the store itself must refuse --------------------------------


@pytest.fixture
def declare(w: World) -> Iterator[Callable[[StepType, bytes], StepPath]]:
    """Declare scratch steps in the draft run (deleted afterwards) with a given fingerprint."""
    made: list[StepPath] = []

    def make(step_type: StepType, fingerprint: bytes) -> StepPath:
        path = w.path(f"scratch_{len(made)}")
        config: Any = {
            StepType.SOURCE: source_config(path.name),
            StepType.MODEL: ModelConfig(
                type=ModelType.DEDUPER,
                model_class="Hostile",
                left_query=QueryConfig(sources=("crm",)),
            ),
            StepType.RESOLVER: ResolverConfig(inputs=("draft_dedupe",)),
        }[step_type]
        w.store.create_step(Step(step_type=step_type, fingerprint=fingerprint, config=config), path)
        made.append(path)
        return path

    yield make
    for path in made:
        w.store.delete_step(path, certain=True)


def _draft_leaves(w: World) -> dict[str, int]:
    return leaf_of(w.store, w.draft_crm)


STORE_MODEL_CASES: dict[str, Callable[[World], pa.Table]] = {
    "ids that exist nowhere": lambda w: edges_table([(123, 456, 0.5)]),
    "negative ids": lambda w: edges_table([(-1, -2, 0.5)]),
    "leaf of a source outside the model's input": lambda w: edges_table(
        [(_draft_leaves(w)["c1"], w.data.le["e3"], 0.5)]
    ),
    "leaf of the immutable run's source only": lambda w: edges_table(
        [(_draft_leaves(w)["c1"], w.data.lc["c4"], 0.5)]
    ),
    "a cluster id of another resolver": lambda w: edges_table(
        [
            (
                _draft_leaves(w)["c1"],
                w.store.query(w.data.crm, w.data.r_crm).column("id")[0].as_py(),
                0.5,
            )
        ]
    ),
    "one bad id among many good ones": lambda w: edges_table(
        [(_draft_leaves(w)["c1"], _draft_leaves(w)["c9"], 0.5), (_draft_leaves(w)["c9"], 7, 0.5)]
    ),
}


@pytest.mark.parametrize("case", list(STORE_MODEL_CASES))
def test_model_ids_must_be_ids_of_the_input(w: World, declare: Any, case: str) -> None:
    table = STORE_MODEL_CASES[case](w)
    path = declare(StepType.MODEL, ModelResults(table).fingerprint)
    exc = refused(w.store, lambda: w.store.insert_model_data(path, table), MatchboxStepInvalidData)
    assert "not ids of its input" in str(exc)


def test_linker_ids_must_come_from_their_own_side(w: World) -> None:
    lc, le = _draft_leaves(w), leaf_of(w.store, w.path("erp"))
    table = ModelResults(edges_table([(le["e2"], lc["c9"], 0.5)]))  # right-side id on the left
    linker = w.store.get_step(w.pending_linker)
    path = w.path("scratch_linker")
    w.store.create_step(linker.model_copy(update={"fingerprint": table.fingerprint}), path)
    try:
        exc = refused(
            w.store, lambda: w.store.insert_model_data(path, table), MatchboxStepInvalidData
        )
        assert "left_id" in str(exc)
    finally:
        w.store.delete_step(path, certain=True)


STORE_RESOLVER_CASES: dict[str, Callable[[World], pa.Table]] = {
    "children that exist nowhere": lambda w: clusters_table([[123, 456]]),
    "negative children": lambda w: clusters_table([[-5, -6]]),
    "a leaf of a source outside the lineage": lambda w: clusters_table(
        [[_draft_leaves(w)["c1"], leaf_of(w.store, w.path("erp"))["e2"]]]
    ),
    "a cluster whose leaves are outside the lineage": lambda w: clusters_table(
        [[w.store.query(w.data.crm, w.data.r_crm).column("id")[0].as_py()]]
    ),
}


@pytest.mark.parametrize("case", list(STORE_RESOLVER_CASES))
def test_resolver_children_must_be_in_the_lineage(w: World, declare: Any, case: str) -> None:
    table = STORE_RESOLVER_CASES[case](w)
    path = declare(StepType.RESOLVER, ResolverClusters(table).fingerprint)
    refused(w.store, lambda: w.store.insert_resolver_data(path, table), MatchboxStepInvalidData)


def test_key_with_nul_is_refused_before_the_database(w: World, declare: Any) -> None:
    """PostgreSQL text cannot hold NUL: the payload's validation refuses it (issue 15 item 17)."""
    table = hashes_table({"a": ["k1"], "b": ["nul\x00key"]})
    with pytest.raises(MatchboxInvalidData, match="NUL"):
        SourceHashes(table)
    path = declare(StepType.SOURCE, b"\x00" * 32)
    refused(w.store, lambda: w.store.insert_source_data(path, table), MatchboxInvalidData)


def test_fingerprint_mismatch_for_a_valid_table(w: World) -> None:
    for path, call, table in [
        (w.pending_source, w.store.insert_source_data, hashes_table({"other": ["x"]})),
        (w.pending_model, w.store.insert_model_data, edges_table([(1, 2, 0.5)])),
        (w.pending_resolver, w.store.insert_resolver_data, clusters_table([[1, 2]])),
    ]:
        refused(w.store, lambda p=path, c=call, t=table: c(p, t), MatchboxFingerprintMismatch)


@pytest.mark.parametrize(
    "kind", ["source", "model", "resolver"], ids=["empty source", "empty model", "empty resolver"]
)
def test_empty_tables_with_another_fingerprint_are_refused(w: World, kind: str) -> None:
    path, call, table = {
        "source": (w.pending_source, w.store.insert_source_data, hashes_table({})),
        "model": (w.pending_model, w.store.insert_model_data, edges_table([])),
        "resolver": (w.pending_resolver, w.store.insert_resolver_data, clusters_table([])),
    }[kind]
    refused(w.store, lambda: call(path, table), MatchboxFingerprintMismatch)


def test_huge_strings_and_raw_bytes_are_stored_verbatim(w: World, declare: Any) -> None:
    """A 1 MB key and a 1 MB hash of bytes that are not UTF-8 are data, not errors."""
    key = "κ" * 500_000  # 1 MB of UTF-8
    raw = bytes(range(256)) * 4096  # 1 MB, every byte value
    table = pa.table(
        {"hash": pa.array([raw, b"\xff\xfe"], BIN), "keys": pa.array([[key], ["k"]], KEYS)}
    )
    path = declare(StepType.SOURCE, SourceHashes(table).fingerprint)
    w.store.insert_source_data(path, table)
    stored = w.store.get_source_data(path)
    assert sorted(stored.column("key").to_pylist()) == sorted([key, "k"])
    assert set(stored.column("hash").to_pylist()) == {raw, b"\xff\xfe"}


# --- generated --------------------------------------------------------------------------------


def _bad_as_float32(x: float) -> bool:
    """Scores are checked as stored (float32): 1 + 1e-12 is 1.0 there, and valid."""
    with np.errstate(over="ignore"):
        return bool(np.isnan(x) or not 0 <= np.float32(x) <= 1)


bad_score = st.one_of(st.floats().filter(_bad_as_float32), st.just(float("nan")))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    good=st.lists(st.floats(0, 1, width=32), max_size=20),
    bad=st.lists(bad_score, min_size=1, max_size=3),
    data=st.data(),
)
def test_generated_bad_scores_are_refused(w: World, good: list, bad: list, data: Any) -> None:
    scores = data.draw(st.permutations(good + bad))
    n = len(scores)
    table = edges(
        pa.array(range(n), pa.int64()),
        pa.array(range(n, 2 * n), pa.int64()),
        pa.array(scores, pa.float64()),
    )
    with pytest.raises(MatchboxInvalidData):
        ModelResults(table)
    refused(
        w.store,
        lambda: w.store.insert_model_data(w.pending_model, table),
        MatchboxInvalidData,
    )


keys_strategy = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=30
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.dictionaries(
        st.binary(min_size=1, max_size=32),
        st.lists(keys_strategy, min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=15,
    ),
    defect=st.sampled_from(["duplicate key", "empty hash", "null key", "no keys", "null hash"]),
    data=st.data(),
)
def test_generated_bad_source_hashes_are_refused(
    w: World, rows: dict, defect: str, data: Any
) -> None:
    seen: set[str] = set()
    clean = {h: [k for k in ks if not (k in seen or seen.add(k))] for h, ks in rows.items()}
    clean = {h: ks for h, ks in clean.items() if ks}
    if not clean:
        clean = {b"h": ["k"]}
    hashes, keys = list(clean), list(clean.values())
    i = data.draw(st.integers(0, len(hashes) - 1))
    if defect == "duplicate key":
        hashes.append(b"\x00extra-row\x00")
        keys.append([keys[i][0]])
    elif defect == "empty hash":
        hashes[i] = b""
    elif defect == "null key":
        keys[i] = [*keys[i], None]
    elif defect == "no keys":
        keys[i] = []
    else:
        hashes[i] = None
    table = src(pa.array(hashes, BIN), pa.array(keys, KEYS))
    with pytest.raises(MatchboxInvalidData):
        SourceHashes(table)
    refused(
        w.store,
        lambda: w.store.insert_source_data(w.pending_source, table),
        MatchboxInvalidData,
    )


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=10, unique=True),
)
def test_generated_unknown_ids_never_reach_the_model(w: World, ids: list[int]) -> None:
    """Random ids (as good as never leaves of the input) are refused by the id check; the
    fingerprint check comes first, so the step is re-declared with the data's fingerprint."""
    pairs = [(a, b, 0.5) for a, b in zip(ids, ids[1:] + ids[:1], strict=True) if a != b]
    if not pairs:
        return
    table = edges_table(pairs)
    valid = set(_draft_leaves(w).values())
    if all(a in valid and b in valid for a, b, _ in pairs):
        return
    path = w.path("generated_model")
    w.store.create_step(model_step(table, QueryConfig(sources=("crm",))), path)
    try:
        refused(
            w.store,
            lambda: w.store.insert_model_data(path, table),
            MatchboxStepInvalidData,
        )
    finally:
        w.store.delete_step(path, certain=True)


def test_every_payload_error_is_a_value_error_too() -> None:
    """Callers catching ``ValueError`` (pydantic, pandas habits) still catch bad data."""
    for table in (None, pa.table({}), edges(I2, J2, pa.array([2.0, 0.5]))):
        with pytest.raises(ValueError) as info:
            ModelResults(table)
        assert isinstance(info.value, MatchboxError)


def test_refused_payloads_leave_a_store_in_use_unchanged(w: World) -> None:
    """Three bad inserts in a row, and the store still answers queries the same way."""
    before = w.store.query(w.data.crm, w.data.r_all)
    with unchanged(w.store, full=True):
        for call in (
            lambda: w.store.insert_source_data(w.pending_source, SOURCE_CASES["null hash"]()),
            lambda: w.store.insert_model_data(w.pending_model, MODEL_CASES["NaN score"]()),
            lambda: w.store.insert_resolver_data(
                w.pending_resolver, RESOLVER_CASES["child under two parents"]()
            ),
        ):
            with pytest.raises(MatchboxInvalidData):
                call()
    assert w.store.query(w.data.crm, w.data.r_all).equals(before)
