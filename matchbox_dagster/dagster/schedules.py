"""Starting runs: the collection's graph job, and a schedule that adds a run partition for it."""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from matchbox_dagster.dagster.partitions import add_run_partition, dagster_name
from matchbox_dagster.dagster.resources import MatchboxResource


def build_graph_job(*, collection: str, asset_keys: Sequence[dg.AssetKey]) -> Any:
    """A job materialising the collection's whole graph (and its checks) for one run partition.

    Launch it from the UI for a partition (adding a new key there creates the run), from the
    CLI (``matchbox-dagster check``) or from the schedule.
    """
    if not asset_keys:
        raise dg.DagsterInvalidDefinitionError("Argument 'asset_keys': the graph has no assets.")
    return dg.define_asset_job(
        name=f"{dagster_name(collection)}_graph",
        selection=dg.AssetSelection.assets(*asset_keys),
        description=f"Materialise every step of collection {collection!r} for one run.",
    )


def build_run_schedule(
    *,
    collection: str,
    job: Any,
    cron_schedule: str,
    name: str | None = None,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """A schedule that starts a new run: adds partition ``scheduled-<time>``, requests the job."""

    @dg.schedule(
        cron_schedule=cron_schedule,
        job=job,
        name=name or f"{dagster_name(collection)}_new_run",
        default_status=default_status,
        description=f"Start a new run of {collection!r} and materialise its graph.",
    )
    def _new_run(
        context: dg.ScheduleEvaluationContext, matchbox: MatchboxResource
    ) -> dg.RunRequest:
        when = context.scheduled_execution_time
        label = f"scheduled-{when:%Y%m%dT%H%M}" if when else None
        label, run = add_run_partition(context.instance, matchbox.get_store(), collection, label)
        context.log.info("Added run %s of %s as partition %s", run.run_id, collection, label)
        return dg.RunRequest(
            run_key=label, partition_key=label, tags={"matchbox/run": str(run.run_id)}
        )

    return _new_run
