"""ConnectedComponents: per-model thresholds and components, against a union-find reference."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from matchbox_dagster.common.arrow import SCHEMA_CLUSTERS, SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.resolvers import ConnectedComponents, check_thresholds, components
from tests.factories import cluster_sets


def edges(*rows: tuple[int, int, float]) -> ModelResults:
    return ModelResults(
        pa.table(
            {
                "left_id": [r[0] for r in rows],
                "right_id": [r[1] for r in rows],
                "score": [r[2] for r in rows],
            },
            schema=SCHEMA_MODEL_EDGES,
        )
    )


def partition(clusters) -> set[frozenset[int]]:
    """The clusters as a set of sets of child ids (labels are arbitrary)."""
    assert clusters.table.schema == SCHEMA_CLUSTERS
    assert pl.Series(clusters.table.column("child_id")).is_unique().all()
    return cluster_sets(clusters)


def union_find(pairs: list[tuple[int, int]]) -> set[frozenset[int]]:
    """Reference: components of the nodes that appear in ``pairs``."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, set[int]] = {}
    for x in list(parent):
        groups.setdefault(find(x), set()).add(x)
    return {frozenset(g) for g in groups.values()}


DEDUPE = edges((1, 2, 0.95), (2, 3, 0.7), (4, 5, 0.9), (6, 7, 0.5), (8, 9, 0.2))
LINK = edges((3, 10, 1.0), (7, 11, 0.85), (12, 13, 0.3), (5, 4, 0.99))


def test_hand_made_graph_without_thresholds():
    clusters = ConnectedComponents().resolve({"dedupe": DEDUPE, "link": LINK})
    assert partition(clusters) == {
        frozenset({1, 2, 3, 10}),
        frozenset({4, 5}),
        frozenset({6, 7, 11}),
        frozenset({8, 9}),
        frozenset({12, 13}),
    }
    assert clusters.num_clusters == 5
    assert sorted(set(clusters.table.column("parent_id").to_pylist())) == [0, 1, 2, 3, 4]


def test_thresholds_per_model():
    resolver = ConnectedComponents(thresholds={"dedupe": 0.9, "link": 0.5})
    clusters = resolver.resolve({"dedupe": DEDUPE, "link": LINK})
    # dedupe keeps (1,2) and (4,5); link keeps (3,10), (7,11) and (5,4). Nodes only on dropped
    # edges (6, 8, 9, 12, 13) are not clustered here.
    assert partition(clusters) == {
        frozenset({1, 2}),
        frozenset({3, 10}),
        frozenset({4, 5}),
        frozenset({7, 11}),
    }


def test_a_model_without_a_threshold_keeps_every_edge():
    resolver = ConnectedComponents(thresholds={"link": 0.95})
    clusters = resolver.resolve({"dedupe": DEDUPE, "link": LINK})
    assert partition(clusters) == {
        frozenset({1, 2, 3, 10}),
        frozenset({4, 5}),
        frozenset({6, 7}),
        frozenset({8, 9}),
    }


@pytest.mark.parametrize("score", [0.9, 0.7, 0.1, 1.0, 0.0])
def test_a_score_equal_to_the_threshold_is_kept(score: float):
    """Scores are float32: 0.9 stored is 0.899999976, and must still pass a 0.9 threshold."""
    clusters = ConnectedComponents(thresholds={"m": score}).resolve({"m": edges((1, 2, score))})
    assert partition(clusters) == {frozenset({1, 2})}


def test_tables_are_accepted_as_well_as_model_results():
    table = pa.table({"left_id": [1, 2], "right_id": [2, 3], "score": [0.5, 0.4]})
    clusters = ConnectedComponents(thresholds={"m": 0.45}).resolve({"m": table})
    assert partition(clusters) == {frozenset({1, 2})}


def test_tables_of_different_id_widths_combine():
    narrow = pa.table(
        {
            "left_id": pa.array([1], pa.int32()),
            "right_id": pa.array([2], pa.int32()),
            "score": pa.array([0.8], pa.float64()),
        }
    )
    clusters = ConnectedComponents().resolve({"narrow": narrow, "wide": edges((2, 3, 0.5))})
    assert partition(clusters) == {frozenset({1, 2, 3})}


