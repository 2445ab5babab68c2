"""Runs as partitions: one dynamic partition per run of a collection.

A partition key is a **run label**: any name (``2026-11-26``, ``ci-4f2a9c``, ``run-7``); the CLI
numbers new ones (``run-0007``, :func:`next_run_label`) so they read as run numbers in the UI.
The store maps labels to run ids (``run_for_label``), so the mapping lives in one place, beside
the runs, and survives restarts. The run is created on first use — when a partition is added through
:func:`add_run_partition` (schedules, the CLI) or, for a key added in the Dagster UI, by the IO
manager on the first write.

:func:`step_path` is the one place an asset's step path is computed: the IO manager (writing and
loading inputs) and the asset bodies (their checks) all call it, and within one Dagster run it
asks the store for a label's run once.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import sqlalchemy.exc

from matchbox_dagster.common.dtos import Run, StepPath
from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxCollectionNotFoundError,
)
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
    """A fresh, sortable timestamp label such as ``run-20261126T101500123456``."""
    return f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def next_run_label(store: MatchboxDBAdapter, collection: str, prefix: str = "run") -> str:
    """The next numbered label of ``collection``: ``run-0001``, ``run-0002``, … (``ci-0001``).

    Numbered labels read as run numbers in the Dagster UI. The number follows the highest
    ``<prefix>-<digits>`` label of the collection; other labels (timestamps, names) are kept
    and ignored here.
    """
    if collection not in store.list_collections():
        return f"{prefix}-0001"
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)")
    numbers = [
        int(m.group(1))
        for label in store.run_labels(collection).values()
        if (m := pattern.fullmatch(label))
    ]
    return f"{prefix}-{max(numbers, default=0) + 1:04d}"


def add_dynamic_partition(instance: dg.DagsterInstance, name: str, key: str) -> None:
    """Add partition ``key`` to dynamic partitions ``name``, idempotently, even when racing.

    Dagster's ``add_dynamic_partitions`` reads then inserts, so two callers adding one key at
    once can collide on its unique index (``IntegrityError``); the key is then there, which is
    all the caller asked for.
    """
    if instance.has_dynamic_partition(name, key):
        return
    try:
        instance.add_dynamic_partitions(name, [key])
    except sqlalchemy.exc.IntegrityError:
        if not instance.has_dynamic_partition(name, key):
            raise


def add_run_partition(
    instance: dg.DagsterInstance,
    store: MatchboxDBAdapter,
    collection: str,
    label: str | None = None,
) -> tuple[str, Run]:
    """Create (or find) the run labelled ``label`` and add it as a partition; returns both.

    Idempotent and safe to race: callers adding one label get the same run and one partition.
    """
    label = label or new_run_label()
    ensure_collection(store, collection)
    run = store.run_for_label(collection, label)
    add_dynamic_partition(instance, partitions_name(collection), label)
    return label, run


class _Memo:
    """A small thread-safe LRU map of facts that never change once true (a label's run id)."""

    def __init__(self, kept: int = 256) -> None:
        self._found: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._kept = kept

    def get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._found.get(key)

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._found[key] = value
            while len(self._found) > self._kept:
                self._found.popitem(last=False)


_RUNS = _Memo()
"""(Dagster run, store, collection, label) → run id."""
_NOTED = _Memo()
"""(Dagster run, store, collection, label) → True once the attempt is noted in the store."""


def dagster_run_id(context: Any) -> str | None:
    """The id of the Dagster run a context executes in (None outside a run, e.g. unit tests)."""
    for get in (
        lambda: context.run.run_id,  # asset execution context
        lambda: context.step_context.run_id,  # input context
        lambda: context.run_id,  # output context
    ):
        try:
            found = get()
        except Exception:  # each context type offers only some of these
            continue
        if isinstance(found, str):
            return found
    return None


def _store_identity(store: MatchboxDBAdapter) -> str:
    """Which database and schema a store adapter reads (a digest: no password is kept)."""
    settings = getattr(store, "settings", None)
    uri = getattr(settings, "postgres_uri", None)
    if uri is not None:
        where = uri.get_secret_value()
    else:
        where = str(getattr(settings, "embedded_data_dir", ""))
    where += "|" + str(getattr(settings, "postgres_schema", ""))
    return hashlib.blake2b(where.encode(), digest_size=16).hexdigest()


def step_path(
    store: MatchboxDBAdapter,
    collection: str,
    label: str,
    name: str,
    *,
    create: bool,
    dagster_run: str | None = None,
) -> StepPath:
    """The path of step ``name`` in the run labelled ``label`` (created first if ``create``).

    With ``dagster_run`` (see :func:`dagster_run_id`) the label's run is looked up once per
    Dagster run and process; a label never moves to another run, so the answer cannot go stale
    within one Dagster run.
    """
    key = _run_key(dagster_run, store, collection, label)
    run_id = _RUNS.get(key) if key else None
    if run_id is None:
        try:
            run_id = store.run_for_label(collection, label, create=create).run_id
        except MatchboxCollectionNotFoundError:
            if not create:
                raise
            ensure_collection(store, collection)  # the collection's first write
            run_id = store.run_for_label(collection, label, create=create).run_id
        if key:
            _RUNS.put(key, run_id)
    return StepPath(collection=collection, run=run_id, name=name)


def first_in_dagster_run(context: Any, store: MatchboxDBAdapter, collection: str) -> bool:
    """Whether this process has not yet seen this Dagster run write ``collection``'s partition.

    False outside a Dagster run or a partition. Call :func:`seen_in_dagster_run` once the
    first-time work succeeded.
    """
    key = _dagster_run_key(context, store, collection)
    return key is not None and _NOTED.get(key) is None


def seen_in_dagster_run(context: Any, store: MatchboxDBAdapter, collection: str) -> None:
    """Remember that this Dagster run's first-time work on the partition is done."""
    key = _dagster_run_key(context, store, collection)
    if key is not None:
        _NOTED.put(key, True)


def _dagster_run_key(context: Any, store: MatchboxDBAdapter, collection: str) -> tuple | None:
    label = context.partition_key if context.has_partition_key else None
    return _run_key(dagster_run_id(context), store, collection, label)


def _run_key(
    dagster_run: str | None, store: MatchboxDBAdapter, collection: str, label: str | None
) -> tuple | None:
    """What the per-Dagster-run memos are keyed by; None outside a Dagster run or partition."""
    if dagster_run is None or label is None:
        return None
    return (dagster_run, _store_identity(store), collection, label)
