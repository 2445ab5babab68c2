"""A run's lifecycle seen from both sides: the store and Dagster.

The store knows a run's flags, label, steps (and their upload stages) and who promoted it
(:meth:`~matchbox_dagster.store.base.MatchboxDBAdapter.run_summaries`, one query). Dagster knows
whether a run partition is being materialised, where it failed, and how each blocking check of
each partition ended (the checks are partitioned, so each evaluation names its partition). This
module joins the two, with a fixed number of queries whatever the number of runs, into a
:class:`~matchbox_dagster.common.run_status.RunStatus` per run (computed without Dagster from the
store's summary; Dagster's view added here): what ``matchbox-dagster runs`` prints and what the
promotion gate (``RunStatus.blockers``) reads.

Dagster's per-partition check status is read through the instance's event-log storage
(``get_asset_check_partition_info``); this is the one module that does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckStatus,
)

from matchbox_dagster.common.run_status import ENDED_BADLY, RunShape, RunStatus, store_statuses
from matchbox_dagster.common.runs import Promotion
from matchbox_dagster.dagster.partitions import dagster_name
from matchbox_dagster.store.base import MatchboxDBAdapter

__all__ = [
    "GraphShape",
    "RunStatus",
    "graph_shape",
    "mark_default",
    "note_attempt",
    "run_statuses",
]

PARTITION_TAG = "dagster/partition"


@dataclass(frozen=True)
class GraphShape:
    """What the lifecycle needs to know of a collection's graph: its steps and blocking checks."""

    collection: str
    steps: tuple[str, ...]
    asset_keys: tuple[dg.AssetKey, ...]
    checks: tuple[dg.AssetCheckKey, ...]
    resolver_key: dg.AssetKey | None = None
    job_name: str | None = None

    def ran(self, run: dg.DagsterRun) -> bool:
        """Whether a Dagster run materialised (some of) this graph."""
        if run.asset_selection:
            return bool(run.asset_selection & set(self.asset_keys))
        return run.job_name == self.job_name  # the graph job (whole selection)

    def plain(self) -> RunShape:
        """The shape without Dagster's keys: step names and ``(step, check)`` pairs."""
        return RunShape.from_keys(
            self.collection,
            self.steps,
            [k.path for k in self.asset_keys],
            [(k.asset_key.path, k.name) for k in self.checks],
        )


