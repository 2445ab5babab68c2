"""A run's lifecycle seen from both sides: the store and Dagster.

The store knows a run's flags, label, steps (and their upload stages) and who promoted it
(:meth:`~matchbox_dagster.store.base.MatchboxDBAdapter.run_summaries`, one query). Dagster knows
whether a run partition is being materialised, where it failed, and how each blocking check of
each partition ended (the checks are partitioned, so each evaluation names its partition). This
module joins the two, with a fixed number of queries whatever the number of runs, into a
:class:`RunStatus` per run: what ``matchbox-dagster runs`` prints and what the promotion gate
(:func:`promotion_blockers`) reads.

Dagster's per-partition check status is read through the instance's event-log storage
(``get_asset_check_partition_info``); this is the one module that does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckStatus,
)

from matchbox_dagster.common.dtos import UploadStage
from matchbox_dagster.common.runs import Promotion, RunSummary
from matchbox_dagster.dagster.partitions import dagster_name
from matchbox_dagster.store.base import MatchboxDBAdapter

PARTITION_TAG = "dagster/partition"
_UNFINISHED = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


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


@dataclass
class RunStatus:
    """One run's state, from the store and from Dagster."""

    summary: RunSummary
    missing_steps: list[str] = field(default_factory=list)
    dagster_run: dg.DagsterRun | None = None
    failed_step: str | None = None
    failure: str | None = None
    checks_total: int = 0
    checks_passed: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    checks_pending: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The run's label (its partition key), or ``#<id>`` for an unlabelled run."""
        return self.summary.label or f"#{self.summary.run_id}"

    @property
    def running(self) -> bool:
        """Whether a Dagster run of this partition has not finished."""
        return self.dagster_run is not None and self.dagster_run.status in _UNFINISHED

    @property
    def failed(self) -> bool:
        """Whether the latest Dagster run failed, or any blocking check failed (not running)."""
        if self.running:
            return False
        ended_badly = self.dagster_run is not None and self.dagster_run.status in (
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        )
        return ended_badly or bool(self.checks_failed)

    @property
    def state(self) -> str:
        """A short phrase: running, failed at step X, checks failed or passed n/m, incomplete."""
        done = len(self.checks_passed)
        if self.running:
            return f"running ({self.dagster_run.status.value.lower()})"  # type: ignore[union-attr]
        if self.checks_failed:  # a failed blocking check also fails its step: say which
            return f"checks failed {done}/{self.checks_total}"
        if self.failed_step:
            return f"failed at step {self.failed_step}"
        if self.dagster_run is not None and self.dagster_run.status in (
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        ):
            return f"{self.dagster_run.status.value.lower()} (no step failed)"
        if not self.summary.steps:
            return "empty"
        if self.missing_steps:
            return f"incomplete ({len(self.missing_steps)} step(s) missing)"
        return f"checks passed {done}/{self.checks_total}"

    @property
    def flags(self) -> str:
        """``default``, ``promoted``, ``immutable`` or ``mutable``."""
        if self.summary.is_default:
            return "default"
        if self.summary.promoted_by is not None:
            return "promoted"
        return "mutable" if self.summary.is_mutable else "immutable"

    @property
    def promotion(self) -> str:
        """Who promoted the run last, when, and (forced) why; empty if never promoted."""
        s = self.summary
        if s.promoted_by is None:
            return ""
        when = s.promoted_at.strftime("%Y-%m-%d %H:%M") if s.promoted_at else ""
        text = f"{s.promoted_by} {when}"
        if s.promotion_forced:
            text += f" FORCED: {s.promotion_reason}"
        return text

    def blockers(self) -> list[str]:
        """Why this run may not be promoted (empty: it may)."""
        found = []
        if self.running:
            found.append(f"it is still running (Dagster run {self.dagster_run.run_id})")  # type: ignore[union-attr]
        if self.missing_steps:
            found.append(
                f"its graph is incomplete: step(s) {', '.join(self.missing_steps)} missing or "
                "not complete"
            )
        if self.failed_step and not self.checks_failed:
            found.append(f"its Dagster run failed at step {self.failed_step}: {self.failure}")
        if self.checks_failed:
            found.append(f"blocking check(s) failed: {', '.join(self.checks_failed)}")
        if self.checks_pending:
            found.append(
                "blocking check(s) not passed in Dagster for this partition: "
                + ", ".join(self.checks_pending)
            )
        return found


def _check_name(key: dg.AssetCheckKey) -> str:
    return f"{key.asset_key.path[-1]}:{key.name}"


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

    Queries: one to the store, and without ``instance`` none to Dagster; with it, one for the
    Dagster runs of the labels, one per blocking check, and one per failed Dagster run.
    """
    summaries = store.run_summaries(shape.collection)
    if run_ids is not None:
        wanted = set(run_ids)
        summaries = [s for s in summaries if s.run_id in wanted]
    statuses = []
    for summary in summaries:
        missing = [
            step for step in shape.steps if summary.steps.get(step) != UploadStage.COMPLETE
        ]
        statuses.append(
            RunStatus(summary=summary, missing_steps=missing, checks_total=len(shape.checks))
        )
    labelled = {s.summary.label: s for s in statuses if s.summary.label}
    if instance is None or not labelled:
        for status in statuses:
            status.checks_pending = [_check_name(k) for k in shape.checks]
        return statuses
    for run in instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: list(labelled)})):
        status = labelled.get(run.tags.get(PARTITION_TAG))
        if status is None or status.dagster_run is not None:
            continue  # runs come newest first: the first is the latest
        if not shape.ran(run):
            continue  # a run of another collection's partition with the same label
        status.dagster_run = run
        if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            status.failed_step, status.failure = _failed_step(instance, run.run_id)
    outcome: dict[tuple[str, dg.AssetCheckKey], CheckStatus] = {}
    if shape.checks:
        infos = instance.event_log_storage.get_asset_check_partition_info(
            list(shape.checks), partition_keys=list(labelled)
        )
        for info in infos:
            if info.partition_key is not None:
                outcome[(info.partition_key, info.check_key)] = info.latest_execution_status
    for label, status in labelled.items():
        for key in shape.checks:
            found = outcome.get((label, key))
            name = _check_name(key)
            if found == CheckStatus.SUCCEEDED:
                status.checks_passed.append(name)
            elif found == CheckStatus.FAILED:
                status.checks_failed.append(name)
            else:
                status.checks_pending.append(name)
    for status in statuses:
        if not status.summary.label:
            status.checks_pending = [_check_name(k) for k in shape.checks]
    return statuses


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
