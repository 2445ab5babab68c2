"""Model inputs read back from the store: the streamed key lookup against a plain string join."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from matchbox_dagster.common.dtos import (
    LocationConfig,
    LocationType,
    QueryConfig,
    SourceConfig,
    SourceField,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.common.errors import MatchboxSourceChanged
from matchbox_dagster.sources import inputs
from matchbox_dagster.sources.inputs import query_frame, source_records
from matchbox_dagster.sources.locations import index_source
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_resolver

N = 500


def people(n: int = N) -> pl.DataFrame:
    """Records with repeated rows (shared leaves) and a non-string key."""
    return pl.DataFrame(
        {
            "pid": list(range(1000, 1000 + n)),
            "name": [f"name{i % 20}" for i in range(n)],
            "town": [f"town{i % 5}" for i in range(n)],
            "age": [i % 7 for i in range(n)],
        }
    )


def indexed(store: MatchboxPostgres, collection: str, run: int, file: Path) -> StepPath:
    """Index ``file`` as source ``people`` of the run; returns its path."""
    config = SourceConfig(
        location_config=LocationConfig(type=LocationType.PARQUET, name=str(file)),
        key_field=SourceField(name="pid"),
        index_fields=(SourceField(name="name"), SourceField(name="town")),
    )
    hashes = index_source(config)
    path = StepPath(collection=collection, run=run, name="people")
    store.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=config), path
    )
    store.insert_source_data(path, hashes)
    return path


def joined_on_text(store: MatchboxPostgres, path: StepPath, data: pl.DataFrame) -> pl.DataFrame:
    """What ``source_records`` must return: ``query()`` joined to the data on the key text."""
    ids = pl.DataFrame(pl.from_arrow(store.query(path)))
    records = data.select(pl.col("pid").cast(pl.String).alias("key"), "name", "town")
    return ids.join(records, on="key").select("id", "key", "name", "town").sort("key")


@pytest.fixture
def source(store: MatchboxPostgres, collection: str, run: int, tmp_path: Path) -> StepPath:
    people().write_parquet(tmp_path / "people.parquet")
    return indexed(store, collection, run, tmp_path / "people.parquet")


def test_records_equal_a_join_on_the_key_text(
    store: MatchboxPostgres, source: StepPath, tmp_path: Path
) -> None:
    expected = joined_on_text(store, source, people())
    for batch_size in (7, 10_000):
        got = source_records(store, source, batch_size=batch_size).sort("key")
        assert got.columns == ["id", "key", "name", "town"]
        assert got.equals(expected)
    # Identical rows share a leaf, so fewer ids than keys.
    assert expected.get_column("id").n_unique() < expected.height


def test_fields_and_key_can_be_left_out(store: MatchboxPostgres, source: StepPath) -> None:
    narrow = source_records(store, source, fields=["town"], with_key=False)
    assert narrow.columns == ["id", "town"]
    assert narrow.height == N


def _rewrites() -> dict[str, pl.DataFrame]:
    """Ways a source's location can change after it was indexed (``people()`` as indexed)."""
    base = people()
    extra = people(N + 20).tail(20).with_columns(pl.col("pid") + 10**6)
    return {
        "keys added": pl.concat([base, extra]),
        "keys missing": base.head(N - 3),
        "a value changed": base.with_columns(
            pl.when(pl.col("pid") == 1042).then(pl.lit("renamed")).otherwise("name").alias("name")
        ),
        "two rows swap values": base.with_columns(
            pl.when(pl.col("pid") == 1000)
            .then(pl.lit(1001))
            .when(pl.col("pid") == 1001)
            .then(pl.lit(1000))
            .otherwise("pid")
            .alias("pid")
        ),
        "a key repeated": pl.concat([base.head(N - 1), base.head(1)]),
    }


