"""Source partitions are indexed for ``match``: by a hash of the key and by leaf.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``match`` looks keys up one at a time; a source partition had no index, so every call scanned
it (~0.1 s a million keys). From this revision every source partition has a B-tree on
``hashtextextended(key, 0)`` (probed with the key's hash, then the key rechecked) and one on
``leaf_id``, both built after the bulk load; see
``matchbox_dagster/store/postgres/source_index.py``. The upgrade builds them on the partitions
stored before it (one pass over each: minutes for a store of hundreds of millions of keys); the
downgrade drops them.

The statements are written out here, not imported, so this revision stays what it was when the
store's code changes.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_PARTITIONS = sa.text(
    "SELECT c.relname FROM pg_inherits i "
    "JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_class p ON p.oid = i.inhparent "
    "JOIN pg_namespace n ON n.oid = p.relnamespace "
    "WHERE p.relname = 'source_rows' AND n.nspname = current_schema() ORDER BY c.relname"
)


def _partitions() -> list[str]:
    """The source partitions of the schema being migrated (names the store made)."""
    names = [str(r[0]) for r in op.get_bind().execute(_PARTITIONS)]
    return [n for n in names if re.fullmatch(r"source_rows_\d+", n)]


def upgrade() -> None:
    for part in _partitions():
        op.execute(
            f'CREATE INDEX IF NOT EXISTS "{part}_key_hash" ON "{part}" (hashtextextended(key, 0))'
        )
        op.execute(f'CREATE INDEX IF NOT EXISTS "{part}_leaf" ON "{part}" (leaf_id)')
        op.execute(f'ANALYZE "{part}"')


def downgrade() -> None:
    for part in _partitions():
        op.execute(f'DROP INDEX IF EXISTS "{part}_key_hash"')
        op.execute(f'DROP INDEX IF EXISTS "{part}_leaf"')
