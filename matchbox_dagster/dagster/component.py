"""The YAML face of a collection: a Dagster component whose fields are a :class:`CollectionSpec`.

``defs/<folder>/defs.yaml``::

    type: matchbox_dagster.dagster.component.MatchboxCollectionComponent
    attributes:
      collection: companies
      sources:
        - name: crm
          location: {type: parquet, name: data/crm.parquet}
          key_field: id
          index_fields: [name, postcode]
      models:
        - name: crm_dedupe
          left: {step: crm}
          model_class: DeterministicRules
          settings: {rules: [[name, postcode]]}
      resolvers:
        - name: companies
          thresholds: {crm_dedupe: 1.0}

It builds exactly what
:func:`~matchbox_dagster.dagster.collection.build_collection_defs` builds from the same spec in
Python; ``dg check yaml`` validates the file against the spec's schema.
"""

import dagster as dg

from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.specs import CollectionSpec


class MatchboxCollectionComponent(dg.Component, dg.Resolvable, CollectionSpec):
    """A matchbox collection (sources, models, resolvers, checks, sensor, schedule) from YAML."""

    def spec(self) -> CollectionSpec:
        """The plain spec (what Python users pass to ``build_collection_defs``)."""
        return CollectionSpec.model_validate(self.model_dump())

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """Assets, checks, job, sensor, schedule and resources of the collection."""
        return build_collection_defs(self.spec(), defs_yaml=context.path / "defs.yaml")
