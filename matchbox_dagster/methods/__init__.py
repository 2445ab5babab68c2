"""Methodologies: hashing source rows, scoring pairs (models), clustering (resolvers).

Pure computations on polars and Arrow: nothing here reads a location or talks to the store.
"""

from matchbox_dagster.methods.hashing import index_rows as index_rows
from matchbox_dagster.methods.hashing import row_hashes as row_hashes
from matchbox_dagster.methods.models import DeterministicRules as DeterministicRules
from matchbox_dagster.methods.models import ExactMatch as ExactMatch
from matchbox_dagster.methods.models import Model as Model
from matchbox_dagster.methods.models import SplinkModel as SplinkModel
from matchbox_dagster.methods.models import WeightedRules as WeightedRules
from matchbox_dagster.methods.models import build_model as build_model
from matchbox_dagster.methods.resolvers import ConnectedComponents as ConnectedComponents
