"""Trained Splink models kept in the store and reused by later runs, through real Dagster runs.

A collection links 1,500 FEBRL4 A records with their B duplicates through a Splink model that
trains (u-sampling, EM). No run is promoted, so every run computes the model (a promoted
default run would be reused whole, see test_step_reuse.py) and the trained-model store decides:

1. run 1 trains: version 1, ``trained now`` (none stored);
2. run 2, same data: predicts with version 1 (``reused``), scores as run 1's;
3. run 3, 1% of B's records gone (within tolerance) but ``retrain: true`` in the model's
   settings: trains again → version 2;
4. run 4, 20% of B's records gone (estimated Jaccard ≈ 0.9 < 0.95): retrains → version 3;
5. run 5, a further 1% of B gone (Jaccard ≈ 0.99 against version 3's data): reuses version 3;
6. ``matchbox-dagster retrain --collection C --model link_ab``, then run 6: trains → version 4.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import LocationConfig, LocationType
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.trained import REUSED, TRAINED
from matchbox_dagster.examples.febrl import FIELDS, febrl4_a, febrl4_b
from matchbox_dagster.specs import (
    CollectionSpec,
    InputSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
)
from tests.dagster.conftest import check_evaluations, materializations, unique_collection

RECORDS = 1_500
SPLINK = {
    "splink_settings": {
        "comparisons": [
            {"comparison": "NameComparison", "col_name": "given_name"},
            {"comparison": "NameComparison", "col_name": "surname"},
            {"comparison": "ExactMatch", "col_name": "date_of_birth"},
            {"comparison": "LevenshteinAtThresholds", "col_name": "soc_sec_id"},
            {"comparison": "ExactMatch", "col_name": "postcode"},
        ],
        "blocking_rules_to_generate_predictions": [["surname"], ["date_of_birth"], ["postcode"]],
    },
    "training": [
        {"estimate_u_using_random_sampling": {"max_pairs": 1e5, "seed": 1}},
        {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": ["postcode"]}},
    ],
    "threshold": 0.9,
}

_B_DROPPED = 0.0


def _number(frame: pl.DataFrame) -> pl.Expr:
    return pl.col("rec_id").str.extract(r"^rec-(\d+)-").cast(pl.Int64)


def people_a() -> pl.DataFrame:
    """FEBRL4 A records of entities 0..RECORDS-1."""
    a = febrl4_a()
    return a.filter(_number(a) < RECORDS)


def people_b() -> pl.DataFrame:
    """Their B duplicates, less the share ``_B_DROPPED`` (the highest entity numbers)."""
    b = febrl4_b()
    return b.filter(_number(b) < RECORDS * (1 - _B_DROPPED))


def trained_spec(collection: str, *, retrain: bool = False) -> CollectionSpec:
    """Two sources, a Splink linker that trains, a resolver."""

    def source(name: str) -> SourceSpec:
        return SourceSpec(
            name=name,
            location=LocationConfig(type=LocationType.ARROW, name=f"{__name__}:{name}"),
            key_field="rec_id",
            index_fields=FIELDS,
        )

    return CollectionSpec(
        collection=collection,
        sources=[source("people_a"), source("people_b")],
        models=[
            ModelSpec(
                name="link_ab",
                left=InputSpec(step="people_a"),
                right=InputSpec(step="people_b"),
                model_class="Splink",
                settings={**SPLINK, "retrain": retrain},
            )
        ],
        resolvers=[
            ResolverSpec(
                name="people",
                thresholds={"link_ab": 0.9},
                checks=ResolverChecksSpec(max_cluster_size=10),
            )
        ],
        promote=False,
    )


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


@dataclass
class Run:
    model: dict[str, Any]
    check: dict[str, Any]
    check_passed: bool


@dataclass
class Runs:
    collection: str
    runs: dict[int, Run]


def _retrain(resource: MatchboxResource, collection: str, directory: Path) -> int:
    """``matchbox-dagster retrain`` on a definitions file holding the collection."""
    from matchbox_dagster.cli import build_parser
    from matchbox_dagster.cli.trained import cmd_retrain

    path = directory / "definitions.py"
    path.write_text(
        textwrap.dedent(f"""
        from matchbox_dagster.dagster.collection import build_collection_defs
        from matchbox_dagster.dagster.resources import MatchboxResource
        from tests.dagster.test_trained_model_reuse import trained_spec

        resource = MatchboxResource(postgres_uri={resource.postgres_uri!r},
                                    postgres_schema={resource.postgres_schema!r})
        defs = build_collection_defs(trained_spec({collection!r}), resource=resource)
        """)
    )
    argv = ["retrain", "--definitions", str(path), "--collection", collection]
    argv += ["--model", "link_ab"]
    try:  # through the CLI once the command is registered there
        args = build_parser().parse_args(argv)
    except SystemExit:
        args = argparse.Namespace(definitions=str(path), collection=collection, model="link_ab")
        return cmd_retrain(args)
    return int(args.func(args))


@pytest.fixture(scope="module")
def runs(mb_resource: MatchboxResource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    global _B_DROPPED
    collection = unique_collection("trained")
    store = mb_resource.get_store()
    plan: dict[int, tuple[float, bool]] = {
        1: (0.0, False),
        2: (0.0, False),
        3: (0.01, True),
        4: (0.2, False),
        5: (0.21, False),
        6: (0.21, False),
    }
    found = Runs(collection, {})
    try:
        with dg.instance_for_test() as instance:
            for n, (dropped, retrain) in plan.items():
                _B_DROPPED = dropped
                if n == 6:
                    assert _retrain(mb_resource, collection, tmp_path_factory.mktemp("cli")) == 0
                defs = build_collection_defs(
                    trained_spec(collection, retrain=retrain), resource=mb_resource
                )
                label, _ = add_run_partition(instance, store, collection, f"trained-{n}")
                result = defs.resolve_job_def(f"{collection}_graph").execute_in_process(
                    instance=instance, partition_key=label
                )
                assert result.success, n
                check = check_evaluations(result)[("link_ab", "scores_in_range")]
                found.runs[n] = Run(
                    model={k: _plain(v) for k, v in materializations(result)["link_ab"].items()},
                    check={k: _plain(v) for k, v in check.metadata.items()},
                    check_passed=check.passed,
                )
            yield found
    finally:
        _B_DROPPED = 0.0


def _used(run: Run) -> tuple[int, str]:
    assert run.check["trained_version"] == run.model["trained_version"]
    assert run.check["trained_model"] == run.model["trained_model"]
    return run.model["trained_version"], run.model["trained_model"]


def test_first_run_trains_version_1(runs: Runs) -> None:
    run = runs.runs[1]
    assert _used(run) == (1, TRAINED)
    assert "no trained model stored" in run.model["trained_reason"]
    assert run.check_passed
    assert "Trained model version 1 (trained now" in run.check["summary"]


def test_second_run_predicts_with_version_1(runs: Runs) -> None:
    first, second = runs.runs[1], runs.runs[2]
    assert _used(second) == (1, REUSED)
    assert second.model["training_jaccard"] == 1.0
    assert second.model["trained_in_run"] == first.model["trained_in_run"]
    # Same parameters, same data: the same scores (the step's fingerprint).
    assert second.model["matchbox/fingerprint"] == first.model["matchbox/fingerprint"]
    assert second.check_passed


def test_retrain_setting_trains_version_2(runs: Runs) -> None:
    run = runs.runs[3]
    assert _used(run) == (2, TRAINED)
    assert "retrain: true" in run.model["trained_reason"]
    assert run.model["trained_in_run"] != runs.runs[1].model["trained_in_run"]


def test_training_data_changed_beyond_tolerance_retrains(runs: Runs) -> None:
    run = runs.runs[4]
    assert _used(run) == (3, TRAINED)
    assert run.model["training_jaccard"] < 0.95
    assert "training data changed" in run.model["trained_reason"]


def test_training_data_changed_within_tolerance_reuses(runs: Runs) -> None:
    run = runs.runs[5]
    assert _used(run) == (3, REUSED)
    assert 0.95 <= run.model["training_jaccard"] < 1.0


def test_cli_retrain_makes_the_next_run_train(runs: Runs) -> None:
    run = runs.runs[6]
    assert _used(run) == (4, TRAINED)
    assert "no trained model stored" in run.model["trained_reason"]
