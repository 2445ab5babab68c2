"""Users, groups and permissions.

Permissions are held by groups, on the system or on one collection, with the hierarchy
``READ ⊂ WRITE ⊂ ADMIN`` (:data:`~matchbox_dagster.store.base.PERMISSION_GRANTS`). ADMIN on the
system implies every permission on every collection. Every store holds the default groups
(``public`` with the anonymous user ``_public``, and ``admins``) and the default grant (admins:
ADMIN on the system); :mod:`~matchbox_dagster.store.postgres.defaults` puts them back after a
clear or drop.

Who may call what is declared on each method of the facade
(:class:`~matchbox_dagster.store.postgres.adapter.MatchboxPostgres`); this part only does the
work.
"""

from __future__ import annotations

from typing import Any

import psycopg

from matchbox_dagster.common.dtos import (
    BackendResourceType,
    DefaultGroup,
    DefaultUser,
    Group,
    GroupName,
    LoginResponse,
    PermissionGrant,
    PermissionType,
    User,
    is_valid_name,
    validate_name,
    validate_text,
    validate_user_name,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxDeletionNotConfirmed,
    MatchboxGroupAlreadyExistsError,
    MatchboxGroupNotFoundError,
    MatchboxInvalidData,
    MatchboxSystemGroupError,
    MatchboxUserNotFoundError,
)
from matchbox_dagster.store.base import (
    DEFAULT_PERMISSIONS,
    PERMISSION_GRANTS,
    Resource,
)
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import SYSTEM, logger

_MEMBERS = """
SELECT g.name, g.description, g.is_system,
       coalesce(jsonb_agg(jsonb_build_object('user_name', u.user_name, 'email', u.email)
                          ORDER BY u.user_name) FILTER (WHERE u.user_id IS NOT NULL),
                '[]'::jsonb) AS members
FROM groups g
LEFT JOIN user_groups ug ON ug.group_id = g.group_id
LEFT JOIN users u ON u.user_id = ug.user_id
"""


_HOLDERS = """
SELECT EXISTS (
    SELECT 1 FROM users u
    JOIN user_groups ug ON ug.user_id = u.user_id
    JOIN permissions p ON p.group_id = ug.group_id
    WHERE u.user_name = %s AND ({scope})
)
"""
_CHECK_SYSTEM = _HOLDERS.replace("{scope}", "p.is_system AND p.permission = ANY(%s)")
_CHECK_COLLECTION = _HOLDERS.replace(
    "{scope}",
    "(p.is_system AND p.permission = 'admin') OR (p.collection_id = %s AND p.permission = ANY(%s))",
)


def _group(row: tuple[Any, ...]) -> Group:
    return Group(
        name=row[0],
        description=row[1],
        is_system=bool(row[2]),
        members=[User(**m) for m in row[3]],
    )


def _is_system(resource: Resource | str) -> bool:
    return str(resource) == SYSTEM


def _known_resource(resource: object) -> None:
    """Refuse a resource that is neither the system nor a possible collection name."""
    if not _is_system(resource) and not is_valid_name(resource):  # type: ignore[arg-type]
        raise MatchboxCollectionNotFoundError(resource)  # type: ignore[arg-type]


def _valid_user_name(user_name: object) -> bool:
    try:
        validate_user_name(user_name)  # type: ignore[arg-type]
    except MatchboxInvalidData:
        return False
    return True


def _permission(permission: object) -> PermissionType:
    try:
        return PermissionType(permission)
    except ValueError:
        raise MatchboxInvalidData(
            f"Permission {permission!r} is not one of {[p.value for p in PermissionType]}."
        ) from None


def group_row(conn: psycopg.Connection, name: str, *, for_update: bool = False) -> tuple[int, bool]:
    """A group's id and whether it is a system group."""
    if not is_valid_name(name):
        raise MatchboxGroupNotFoundError(name)
    query = "SELECT group_id, is_system FROM groups WHERE name = %s"
    row = conn.execute(query + (" FOR UPDATE" if for_update else ""), (name,)).fetchone()
    if row is None:
        raise MatchboxGroupNotFoundError(name)
    return int(row[0]), bool(row[1])


