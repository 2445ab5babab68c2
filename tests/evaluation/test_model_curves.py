"""Issue 15 item 5: the precision/recall-by-threshold table's recall is of all true pairs.

A real store holds a source of eight records (entities a×3, b×2, c, d×2: five true pairs), a
deduper whose edges find two of them (and one wrong pair), a model with no edges, and a
linker; the resolver's evaluation check must show recall 2/5 at 0.75, not 2/2, and "no edges"
where a model keeps none.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from matchbox_dagster.common.dtos import QueryConfig, StepPath
from matchbox_dagster.dagster.checks import resolver_checks
from matchbox_dagster.evaluation.entities import resolver_entities
from matchbox_dagster.evaluation.resolver import evaluate_resolver, true_pairs
from matchbox_dagster.specs import ResolverChecksSpec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_resolver, add_source, leaf_of

KEYS = ["a1", "a2", "a3", "b1", "b2", "c1", "d1", "d2"]
TRUTH = {"people": "left(key, 1)", "others": "left(key, 1)"}


@pytest.fixture
def graph(store: MatchboxPostgres, collection: str, run: int) -> StepPath:
    """people (8 records), others (a4, b3, e1); dedupe, empty, link_po; resolver over them."""
    people = add_source(store, collection, run, "people", {k: [k] for k in KEYS})
    others = add_source(store, collection, run, "others", {k: [k] for k in ["a4", "b3", "e1"]})
    leaf = leaf_of(store, people) | leaf_of(store, others)

    def edge(a: str, b: str, score: float) -> tuple[int, int, float]:
        return (min(leaf[a], leaf[b]), max(leaf[a], leaf[b]), score)

    add_model(
        store,
        collection,
        run,
        "dedupe",
        [edge("a1", "a2", 0.875), edge("b1", "b2", 0.75), edge("a1", "c1", 0.625)],
        QueryConfig(sources=["people"]),
    )
    add_model(store, collection, run, "empty", [], QueryConfig(sources=["people"]))
    # Linker people × others: true cross pairs a×a4 (3) and b×b3 (2) = 5; it finds a1–a4.
    add_model(
        store,
        collection,
        run,
        "link_po",
        [(leaf["a1"], leaf["a4"], 1.0)],
        QueryConfig(sources=["people"]),
        QueryConfig(sources=["others"]),
    )
    clusters = [[leaf["a1"], leaf["a2"], leaf["a4"]], [leaf["b1"], leaf["b2"]]]
    inputs = ("dedupe", "empty", "link_po")
    return add_resolver(store, collection, run, "resolved", clusters, inputs)


def _rows(curve: list[dict], model: str) -> dict[float, dict]:
    return {round(r["threshold"], 2): r for r in curve if r["model"] == model}


def test_recall_by_threshold_divides_by_all_true_pairs(
    store: MatchboxPostgres, graph: StepPath
) -> None:
    sources = ["people", "others"]
    entities = resolver_entities(store, graph, sources, 64, TRUTH)
    found = evaluate_resolver(
        store, graph, ["dedupe", "empty", "link_po"], entities, truth=True, sources=sources
    )
    dedupe = _rows(found.curve, "dedupe")
    assert dedupe[0.75]["true_pairs"] == pytest.approx(5)
    assert dedupe[0.85]["recall"] == pytest.approx(1 / 5)
    assert dedupe[0.75]["recall"] == pytest.approx(2 / 5)  # not 2/2: three true pairs missed
    assert dedupe[0.75]["precision"] == pytest.approx(1.0)
    assert dedupe[0.6]["precision"] == pytest.approx(2 / 3)
    assert dedupe[0.6]["recall"] == pytest.approx(2 / 5)
    assert dedupe[0.9]["edges"] == 0
    assert dedupe[0.9]["precision"] is dedupe[0.9]["recall"] is dedupe[0.9]["f1"] is None
    empty = _rows(found.curve, "empty").values()
    assert all(r["edges"] == 0 and r["recall"] is None for r in empty)
    link = _rows(found.curve, "link_po")
    assert link[0.9]["true_pairs"] == pytest.approx(5)  # only pairs across the two sides
    assert link[0.9]["recall"] == pytest.approx(1 / 5)


def test_the_check_table_says_which_recall_and_no_edges(
    store: MatchboxPostgres, graph: StepPath
) -> None:
    results = resolver_checks(
        store,
        graph,
        sources=["people", "others"],
        models=["dedupe", "empty", "link_po"],
        checks=ResolverChecksSpec(
            max_cluster_size=10, min_precision=0.1, min_recall=0.1, truth=TRUTH
        ),
        batch_size=64,
    )
    evaluation = next(r for r in results if r.check_name == "evaluation")
    assert "after clustering" in (evaluation.description or "")
    table = evaluation.metadata["precision_recall_by_threshold"].value
    assert "recall (pairs, before clustering)" in table
    lines = {
        (cells[1], cells[2]): cells
        for line in table.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) > 4
    }
    assert lines[("dedupe", "0.75")][5] == "0.4000"
    assert lines[("dedupe", "0.90")][4:7] == ["no edges"] * 3
    assert lines[("empty", "0.50")][4:7] == ["no edges"] * 3
    assert "1.0000" not in " ".join(lines[("empty", "0.50")])


def test_true_pairs_of_ids_standing_for_several_records() -> None:
    """Units of truth_labels' match: an id pair weighs its share of same-entity record pairs."""
    # Deduper: id 1 = {a, a}, id 2 = {a}, id 3 = {a, b}. Pairs (1,2): 1; (1,3): 1/2; (2,3): 1/2.
    frame = pl.DataFrame(
        {"id": [1, 1, 2, 3, 3], "key": [1, 2, 3, 4, 5], "entity": [7, 7, 7, 7, 8]},
        schema={"id": pl.Int64, "key": pl.UInt64, "entity": pl.UInt64},
    )
    assert true_pairs(frame) == pytest.approx(2.0)
    # Linker: left ids 1, 2; right id 3: (1,3): 1/2, (2,3): 1/2.
    left, right = frame.filter(pl.col("id") < 3), frame.filter(pl.col("id") == 3)
    assert true_pairs(left, right) == pytest.approx(1.0)
    assert true_pairs(left, right, shared=False) == pytest.approx(1.0)  # no record on both sides


