"""Shared step data: content addressing in ``write_step``, reused steps, and their lookups.

A step whose data equals a COMPLETE step's of the same collection points its ``data_id`` at
that step's partition instead of storing a copy. "Equal" is decided without reading the data:
the same step type, fingerprint (of the payload) and config, and the same fingerprint for every
step of its lineage, by name (a resolver's partition also holds the clusters it inherits from
its ancestors, and a model's ids are those of its inputs, so equal inputs make equal data).

The functions taking a cursor run inside ``write_step``'s transaction (ADBC, ``$n``
placeholders). The step shared from is locked ``FOR KEY SHARE``, so its row cannot be deleted —
and the partition it names dropped — before the writer commits (see :mod:`.data_refs`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import ValidationError

from matchbox_dagster.common.dtos import Step, StepPath, StepType, UploadStage
from matchbox_dagster.common.errors import MatchboxStepNotFoundError
from matchbox_dagster.common.reuse import MatchboxReuseMismatch, ReusedStep
from matchbox_dagster.store.postgres import core, step_rows
from matchbox_dagster.store.postgres.clusters import check_inputs_complete
from matchbox_dagster.store.postgres.core import StepRow, dict_cursor
from matchbox_dagster.store.postgres.db import quote_ident
from matchbox_dagster.store.postgres.step_rows import Cursor, fetch, partition_name

_IDENTICAL = """
SELECT c.step_id, c.data_id
FROM steps n
JOIN runs nr ON nr.run_id = n.run_id
JOIN runs cr ON cr.collection_id = nr.collection_id
JOIN steps c ON c.run_id = cr.run_id
WHERE n.step_id = $1 AND c.step_id <> n.step_id AND c.upload_stage = 'complete'
  AND c.step_type = n.step_type AND c.fingerprint = n.fingerprint AND c.config = n.config
  AND NOT EXISTS (
      SELECT a.name, a.fingerprint FROM step_lineage l JOIN steps a ON a.step_id = l.parent_id
      WHERE l.child_id = n.step_id
      EXCEPT
      SELECT a.name, a.fingerprint FROM step_lineage l JOIN steps a ON a.step_id = l.parent_id
      WHERE l.child_id = c.step_id)
  AND NOT EXISTS (
      SELECT a.name, a.fingerprint FROM step_lineage l JOIN steps a ON a.step_id = l.parent_id
      WHERE l.child_id = c.step_id
      EXCEPT
      SELECT a.name, a.fingerprint FROM step_lineage l JOIN steps a ON a.step_id = l.parent_id
      WHERE l.child_id = n.step_id)
ORDER BY c.step_id
LIMIT 1
FOR KEY SHARE OF c
"""
"""The earliest COMPLETE step of the collection whose data the new step ``$1`` would equal:
same type, fingerprint and config, and the same (name, fingerprint) for every lineage step."""

_CHECK_REUSED = """
SELECT c.step_id, c.data_id,
       NOT EXISTS (
           SELECT a.name, a.fingerprint FROM step_lineage l
           JOIN steps a ON a.step_id = l.parent_id WHERE l.child_id = n.step_id
           EXCEPT
           SELECT a.name, a.fingerprint FROM step_lineage l
           JOIN steps a ON a.step_id = l.parent_id WHERE l.child_id = c.step_id)
       AND NOT EXISTS (
           SELECT a.name, a.fingerprint FROM step_lineage l
           JOIN steps a ON a.step_id = l.parent_id WHERE l.child_id = c.step_id
           EXCEPT
           SELECT a.name, a.fingerprint FROM step_lineage l
           JOIN steps a ON a.step_id = l.parent_id WHERE l.child_id = n.step_id) AS same_inputs
FROM steps n, steps c WHERE n.step_id = $1 AND c.step_id = $2
FOR KEY SHARE OF c
"""
"""Whether the new step ``$1`` and the named step ``$2`` have the same inputs; ``$2`` locked."""


def _present(cur: Cursor, schema: str, step: StepRow, data_id: int) -> bool:
    """Whether the partition ``data_id`` of the step's type exists (read as of now)."""
    name = quote_ident(schema) + "." + quote_ident(partition_name(step.step_type, data_id))
    return bool(fetch(cur, "SELECT to_regclass($1) IS NOT NULL AS present", name)[0][0])


def identical(cur: Cursor, schema: str, step: StepRow) -> int | None:
    """The data id of a COMPLETE step whose data ``step`` (just declared) would equal, if any.

    The row of the step found is locked until the caller's transaction ends.
    """
    rows = fetch(cur, _IDENTICAL, step.step_id)
    if not rows or not _present(cur, schema, step, int(rows[0][1])):
        return None
    return int(rows[0][1])


def reused(cur: Any, schema: str, step: StepRow, payload: ReusedStep) -> int:
    """The data id a :class:`ReusedStep` payload names, after checking it can be ``step``'s.

    Raises :class:`MatchboxReuseMismatch` (another collection, type, config, fingerprint,
    inputs, or no complete data) and a step-not-found error for a missing step.
    """
    origin = payload.from_path

    def refuse(why: str) -> MatchboxReuseMismatch:
        return MatchboxReuseMismatch(step.path(), origin, why)

    if origin.collection != step.collection:
        raise refuse(f"it is in collection {origin.collection!r}, not {step.collection!r}")
    source = _row(cur, origin)
    if source.step_type != step.step_type:
        raise refuse(f"it is a {source.step_type} step, this one a {step.step_type} step")
    if source.stage != UploadStage.COMPLETE:
        raise refuse(f"it holds no complete data (stage {source.stage})")
    if step_rows.step_dto(source).config != step_rows.step_dto(step).config:
        raise refuse("its config differs")
    if source.fingerprint != step.fingerprint:
        raise refuse(
            f"its data has fingerprint {source.fingerprint.hex()[:16]}…, this step declares "
            f"{step.fingerprint.hex()[:16]}…"
        )
    rows = fetch(cur, _CHECK_REUSED, step.step_id, source.step_id)
    if not rows:  # deleted since it was looked up
        raise refuse("it was deleted meanwhile")
    if not rows[0][2]:
        raise refuse("its inputs (the steps it reads) hold other data than this step's")
    data_id = int(rows[0][1])
    if not _present(cur, schema, step, data_id):
        raise refuse("its data is missing")
    return data_id


