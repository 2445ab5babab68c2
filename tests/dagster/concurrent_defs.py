"""A reconstructable graph job for the multiprocess test, configured from the environment.

Loaded afresh in every process, so the store comes from ``MATCHBOX_POSTGRES_URI`` /
``MATCHBOX_POSTGRES_SCHEMA``, the collection from ``MB_TEST_COLLECTION`` and the Dagster instance
from ``DAGSTER_HOME``. ``python -m tests.dagster.concurrent_defs LABEL`` materialises one
partition with the multiprocess executor, prints a last line ``ACTIONS {step: matchbox/action}``
and exits 0 on success.
"""

import json
import os
import sys

import dagster as dg

from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec


def graph_job() -> dg.JobDefinition:
    """The demo graph job of the test's collection."""
    collection = os.environ["MB_TEST_COLLECTION"]
    defs = build_collection_defs(febrl4_spec(collection=collection, max_churn=None))
    return defs.resolve_job_def(f"{collection}_graph")


def main(label: str) -> int:
    """Materialise partition ``label`` on the instance in ``DAGSTER_HOME``."""
    with (
        dg.DagsterInstance.get() as instance,
        dg.execute_job(
            dg.reconstructable(graph_job),
            instance=instance,
            tags={"dagster/partition": label},
            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
        ) as result,
    ):
        actions = {}
        for event in result.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
            action = materialization.metadata["matchbox/action"]
            actions[materialization.asset_key.path[-1]] = getattr(action, "value", action)
        print("ACTIONS " + json.dumps(actions))
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
