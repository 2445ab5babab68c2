"""Step-row statements shared by psycopg and ADBC: create, delete and stage a step.

Every statement uses ``$n`` placeholders and plain scalar parameters (arrays travel as
PostgreSQL array literals, documents as JSON text), so the same SQL runs on psycopg's
``RawCursor`` (the small calls) and on an ADBC cursor (``write_step``, whose bulk load shares
the transaction).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg

from matchbox_dagster.common.dtos import (
    ModelConfig,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    Step,
    StepPath,
    StepType,
    UploadStage,
    validate_text,
)
from matchbox_dagster.common.errors import (
    MatchboxStepAlreadyExists,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
)
from matchbox_dagster.store.postgres.db import adbc_dbapi, sqlstate

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

Cursor: TypeAlias = "adbc.Cursor | psycopg.RawCursor[Any]"
"""A cursor taking ``$n`` placeholders: ADBC, or psycopg's ``RawCursor``."""

BULK_TABLES = {
    StepType.SOURCE: "source_rows",
    StepType.MODEL: "model_edges",
    StepType.RESOLVER: "resolver_leaves",
}
"""The partitioned table holding each step type's data."""


def partition_name(step_type: StepType, step_id: int) -> str:
    """Name of the partition holding a step's data (built from an integer id only)."""
    return f"{BULK_TABLES[step_type]}_{int(step_id)}"


