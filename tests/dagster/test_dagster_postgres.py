"""The graph, its checks and the promotion sensor on a dagster-postgres backed instance."""

from __future__ import annotations

import logging

import dagster as dg

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.dagster.partitions import add_run_partition, partitions_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import PromotionCursor
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import (
    STEPS,
    actions,
    check_evaluations,
    evaluate_sensor,
    make_graph,
    unique_collection,
)


def test_graph_and_promotion_on_dagster_postgres(
    pg_instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    instance = pg_instance
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        assert type(storage).__name__.startswith("Postgres"), type(storage)

    collection = unique_collection("pg")
    strict = make_graph(
        mb_resource, collection=collection, min_precision=0.99999, min_recall=0.9999
    )
    passing = make_graph(mb_resource, collection=collection)

    _, failing_run = add_run_partition(instance, mb_store, collection, "fails")
    result = strict.materialize(instance, "fails", raise_on_error=False)
    assert not check_evaluations(result)[("people", "evaluation")].passed

    label, run = add_run_partition(instance, mb_store, collection, "passes")
    result = passing.materialize(instance, label)
    assert result.success
    # The "fails" partition stored the same data (only its checks were stricter): shared.
    assert actions(result) == dict.fromkeys(STEPS, "shared")
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert set(instance.get_dynamic_partitions(partitions_name(collection))) == {
        "fails",
        "passes",
    }
    resolver = StepPath(collection=collection, run=run.run_id, name="people")
    total = sum(
        mb_store.query(StepPath(collection=collection, run=run.run_id, name=s), resolver).num_rows
        for s in ("febrl_a", "febrl_b")
    )
    assert total == 10_000

    # Materialisations are recorded per partition in the Postgres event log.
    records = instance.fetch_materializations(passing.resolver_key(), limit=10).records
    assert {r.partition_key for r in records} == {"fails", "passes"}

    tick = evaluate_sensor(passing, instance)
    assert "fails: rejected" in tick.message
    assert f"passes: promoted run {run.run_id}" in tick.message
    assert "evaluation" in tick.log_text(logging.WARNING)
    store_collection = mb_store.get_collection(collection)
    assert store_collection.default_run == run.run_id
    assert mb_store.get_run(collection, failing_run.run_id).is_mutable
    cursor = PromotionCursor.from_json(tick.cursor)
    assert cursor.promoted == ["passes"] and cursor.rejected == ["fails"]

    # Idempotent: re-materialising changes nothing, and the promotion happened once.
    again = passing.run(instance, label)
    assert actions(again) == dict.fromkeys(STEPS, "unchanged")
    tick = evaluate_sensor(passing, instance, tick.cursor)
    assert "passes: already default" in tick.message
    assert PromotionCursor.from_json(tick.cursor).promoted == ["passes"]
    idle = evaluate_sensor(passing, instance, tick.cursor)
    assert "No new materialisation" in idle.message
    assert mb_store.get_collection(collection).default_run == run.run_id