def find_user(conn: psycopg.Connection, user_name: str) -> int:
    """A user's id (``MatchboxUserNotFoundError`` if unknown)."""
    if not _valid_user_name(user_name):
        raise MatchboxUserNotFoundError(user_name)
    query = "SELECT user_id FROM users WHERE user_name = %s"
    row = conn.execute(query, (user_name,)).fetchone()
    if row is None:
        raise MatchboxUserNotFoundError(user_name)
    return int(row[0])


def upsert_user(
    conn: psycopg.Connection, user_name: str, email: str | None
) -> tuple[int, str | None, bool]:
    """Insert or update a user; new users join ``public``. Returns (id, email, is_new)."""
    validate_user_name(user_name)
    if email is not None:
        validate_text(email, "An email address")
    row = conn.execute(
        "INSERT INTO users (user_name, email) VALUES (%s, %s) ON CONFLICT (user_name) "
        "DO UPDATE SET email = coalesce(excluded.email, users.email) "
        "RETURNING user_id, email, (xmax = 0) AS inserted",
        (user_name, email),
    ).fetchone()
    assert row is not None
    user_id, stored_email, is_new = int(row[0]), row[1], bool(row[2])
    if is_new:
        conn.execute(
            "INSERT INTO user_groups (user_id, group_id) SELECT %s, group_id FROM groups "
            "WHERE name = %s ON CONFLICT DO NOTHING",
            (user_id, DefaultGroup.PUBLIC.value),
        )
    return user_id, stored_email, is_new


def grant(
    conn: psycopg.Connection,
    group_name: str,
    permission: PermissionType | str,
    collection: str | None,
) -> None:
    """Grant ``permission`` to a group on a collection (None: the system), in ``conn``."""
    permission = _permission(permission)
    group_id, _ = group_row(conn, group_name)
    collection_id = None if collection is None else core.collection_id(conn, collection)
    conn.execute(
        "INSERT INTO permissions (group_id, permission, collection_id, is_system) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (group_id, permission.value, collection_id, collection_id is None),
    )


