"""A small collection whose source counts its reads, run with the multiprocess executor.

``people`` (an arrow location) appends a line to ``$MB_TEST_COUNTER`` each time it is called:
``preflight PID`` when the preflight reads it (to learn its columns), ``data PID`` otherwise
(the source step's extract, the model's input, the resolver's entity tables). ``python -m
tests.specs.preflight_once_defs LABEL`` materialises one partition of the graph on the instance
in ``DAGSTER_HOME`` (store from ``MATCHBOX_POSTGRES_*``) and exits 0 on success.
"""

from __future__ import annotations

import os
import sys
import traceback

import dagster as dg
import polars as pl

from matchbox_dagster.common.dtos import LocationType
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.specs import CollectionSpec
from tests.factories import rules_deduper, single_model_collection, source_spec


def people() -> pl.DataFrame:
    """Four people, two of them the same; each call is counted, the preflight's apart."""
    stack = traceback.extract_stack()
    who = "preflight" if any(f.filename.endswith("preflight.py") for f in stack) else "data"
    with open(os.environ["MB_TEST_COUNTER"], "a") as counter:
        counter.write(f"{who} {os.getpid()}\n")
    return pl.DataFrame({"id": ["1", "2", "3", "4"], "name": ["ann", "ann", "bob", "cy"]})


def spec(collection: str) -> CollectionSpec:
    """Source → deduper → resolver: three step processes under the multiprocess executor."""
    source = source_spec("people", LocationType.ARROW, "tests.specs.preflight_once_defs:people")
    return single_model_collection(collection, [source], rules_deduper(), promote=False)


def graph_job() -> dg.JobDefinition:
    """The graph job of ``$MB_TEST_COLLECTION``."""
    collection = os.environ["MB_TEST_COLLECTION"]
    return build_collection_defs(spec(collection)).resolve_job_def(f"{collection}_graph")


def main(label: str) -> int:
    """Materialise partition ``label`` with the multiprocess executor."""
    with (
        dg.DagsterInstance.get() as instance,
        dg.execute_job(
            dg.reconstructable(graph_job),
            instance=instance,
            tags={"dagster/partition": label},
            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
        ) as result,
    ):
        print(f"RUN {result.run_id}")
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
