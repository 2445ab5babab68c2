"""Model methodologies: one short class each, registered by name (see :mod:`.base`)."""

from matchbox_dagster.methods.models.base import Model as Model
from matchbox_dagster.methods.models.base import build_model as build_model
from matchbox_dagster.methods.models.base import finish_pairs as finish_pairs
from matchbox_dagster.methods.models.base import model_class as model_class
from matchbox_dagster.methods.models.deterministic import DeterministicRules as DeterministicRules
from matchbox_dagster.methods.models.deterministic import ExactMatch as ExactMatch
from matchbox_dagster.methods.models.organisation import OrganisationLinker as OrganisationLinker
from matchbox_dagster.methods.models.splink import SplinkModel as SplinkModel
from matchbox_dagster.methods.models.weighted import WeightedRules as WeightedRules