class Auth:
    """Users, groups and permissions."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    # --- users ------------------------------------------------------------------------------

    def login(self, user: User) -> LoginResponse:
        """Upsert a user (an email, when given, replaces the stored one).

        A new user joins ``public``; the first user other than ``_public`` also joins
        ``admins`` and gets ``setup_mode_admin=True``. Concurrent first logins are serialised,
        so exactly one of them becomes the admin.
        """
        validate_user_name(user.user_name)
        if user.email is not None:
            validate_text(user.email, "An email address")
        with self.db.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.db.schema}/login",))
            user_id, email, is_new = upsert_user(conn, user.user_name, user.email)
            first = is_new and user.user_name != DefaultUser.PUBLIC.value
            if first:
                other = conn.execute(
                    "SELECT 1 FROM users WHERE user_name <> %s AND user_id <> %s LIMIT 1",
                    (DefaultUser.PUBLIC.value, user_id),
                ).fetchone()
                first = other is None
            if first:
                conn.execute(
                    "INSERT INTO user_groups (user_id, group_id) SELECT %s, group_id FROM groups "
                    "WHERE name = %s ON CONFLICT DO NOTHING",
                    (user_id, DefaultGroup.ADMINS.value),
                )
                logger.info("First user %r joined %s", user.user_name, DefaultGroup.ADMINS.value)
        return LoginResponse(
            user=User(user_name=user.user_name, email=email), setup_mode_admin=first
        )

    def get_user_groups(self, user_name: str) -> list[GroupName]:
        """Names of the groups a user belongs to, sorted."""
        with self.db.connection() as conn:
            user_id = find_user(conn, user_name)
            rows = conn.execute(
                "SELECT g.name FROM user_groups ug JOIN groups g USING (group_id) "
                "WHERE ug.user_id = %s ORDER BY g.name",
                (user_id,),
            ).fetchall()
        return [r[0] for r in rows]

    # --- groups -----------------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        """Every group with its members, sorted by name."""
        with self.db.connection() as conn:
            rows = conn.execute(_MEMBERS + " GROUP BY g.group_id ORDER BY g.name").fetchall()
        return [_group(r) for r in rows]

    def get_group(self, name: GroupName) -> Group:
        """A group and its members."""
        if not is_valid_name(name):
            raise MatchboxGroupNotFoundError(name)
        with self.db.connection() as conn:
            row = conn.execute(
                _MEMBERS + " WHERE g.name = %s GROUP BY g.group_id", (name,)
            ).fetchone()
        if row is None:
            raise MatchboxGroupNotFoundError(name)
        return _group(row)

    def create_group(self, group: Group) -> None:
        """Create a group, adding its ``members`` (users are created if new).

        Raises :class:`MatchboxGroupAlreadyExistsError` if the name is taken, and
        :class:`MatchboxSystemGroupError` for ``is_system=True`` (system groups are built in).
        """
        validate_name(group.name)
        if group.description is not None:
            validate_text(group.description, "A group description")
        if group.is_system:
            raise MatchboxSystemGroupError(
                f"Group {group.name!r} cannot be created as a system group: system groups are "
                "built in. Create it with is_system=False."
            )
        with self.db.connection() as conn:
            try:
                group_id = conn.execute(
                    "INSERT INTO groups (name, description, is_system) VALUES (%s, %s, false) "
                    "RETURNING group_id",
                    (group.name, group.description),
                ).fetchone()[0]  # type: ignore[index]
            except psycopg.errors.UniqueViolation:
                raise MatchboxGroupAlreadyExistsError(group.name) from None
            for member in group.members:
                user_id, _, _ = upsert_user(conn, member.user_name, member.email)
                conn.execute(
                    "INSERT INTO user_groups (user_id, group_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (user_id, group_id),
                )
        logger.info("Created group %s", group.name)

    def delete_group(self, name: GroupName, certain: bool = False) -> None:
        """Delete a group, its memberships and its grants (``certain=True`` required).

        Raises :class:`MatchboxGroupNotFoundError`, :class:`MatchboxSystemGroupError` for a
        system group, :class:`MatchboxDeletionNotConfirmed` without ``certain``.
        """
        with self.db.connection() as conn:
            group_id, is_system = group_row(conn, name, for_update=True)
            if is_system:
                raise MatchboxSystemGroupError(
                    f"Group {name!r} is a system group and cannot be deleted."
                )
            if not certain:
                raise MatchboxDeletionNotConfirmed(
                    f"group {name!r}", ["its memberships", "its permission grants"]
                )
            conn.execute("DELETE FROM groups WHERE group_id = %s", (group_id,))
        logger.info("Deleted group %s", name)

    def add_user_to_group(self, user_name: str, group_name: GroupName) -> None:
        """Add a user to a group; a new user is created (and joins ``public`` too)."""
        validate_user_name(user_name)
        with self.db.connection() as conn:
            group_id, _ = group_row(conn, group_name)
            row = conn.execute(
                "SELECT user_id FROM users WHERE user_name = %s", (user_name,)
            ).fetchone()
            user_id = int(row[0]) if row else upsert_user(conn, user_name, None)[0]
            conn.execute(
                "INSERT INTO user_groups (user_id, group_id) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (user_id, group_id),
            )

    def remove_user_from_group(self, user_name: str, group_name: GroupName) -> None:
        """Remove a user from a group (no-op if not a member).

        Raises :class:`MatchboxGroupNotFoundError`, :class:`MatchboxUserNotFoundError`, and
        :class:`MatchboxSystemGroupError` for removing ``_public`` from ``public``.
        """
        if user_name == DefaultUser.PUBLIC.value and group_name == DefaultGroup.PUBLIC.value:
            raise MatchboxSystemGroupError(
                f"User {user_name!r} always belongs to group {group_name!r}."
            )
        with self.db.connection() as conn:
            group_id, _ = group_row(conn, group_name)
            user_id = find_user(conn, user_name)
            conn.execute(
                "DELETE FROM user_groups WHERE user_id = %s AND group_id = %s",
                (user_id, group_id),
            )

    # --- permissions ------------------------------------------------------------------------

    def check_permission(
        self, user_name: str, permission: PermissionType, resource: Resource
    ) -> bool:
        """Whether one of the user's groups holds ``permission`` or a higher one on ``resource``.

        ``resource`` is ``"system"`` or a collection name; ADMIN on the system counts on every
        collection. An unknown user holds nothing; an unknown collection raises
        :class:`~matchbox_dagster.common.errors.MatchboxCollectionNotFoundError`.
        """
        granting = [p.value for p in PERMISSION_GRANTS[_permission(permission)]]
        _known_resource(resource)
        if not _valid_user_name(user_name):
            return False  # no such user can exist, so they hold nothing
        with self.db.connection() as conn:
            if _is_system(resource):
                row = conn.execute(_CHECK_SYSTEM, (user_name, granting)).fetchone()
            else:
                collection_id = core.collection_id(conn, resource)
                row = conn.execute(
                    _CHECK_COLLECTION, (user_name, collection_id, granting)
                ).fetchone()
        return bool(row and row[0])

    def get_permissions(self, resource: Resource) -> list[PermissionGrant]:
        """Grants held on ``resource`` (the system or a collection), sorted."""
        _known_resource(resource)
        with self.db.connection() as conn:
            if _is_system(resource):
                rows = conn.execute(
                    "SELECT g.name, p.permission FROM permissions p JOIN groups g USING (group_id) "
                    "WHERE p.is_system ORDER BY 1, 2"
                ).fetchall()
            else:
                collection_id = core.collection_id(conn, resource)
                rows = conn.execute(
                    "SELECT g.name, p.permission FROM permissions p JOIN groups g USING (group_id) "
                    "WHERE p.collection_id = %s ORDER BY 1, 2",
                    (collection_id,),
                ).fetchall()
        return [PermissionGrant(group_name=r[0], permission=PermissionType(r[1])) for r in rows]

    def grant_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Grant a permission on the system or a collection to a group (idempotent)."""
        _known_resource(resource)
        with self.db.connection() as conn:
            grant(conn, group_name, permission, None if _is_system(resource) else resource)
        logger.info("Granted %s on %s to %s", permission, resource, group_name)

    def revoke_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Revoke a group's permission on a resource (no-op if not granted).

        The default grants cannot be revoked (:class:`MatchboxSystemGroupError`): without them
        nobody could administer the store.
        """
        _known_resource(resource)
        permission = _permission(permission)
        if _is_system(resource) and any(
            grant.group_name == group_name and grant.permission == permission
            for grant, resource_type, _ in DEFAULT_PERMISSIONS
            if resource_type == BackendResourceType.SYSTEM
        ):
            raise MatchboxSystemGroupError(
                f"The {permission} permission of group {group_name!r} on the system is a "
                "default grant and cannot be revoked."
            )
        with self.db.connection() as conn:
            group_id, _ = group_row(conn, group_name)
            if _is_system(resource):
                conn.execute(
                    "DELETE FROM permissions WHERE group_id = %s AND permission = %s AND is_system",
                    (group_id, permission.value),
                )
            else:
                collection_id = core.collection_id(conn, resource)
                conn.execute(
                    "DELETE FROM permissions WHERE group_id = %s AND permission = %s "
                    "AND collection_id = %s",
                    (group_id, permission.value, collection_id),
                )
        logger.info("Revoked %s on %s from %s", permission, resource, group_name)


__all__ = ["Auth", "find_user", "grant", "group_row", "upsert_user"]