def test_true_pairs_count_a_record_on_both_sides_once() -> None:
    """Left reads source a, right a and b: id 1's record of a is on both sides, counted once."""
    schema = {"id": pl.Int64, "key": pl.UInt64, "entity": pl.UInt64}
    left = pl.DataFrame({"id": [1], "key": [1], "entity": [7]}, schema=schema)
    right = pl.DataFrame({"id": [1, 1, 3], "key": [1, 2, 4], "entity": [7, 8, 7]}, schema=schema)
    # id 1 = {7, 8} (shares 1/2 each), id 3 = {7}: cross 1/2·(1/2 + 1) + 1/2·1/2 = 1, minus id 1
    # with itself (1/4 + 1/4) = 1/2.
    assert true_pairs(left, right) == pytest.approx(0.5)
    # Counted twice, id 1 would be 2/3 entity 7: another (wrong) figure.
    assert true_pairs(left, right, shared=False) == pytest.approx(2 / 3)


def _true_pairs_by_hand(left: pl.DataFrame, right: pl.DataFrame | None, shared: bool) -> float:
    """The docstring's sums, written out over Python dicts (small inputs only)."""
    sides = [left] if right is None else [left, right]
    records: dict[int, dict[int, int]] = {}  # id → key → entity, a key once per id if shared
    counts: dict[int, dict[int, float]] = {}
    for frame in sides:
        for i, k, e in frame.select("id", "key", "entity").iter_rows():
            if shared and right is not None:
                records.setdefault(i, {})[k] = e
            else:
                counts.setdefault(i, {}).setdefault(e, 0.0)
                counts[i][e] += 1
    for i, keys in records.items():
        for e in keys.values():
            counts.setdefault(i, {}).setdefault(e, 0.0)
            counts[i][e] += 1
    w = {i: {e: n / sum(c.values()) for e, n in c.items()} for i, c in counts.items()}
    entities = {e for c in w.values() for e in c}
    if right is None:
        return sum(
            (sum(w[i].get(e, 0) for i in w) ** 2 - sum(w[i].get(e, 0) ** 2 for i in w)) / 2
            for e in entities
        )
    on_left, on_right = set(left.get_column("id")), set(right.get_column("id"))
    return sum(
        sum(w[i].get(e, 0) for i in on_left) * sum(w[j].get(e, 0) for j in on_right)
        - sum(w[i].get(e, 0) ** 2 for i in on_left & on_right)
        for e in entities
    )


@pytest.mark.parametrize("part_rows", [3, 10_000_000])
def test_true_pairs_a_part_of_the_entities_at_a_time_equal_the_sums(
    part_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids on both sides, ids of several entities, a key on both sides: parts or not, the same."""
    import matchbox_dagster.evaluation.resolver as resolver

    monkeypatch.setattr(resolver, "_TRUE_PAIRS_PART_ROWS", part_rows)
    rng = np.random.default_rng(11)
    entity_of = rng.integers(0, 5, 40).astype(np.uint64)  # a key has one entity
    schema = {"id": pl.Int64, "key": pl.UInt64, "entity": pl.UInt64}

    def side(n: int) -> pl.DataFrame:
        keys = rng.integers(0, 40, n)
        return pl.DataFrame(
            {"id": rng.integers(0, 12, n), "key": keys, "entity": entity_of[keys]}, schema=schema
        )

    for _ in range(20):
        left, right = side(int(rng.integers(1, 30))), side(int(rng.integers(1, 30)))
        assert true_pairs(left) == pytest.approx(_true_pairs_by_hand(left, None, False))
        for shared in (True, False):
            expected = _true_pairs_by_hand(left, right, shared)
            assert true_pairs(left, right, shared=shared) == pytest.approx(expected)
