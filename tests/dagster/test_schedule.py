"""The schedule that starts a new run: adds the dynamic partition and the store run."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from matchbox_dagster.dagster.partitions import partitions_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.schedules import build_graph_job, build_run_schedule
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import make_graph

WHEN = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
LABEL = "scheduled-20261123T0600"


def _evaluate(
    schedule: dg.ScheduleDefinition,
    instance: dg.DagsterInstance,
    resource: MatchboxResource,
    when: datetime,
) -> dg.RunRequest:
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, resources={"matchbox": resource}
    ) as ctx:
        out = schedule(ctx)
    assert isinstance(out, dg.RunRequest)
    return out


def test_schedule_adds_partition_and_run(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    graph = make_graph(mb_resource, schedule="0 6 * * 1")
    collection = graph.collection
    schedule = graph.schedule
    assert schedule.cron_schedule == "0 6 * * 1"
    assert schedule.job_name == graph.job.name
    assert collection not in mb_store.list_collections()

    request = _evaluate(schedule, instance, mb_resource, WHEN)
    assert request.partition_key == LABEL
    assert request.run_key == LABEL
    assert instance.get_dynamic_partitions(partitions_name(collection)) == [LABEL]
    run = mb_store.run_for_label(collection, LABEL, create=False)
    assert request.tags["matchbox/run"] == str(run.run_id)
    assert mb_store.run_labels(collection) == {run.run_id: LABEL}
    assert run.is_mutable and not run.steps

    # The same tick evaluated again (a retry) finds the same partition and run.
    again = _evaluate(schedule, instance, mb_resource, WHEN)
    assert again.partition_key == LABEL
    assert again.tags["matchbox/run"] == str(run.run_id)
    assert instance.get_dynamic_partitions(partitions_name(collection)) == [LABEL]

    # The next week's tick starts another run.
    later = _evaluate(schedule, instance, mb_resource, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))
    assert later.partition_key == "scheduled-20261130T0600"
    assert int(later.tags["matchbox/run"]) != run.run_id
    assert len(mb_store.run_labels(collection)) == 2
    assert set(instance.get_dynamic_partitions(partitions_name(collection))) == {
        LABEL,
        "scheduled-20261130T0600",
    }


def test_schedule_tick_through_evaluate_tick(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    """The tick as the daemon evaluates it: one valid run request for the graph job."""
    graph = make_graph(mb_resource)
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=WHEN,
        resources={"matchbox": mb_resource},
        repository_def=graph.defs.get_repository_def(),
    ) as ctx:
        data = graph.schedule.evaluate_tick(ctx)
    assert data.skip_message is None
    assert [r.partition_key for r in data.run_requests] == [LABEL]
    assert [r.job_name for r in data.run_requests] in ([None], [graph.job.name])
    assert mb_store.run_for_label(graph.collection, LABEL, create=False).run_id


def test_no_schedule_without_cron(mb_resource: MatchboxResource) -> None:
    graph = make_graph(mb_resource, schedule=None)
    assert list(graph.defs.schedules or []) == []


def test_graph_job_needs_assets() -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="asset_keys"):
        build_graph_job(collection="empty", asset_keys=[])


def test_schedule_name_is_slugged() -> None:
    job = build_graph_job(collection="my-coll.v2", asset_keys=[dg.AssetKey(["x"])])
    schedule = build_run_schedule(collection="my-coll.v2", job=job, cron_schedule="0 0 * * *")
    assert schedule.name == "my_coll_v2_new_run"
    assert job.name == "my_coll_v2_graph"
