"""Reference counting of step data: a partition lives while any step names it.

A step's data lives in the partition named after its ``data_id`` (its own step id, or that of
the step whose identical data it shares). Deleting steps (a step and its descendants, a run, a
collection, a replaced step) deletes their rows first, then :func:`release` drops each partition
they named that no remaining step names.

Concurrency, all in the caller's READ COMMITTED transaction:

- a writer that shares data locks the row of the step it shares from (``FOR KEY SHARE``), so a
  delete of that row waits for the writer's commit, and then sees the writer's step;
- two deletes of the last two steps naming one partition serialise on a transaction-level
  advisory lock per partition (in id order), so the second sees the first's delete and drops it.
"""

from __future__ import annotations

import json

from matchbox_dagster.common.dtos import StepType
from matchbox_dagster.store.postgres.db import compose
from matchbox_dagster.store.postgres.step_rows import Cursor, array, execute, fetch, partition_name


def data_key(schema: str, data_id: int) -> str:
    """The advisory-lock key of a partition's reference count."""
    return json.dumps([schema, "step-data", int(data_id)])


def delete_step_rows(cur: Cursor, schema: str, step_ids: list[int]) -> None:
    """Delete steps' rows, then drop the partitions no remaining step names."""
    if not step_ids:
        return
    held = fetch(
        cur,
        "DELETE FROM steps WHERE step_id = ANY($1::bigint[]) RETURNING data_id, step_type",
        array(step_ids),
    )
    release(cur, schema, [(int(d), StepType(t)) for d, t in held])


def release(cur: Cursor, schema: str, held: list[tuple[int, StepType]]) -> list[int]:
    """Drop the partitions ``(data_id, step type)`` that no step names any more.

    Call after deleting the steps that named them. Returns the data ids dropped.
    """
    dropped = []
    for data_id, step_type in sorted(set(held)):
        fetch(
            cur,
            "SELECT true AS locked FROM pg_advisory_xact_lock(hashtextextended($1, 0))",
            data_key(schema, data_id),
        )
        if fetch(cur, "SELECT 1 AS used FROM steps WHERE data_id = $1 LIMIT 1", int(data_id)):
            continue
        name = partition_name(StepType(step_type), data_id)
        execute(cur, compose("DROP TABLE IF EXISTS {s}.{t}", s=schema, t=name))
        dropped.append(int(data_id))
    return dropped
