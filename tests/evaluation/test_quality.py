"""The resolver figures' lean computations against plain polars reference computations."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from matchbox_dagster.common.dtos import UploadStage
from matchbox_dagster.evaluation.churn import compare_ids
from matchbox_dagster.evaluation.quality import entity_sizes, score_range, source_quality

KEYED = st.dictionaries(st.integers(0, 40), st.integers(0, 5), max_size=30)


def frame(ids: dict[int, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"key": list(ids), "id": list(ids.values())}, schema={"key": pl.UInt64, "id": pl.Int64}
    )


@settings(max_examples=200, deadline=None)
@given(current=KEYED, previous=KEYED)
def test_compare_ids_equals_a_join(current: dict[int, int], previous: dict[int, int]) -> None:
    common = set(current) & set(previous)
    moved = sum(current[k] != previous[k] for k in common)
    assert compare_ids(frame(current), frame(previous)) == (len(common), moved)


def test_compare_ids_examples() -> None:
    current = frame({1: 10, 2: 20, 3: 30, 4: 40})
    previous = frame({2: 20, 3: 99, 5: 50})
    assert compare_ids(current, previous) == (2, 1)
    assert compare_ids(current, previous.head(0)) == (0, 0)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(-3, 6), min_size=1, max_size=40))
def test_resolver_quality_counts_entities(ids: list[int]) -> None:
    entities = pl.DataFrame({"id": ids}, schema={"id": pl.Int64})
    sizes = entities.group_by("id").len()
    result = entity_sizes(entities, max_cluster_size=3)
    assert result.keys == len(ids)
    assert result.entities == sizes.height
    assert result.largest == sizes.get_column("len").max()
    assert result.passed == (sizes.get_column("len").max() <= 3)
    histogram = sizes.group_by("len").agg(pl.len().alias("n")).sort("len").rows()
    assert result.histogram == histogram[:20]


def test_no_entity_fails_and_no_bound_passes_any_size() -> None:
    empty = entity_sizes(pl.DataFrame({"id": []}, schema={"id": pl.Int64}), max_cluster_size=3)
    assert not empty.passed and "no entity" in empty.summary
    big = entity_sizes(pl.DataFrame({"id": [1] * 50}), max_cluster_size=None)
    assert big.passed and big.largest == 50


def test_source_quality_needs_every_key_once_and_a_complete_stage() -> None:
    stats = {"rows": 10, "distinct_keys": 10, "null_keys": 0, "stage": UploadStage.COMPLETE}
    assert source_quality(stats, 10, 8).passed
    assert not source_quality(stats, 11, 8).passed  # a key went missing
    assert not source_quality({**stats, "distinct_keys": 9}, 10, 8).passed
    assert not source_quality({**stats, "null_keys": 1}, 10, 8).passed
    assert not source_quality({**stats, "stage": UploadStage.PROCESSING}, 10, 8).passed
    empty = {"rows": 0, "stage": UploadStage.COMPLETE}
    assert not source_quality(empty, 0, 0).passed


def test_score_range_counts_pairs_and_out_of_range_scores() -> None:
    stats = {"rows": 5, "min_score": 0.1, "max_score": 0.9, "stage": UploadStage.COMPLETE}
    assert score_range(stats, 5).passed
    assert not score_range(stats, 6).passed
    assert not score_range({**stats, "out_of_range": 1}, 5).passed
