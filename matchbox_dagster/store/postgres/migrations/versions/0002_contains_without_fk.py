"""Drop the foreign key from contains to clusters; analyse-friendly bulk loads.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

A per-row foreign-key check made inserting a resolver's 1M ``contains`` rows take ~14 s. The
store only writes ``contains`` rows for clusters it creates in the same transaction, and
``delete_orphans`` deletes both together, so the constraint guarded nothing the code doesn't.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE contains DROP CONSTRAINT IF EXISTS contains_root_fkey")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE contains ADD CONSTRAINT contains_root_fkey "
        "FOREIGN KEY (root) REFERENCES clusters ON DELETE CASCADE"
    )