def test_unknown_threshold_name_refused():
    resolver = ConnectedComponents(thresholds={"dedupe": 0.5, "typo": 0.5})
    with pytest.raises(MatchboxInvalidData, match=r"\['typo'\].*\['dedupe', 'link'\]"):
        resolver.resolve({"dedupe": DEDUPE, "link": LINK})


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_threshold_outside_unit_interval_refused(value: float):
    # Refused when the resolver is built (pydantic wraps the message), before any edge is read.
    with pytest.raises(ValidationError, match=r"'dedupe' must lie in \[0, 1\]"):
        ConnectedComponents(thresholds={"dedupe": value})
    with pytest.raises(MatchboxInvalidData, match=r"'dedupe' must lie in \[0, 1\]"):
        check_thresholds({"dedupe": value})


def test_empty_inputs():
    empty = ModelResults(SCHEMA_MODEL_EDGES.empty_table())
    for resolver, inputs in [
        (ConnectedComponents(), {}),
        (ConnectedComponents(), {"m": empty}),
        (ConnectedComponents(thresholds={"m": 0.5}), {"m": empty, "n": empty}),
        (ConnectedComponents(thresholds={"m": 0.99}), {"m": edges((1, 2, 0.5))}),
    ]:
        clusters = resolver.resolve(inputs)
        assert clusters.num_rows == 0
        assert clusters.table.schema == SCHEMA_CLUSTERS
    assert components(pl.DataFrame()).num_rows == 0


def test_settings_round_trip():
    resolver = ConnectedComponents(thresholds={"a": 0.5, "b": 1.0})
    assert resolver.settings() == {"thresholds": {"a": 0.5, "b": 1.0}}
    assert ConnectedComponents.model_validate(resolver.settings()) == resolver
    with pytest.raises(ValidationError):
        ConnectedComponents.model_validate({"thresholds": {}, "extra": 1})


def test_repeated_and_reversed_edges():
    pairs = pl.DataFrame({"left_id": [1] * 300 + [2, 4], "right_id": [2] * 300 + [1, 3]})
    assert partition(components(pairs)) == {frozenset({1, 2}), frozenset({3, 4})}


def test_large_ids():
    big = 2**62
    pairs = pl.DataFrame({"left_id": [big, -big, 7], "right_id": [7, big - 1, -big]})
    assert partition(components(pairs)) == {frozenset({big, 7, -big, big - 1})}


IDS = st.integers(min_value=0, max_value=40) | st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(IDS, IDS), max_size=60))
def test_components_match_union_find(pairs: list[tuple[int, int]]):
    frame = pl.DataFrame(pairs, schema={"left_id": pl.Int64, "right_id": pl.Int64}, orient="row")
    assert partition(components(frame)) == union_find(pairs)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.floats(0, 1, width=32)),
        max_size=50,
    ),
    split=st.integers(0, 50),
    thresholds=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_resolve_matches_union_find_of_kept_edges(data, split, thresholds):
    rows = [(a, b, s) for a, b, s in data if a != b]
    rows = list({(a, b): (a, b, s) for a, b, s in rows}.values())  # a pair once per model
    first, second = rows[:split], rows[split:]
    resolver = ConnectedComponents(thresholds={"first": thresholds[0], "second": thresholds[1]})
    clusters = resolver.resolve({"first": edges(*first), "second": edges(*second)})
    kept = [
        (a, b)
        for part, threshold in ((first, thresholds[0]), (second, thresholds[1]))
        for a, b, s in part
        if np.float32(s) >= np.float32(threshold)
    ]
    assert partition(clusters) == union_find(kept)


def test_a_million_edges_of_known_chains():
    rng = np.random.default_rng(3)
    chains, length = 50_000, 21  # 20 edges per chain: 1M edges
    nodes = rng.permutation(chains * length).astype(np.int64) * 7919 + 11
    grid = nodes.reshape(chains, length)
    left = grid[:, :-1].ravel()
    right = grid[:, 1:].ravel()
    flip = rng.random(len(left)) < 0.5
    left, right = np.where(flip, right, left), np.where(flip, left, right)
    clusters = components(pl.DataFrame({"left_id": left, "right_id": right}))
    frame = pl.DataFrame(pl.from_arrow(clusters.table))
    assert frame.height == chains * length
    assert clusters.num_clusters == chains
    chain_of = pl.DataFrame({"child_id": nodes, "chain": np.repeat(np.arange(chains), length)})
    per_chain = (
        frame.join(chain_of, on="child_id", how="inner")
        .group_by("chain")
        .agg(pl.col("parent_id").n_unique().alias("parents"), pl.col("parent_id").first())
    )
    assert per_chain.height == chains
    assert (per_chain.get_column("parents") == 1).all()  # a chain lies in one cluster
    assert per_chain.get_column("parent_id").is_unique().all()  # and a cluster holds one chain
