"""A run's status: what ``matchbox-dagster runs`` prints and what the promotion gate reads.

Dagster-free, so ``runs`` can print every run it can settle from the store without importing
Dagster. A :class:`RunStatus` starts from the store's :class:`~.runs.RunSummary` (flags, label,
step stages, current check outcomes) and the collection's :class:`RunShape`; Dagster's view
(the latest Dagster run of the label, where it failed, check outcomes the store did not record)
is added by :func:`matchbox_dagster.dagster.lifecycle.run_statuses` for the runs that need it.

A run is *settled* by the store (:meth:`RunStatus.settled`) when no Dagster run was noted for
its label and it has no steps, or when every step of the graph is complete and every blocking
check has an outcome recorded since its step's data and the label's latest Dagster attempt.
Anything else (running, failed before its checks, checks never recorded) needs Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matchbox_dagster.common.dtos import UploadStage
from matchbox_dagster.common.runs import RunSummary

UNFINISHED = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})
"""Dagster run statuses (``DagsterRunStatus`` values) of a run that has not finished."""
ENDED_BADLY = frozenset({"FAILURE", "CANCELED"})
"""Dagster run statuses of a run that ended without succeeding."""


@dataclass(frozen=True)
class RunShape:
    """A collection's graph as the status needs it: step names and blocking checks.

    ``checks`` are ``(step, check)`` pairs in display order; their names read ``step:check``.
    """

    collection: str
    steps: tuple[str, ...]
    checks: tuple[tuple[str, str], ...]

    @classmethod
    def from_keys(
        cls,
        collection: str,
        steps: Sequence[str],
        asset_keys: Sequence[Sequence[str]],
        checks: Sequence[tuple[Sequence[str], str]],
    ) -> RunShape:
        """From each step's asset key path and each check's ``(asset key path, name)``."""
        step_of = {tuple(k): s for k, s in zip(asset_keys, steps, strict=True)}
        return cls(
            collection=collection,
            steps=tuple(steps),
            checks=tuple((step_of.get(tuple(k), k[-1]), name) for k, name in checks),
        )

    @property
    def check_names(self) -> list[str]:
        """Each blocking check as ``step:check``."""
        return [f"{step}:{check}" for step, check in self.checks]


@dataclass
class RunStatus:
    """One run's state, from the store and (when it needs it) from Dagster."""

    summary: RunSummary
    missing_steps: list[str] = field(default_factory=list)
    dagster_run_id: str | None = None
    dagster_state: str | None = None
    """The latest Dagster run's status (a ``DagsterRunStatus`` value), if Dagster was asked."""
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

    def settled(self) -> bool:
        """Whether the store alone says all there is to say about this run (see the module)."""
        if not self.summary.steps:
            return self.summary.dagster_run is None
        return not self.missing_steps and not self.checks_pending

    @property
    def running(self) -> bool:
        """Whether a Dagster run of this partition has not finished."""
        return self.dagster_state in UNFINISHED

    @property
    def failed(self) -> bool:
        """Whether the latest Dagster run failed, or any blocking check failed (not running)."""
        if self.running:
            return False
        return self.dagster_state in ENDED_BADLY or bool(self.checks_failed)

    @property
    def state(self) -> str:
        """A short phrase: running, failed at step X, checks failed or passed n/m, incomplete."""
        done = len(self.checks_passed)
        if self.running:
            return f"running ({(self.dagster_state or '').lower()})"
        if self.checks_failed:  # a failed blocking check also fails its step: say which
            return f"checks failed {done}/{self.checks_total}"
        if self.failed_step:
            return f"failed at step {self.failed_step}"
        if self.dagster_state in ENDED_BADLY:
            return f"{(self.dagster_state or '').lower()} (no step failed)"
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
            found.append(f"it is still running (Dagster run {self.dagster_run_id})")
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

    def set_checks(self, names: Sequence[str], outcomes: dict[str, bool]) -> None:
        """Sort each check into passed, failed or pending by its outcome (missing: pending)."""
        self.checks_passed, self.checks_failed, self.checks_pending = [], [], []
        for name in names:
            found = outcomes.get(name)
            if found is True:
                self.checks_passed.append(name)
            elif found is False:
                self.checks_failed.append(name)
            else:
                self.checks_pending.append(name)


def store_statuses(
    summaries: Sequence[RunSummary], shape: RunShape, run_ids: Sequence[int] | None = None
) -> list[RunStatus]:
    """Each run's status from the store alone (Dagster not asked), in run order."""
    if run_ids is not None:
        wanted = set(run_ids)
        summaries = [s for s in summaries if s.run_id in wanted]
    statuses = []
    for summary in summaries:
        missing = [step for step in shape.steps if summary.steps.get(step) != UploadStage.COMPLETE]
        status = RunStatus(summary=summary, missing_steps=missing, checks_total=len(shape.checks))
        status.set_checks(shape.check_names, summary.checks)
        statuses.append(status)
    return statuses
