"""Create or upgrade the store's schema with Alembic.

A schema already at :data:`HEAD` is left alone without importing Alembic (one query), so a
process that only reads, such as ``matchbox-dagster runs``, starts faster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from matchbox_dagster.store.postgres.db import compose, quote_ident

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0008"


def upgrade(engine: sa.Engine, schema: str, revision: str = "head") -> None:
    """Bring ``schema`` to ``revision``, creating it if needed, in one transaction.

    A transaction-level advisory lock keyed on the schema name makes concurrent first starts safe.
    """
    if revision == "head" and current_revision(engine, schema) == HEAD:
        return
    from alembic import command

    _run(engine, schema, command.upgrade, revision)


def downgrade(engine: sa.Engine, schema: str, revision: str) -> None:
    """Take ``schema`` back to ``revision``, in one transaction under the same lock.

    For rolling the library back to a release that expects an older schema.
    """
    from alembic import command

    _run(engine, schema, command.downgrade, revision)


def _run(
    engine: sa.Engine, schema: str, action: Callable[[Config, str], None], revision: str
) -> None:
    from alembic.config import Config

    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
        conn.execute(sa.text(f"SET LOCAL search_path TO {quote_ident(schema)}, public"))
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        cfg.attributes["schema"] = schema
        action(cfg, revision)


def current_revision(engine: sa.Engine, schema: str) -> str | None:
    """The schema's Alembic revision, or None if it was never migrated."""
    with engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT to_regclass(:t)"), {"t": f"{quote_ident(schema)}.alembic_version"}
        ).scalar()
        if exists is None:
            return None
        return conn.execute(
            sa.text(compose("SELECT version_num FROM {schema}.alembic_version", schema=schema))
        ).scalar()