def _row(cur: Any, path: StepPath) -> StepRow:
    """A step's row by path on an ADBC cursor (any type)."""
    fetched = fetch(cur, core.STEP_SELECT, path.collection, path.run, path.name)
    if not fetched:
        missing = fetch(cur, core.MISSING_SELECT, path.collection, path.run)
        names = ("has_collection", "has_run")
        raise core.step_not_found(path, dict(zip(names, missing[0], strict=True)))
    names = [d[0] for d in cur.description]
    return core.step_from_row(dict(zip(names, fetched[0], strict=True)))


def data_to_share(cur: Any, schema: str, step: StepRow, payload: object) -> int | None:
    """The data id ``step`` (declared, without data) shares, or None to store its payload.

    A :class:`ReusedStep` names it (checked: :func:`reused`); any other payload shares the
    data of an identical COMPLETE step when there is one (:func:`identical`).
    """
    if isinstance(payload, ReusedStep):
        return reused(cur, schema, step, payload)
    return identical(cur, schema, step)


def share(cur: Any, step: StepRow, data_id: int) -> None:
    """Point ``step`` at the data ``data_id`` and mark it COMPLETE (its inputs must be)."""
    if step.step_type != StepType.SOURCE:
        check_inputs_complete(cur, step)
    fetch(
        cur,
        "UPDATE steps SET data_id = $1, upload_stage = $2, stage_updated_at = clock_timestamp() "
        "WHERE step_id = $3 RETURNING step_id",
        int(data_id),
        UploadStage.COMPLETE.value,
        step.step_id,
    )


class Reuse:
    """Where a step's data comes from, and which default-run step a new step may reuse."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def step_data_origin(self, path: StepPath) -> StepPath | None:
        """The step that stored the data ``path`` shares (None: ``path`` holds its own).

        The step that created the partition; when that one was deleted, the earliest
        remaining step sharing the data created before ``path`` (None if there is none).
        """
        with self.db.connection() as conn:
            step = core.step_row(conn, path)
            if step.data_id == step.step_id:
                return None
            row = (
                dict_cursor(conn)
                .execute(
                    "SELECT c.name AS collection, s.run_id, s.name FROM steps s "
                    "JOIN runs r USING (run_id) JOIN collections c USING (collection_id) "
                    "WHERE s.data_id = %s AND s.step_id < %s "
                    "ORDER BY s.step_id = s.data_id DESC, s.step_id LIMIT 1",
                    (step.data_id, step.step_id),
                )
                .fetchone()
            )
        if row is None:
            return None
        return StepPath(collection=row["collection"], run=int(row["run_id"]), name=row["name"])

    def find_reusable_step(
        self, path: StepPath, config: dict[str, Any], inputs: list[str]
    ) -> StepPath | None:
        """The default run's step ``path.name`` whose results ``path`` may reuse, or None.

        See :meth:`MatchboxDBAdapter.find_reusable_step`. ``config`` is compared as the step
        config it validates to (so defaults left out compare equal).
        """
        with self.db.connection() as conn:
            core.run_row(conn, path.collection, path.run)
            found = conn.execute(
                "SELECT r.run_id FROM runs r JOIN collections c USING (collection_id) "
                "WHERE c.name = %s AND r.is_default",
                (path.collection,),
            ).fetchone()
            if found is None:
                return None
            default = StepPath(collection=path.collection, run=int(found[0]), name=path.name)
            try:
                candidate = core.step_row(conn, default)
            except MatchboxStepNotFoundError:
                return None
            if candidate.stage != UploadStage.COMPLETE or not _same_config(candidate, config):
                return None
            if not self._same_inputs(conn, candidate.run_id, path.run, inputs):
                return None
        return default

    @staticmethod
    def _same_inputs(
        conn: psycopg.Connection, default_run: int, run: int, inputs: list[str]
    ) -> bool:
        """Each input is COMPLETE in ``run`` with its fingerprint in the default run."""
        names = sorted(set(inputs))
        if not names:
            return True
        rows = conn.execute(
            "SELECT name, run_id, fingerprint, upload_stage FROM steps "
            "WHERE run_id = ANY(%s) AND name = ANY(%s)",
            ([default_run, run], names),
        ).fetchall()
        prints = {(r[0], int(r[1])): (bytes(r[2]), r[3]) for r in rows}
        for name in names:
            ours, theirs = prints.get((name, run)), prints.get((name, default_run))
            if ours is None or theirs is None or ours[1] != UploadStage.COMPLETE.value:
                return False
            if ours[0] != theirs[0]:
                return False
        return True


def _same_config(candidate: StepRow, config: dict[str, Any]) -> bool:
    """Whether ``config`` validates to the candidate's step config."""
    current = step_rows.step_dto(candidate)
    try:
        offered = Step.model_validate({**current.model_dump(), "config": config})
    except ValidationError:
        return False
    return offered.config == current.config
