"""The resolver checks' lean helpers against plain polars reference computations."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from matchbox_dagster.dagster.checks import RESOLVER_QUALITY, _compare_ids, _resolver_quality
from matchbox_dagster.specs import ResolverChecksSpec

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
    assert _compare_ids(frame(current), frame(previous)) == (len(common), moved)


def test_compare_ids_examples() -> None:
    current = frame({1: 10, 2: 20, 3: 30, 4: 40})
    previous = frame({2: 20, 3: 99, 5: 50})
    assert _compare_ids(current, previous) == (2, 1)
    assert _compare_ids(current, previous.head(0)) == (0, 0)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(-3, 6), min_size=1, max_size=40))
def test_resolver_quality_counts_entities(ids: list[int]) -> None:
    entities = pl.DataFrame({"id": ids}, schema={"id": pl.Int64})
    sizes = entities.group_by("id").len()
    result = _resolver_quality(entities, ResolverChecksSpec(max_cluster_size=3))
    assert result.check_name == RESOLVER_QUALITY
    assert result.metadata["entities"].value == sizes.height
    assert result.metadata["largest_entity"].value == sizes.get_column("len").max()
    assert result.passed == (sizes.get_column("len").max() <= 3)
