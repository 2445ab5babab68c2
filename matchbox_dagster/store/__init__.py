"""Stores: the backend contract and its PostgreSQL implementation."""

from matchbox_dagster.store.base import (
    DEFAULT_GROUPS as DEFAULT_GROUPS,
)
from matchbox_dagster.store.base import (
    DEFAULT_PERMISSIONS as DEFAULT_PERMISSIONS,
)
from matchbox_dagster.store.base import (
    PERMISSION_GRANTS as PERMISSION_GRANTS,
)
from matchbox_dagster.store.base import (
    MatchboxDBAdapter as MatchboxDBAdapter,
)

__all__ = ["DEFAULT_GROUPS", "DEFAULT_PERMISSIONS", "PERMISSION_GRANTS", "MatchboxDBAdapter"]
