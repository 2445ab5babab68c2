"""Run labels: stable names (e.g. Dagster partition keys) for a collection's runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

The Dagster layer partitions assets by run; a partition key is a label the user or a schedule
chooses, and this table maps it to the store's run id, so the mapping lives with the runs (it
survives restarts and is dumped and restored with them).
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE run_labels (
            collection_id bigint NOT NULL REFERENCES collections ON DELETE CASCADE,
            label text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
            run_id bigint NOT NULL UNIQUE REFERENCES runs ON DELETE CASCADE,
            PRIMARY KEY (collection_id, label)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE run_labels")
