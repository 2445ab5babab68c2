"""The demo graph as Dagster definitions: ``dagster dev -w workspace.yaml`` shows it.

FEBRL4 A and B → a deduper each → a linker → the ``people`` resolver, with blocking quality and
evaluation checks, the promotion sensor and a weekly schedule. The store is the embedded
PostgreSQL unless ``MATCHBOX_POSTGRES_URI`` is set.
"""

from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec

defs = build_collection_defs(febrl4_spec())
