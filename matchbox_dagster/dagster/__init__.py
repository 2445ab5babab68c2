"""The Dagster layer: everything that imports Dagster.

A :class:`~matchbox_dagster.specs.CollectionSpec` becomes Definitions
(:func:`build_collection_defs`): one partitioned asset per step, blocking checks, a graph job,
a new-run schedule and a promotion sensor. :class:`MatchboxIOManager` maps each asset to a step
of its partition's run and writes it with one store call; :class:`MatchboxResource` builds the
store. Nothing below this package imports Dagster.
"""

from matchbox_dagster.dagster.collection import build_collection_defs as build_collection_defs
from matchbox_dagster.dagster.io_manager import MatchboxIOManager as MatchboxIOManager
from matchbox_dagster.dagster.resources import MatchboxResource as MatchboxResource
