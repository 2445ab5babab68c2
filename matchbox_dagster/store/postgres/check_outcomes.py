"""Check outcomes and Dagster attempts: a run's state that ``runs`` can read from the store.

Each blocking check's outcome is recorded for its step when it is evaluated (table
``step_check_outcomes``, migration 0008), and each Dagster run that begins materialising a run
label is noted (``dagster_attempts``). :meth:`.promotions.Promotions.run_summaries` returns an
outcome only when it is current: evaluated after its step's stage last changed and after the
label's latest Dagster attempt began.
"""

from __future__ import annotations

from collections.abc import Mapping

from matchbox_dagster.common.dtos import CollectionName, StepPath, is_valid_name
from matchbox_dagster.common.errors import MatchboxCollectionNotFoundError
from matchbox_dagster.store.postgres import core

_RECORD = """
INSERT INTO step_check_outcomes (step_id, check_name, passed, evaluated_at)
VALUES (%s, %s, %s, clock_timestamp())
ON CONFLICT (step_id, check_name)
DO UPDATE SET passed = EXCLUDED.passed, evaluated_at = clock_timestamp()
"""

_NOTE = """
INSERT INTO dagster_attempts (collection_id, label, dagster_run, started_at)
VALUES (%s, %s, %s, clock_timestamp())
ON CONFLICT (collection_id, label) DO UPDATE
SET dagster_run = EXCLUDED.dagster_run, started_at = clock_timestamp()
WHERE dagster_attempts.dagster_run IS DISTINCT FROM EXCLUDED.dagster_run
"""


class CheckOutcomes:
    """Recording check outcomes and Dagster attempts (one transaction each)."""

    def __init__(self, ctx: core.Context) -> None:
        self.db = ctx.db

    def record_check_outcomes(self, path: StepPath, outcomes: Mapping[str, bool]) -> None:
        """Record whether each named check of a step passed (replacing earlier outcomes)."""
        for name in outcomes:
            if not isinstance(name, str) or not 0 < len(name) <= 200:
                raise ValueError(f"A check name must be 1 to 200 characters, got {name!r}")
        with self.db.connection() as conn:
            step = core.step_row(conn, path)
            with conn.cursor() as cur:
                cur.executemany(
                    _RECORD, [(step.step_id, name, bool(ok)) for name, ok in outcomes.items()]
                )

    def note_dagster_attempt(
        self, collection: CollectionName, label: str, dagster_run: str
    ) -> bool:
        """Note that ``dagster_run`` began materialising ``label``; False if already noted.

        A collection not created yet has nothing to show, so nothing is noted (False).
        """
        if not is_valid_name(collection):
            raise MatchboxCollectionNotFoundError(collection)
        if not 0 < len(dagster_run) <= 200:
            raise ValueError("A Dagster run id must be 1 to 200 characters")
        with self.db.connection() as conn:
            try:
                cid = core.collection_id(conn, collection)
            except MatchboxCollectionNotFoundError:
                return False
            return conn.execute(_NOTE, (cid, label, dagster_run)).rowcount > 0
