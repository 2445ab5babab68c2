"""PLACEHOLDER (being replaced): snapshots and housekeeping."""

from __future__ import annotations

from matchbox_dagster.store.postgres.core import PostgresCore


class AdminMixin(PostgresCore):
    """Snapshots and housekeeping (placeholder)."""

    def dump(self):  # noqa: ANN201, D102
        raise NotImplementedError

    def drop(self, certain):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def clear(self, certain):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def restore(self, snapshot):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def delete_orphans(self):  # noqa: ANN201, D102
        raise NotImplementedError
