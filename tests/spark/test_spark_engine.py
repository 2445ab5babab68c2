"""The Splink model on the Spark engine, end to end through Dagster on the real store.

One collection per engine — FEBRL4's two tables (5,000 records each) → a Splink linker that
trains (u-sampling with a seed, EM) and predicts → connected components — materialised with
``dg.materialize`` on the session's PostgreSQL store. The Spark collection runs on a local
Spark session (``local[2]``, made here, stopped at the end), the DuckDB one in process, with
the same settings and training (only the date format is the engine's). Both are scored through
the resolver against FEBRL's truth: pairwise F1 must agree within 0.001.

pyspark and Java are dependencies of this suite (``.[dev,spark]``; ``.ci/run`` installs a Java
runtime): without them these tests fail, naming what to install.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.evaluation.metrics import PairwiseScores, score_against_truth
from matchbox_dagster.examples.febrl import TRUTH
from matchbox_dagster.methods.models import splink_engines as engines
from matchbox_dagster.methods.models.splink_engines import SPARK_HINT, spark_api
from matchbox_dagster.specs import CollectionSpec, InputSpec, ModelSpec, ResolverChecksSpec
from tests.dagster.conftest import check_evaluations, materializations, unique_collection
from tests.factories import febrl_source, single_model_collection

THRESHOLD = 0.9
DATE_FORMAT = {"duckdb": "%Y%m%d", "spark": "yyyyMMdd"}
"""The one engine-specific setting: Splink passes the format to the engine's date parser."""


def splink_settings(engine: str) -> dict[str, Any]:
    """The linker's settings: comparisons after Splink's FEBRL examples, seeded training."""
    return {
        "engine": engine,
        "threshold": THRESHOLD,
        "splink_settings": {
            "comparisons": [
                {"comparison": "NameComparison", "col_name": "given_name"},
                {"comparison": "NameComparison", "col_name": "surname"},
                {
                    "comparison": "DateOfBirthComparison",
                    "col_name": "date_of_birth",
                    "input_is_string": True,
                    "datetime_format": DATE_FORMAT[engine],
                },
                {
                    "comparison": "DamerauLevenshteinAtThresholds",
                    "col_name": "soc_sec_id",
                    "distance_threshold_or_thresholds": [1, 2],
                },
                {
                    "comparison": "DamerauLevenshteinAtThresholds",
                    "col_name": "postcode",
                    "distance_threshold_or_thresholds": [1, 2],
                },
                {
                    "comparison": "JaroWinklerAtThresholds",
                    "col_name": "suburb",
                    "score_threshold_or_thresholds": [0.9, 0.7],
                },
                {"comparison": "ExactMatch", "col_name": "state"},
            ],
            "blocking_rules_to_generate_predictions": [
                ["given_name"],
                ["surname"],
                ["date_of_birth"],
                ["soc_sec_id"],
                ["postcode"],
            ],
        },
        "training": [
            {
                "estimate_probability_two_random_records_match": {
                    "deterministic_matching_rules": ["l.soc_sec_id = r.soc_sec_id"],
                    "recall": 0.8,
                }
            },
            # One chunk: Spark runs each chunk as jobs of its own; the seed fixes the sample.
            {
                "estimate_u_using_random_sampling": {
                    "max_pairs": 2e5,
                    "seed": 1,
                    "num_chunks": 1,
                    "min_count_per_level": None,
                }
            },
            {
                "estimate_parameters_using_expectation_maximisation": {
                    "blocking_rule": ["date_of_birth"]
                }
            },
            {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": ["postcode"]}},
        ],
    }


def spec(collection: str, engine: str) -> CollectionSpec:
    """FEBRL4 A and B → a Splink linker on ``engine`` → a resolver checked against the truth."""
    linker = ModelSpec(
        name="link_ab",
        left=InputSpec(step="febrl_a"),
        right=InputSpec(step="febrl_b"),
        model_class="Splink",
        settings=splink_settings(engine),
    )
    return single_model_collection(
        collection,
        [febrl_source("febrl_a", "febrl4_a"), febrl_source("febrl_b", "febrl4_b")],
        linker,
        resolver="people",
        threshold=THRESHOLD,
        checks=ResolverChecksSpec(
            max_cluster_size=10,
            min_precision=0.99,
            min_recall=0.99,
            truth={"febrl_a": TRUTH, "febrl_b": TRUTH},
        ),
        promote=False,
    )


@dataclass
class Outcome:
    engine: str
    result: dg.ExecuteInProcessResult
    scores: PairwiseScores
    edges: int
    seconds: float


def materialise(resource: MatchboxResource, engine: str) -> Outcome:
    """The engine's collection materialised for one run partition, scored through its resolver."""
    collection = unique_collection(f"spark_{engine}")
    collection_spec = spec(collection, engine)
    store = resource.get_store()
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, store, collection, "first")
        result = dg.materialize(
            build_collection_assets(collection_spec),
            instance=instance,
            partition_key=label,
            resources={
                "matchbox": resource,
                IO_MANAGER_KEY: MatchboxIOManager(matchbox=resource),
            },
        )
    seconds = time.perf_counter() - started
    resolver = StepPath(collection=collection, run=run.run_id, name="people")
    records = pl.concat(
        [
            pl.DataFrame(
                pl.from_arrow(
                    store.query(
                        StepPath(collection=collection, run=run.run_id, name=name), resolver
                    )
                )
            ).select("id", "key")
            for name in ("febrl_a", "febrl_b")
        ]
    ).with_columns(pl.col("key").str.replace(r"-(org|dup-\d+)$", "").alias("entity"))
    edges = materializations(result)["link_ab"]["dagster/row_count"].value
    return Outcome(engine, result, score_against_truth(records), edges, seconds)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module: two cores, small memory, no UI; stopped after."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        pytest.fail(f"pyspark is not installed; the Spark engine tests need it: {SPARK_HINT}")
    if shutil.which("java") is None:
        pytest.fail("No Java runtime on PATH; pyspark needs one (Debian: default-jre-headless).")
    from splink.backends.spark import similarity_jar_location

    session = (
        SparkSession.builder.master("local[2]")
        .appName("matchbox-tests")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.jars", similarity_jar_location())
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="module")
def duckdb_run(mb_resource: MatchboxResource) -> Outcome:
    return materialise(mb_resource, "duckdb")


