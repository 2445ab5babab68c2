"""PLACEHOLDER (being replaced): users, groups and permissions."""

from __future__ import annotations

from matchbox_dagster.store.postgres.core import PostgresCore


class AuthMixin(PostgresCore):
    """Users, groups, permissions (placeholder)."""

    def _ensure_defaults(self) -> None:
        pass

    def _grant(self, conn, group_name, permission, collection):  # noqa: ANN001, ANN202
        raise NotImplementedError

    def check_permission(self, user_name, permission, resource):  # noqa: ANN001, ANN201, D102
        return True

    def login(self, user):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def get_user_groups(self, user_name):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def list_groups(self):  # noqa: ANN201, D102
        raise NotImplementedError

    def get_group(self, name):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def create_group(self, group):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def delete_group(self, name, certain=False):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def add_user_to_group(self, user_name, group_name):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def remove_user_from_group(self, user_name, group_name):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def get_permissions(self, resource):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def grant_permission(self, group_name, permission, resource):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def revoke_permission(self, group_name, permission, resource):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError
