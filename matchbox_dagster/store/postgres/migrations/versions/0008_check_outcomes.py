"""Check outcomes and Dagster attempts: what ``matchbox-dagster runs`` reads without Dagster.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

``step_check_outcomes``: each blocking check's latest outcome for a step, written when the check
is evaluated (or carried over for a reused step). ``dagster_attempts``: per run label, the latest
Dagster run that began materialising it and when. An outcome counts only when evaluated after
its step's stage last changed and after the label's latest Dagster attempt began, so a step
written again or a later attempt (running, or failed before its checks) sends ``runs`` to
Dagster. Rows go with their step, or collection (``ON DELETE CASCADE``), and are dumped and
restored with the store.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE step_check_outcomes (
            step_id bigint NOT NULL REFERENCES steps ON DELETE CASCADE,
            check_name text NOT NULL CHECK (length(check_name) BETWEEN 1 AND 200),
            passed boolean NOT NULL,
            evaluated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (step_id, check_name)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE dagster_attempts (
            collection_id bigint NOT NULL REFERENCES collections ON DELETE CASCADE,
            label text NOT NULL,
            dagster_run text NOT NULL CHECK (length(dagster_run) BETWEEN 1 AND 200),
            started_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (collection_id, label)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE dagster_attempts")
    op.execute("DROP TABLE step_check_outcomes")
