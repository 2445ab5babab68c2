"""The upload audit, and resetting stuck uploads.

The audit reports stuck, failed and abandoned uploads, empty steps of immutable runs, and stale
runs.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from matchbox_dagster.common.dtos import StepPath, StepType, UploadStage
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import logger


class AuditedStep(BaseModel):
    """A step the upload audit found, with how long it has been in its stage."""

    path: StepPath
    step_type: StepType
    stage: UploadStage
    since: datetime
    minutes: float


class StaleRun(BaseModel):
    """A run that is old, still mutable and not the default."""

    collection: str
    run_id: int
    created_at: datetime
    age_days: float
    steps: int


class UploadAudit(BaseModel):
    """What :meth:`Audit.audit_uploads` found.

    - ``stuck``: PROCESSING for longer than ``uploads_expiry_minutes`` (a crashed writer);
      :meth:`Audit.reset_stuck_uploads` moves them back to READY.
    - ``failed``: back at READY after an upload began (locked, then released without data).
    - ``abandoned``: declared (READY) and never given data for longer than
      ``uploads_expiry_minutes``: e.g. a materialisation that created the step, then died.
    - ``empty_immutable``: without data in an immutable run, so they can never get any.
    - ``stale_runs``: older than ``stale_run_days``, still mutable and not the default.
    """

    checked_at: datetime
    uploads_expiry_minutes: int | None
    stale_run_days: int
    stuck: list[AuditedStep] = Field(default_factory=list)
    failed: list[AuditedStep] = Field(default_factory=list)
    abandoned: list[AuditedStep] = Field(default_factory=list)
    empty_immutable: list[AuditedStep] = Field(default_factory=list)
    stale_runs: list[StaleRun] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return not (
            self.stuck or self.failed or self.abandoned or self.empty_immutable or self.stale_runs
        )

    def counts(self) -> dict[str, int]:
        """How many of each finding (for Dagster metadata)."""
        return {
            "stuck": len(self.stuck),
            "failed": len(self.failed),
            "abandoned": len(self.abandoned),
            "empty_immutable": len(self.empty_immutable),
            "stale_runs": len(self.stale_runs),
        }


class Audit:
    """``audit_uploads`` and ``reset_stuck_uploads``."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def audit_uploads(self, stale_run_days: int = 30) -> UploadAudit:
        """Report stuck, failed and abandoned uploads, empty steps of immutable runs, stale runs.

        An operator (or a Dagster sensor) can act on the result, e.g. with
        :meth:`reset_stuck_uploads`.
        """
        if stale_run_days < 0:
            raise MatchboxInvalidData("stale_run_days must be zero or positive")
        expiry = self.ctx.settings.uploads_expiry_minutes
        with self.db.connection() as conn:
            checked_at = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            rows = (
                core.dict_cursor(conn)
                .execute(
                    """
                SELECT c.name AS collection, s.run_id, s.name, s.step_type, s.upload_stage,
                       s.stage_updated_at AS since, r.is_mutable,
                       extract(epoch FROM now() - s.stage_updated_at) / 60 AS minutes,
                       CASE
                         WHEN s.upload_stage = 'processing' AND %(expiry)s::int IS NOT NULL
                              AND s.stage_updated_at < now() - make_interval(mins => %(expiry)s)
                           THEN 'stuck'
                         WHEN s.upload_stage = 'ready' AND s.stage_updated_at > s.created_at
                           THEN 'failed'
                         WHEN s.upload_stage = 'ready' AND %(expiry)s::int IS NOT NULL
                              AND s.created_at < now() - make_interval(mins => %(expiry)s)
                           THEN 'abandoned'
                       END AS finding,
                       s.upload_stage = 'ready' AND NOT r.is_mutable AS unfillable
                FROM steps s JOIN runs r USING (run_id) JOIN collections c USING (collection_id)
                WHERE s.upload_stage <> 'complete'
                ORDER BY c.name, s.run_id, s.name
                """,
                    {"expiry": expiry},
                )
                .fetchall()
            )
            runs = (
                core.dict_cursor(conn)
                .execute(
                    """
                SELECT c.name AS collection, r.run_id, r.created_at,
                       extract(epoch FROM now() - r.created_at) / 86400 AS age_days,
                       (SELECT count(*) FROM steps s WHERE s.run_id = r.run_id) AS steps
                FROM runs r JOIN collections c USING (collection_id)
                WHERE r.is_mutable AND NOT r.is_default
                  AND r.created_at < now() - make_interval(days => %s)
                ORDER BY c.name, r.run_id
                """,
                    (stale_run_days,),
                )
                .fetchall()
            )
        audit = UploadAudit(
            checked_at=checked_at, uploads_expiry_minutes=expiry, stale_run_days=stale_run_days
        )
        for row in rows:
            step = AuditedStep(
                path=StepPath(collection=row["collection"], run=row["run_id"], name=row["name"]),
                step_type=StepType(row["step_type"]),
                stage=UploadStage(row["upload_stage"]),
                since=row["since"],
                minutes=float(row["minutes"]),
            )
            if row["finding"] in ("stuck", "failed", "abandoned"):
                getattr(audit, row["finding"]).append(step)
            if row["unfillable"]:
                audit.empty_immutable.append(step)
        audit.stale_runs.extend(
            StaleRun(
                collection=r["collection"],
                run_id=r["run_id"],
                created_at=r["created_at"],
                age_days=float(r["age_days"]),
                steps=int(r["steps"]),
            )
            for r in runs
        )
        return audit

    def reset_stuck_uploads(self) -> int:
        """Move steps stuck in PROCESSING past ``uploads_expiry_minutes`` back to READY.

        Steps whose upload is still running (their row is locked) are left alone. Returns how
        many were reset; with no expiry configured, none are.
        """
        expiry = self.ctx.settings.uploads_expiry_minutes
        if expiry is None:
            return 0
        with self.db.connection() as conn:
            rows = conn.execute(
                """
                UPDATE steps SET upload_stage = 'ready', stage_updated_at = now()
                WHERE step_id IN (
                    SELECT step_id FROM steps
                    WHERE upload_stage = 'processing'
                      AND stage_updated_at < now() - make_interval(mins => %s)
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING step_id
                """,
                (expiry,),
            ).fetchall()
        if rows:
            logger.warning("Reset %d upload(s) stuck in PROCESSING to READY", len(rows))
        return len(rows)
