"""Runs as partitions: one dynamic partition per run of a collection.

A partition key is a **run label**: any name (``2026-11-26``, ``ci-4f2a9c``, ``run-7``). The store
maps labels to run ids (``run_for_label``), so the mapping lives in one place, beside the runs,
and survives restarts. The run is created on first use — when a partition is added through
:func:`add_run_partition` (schedules, the CLI) or, for a key added in the Dagster UI, by the IO
manager on the first write.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from matchbox_dagster.common.dtos import Run
from matchbox_dagster.common.errors import MatchboxCollectionAlreadyExists
from matchbox_dagster.store.base import MatchboxDBAdapter


def dagster_name(collection: str) -> str:
    """``collection`` as a Dagster name (``-`` and ``.`` become ``_``).

    Collection names may hold ``-`` and ``.``, Dagster names may not; every Dagster definition
    named after a collection goes through this one function.
    """
    return collection.replace("-", "_").replace(".", "_")


def partitions_name(collection: str) -> str:
    """Name of the collection's dynamic partitions definition."""
    return f"matchbox_{dagster_name(collection)}_runs"


def ensure_collection(store: MatchboxDBAdapter, collection: str) -> None:
    """Create ``collection`` unless it exists (a concurrent creator is not an error)."""
    if collection not in store.list_collections():
        try:
            store.create_collection(collection)
        except MatchboxCollectionAlreadyExists:
            pass


def run_partitions(collection: str) -> dg.DynamicPartitionsDefinition:
    """The collection's dynamic partitions definition (one partition per run)."""
    return dg.DynamicPartitionsDefinition(name=partitions_name(collection))


def new_run_label(prefix: str = "run") -> str:
    """A fresh, sortable partition key such as ``run-20261126T101500123456``."""
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def add_run_partition(
    instance: dg.DagsterInstance,
    store: MatchboxDBAdapter,
    collection: str,
    label: str | None = None,
) -> tuple[str, Run]:
    """Create (or find) the run labelled ``label`` and add it as a partition; returns both."""
    label = label or new_run_label()
    ensure_collection(store, collection)
    run = store.run_for_label(collection, label)
    instance.add_dynamic_partitions(partitions_name(collection), [label])
    return label, run
