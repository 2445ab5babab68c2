"""A resolver's lean per-key entity frame, read from a real store."""

from __future__ import annotations

import polars as pl

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.evaluation.entities import resolver_entities
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.sources.test_inputs import N, people


def test_entities_read_truth_from_keys_or_fields(
    store: MatchboxPostgres, merged: tuple[StepPath, int, int]
) -> None:
    """The checks' lean entity frame: truth from the key alone, or re-read from index fields."""
    resolver = merged[0]
    data = people().select(pl.col("pid").cast(pl.String).alias("key"), "town")
    for expression, truth in [
        ("key", pl.col("key")),
        ("upper(town)", pl.col("town").str.to_uppercase()),
    ]:
        frame = resolver_entities(store, resolver, ["people"], 64, {"people": expression})
        assert frame.columns == ["key", "id", "leaf_id", "entity"]
        expected = data.select(pl.col("key").hash(seed=0), truth.hash().alias("entity"))
        got = frame.select("key", "entity")
        assert got.sort("key").equals(expected.sort("key"))
    # Two sources' equal keys hash apart (seeded by position), so runs compare source by source.
    twice = resolver_entities(store, resolver, ["people", "people"], 64)
    assert twice.get_column("key").n_unique() == 2 * N
    # What churn reads of the default run: the same keys and ids, nothing else.
    ids = resolver_entities(store, resolver, ["people", "people"], 64, ids_only=True)
    assert ids.columns == ["key", "id"]
    assert ids.equals(twice.select("key", "id"))
