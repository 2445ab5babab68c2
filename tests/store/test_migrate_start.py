"""A store whose schema is at the head revision starts without running (or importing) Alembic."""

from __future__ import annotations

import os
import subprocess
import sys

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import migrate
from tests.conftest import own_schema_store

_START = """
import sys
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
store = MatchboxPostgres(MatchboxSettings())
print(sorted(store.list_collections()), "alembic" in sys.modules)
"""


def _start(settings: MatchboxSettings, schema: str) -> str:
    env = {
        **os.environ,
        "MATCHBOX_POSTGRES_URI": settings.postgres_uri.get_secret_value(),
        "MATCHBOX_POSTGRES_SCHEMA": schema,
    }
    done = subprocess.run(
        [sys.executable, "-c", _START], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_schema_at_head_is_not_migrated_again(settings: MatchboxSettings) -> None:
    with own_schema_store(settings) as store:
        store.create_collection("kept")
        schema = store.db.schema
        assert migrate.current_revision(store.db.engine, schema) == migrate.HEAD
        assert _start(settings, schema) == "['kept'] False"  # one query, no Alembic

        migrate.downgrade(store.db.engine, schema, "0007")
        assert _start(settings, schema) == "['kept'] True"  # behind: migrated on start
        assert migrate.current_revision(store.db.engine, schema) == migrate.HEAD
