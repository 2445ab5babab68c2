"""The Dagster layer: everything that imports Dagster.

A :class:`~matchbox_dagster.specs.CollectionSpec` becomes Definitions
(:func:`build_collection_defs`): one partitioned asset per step, blocking checks, a graph job,
a new-run schedule and a promotion sensor. :class:`MatchboxIOManager` maps each asset to a step
of its partition's run and writes it with one store call; :class:`MatchboxResource` builds the
store. Nothing below this package imports Dagster.
"""

import importlib
from typing import Any

_LAZY = {
    "build_collection_defs": "matchbox_dagster.dagster.collection",
    "MatchboxIOManager": "matchbox_dagster.dagster.io_manager",
    "MatchboxResource": "matchbox_dagster.dagster.resources",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (``lifecycle`` alone stays light)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