def graph_shape(defs: dg.Definitions, collection: str) -> GraphShape:
    """The steps and blocking checks of ``collection``'s assets in ``defs``."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    steps: dict[dg.AssetKey, str] = {}
    resolver = None
    for key in graph.get_all_asset_keys():
        meta = graph.get(key).metadata
        if str(_plain(meta.get("matchbox/collection"))) != collection:
            continue
        steps[key] = str(_plain(meta.get("matchbox/step")))
        if _plain(meta.get("matchbox/step_type")) == "resolver":
            resolver = key
    checks = [
        key
        for key in graph.get_check_keys_for_assets(set(steps))
        if graph.get_check_spec(key).blocking
    ]
    return GraphShape(
        collection=collection,
        steps=tuple(steps.values()),
        asset_keys=tuple(steps),
        checks=tuple(sorted(checks, key=lambda k: (k.asset_key.to_user_string(), k.name))),
        resolver_key=resolver,
        job_name=f"{dagster_name(collection)}_graph",
    )


def _plain(value: object) -> object:
    return getattr(value, "value", value)


def _failed_step(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, str | None]:
    """The first failed step of a Dagster run (its asset's last name) and its cause, one line."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is None:
            continue
        error = getattr(event.event_specific_data, "error", None)
        return (event.step_key or "?").split("__")[-1], error_cause(error)
    return None, None


def error_cause(error: object) -> str | None:
    """The innermost cause of a serialised Dagster error: ``Class: first line``."""
    cause = None
    while error is not None:
        cause = error
        error = getattr(error, "cause", None)
    if cause is None:
        return None
    name = getattr(cause, "cls_name", None) or "Error"
    lines = (getattr(cause, "message", "") or "").strip().splitlines()
    first = lines[0] if lines else ""
    if f"{name}: " in first[: len(name) + 120]:  # "module.Class: text" as Dagster serialises it
        first = first.split(f"{name}: ", 1)[1]
    return f"{name}: {first}".strip()


def run_statuses(
    instance: dg.DagsterInstance | None,
    store: MatchboxDBAdapter,
    shape: GraphShape,
    run_ids: Sequence[int] | None = None,
) -> list[RunStatus]:
    """Every run of the collection (or ``run_ids``) with its state, in run order.

    Queries: one to the store, and without ``instance`` none to Dagster; with it, those of
    :func:`add_dagster_view` for every run.
    """
    statuses = store_statuses(store.run_summaries(shape.collection), shape.plain(), run_ids)
    if instance is not None:
        add_dagster_view(instance, shape, statuses)
    return statuses


def add_dagster_view(
    instance: dg.DagsterInstance, shape: GraphShape, statuses: Sequence[RunStatus]
) -> None:
    """Add Dagster's view to labelled ``statuses``: latest run, failed step, check outcomes.

    Queries: one for the Dagster runs of the labels, one per blocking check, and one per failed
    Dagster run. A check's finished evaluation in Dagster wins over the store's record; with
    neither it stays pending.
    """
    labelled = {s.summary.label: s for s in statuses if s.summary.label}
    if not labelled:
        return
    latest: dict[str, dg.DagsterRun] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: list(labelled)})):
        label = run.tags.get(PARTITION_TAG)
        if label in labelled and label not in latest and shape.ran(run):
            latest[label] = run  # runs come newest first: the first is the latest
    for label, run in latest.items():
        status = labelled[label]
        status.dagster_run_id, status.dagster_state = run.run_id, run.status.value
        if run.status.value in ENDED_BADLY:
            status.failed_step, status.failure = _failed_step(instance, run.run_id)
    outcome: dict[tuple[str, dg.AssetCheckKey], CheckStatus] = {}
    if shape.checks:
        infos = instance.event_log_storage.get_asset_check_partition_info(
            list(shape.checks), partition_keys=list(labelled)
        )
        for info in infos:
            if info.partition_key is not None:
                outcome[(info.partition_key, info.check_key)] = info.latest_execution_status
    names = shape.plain().check_names
    for label, status in labelled.items():
        found = dict(status.summary.checks)
        for key, name in zip(shape.checks, names, strict=True):
            ended = outcome.get((label, key))
            if ended in (CheckStatus.SUCCEEDED, CheckStatus.FAILED):
                found[name] = ended == CheckStatus.SUCCEEDED
        status.set_checks(names, found)


def note_attempt(
    context: dg.AssetExecutionContext, store: MatchboxDBAdapter, collection: str
) -> None:
    """Note in the store that this Dagster run began materialising the asset's partition.

    Once per Dagster run and label: a process asks the store once (later notes would change
    nothing). Until the run's checks are recorded after it, ``matchbox-dagster runs`` asks
    Dagster about the run (running, failed at a step). Best effort: a note that cannot be
    written is logged (and tried again by the next asset).
    """
    from matchbox_dagster.dagster.partitions import (
        dagster_run_id,
        first_in_dagster_run,
        seen_in_dagster_run,
    )

    if not first_in_dagster_run(context, store, collection):
        return
    try:
        store.note_dagster_attempt(collection, context.partition_key, dagster_run_id(context))
    except Exception as exc:  # runs may then miss a failure before any step: say so
        context.log.warning("Dagster run not noted in the store: %s", exc)
    else:
        seen_in_dagster_run(context, store, collection)


def mark_default(
    instance: dg.DagsterInstance,
    resolver_key: dg.AssetKey,
    label: str,
    run_id: int,
    promotion: Promotion,
    *,
    partition: bool = True,
) -> None:
    """Show in the Dagster UI that the run labelled ``label`` is now the default.

    An observation of the final resolver (of its partition ``label`` when ``partition``), with
    text metadata (identifiers are shown, never plotted): ``matchbox/default_run`` (the
    label), the store run, who and why.
    """
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=resolver_key,
            partition=label if partition else None,
            description=f"Run {label} is the default (promoted by {promotion.promoted_by}).",
            metadata={
                "matchbox/default_run": dg.MetadataValue.text(label),
                "matchbox/store_run": dg.MetadataValue.text(str(run_id)),
                "matchbox/promoted_by": dg.MetadataValue.text(promotion.promoted_by),
                "matchbox/reason": dg.MetadataValue.text(promotion.reason or ""),
                "matchbox/forced": dg.MetadataValue.text("yes" if promotion.forced else "no"),
            },
        )
    )