@pytest.mark.parametrize("change", list(_rewrites()))
@pytest.mark.parametrize("exact", [True, False], ids=["key-index", "text-join"])
def test_a_source_changed_since_indexing_fails_naming_source_and_run(
    store: MatchboxPostgres,
    collection: str,
    run: int,
    source: StepPath,
    merged: tuple[StepPath, int, int],
    change: str,
    exact: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15 item 2: re-read records are verified against their stored row hash."""
    if not exact:
        monkeypatch.setattr(inputs, "_shared_hashes", lambda ordered: True)
    location = store.get_step(source).config.location_config.name
    _rewrites()[change].write_parquet(location)
    query = QueryConfig(sources=["people"], resolver=merged[0].name)
    for call in (
        lambda: source_records(store, source, batch_size=64),
        lambda: source_records(store, source, fields=["town"], with_key=False),
        lambda: query_frame(store, collection, run, query, batch_size=7, fields=["town"]),
    ):
        with pytest.raises(MatchboxSourceChanged) as caught:
            call()
        message = str(caught.value)
        assert "'people'" in message and f"run {run}" in message and collection in message
        assert "changed since it was indexed" in message and "start a new run" in message
        if change == "keys missing":  # named, with one of them
            assert "3 indexed key(s)" in message and "'149" in message
        if change == "a value changed":
            assert "1 record(s) have other values, e.g. key '1042'" in message
        assert (caught.value.collection, caught.value.run, caught.value.source) == (
            collection,
            run,
            "people",
        )


def test_an_unchanged_rewrite_still_reads(
    store: MatchboxPostgres, source: StepPath, tmp_path: Path
) -> None:
    """Rows in another order, other columns added: the indexed records are the same."""
    location = store.get_step(source).config.location_config.name
    people().reverse().with_columns(pl.lit("x").alias("note")).write_parquet(location)
    got = source_records(store, source, batch_size=33).sort("key")
    assert got.equals(joined_on_text(store, source, people()))


def test_hash_collisions_fall_back_to_the_text_join(
    store: MatchboxPostgres, source: StepPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = source_records(store, source).sort("key")
    monkeypatch.setattr(inputs, "_shared_hashes", lambda ordered: True)
    assert inputs._KeyIndex(store.query(source, return_leaf_id=True)).exact is False
    assert source_records(store, source, batch_size=7).sort("key").equals(expected)
    keyless = source_records(store, source, with_key=False, fields=["name"])
    assert keyless.columns == ["id", "name"]
    assert keyless.height == N


@pytest.fixture
def merged(
    store: MatchboxPostgres, collection: str, run: int, source: StepPath
) -> tuple[StepPath, int, int]:
    """A resolver over ``source`` that merges its first two leaves: (path, leaf, leaf)."""
    leaves = pl.DataFrame(pl.from_arrow(store.query(source))).unique("id").sort("key")
    first, second = leaves.get_column("id").head(2).to_list()
    add_model(
        store,
        collection,
        run,
        "dedupe",
        [(min(first, second), max(first, second), 0.9)],
        QueryConfig(sources=["people"]),
    )
    resolver = add_resolver(store, collection, run, "resolved", [[first, second]], ("dedupe",))
    return resolver, first, second


def test_query_frame_gives_resolver_ids(
    store: MatchboxPostgres,
    collection: str,
    run: int,
    source: StepPath,
    merged: tuple[StepPath, int, int],
) -> None:
    resolver, first, second = merged
    frame = query_frame(
        store,
        collection,
        run,
        QueryConfig(sources=["people"], resolver=resolver.name),
        fields=["name"],
    )
    assert frame.columns == ["id", "name"]
    assert frame.height == N
    ids_seen = set(frame.get_column("id").to_list())
    assert first not in ids_seen and second not in ids_seen  # both leaves now share one cluster
    ids = pl.DataFrame(pl.from_arrow(store.query(source, resolver)))
    assert sorted(frame.get_column("id").to_list()) == sorted(ids.get_column("id").to_list())
