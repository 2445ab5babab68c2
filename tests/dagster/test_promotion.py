"""The promotion sensor, evaluated against a real instance after real materialisations."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition, run_partitions
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import (
    PromotionCursor,
    build_promotion_sensor,
    check_results,
    promote_run,
)
from matchbox_dagster.examples.febrl import febrl4_spec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import (
    Graph,
    check_evaluations,
    evaluate_sensor,
    make_graph,
    unique_collection,
)

STRICT = {"min_precision": 0.99999, "min_recall": 0.9999}
"""Evaluation minimums the demo graph cannot reach (precision ≈ 0.999, recall ≈ 0.98)."""


def _materialise(
    graph: Graph, instance: dg.DagsterInstance, store: MatchboxPostgres, label: str
) -> tuple[int, dg.ExecuteInProcessResult]:
    _, run = add_run_partition(instance, store, graph.collection, label)
    return run.run_id, graph.run(instance, label, raise_on_error=False)


def _default(store: MatchboxPostgres, collection: str) -> int | None:
    return store.get_collection(collection).default_run


def test_promotion_lifecycle(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    collection = unique_collection("promo")
    strict = make_graph(mb_resource, collection=collection, **STRICT)
    passing = make_graph(mb_resource, collection=collection)

    # 1. A run whose evaluation check fails is not promoted; the log says which check failed.
    run1, result = _materialise(strict, instance, mb_store, "p1")
    evaluations = check_evaluations(result)
    assert not evaluations[("people", "evaluation")].passed
    assert evaluations[("people", "resolver_quality")].passed
    # What the sensor reads: the resolver's check evaluations in that Dagster run, only its own.
    found = check_results(instance, result.run_id, passing.resolver_key())
    assert set(found) == {"resolver_quality", "evaluation", "churn"}
    assert found["evaluation"][0] is False and "precision" in (found["evaluation"][1] or "")
    assert found["resolver_quality"][0] is True
    tick = evaluate_sensor(passing, instance)
    assert _default(mb_store, collection) is None
    assert mb_store.get_run(collection, run1).is_mutable
    assert "p1: rejected" in tick.message
    warning = tick.log_text(logging.WARNING)
    assert "Not promoting" in warning and "p1" in warning
    assert "evaluation (" in warning and "precision" in warning
    assert "resolver_quality" not in warning and "churn" not in warning
    cursor = PromotionCursor.from_json(tick.cursor)
    assert cursor.rejected == ["p1"] and cursor.promoted == []

    # Evaluated again with its cursor, the sensor has nothing new.
    idle = evaluate_sensor(passing, instance, tick.cursor)
    assert "No new materialisation" in idle.message
    assert idle.cursor == tick.cursor

    # 2. A passing run is promoted: immutable and default, exactly once.
    run2, result = _materialise(passing, instance, mb_store, "p2")
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    tick = evaluate_sensor(passing, instance, tick.cursor)
    assert f"p2: promoted run {run2}" in tick.message
    assert "Promoted" in tick.log_text() and "p2" in tick.log_text()
    assert _default(mb_store, collection) == run2
    run = mb_store.get_run(collection, run2)
    assert run.is_default and not run.is_mutable
    assert PromotionCursor.from_json(tick.cursor).promoted == ["p2"]

    again = evaluate_sensor(passing, instance, tick.cursor)
    assert "No new materialisation" in again.message
    assert again.cursor == tick.cursor
    assert _default(mb_store, collection) == run2

    # Starting afresh (lost cursor) re-decides the same way and promotes nothing twice.
    fresh = evaluate_sensor(passing, instance, None)
    assert "p1: rejected" in fresh.message
    assert "p2: already default" in fresh.message
    assert _default(mb_store, collection) == run2
    cursor_after_p2 = tick.cursor

    # 3. A later passing run becomes the new default (churn against p2 is nil).
    run3, result = _materialise(passing, instance, mb_store, "p3")
    churn = check_evaluations(result)[("people", "churn")]
    assert churn.passed
    assert churn.metadata["churn"].value == 0.0
    assert churn.metadata["default_run"].value == str(run2)
    tick = evaluate_sensor(passing, instance, cursor_after_p2)
    assert f"p3: promoted run {run3}" in tick.message
    assert _default(mb_store, collection) == run3
    assert not mb_store.get_run(collection, run2).is_default
    assert not mb_store.get_run(collection, run2).is_mutable

    # 4. A failing run afterwards leaves the default alone.
    _, result = _materialise(strict, instance, mb_store, "p4")
    assert not check_evaluations(result)[("people", "evaluation")].passed
    tick = evaluate_sensor(passing, instance, tick.cursor)
    assert "p4: rejected" in tick.message
    assert "evaluation" in tick.log_text(logging.WARNING)
    assert _default(mb_store, collection) == run3

    # 5. Re-materialising the older p2 (unchanged, checks pass) does not steal the default.
    result = passing.run(instance, "p2")
    assert result.success
    tick = evaluate_sensor(passing, instance, tick.cursor)
    assert "p2: older than default" in tick.message
    assert _default(mb_store, collection) == run3
    assert "matchbox-dagster promote" in tick.log_text()

    # 6. Rollback is explicit and one call.
    promote_run(mb_store, collection, run2)
    assert _default(mb_store, collection) == run2
    assert not mb_store.get_run(collection, run3).is_default
    assert not mb_store.get_run(collection, run3).is_mutable
    idle = evaluate_sensor(passing, instance, tick.cursor)
    assert "No new materialisation" in idle.message
    assert _default(mb_store, collection) == run2


def test_sensor_without_materialisations_skips(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource
) -> None:
    graph = make_graph(mb_resource)
    tick = evaluate_sensor(graph, instance)
    assert isinstance(tick.result, dg.SkipReason)
    assert "No new materialisation" in tick.message


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "not json",
        "[1, 2]",
        "null",
        '"text"',
        "{}",
        '{"after_storage_id": "many"}',
        '{"after_storage_id": 7, "promoted": 3}',
    ],
)
def test_cursor_from_garbage_starts_afresh(garbage: str | None) -> None:
    assert PromotionCursor.from_json(garbage) == PromotionCursor()


def test_cursor_round_trip_bounds_its_lists() -> None:
    cursor = PromotionCursor(
        after_storage_id=42,
        promoted=[f"p{i}" for i in range(150)],
        rejected=["r1"],
    )
    data = json.loads(cursor.to_json())
    assert data["after_storage_id"] == 42
    assert len(data["promoted"]) == 100 and data["promoted"][-1] == "p149"
    back = PromotionCursor.from_json(cursor.to_json())
    assert back.after_storage_id == 42
    assert back.promoted == [f"p{i}" for i in range(50, 150)]
    assert back.rejected == ["r1"]


# --- a run that can no longer finish (issue: one killed run stalled the sensor) -------------

SLOW = "slow"
STALL_ENV = "MATCHBOX_TEST_STALL_MARKER"


def _assets_with_slow_check(collection: str) -> list[Any]:
    """The demo graph plus a blocking check on the resolver that hangs when told to (by env)."""

    @dg.asset_check(
        asset=dg.AssetKey([collection, "people"]),
        name=SLOW,
        blocking=True,
        partitions_def=run_partitions(collection),
    )
    def _slow() -> dg.AssetCheckResult:
        marker = os.environ.get(STALL_ENV)
        if marker:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)  # killed long before
        return dg.AssetCheckResult(passed=True)

    return [*build_collection_assets(febrl4_spec(collection=collection)), _slow]


def _materialise_with_slow_check(
    instance: dg.DagsterInstance, resource: MatchboxResource, collection: str, label: str
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        _assets_with_slow_check(collection),
        instance=instance,
        partition_key=label,
        resources={"matchbox": resource, IO_MANAGER_KEY: MatchboxIOManager(matchbox=resource)},
        raise_on_error=False,
    )


def _stalled_worker() -> None:
    """Entry point of the subprocess: materialise partition ``stalled`` (it hangs in ``slow``)."""
    instance = dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
    resource = MatchboxResource(
        postgres_uri=os.environ["MATCHBOX_POSTGRES_URI"],
        postgres_schema=os.environ["MATCHBOX_POSTGRES_SCHEMA"],
    )
    _materialise_with_slow_check(instance, resource, os.environ["COLLECTION"], "stalled")


def test_a_killed_run_does_not_stall_later_promotions(
    tmp_path: Path, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    """A run killed while its checks ran stays STARTED; later runs are still promoted.

    Once Dagster's run monitoring marks it failed (what ``max_runtime_seconds`` does to a run
    whose worker died), the sensor skips it, saying why.
    """
    collection = unique_collection("stall")
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home))
    sensor = build_promotion_sensor(
        collection=collection,
        resolver_key=dg.AssetKey([collection, "people"]),
        check_names=["resolver_quality", "evaluation", "churn", SLOW],
    )
    graph = Graph(
        spec=febrl4_spec(collection=collection),
        defs=dg.Definitions(sensors=[sensor], resources={"matchbox": mb_resource}),
        resource=mb_resource,
    )
    try:
        add_run_partition(instance, mb_store, collection, "stalled")
        marker = tmp_path / "slow-check-started"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "MATCHBOX_POSTGRES_URI": mb_resource.postgres_uri or "",
            "MATCHBOX_POSTGRES_SCHEMA": mb_resource.postgres_schema or "",
            "COLLECTION": collection,
            STALL_ENV: str(marker),
        }
        code = "from tests.dagster.test_promotion import _stalled_worker; _stalled_worker()"
        worker = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path.cwd())
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert worker.poll() is None, "the worker ended before its slow check started"
            assert time.monotonic() < deadline, "the slow check never started"
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        (stalled_run,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "stalled"}))
        assert stalled_run.status == dg.DagsterRunStatus.STARTED  # for ever, without monitoring

        tick = evaluate_sensor(graph, instance)
        assert "stalled: waiting for slow" in tick.message
        assert PromotionCursor.from_json(tick.cursor).waiting == {"stalled": stalled_run.run_id}

        # A later passing run is promoted although the killed one still waits.
        _, run2 = add_run_partition(instance, mb_store, collection, "later")
        assert _materialise_with_slow_check(instance, mb_resource, collection, "later").success
        tick = evaluate_sensor(graph, instance, tick.cursor)
        assert f"later: promoted run {run2.run_id}" in tick.message
        assert "stalled: waiting" in tick.message
        assert _default(mb_store, collection) == run2.run_id

        # Run monitoring marks the dead run failed: the sensor skips it and says why.
        instance.report_run_failed(stalled_run, "run worker gone (max_runtime_seconds)")
        tick = evaluate_sensor(graph, instance, tick.cursor)
        assert "stalled: skipped (Dagster run ended FAILURE before slow)" in tick.message
        assert "Skipping" in tick.log_text(logging.WARNING)
        assert PromotionCursor.from_json(tick.cursor).waiting == {}
        assert "stalled" in PromotionCursor.from_json(tick.cursor).rejected
        assert _default(mb_store, collection) == run2.run_id
        idle = evaluate_sensor(graph, instance, tick.cursor)
        assert "No new materialisation" in idle.message
    finally:
        instance.dispose()


def test_the_instance_example_enables_run_monitoring() -> None:
    """docs/dagster.yaml.example turns run monitoring on, so dead runs end as failed."""
    example = yaml.safe_load(Path("docs/dagster.yaml.example").read_text())
    monitoring = example["run_monitoring"]
    with dg.instance_for_test(overrides={"run_monitoring": monitoring}) as inst:
        assert inst.run_monitoring_enabled
        assert inst.run_monitoring_max_runtime_seconds == monitoring["max_runtime_seconds"] > 0