@pytest.fixture(scope="module")
def spark_run(spark: Any, mb_resource: MatchboxResource) -> Outcome:
    outcome = materialise(mb_resource, "spark")
    return outcome


def test_spark_collection_materialises_with_every_check_passing(spark_run: Outcome) -> None:
    assert spark_run.result.success
    evaluations = check_evaluations(spark_run.result)
    failed = {k: e.description for k, e in evaluations.items() if not e.passed}
    assert not failed
    evaluation = evaluations[("people", "evaluation")]
    assert evaluation.metadata["precision"].value >= 0.99
    assert evaluation.metadata["recall"].value >= 0.99
    # The linker found most of FEBRL4's 5,000 A-B pairs (identical pairs share a leaf instead).
    assert 3_000 < spark_run.edges <= 5_000


def test_spark_f1_matches_duckdb_within_a_thousandth(
    spark_run: Outcome, duckdb_run: Outcome
) -> None:
    print(
        f"\nF1 spark {spark_run.scores.f1:.5f} ({spark_run.seconds:.1f} s), "
        f"duckdb {duckdb_run.scores.f1:.5f} ({duckdb_run.seconds:.1f} s); "
        f"edges {spark_run.edges} / {duckdb_run.edges}"
    )
    assert duckdb_run.result.success
    assert duckdb_run.scores.f1 >= 0.99
    assert spark_run.scores.f1 == pytest.approx(duckdb_run.scores.f1, abs=0.001)


def test_spark_runs_leave_no_tables_in_the_session(spark: Any, spark_run: Outcome) -> None:
    # Every input view and Splink table of the model run was dropped on exit (the session is
    # long-lived: a scheduled collection would otherwise pile them up).
    assert spark_run.result.success
    left = [t.name for t in spark.catalog.listTables() if t.isTemporary]
    assert left == []
    # Nor checkpoint files: each run wrote them in a directory of its own, deleted on exit.
    root = Path(spark.sparkContext.getCheckpointDir().removeprefix("file:"))
    assert root.is_dir()
    assert [p.name for p in root.iterdir() if p.name.startswith("matchbox-")] == []


def test_engine_uses_the_active_session_with_splinks_functions(spark: Any) -> None:
    api = spark_api()
    assert api.spark is spark
    assert spark.sql("SELECT jaro_winkler('martha', 'marhta') AS s").first()["s"] > 0.9


def test_session_without_the_similarity_functions_is_refused(
    spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a session started without Splink's jar: the function's class is not on the classpath.
    monkeypatch.setattr(engines, "_SIMILARITY_PROBE", ("jaro_winkler", "no.such.Similarity"))
    with pytest.raises(MatchboxInvalidData, match=r"spark\.jars.*similarity_jar_location"):
        spark_api()
