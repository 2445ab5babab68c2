"""The synthetic person generator: shape, ground truth, determinism, corruption rates, skew."""

from __future__ import annotations

import time

import polars as pl
import pytest

from matchbox_dagster.methods.synthetic import FIELDS, generate_people


def test_records_and_truth_shapes():
    records, truth = generate_people(2_000, seed=1)
    assert records.columns == ["key", *FIELDS]
    assert all(records.schema[c] == pl.String for c in records.columns)
    assert truth.columns == ["key", "entity"]
    assert records.get_column("key").is_unique().all()
    assert records.height == truth.height
    assert set(records.get_column("key")) == set(truth.get_column("key"))
    # Every entity has at least one record, and entities are numbered 0 … n − 1.
    assert set(truth.get_column("entity")) == set(range(2_000))


def test_same_seed_same_data_other_seed_other_data():
    a = generate_people(3_000, seed=7)
    b = generate_people(3_000, seed=7)
    c = generate_people(3_000, seed=8)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].equals(c[0])


def test_duplicates_rate_sets_records_per_entity():
    records, _ = generate_people(20_000, duplicates_rate=0.5, seed=2)
    assert 29_000 < records.height < 31_000
    none, _ = generate_people(5_000, duplicates_rate=0.0, seed=2)
    assert none.height == 5_000


def test_keys_say_nothing_about_entities():
    records, truth = generate_people(5_000, seed=3)
    joined = records.join(truth, on="key")
    # Keys are numbered in shuffled order: consecutive keys rarely share an entity.
    first = joined.with_columns(pl.col("key").str.slice(1).cast(pl.Int64).alias("n")).sort("n")
    same = (first.get_column("entity").diff() == 0).mean()
    assert same < 0.01


def test_clean_records_of_an_entity_are_identical():
    records, truth = generate_people(3_000, duplicates_rate=1.0, typo_rate=0, missing_rate=0)
    per_entity = (
        records.join(truth, on="key").group_by("entity").agg([pl.col(f).n_unique() for f in FIELDS])
    )
    assert all(per_entity.get_column(f).max() == 1 for f in FIELDS)
    assert records.null_count().row(0) == (0,) * records.width
    assert records.get_column("postcode").str.contains(r"^[A-Z]{2}\d{1,2} \d[A-Z]{2}$").all()
    assert records.get_column("date_of_birth").str.contains(r"^\d{4}-\d{2}-\d{2}$").all()
    dates = records.get_column("date_of_birth").str.to_date()
    assert str(dates.min()) >= "1930-01-01" and str(dates.max()) < "2010-01-01"


def test_missing_values_are_nulls_at_the_given_rate():
    records, _ = generate_people(20_000, missing_rate=0.1, typo_rate=0, seed=4)
    for field in FIELDS:
        share = records.get_column(field).null_count() / records.height
        assert 0.09 < share < 0.11, (field, share)
        assert (records.get_column(field) == "").sum() == 0


def test_typos_touch_duplicates_at_the_given_rate():
    records, truth = generate_people(20_000, duplicates_rate=1.0, typo_rate=0.3, missing_rate=0)
    joined = records.join(truth, on="key")
    for field in FIELDS:
        # The original value of an entity is its most common one; a duplicate differs from it
        # when it got a typo (an edit rarely leaves the value unchanged).
        mode = joined.group_by("entity").agg(pl.col(field).mode().first().alias("mode"))
        stats = joined.join(mode, on="entity").with_columns(pl.len().over("entity").alias("size"))
        multi = stats.filter(pl.col("size") >= 3)
        changed = (multi.get_column(field) != multi.get_column("mode")).mean()
        duplicates_share = 1 - multi.get_column("entity").n_unique() / multi.height
        assert 0.2 < changed / duplicates_share < 0.35, (field, changed, duplicates_share)
    dates = records.get_column("date_of_birth")
    assert dates.str.contains(r"^\d{4}-\d{2}-\d{2}$").all()  # date typos keep the format


def test_name_frequencies_are_skewed():
    records, _ = generate_people(50_000, duplicates_rate=0, missing_rate=0, seed=5)
    for field, top_share in (("given_name", 0.02), ("surname", 0.01)):
        counts = records.get_column(field).value_counts(sort=True).get_column("count")
        assert counts[0] / records.height > top_share  # a very common name
        assert counts.median() < 10  # and a long tail of rare ones
        assert len(counts) > 1_000


def test_zero_entities_and_invalid_arguments():
    records, truth = generate_people(0)
    assert records.height == 0 and truth.height == 0
    assert records.columns == ["key", *FIELDS]
    for kwargs in (
        {"n_entities": -1},
        {"n_entities": 10, "typo_rate": 1.5},
        {"n_entities": 10, "missing_rate": -0.1},
        {"n_entities": 10, "duplicates_rate": -1},
    ):
        with pytest.raises(ValueError):
            generate_people(**kwargs)


def test_a_hundred_thousand_records_in_well_under_ten_seconds():
    started = time.perf_counter()
    records, _ = generate_people(66_667, seed=6)
    assert records.height > 95_000
    assert time.perf_counter() - started < 10
