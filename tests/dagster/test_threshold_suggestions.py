"""Issue 19 item 5 in Dagster: the resolver's evaluation check suggests each model's threshold.

A source of eleven records and a WeightedRules deduper over four fields (scores 0.25 steps):

    x1–x2 1.0 (true)  y1–y2 0.75 (true)  z1–z2 0.5 (true)  v1–w1 0.5 (false)
    u1–t1 0.25 (false)  s1–s2 never proposed (true)

Keeping edges ≥ t gives F1 = 2·tp / (kept + 4): 0.40 at 1.0, 0.67 at 0.75, **0.75 at 0.5**,
0.67 at 0.25. The resolver keeps 0.75. Materialised for real, evaluated against judgements:
the first materialisation has none (the check fails), a person then judges every pair, and
the resolver's check on the next materialisation shows the suggested 0.5 beside 0.75 in use.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import Judgement, LocationType, StepPath, User
from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.specs import InputSpec, ModelSpec, ResolverChecksSpec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import check_evaluations, step_failures, unique_collection
from tests.factories import leaf_of, single_model_collection, source_spec

FIELDS = ["a", "b", "c", "d"]
RECORDS = {  # key: values of a, b, c, d (lower-case letters: made unique per test)
    "x1": "xa xb xc xd", "x2": "xa xb xc xd",
    "y1": "ya yb yc yd1", "y2": "ya yb yc yd2",
    "z1": "za zb zc1 zd1", "z2": "za zb zc2 zd2",
    "v1": "va vb vc1 vd1", "w1": "va vb vc2 vd2",
    "u1": "ua ub1 uc1 ud1", "t1": "ua ub2 uc2 ud2",
    "s1": "sa1 sb1 sc1 sd1", "s2": "sa2 sb2 sc2 sd2",
}  # fmt: skip
PAIRS = [("x1", "x2"), ("y1", "y2"), ("z1", "z2"), ("v1", "w1"), ("u1", "t1"), ("s1", "s2")]


def test_the_check_suggests_the_threshold_from_judgements(
    mb_resource: MatchboxResource, mb_store: MatchboxPostgres, tmp_path: Path
) -> None:
    salt = uuid.uuid4().hex[:8]  # leaves are content-addressed: only this test's judgements
    rows = [
        {"key": k, "note": f"{k}-{salt}", **dict(zip(FIELDS, v.split(), strict=True))}
        for k, v in RECORDS.items()
    ]
    pl.DataFrame(rows).write_parquet(tmp_path / "firms.parquet")
    source = source_spec(
        "firms",
        LocationType.PARQUET,
        str(tmp_path / "firms.parquet"),
        key_field="key",
        index_fields=[*FIELDS, "note"],
    )
    deduper = ModelSpec(
        name="dedupe",
        left=InputSpec(step="firms"),
        model_class="WeightedRules",
        settings={"weights": dict.fromkeys(FIELDS, 1.0), "threshold": 0.25},
    )
    spec = single_model_collection(
        unique_collection("thr"),
        [source],
        deduper,
        resolver="firms_resolved",
        threshold=0.75,
        checks=ResolverChecksSpec(max_cluster_size=10, min_judgements=1),
        schedule=None,
    )
    assets = build_collection_assets(spec)
    resources = {"matchbox": mb_resource, IO_MANAGER_KEY: MatchboxIOManager(matchbox=mb_resource)}
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, mb_store, spec.collection, "r1")

        def materialise() -> dg.ExecuteInProcessResult:
            return dg.materialize(
                assets,
                instance=instance,
                partition_key=label,
                resources=resources,
                raise_on_error=False,
            )

        first = materialise()
        before = check_evaluations(first)[("firms_resolved", "evaluation")]
        assert not before.passed and "thresholds" not in before.metadata  # nothing judged

        leaf = leaf_of(mb_store, StepPath(collection=spec.collection, run=run.run_id, name="firms"))
        user = f"judge_{salt}"
        mb_store.login(User(user_name=user))
        for a, b in PAIRS:
            together = a[0] == b[0]
            endorsed = [[leaf[a], leaf[b]]] if together else [[leaf[a]], [leaf[b]]]
            mb_store.as_user(user).insert_judgement(
                user, Judgement(shown=[leaf[a], leaf[b]], endorsed=endorsed)
            )
        second = materialise()
    assert not step_failures(second), step_failures(second)
    evaluation = check_evaluations(second)[("firms_resolved", "evaluation")]
    (row,) = evaluation.metadata["thresholds"].value
    assert row["model"] == "dedupe" and row["in_use"] == pytest.approx(0.75)
    assert row["suggested"] == pytest.approx(0.5) and row["f1"] == pytest.approx(0.75)
    assert row["f1_in_use"] == pytest.approx(4 / 6) and row["labelled"] == 6
    assert row["low"] <= 0.5 <= row["high"]
    table = evaluation.metadata["suggested_thresholds"].value
    assert "| dedupe | 0.7500 | 0.6667 | 0.5000 | 0.7500 |" in table
