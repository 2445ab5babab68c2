"""Promotions and run summaries: who made a run the default, and every run at a glance.

A promotion makes a run immutable and the collection's default and records who did it, when
and why, in one transaction (table ``run_promotions``, migration 0005). Whether a run *may* be
promoted (its graph complete, its blocking checks passed) is decided by the caller, which knows
the graph and the checks; the store records whether the caller overrode that gate (``forced``),
and a forced promotion needs a reason. A run's summary carries its current check outcomes and
its label's latest Dagster attempt (:mod:`.check_outcomes`).
"""

from __future__ import annotations

from matchbox_dagster.common.dtos import (
    CollectionName,
    Run,
    RunID,
    UploadStage,
    is_valid_name,
)
from matchbox_dagster.common.errors import MatchboxCollectionNotFoundError
from matchbox_dagster.common.runs import Promotion, RunSummary
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import logger

_SUMMARIES = """
SELECT r.run_id, r.is_mutable, r.is_default, r.created_at, l.label,
       COALESCE(s.steps, '{}'::jsonb) AS steps,
       COALESCE(o.checks, '{}'::jsonb) AS checks, a.dagster_run,
       p.promoted_by, p.promoted_at, p.reason, COALESCE(p.forced, false) AS forced
FROM runs r
LEFT JOIN run_labels l ON l.run_id = r.run_id
LEFT JOIN dagster_attempts a ON a.collection_id = r.collection_id AND a.label = l.label
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(st.name, st.upload_stage) AS steps
    FROM steps st WHERE st.run_id = r.run_id
) s ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(st.name || ':' || co.check_name, co.passed) AS checks
    FROM steps st JOIN step_check_outcomes co ON co.step_id = st.step_id
    WHERE st.run_id = r.run_id AND co.evaluated_at >= st.stage_updated_at
      AND (a.started_at IS NULL OR co.evaluated_at >= a.started_at)
) o ON true
LEFT JOIN LATERAL (
    SELECT promoted_by, promoted_at, reason, forced FROM run_promotions rp
    WHERE rp.run_id = r.run_id ORDER BY rp.promotion_id DESC LIMIT 1
) p ON true
WHERE r.collection_id = %s
ORDER BY r.run_id
"""


def _known(collection: object) -> None:
    """Refuse a collection name no collection can have before it reaches SQL."""
    if not is_valid_name(collection):
        raise MatchboxCollectionNotFoundError(collection)  # type: ignore[arg-type]


class Promotions:
    """Promoting runs (with the record of who, when and why) and summarising a collection's runs."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def promote_run(self, collection: CollectionName, run_id: RunID, promotion: Promotion) -> Run:
        """Make a run immutable and the default, and record the promotion, in one transaction."""
        _known(collection)
        with self.db.connection() as conn:
            run = core.run_row(conn, collection, run_id, for_update=True)
            conn.execute(
                "UPDATE runs SET is_default = false, updated_at = now() "
                "WHERE collection_id = %s AND is_default AND run_id <> %s",
                (run["collection_id"], run_id),
            )
            conn.execute(
                "UPDATE runs SET is_mutable = false, is_default = true, updated_at = now() "
                "WHERE run_id = %s",
                (run_id,),
            )
            conn.execute(
                "INSERT INTO run_promotions (run_id, promoted_by, reason, forced) "
                "VALUES (%s, %s, %s, %s)",
                (run_id, promotion.promoted_by, promotion.reason, promotion.forced),
            )
        logger.info(
            "Run %s of %s promoted to default by %s%s",
            run_id,
            collection,
            promotion.promoted_by,
            " (forced)" if promotion.forced else "",
        )
        return Run(run_id=run_id, collection=collection, is_mutable=False, is_default=True)

    def run_summaries(self, collection: CollectionName) -> list[RunSummary]:
        """Every run of a collection (ascending) with its label, stages and last promotion."""
        _known(collection)
        with self.db.connection() as conn:
            cid = core.collection_id(conn, collection)
            rows = core.dict_cursor(conn).execute(_SUMMARIES, (cid,)).fetchall()
        return [
            RunSummary(
                run_id=int(row["run_id"]),
                label=row["label"],
                is_mutable=row["is_mutable"],
                is_default=row["is_default"],
                created_at=row["created_at"],
                steps={name: UploadStage(stage) for name, stage in row["steps"].items()},
                checks=row["checks"],
                dagster_run=row["dagster_run"],
                promoted_by=row["promoted_by"],
                promoted_at=row["promoted_at"],
                promotion_reason=row["reason"],
                promotion_forced=bool(row["forced"]),
            )
            for row in rows
        ]
