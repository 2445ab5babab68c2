"""Declarative specs of a collection's graph, with all of their validation (no Dagster).

:mod:`.models` holds the pydantic spec models (Python and YAML); :mod:`.graph` validates a
collection's graph as a whole and plans it: every step's store config and methodology, built
once; :mod:`.shape` checks the graph's shape, reporting every problem at once with its place
(and ``defs.yaml`` line). :meth:`SourceSpec.config` is the one conversion from a source spec to
the store's :class:`~matchbox_dagster.common.dtos.SourceConfig`.
"""

from matchbox_dagster.specs.graph import CollectionPlan as CollectionPlan
from matchbox_dagster.specs.graph import ModelPlan as ModelPlan
from matchbox_dagster.specs.graph import ResolverPlan as ResolverPlan
from matchbox_dagster.specs.graph import final_resolver as final_resolver
from matchbox_dagster.specs.graph import plan_collection as plan_collection
from matchbox_dagster.specs.graph import plan_model as plan_model
from matchbox_dagster.specs.graph import plan_resolver as plan_resolver
from matchbox_dagster.specs.graph import plan_source as plan_source
from matchbox_dagster.specs.graph import query_config as query_config
from matchbox_dagster.specs.graph import upstream_sources as upstream_sources
from matchbox_dagster.specs.graph import validate_spec as validate_spec
from matchbox_dagster.specs.models import CollectionSpec as CollectionSpec
from matchbox_dagster.specs.models import InputSpec as InputSpec
from matchbox_dagster.specs.models import ModelSpec as ModelSpec
from matchbox_dagster.specs.models import ResolverChecksSpec as ResolverChecksSpec
from matchbox_dagster.specs.models import ResolverSpec as ResolverSpec
from matchbox_dagster.specs.models import SourceSpec as SourceSpec
from matchbox_dagster.specs.shape import SpecError as SpecError
from matchbox_dagster.specs.shape import SpecProblem as SpecProblem
from matchbox_dagster.specs.shape import graph_problems as graph_problems

__all__ = [
    "CollectionPlan",
    "CollectionSpec",
    "InputSpec",
    "ModelPlan",
    "ModelSpec",
    "ResolverChecksSpec",
    "ResolverPlan",
    "ResolverSpec",
    "SourceSpec",
    "SpecError",
    "SpecProblem",
    "final_resolver",
    "graph_problems",
    "plan_collection",
    "plan_model",
    "plan_resolver",
    "plan_source",
    "query_config",
    "upstream_sources",
    "validate_spec",
]
