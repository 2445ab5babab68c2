"""The schedule that starts a new run: adds the dynamic partition and the store run."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from matchbox_dagster.dagster.partitions import add_run_partition, partitions_name
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


RACERS = 4
LABELS = [f"race-{i}" for i in range(12)]


def _racer(
    ref: Any, uri: str | None, schema: str, collection: str, raw: bool, barrier: Any, out: Any
) -> None:
    """One process: for each label, wait for the others, then add it; report errors."""
    instance = dg.DagsterInstance.from_ref(ref)
    name = partitions_name(collection)
    store = MatchboxResource(postgres_uri=uri, postgres_schema=schema).get_store()
    for label in LABELS:
        barrier.wait()
        try:
            if raw:
                instance.add_dynamic_partitions(name, [f"raw-{label}"])
            else:
                _, run = add_run_partition(instance, store, collection, label)
                out.put(("run", label, run.run_id))
        except Exception as exc:
            out.put(("error", label, f"{type(exc).__module__}.{type(exc).__name__}"))
    out.put(("done", "", 0))


def _race(instance: dg.DagsterInstance, resource: MatchboxResource, collection: str, raw: bool):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(RACERS), ctx.Queue()
    uri = resource.postgres_uri
    args = (instance.get_ref(), uri, resource.postgres_schema, collection, raw, barrier, out)
    procs = [ctx.Process(target=_racer, args=args) for _ in range(RACERS)]
    for proc in procs:
        proc.start()
    found, done = [], 0
    while done < RACERS:
        item = out.get(timeout=120)
        done += item[0] == "done"
        found.append(item)
    for proc in procs:
        proc.join(30)
    return [f for f in found if f[0] != "done"]


def test_racing_run_partitions_are_idempotent(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    """Processes adding one label at once get one run and one partition, and no error.

    Dagster's own ``add_dynamic_partitions`` on its default (SQLite) storage reads then inserts,
    so the same race on it alone raises ``IntegrityError`` (shown first; dagster-postgres
    upserts instead).
    """
    collection = make_graph(mb_resource).collection
    raw = _race(instance, mb_resource, collection, raw=True)
    assert any(kind == "error" for kind, _, _ in raw), raw
    assert {e for kind, _, e in raw if kind == "error"} == {"sqlalchemy.exc.IntegrityError"}

    found = _race(instance, mb_resource, collection, raw=False)
    assert [f for f in found if f[0] == "error"] == []
    runs: dict[str, set[int]] = {}
    for _, label, run_id in found:
        runs.setdefault(label, set()).add(run_id)
    assert {label: len(ids) for label, ids in runs.items()} == dict.fromkeys(LABELS, 1)
    keys = instance.get_dynamic_partitions(partitions_name(collection))
    assert sorted(k for k in keys if k.startswith("race-")) == sorted(LABELS)
    assert set(mb_store.run_labels(collection).values()) == set(LABELS)
