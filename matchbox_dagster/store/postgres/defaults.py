"""The default groups, user and grant every store holds (put back after a clear or drop)."""

from __future__ import annotations

import json

import psycopg

from matchbox_dagster.common.dtos import BackendResourceType
from matchbox_dagster.store.base import DEFAULT_GROUPS, DEFAULT_PERMISSIONS
from matchbox_dagster.store.postgres.db import Database


def defaults_document() -> str:
    """The default groups, members and grants as one JSON parameter."""
    return json.dumps(
        {
            "groups": [
                {"name": g.name, "description": g.description, "is_system": g.is_system}
                for g in DEFAULT_GROUPS
            ],
            "members": [
                {"user_name": m.user_name, "email": m.email, "group": g.name}
                for g in DEFAULT_GROUPS
                for m in g.members
            ],
            "grants": [
                {"group": grant.group_name, "permission": grant.permission.value}
                for grant, resource_type, _ in DEFAULT_PERMISSIONS
                if resource_type == BackendResourceType.SYSTEM
            ],
        }
    )


_DEFAULT_STATEMENTS = (
    "INSERT INTO groups (name, description, is_system) "
    "SELECT x->>'name', x->>'description', (x->>'is_system')::boolean "
    "FROM jsonb_array_elements(({p})::jsonb->'groups') x ON CONFLICT (name) DO NOTHING",
    "INSERT INTO users (user_name, email) SELECT DISTINCT x->>'user_name', x->>'email' "
    "FROM jsonb_array_elements(({p})::jsonb->'members') x ON CONFLICT (user_name) DO NOTHING",
    "INSERT INTO user_groups (user_id, group_id) SELECT u.user_id, g.group_id "
    "FROM jsonb_array_elements(({p})::jsonb->'members') x "
    "JOIN users u ON u.user_name = x->>'user_name' JOIN groups g ON g.name = x->>'group' "
    "ON CONFLICT DO NOTHING",
    "INSERT INTO permissions (group_id, permission, collection_id, is_system) "
    "SELECT g.group_id, x->>'permission', NULL, true "
    "FROM jsonb_array_elements(({p})::jsonb->'grants') x JOIN groups g ON g.name = x->>'group' "
    "ON CONFLICT DO NOTHING",
)


def default_statements(placeholder: str) -> list[tuple[str, str]]:
    """Idempotent statements (with their one parameter) creating the default groups and grants.

    ``placeholder`` is the driver's parameter marker (``%s`` for psycopg, ``$1`` for ADBC), so
    the same SQL serves the pooled connection and the snapshot loader.
    """
    document = defaults_document()
    return [(text.replace("{p}", placeholder), document) for text in _DEFAULT_STATEMENTS]


def ensure_defaults(db: Database) -> None:
    """Create the default groups, user and grant if missing (idempotent, one transaction)."""
    with db.connection() as conn:
        ensure_defaults_in(conn)


def ensure_defaults_in(conn: psycopg.Connection) -> None:
    """Create the defaults inside a caller's transaction."""
    for statement, parameter in default_statements("%s"):
        conn.execute(statement, (parameter,))  # type: ignore[arg-type]