def fetch(cur: Cursor, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``params`` and return every row as a tuple."""
    if params:
        cur.execute(query, params)
    else:
        cur.execute(query)
    return [tuple(r) for r in cur.fetchall()] if cur.description else []


def execute(cur: Cursor, query: str, *params: Any) -> None:
    """Run a statement that returns nothing."""
    if params:
        cur.execute(query, params)
    else:
        cur.execute(query)


def array(values: list[int]) -> str:
    """A ``bigint[]`` literal of integers (to bind as text and cast with ``::bigint[]``)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def storable(step: Step) -> None:
    """Refuse a description or config PostgreSQL cannot store (NUL, lone surrogates)."""
    if step.description is not None:
        validate_text(step.description, "A step description")

    def walk(value: object) -> None:
        if isinstance(value, str):
            validate_text(value, "A step config value")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(step.config.model_dump(mode="json"))


def step_dto(row: Any) -> Step:
    """The :class:`Step` of a step row (its description, fingerprint, type and config)."""
    return Step.model_validate(
        {
            "description": row.description,
            "fingerprint": row.fingerprint,
            "step_type": row.step_type,
            "config": row.config,
        }
    )


def lineage_parents(step: Step) -> list[str]:
    """Every step a step reads (lineage edges): sources and resolvers of model inputs too."""
    config = step.config
    if isinstance(config, ModelConfig):
        return config.dependencies
    return config.parents


def check_parents(cur: Cursor, step: Step, path: StepPath) -> dict[str, int]:
    """Ids of a step's parents; they must exist in the same run and be of a readable type."""
    wanted = lineage_parents(step)
    if not wanted:
        return {}
    rows = fetch(
        cur,
        "SELECT name, step_id, step_type FROM steps "
        "WHERE run_id = $1 AND name = ANY(string_to_array($2, chr(31)))",
        path.run,
        "\x1f".join(wanted),
    )
    found = {r[0]: (int(r[1]), StepType(r[2])) for r in rows}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise MatchboxStepNotFoundError(
            StepPath(collection=path.collection, run=path.run, name=missing[0]),
            f"step {path.name!r} reads {missing}, which must be created first in run {path.run}",
        )
    config = step.config
    if isinstance(config, ModelConfig):
        queries: list[QueryConfig] = [config.left_query]
        if config.right_query is not None:
            queries.append(config.right_query)
        for query in queries:
            for name in query.sources:
                _expect_type(path, name, found[name][1], StepType.SOURCE)
            if query.resolver is not None:
                _expect_type(path, query.resolver, found[query.resolver][1], StepType.RESOLVER)
    elif isinstance(config, ResolverConfig):
        for name in config.inputs:
            _expect_type(path, name, found[name][1], StepType.MODEL)
    return {name: found[name][0] for name in wanted}


def _expect_type(path: StepPath, name: str, actual: StepType, expected: StepType) -> None:
    if actual != expected:
        raise MatchboxStepTypeError(
            StepPath(collection=path.collection, run=path.run, name=name), actual, expected
        )


def insert_step(cur: Cursor, step: Step, path: StepPath) -> int:
    """Insert a step's row, lineage and source config; return its id.

    The run must have been checked (exists, mutable) by the caller, in the same transaction.
    """
    parents = check_parents(cur, step, path)
    try:
        rows = fetch(
            cur,
            # A new step holds its own data until it shares another's: data_id = step_id.
            "INSERT INTO steps (step_id, data_id, run_id, name, step_type, description, "
            "fingerprint, config) SELECT n, n, $1, $2, $3, $4, $5, $6::jsonb FROM "
            "(SELECT nextval(pg_get_serial_sequence('steps', 'step_id')) AS n) x "
            "RETURNING step_id",
            path.run,
            path.name,
            step.step_type.value,
            step.description,
            step.fingerprint,
            json.dumps(step.config.model_dump(mode="json")),
        )
    except (psycopg.Error, adbc_dbapi().Error) as exc:
        if sqlstate(exc) == "23505":
            raise MatchboxStepAlreadyExists(path) from None
        raise
    step_id = int(rows[0][0])
    if parents:
        # Closure: each direct parent at level 1, and its ancestors one level further.
        execute(
            cur,
            "INSERT INTO step_lineage (parent_id, child_id, level) "
            "SELECT ancestor, $1, min(level) FROM ("
            "SELECT unnest($2::bigint[]) AS ancestor, 1 AS level UNION ALL "
            "SELECT parent_id, level + 1 FROM step_lineage WHERE child_id = ANY($2::bigint[])"
            ") a GROUP BY ancestor",
            step_id,
            array(list(parents.values())),
        )
    if isinstance(step.config, SourceConfig):
        write_source_config(cur, step_id, step.config)
    return step_id


def write_source_config(cur: Cursor, step_id: int, config: SourceConfig) -> None:
    """Insert a source step's location and fields."""
    execute(
        cur,
        "INSERT INTO source_configs (step_id, location_type, location_name, extract_transform) "
        "VALUES ($1, $2, $3, $4)",
        step_id,
        config.location_config.type.value,
        config.location_config.name,
        config.extract_transform,
    )
    fields = [
        {"name": f.name, "type": f.type.value} for f in (config.key_field, *config.index_fields)
    ]
    execute(
        cur,
        "INSERT INTO source_fields (step_id, field_index, name, type, is_key) "
        "SELECT $1, f.i - 1, f.x->>'name', f.x->>'type', f.i = 1 "
        "FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS f(x, i)",
        step_id,
        json.dumps(fields),
    )


def step_tree(cur: Cursor, step_id: int) -> list[tuple[int, StepType, str]]:
    """A step and its descendants as (id, type, name), locked for deletion, by id."""
    rows = fetch(
        cur,
        "SELECT step_id, step_type, name FROM steps WHERE step_id = $1 OR step_id IN "
        "(SELECT child_id FROM step_lineage WHERE parent_id = $1) ORDER BY step_id FOR UPDATE",
        step_id,
    )
    return [(int(r[0]), StepType(r[1]), str(r[2])) for r in rows]


def set_stage(cur: Cursor, step_id: int, stage: UploadStage) -> None:
    """Set a step's upload stage (and when it changed)."""
    execute(
        cur,
        "UPDATE steps SET upload_stage = $1, stage_updated_at = clock_timestamp() "
        "WHERE step_id = $2",
        stage.value,
        step_id,
    )
