"""Small builders of realistic store data and collection specs for tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    LocationConfig,
    LocationType,
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    SourceField,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.examples.febrl import FIELDS as FEBRL_FIELDS
from matchbox_dagster.specs import (
    CollectionSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
)
from matchbox_dagster.store.base import MatchboxDBAdapter


def row_hash(value: str) -> bytes:
    """A 32-byte digest standing for the hash of a source row with content ``value``."""
    return hashlib.sha256(value.encode()).digest()


def hashes_table(rows: dict[str, list[str]]) -> pa.Table:
    """Source hashes from ``{row content: [keys]}``."""
    return pa.table(
        {
            "hash": pa.array([row_hash(v) for v in rows], type=pa.large_binary()),
            "keys": pa.array(list(rows.values()), type=pa.large_list(pa.large_string())),
        }
    )


def source_config(name: str = "src") -> SourceConfig:
    """A plausible source config."""
    return SourceConfig(
        location_config=LocationConfig(type=LocationType.RDBMS, name=f"postgresql://db/{name}"),
        extract_transform=f"SELECT id, name FROM {name}",
        key_field=SourceField(name="id"),
        index_fields=(SourceField(name="name"),),
    )


def add_source(
    store: MatchboxDBAdapter, collection: str, run: int, name: str, rows: dict[str, list[str]]
) -> StepPath:
    """Create a source step and insert its data; returns its path."""
    table = hashes_table(rows)
    path = StepPath(collection=collection, run=run, name=name)
    store.create_step(
        Step(
            step_type=StepType.SOURCE,
            fingerprint=SourceHashes(table).fingerprint,
            config=source_config(name),
        ),
        path,
    )
    store.insert_source_data(path, table)
    return path


def pairs(results: ModelResults) -> dict[tuple[int, int], float]:
    """A model's results as ``{(left_id, right_id): score}``; asserts each pair is listed once."""
    rows = results.table.to_pylist()
    out = {(r["left_id"], r["right_id"]): r["score"] for r in rows}
    assert len(out) == len(rows)
    return out


def f32(value: float) -> float:
    """``value`` as the float32 a stored score holds."""
    return float(np.float32(value))


def edges_table(edges: list[tuple[int, int, float]]) -> pa.Table:
    """Model results from ``(left, right, score)`` triples."""
    return pa.table(
        {
            "left_id": pa.array([e[0] for e in edges], type=pa.int64()),
            "right_id": pa.array([e[1] for e in edges], type=pa.int64()),
            "score": pa.array([e[2] for e in edges], type=pa.float32()),
        }
    )


def model_step(edges: pa.Table, left: QueryConfig, right: QueryConfig | None = None) -> Step:
    """A deduper (no ``right``) or linker step for ``edges``."""
    return Step(
        step_type=StepType.MODEL,
        fingerprint=ModelResults(edges).fingerprint,
        config=ModelConfig(
            type=ModelType.LINKER if right else ModelType.DEDUPER,
            model_class="TestModel",
            model_settings={"threshold": 0.5},
            left_query=left,
            right_query=right,
        ),
    )


def add_model(
    store: MatchboxDBAdapter,
    collection: str,
    run: int,
    name: str,
    edges: list[tuple[int, int, float]],
    left: QueryConfig,
    right: QueryConfig | None = None,
) -> StepPath:
    """Create a model step and insert its edges."""
    table = edges_table(edges)
    path = StepPath(collection=collection, run=run, name=name)
    store.create_step(model_step(table, left, right), path)
    store.insert_model_data(path, table)
    return path


def cluster_sets(clusters: ResolverClusters) -> set[frozenset[int]]:
    """Resolver clusters as a set of sets of child ids (labels are arbitrary)."""
    table = clusters.table
    by_parent: dict[int, set[int]] = {}
    for parent, child in zip(
        table.column("parent_id").to_pylist(), table.column("child_id").to_pylist(), strict=True
    ):
        by_parent.setdefault(parent, set()).add(child)
    return {frozenset(group) for group in by_parent.values()}


def clusters_table(clusters: list[list[int]]) -> pa.Table:
    """Resolver assignments from a list of clusters (lists of child ids)."""
    parents = [i for i, c in enumerate(clusters) for _ in c]
    children = [child for c in clusters for child in c]
    return pa.table(
        {
            "parent_id": pa.array(parents, type=pa.int64()),
            "child_id": pa.array(children, type=pa.int64()),
        }
    )


def resolver_step(
    table: pa.Table, inputs: tuple[str, ...], thresholds: dict[str, float] | None = None
) -> Step:
    """A resolver step over ``inputs`` declaring the clusters of ``table``."""
    settings = {"thresholds": thresholds or {}}
    return Step(
        step_type=StepType.RESOLVER,
        fingerprint=ResolverClusters(table).fingerprint,
        config=ResolverConfig(inputs=inputs, resolver_settings=settings),
    )


def add_resolver(
    store: MatchboxDBAdapter,
    collection: str,
    run: int,
    name: str,
    clusters: list[list[int]],
    inputs: tuple[str, ...],
    thresholds: dict[str, float] | None = None,
) -> StepPath:
    """Create a resolver step (``thresholds`` of its models, none by default) and insert its
    clusters."""
    table = clusters_table(clusters)
    path = StepPath(collection=collection, run=run, name=name)
    store.create_step(resolver_step(table, inputs, thresholds), path)
    store.insert_resolver_data(path, table)
    return path


def leaf_of(store: MatchboxDBAdapter, source: StepPath) -> dict[str, int]:
    """Key → leaf id of a source."""
    table = store.query(source, return_leaf_id=True)
    return dict(
        zip(table.column("key").to_pylist(), table.column("leaf_id").to_pylist(), strict=True)
    )


def ids_of(store: MatchboxDBAdapter, source: StepPath, resolver: StepPath | None) -> dict[str, int]:
    """Key → entity id of a source through a resolver."""
    table = store.query(source, resolver)
    return dict(zip(table.column("key").to_pylist(), table.column("id").to_pylist(), strict=True))


RUN_BOOKKEEPING = ("dagster_attempts", "step_check_outcomes")
"""Tables recording what Dagster did (attempts, check outcomes), not what the store holds."""


def store_state(store: MatchboxDBAdapter) -> dict[str, str]:
    """A digest of every table in the store's schema (partitions included), for 'unchanged'."""
    import psycopg
    from psycopg import sql

    db = store.db  # type: ignore[attr-defined]
    state: dict[str, str] = {}
    with psycopg.connect(db.uri, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1",
                (db.schema,),
            )
        ]
        for table in tables:
            ident = sql.Identifier(db.schema, table)
            digest = conn.execute(
                sql.SQL(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' "
                    "ORDER BY t::text)), '') FROM {} t"
                ).format(ident)
            ).fetchone()
            state[table] = digest[0]  # type: ignore[index]
    return state


# --- collection specs ---------------------------------------------------------------------------


def source_spec(
    name: str,
    location_type: LocationType,
    location: str,
    *,
    key_field: str = "id",
    index_fields: Sequence[str] = ("name",),
    **options: Any,
) -> SourceSpec:
    """A source read from ``location`` (a path, URI or ``module:function``); ``options`` are
    further ``SourceSpec`` fields (``extract_transform``, ``field_types``, …)."""
    return SourceSpec(
        name=name,
        location=LocationConfig(type=location_type, name=location),
        key_field=key_field,
        index_fields=list(index_fields),
        **options,
    )


def febrl_source(
    name: str, function: str, module: str = "matchbox_dagster.examples.febrl"
) -> SourceSpec:
    """A FEBRL4 table given by ``module:function``: key ``rec_id``, every FEBRL field indexed."""
    return source_spec(
        name,
        LocationType.ARROW,
        f"{module}:{function}",
        key_field="rec_id",
        index_fields=FEBRL_FIELDS,
    )


def rules_deduper(
    source: str = "people", fields: Sequence[str] = ("name",), name: str = "dedupe"
) -> ModelSpec:
    """A DeterministicRules deduper of ``source``: rows equal on all ``fields`` score 1."""
    return ModelSpec(
        name=name,
        left=source,
        model_class="DeterministicRules",
        settings={"rules": [{"fields": list(fields)}]},
    )


def single_model_collection(
    collection: str,
    sources: Sequence[SourceSpec],
    model: ModelSpec,
    *,
    resolver: str = "entities",
    threshold: float = 1.0,
    checks: ResolverChecksSpec | None = None,
    **options: Any,
) -> CollectionSpec:
    """``sources`` → ``model`` → one resolver keeping its edges at ``threshold`` or above;
    ``options`` are further ``CollectionSpec`` fields (``promote``, ``schedule``, …)."""
    return CollectionSpec(
        collection=collection,
        sources=list(sources),
        models=[model],
        resolvers=[
            ResolverSpec(
                name=resolver,
                thresholds={model.name: threshold},
                checks=checks or ResolverChecksSpec(),
            )
        ],
        **options,
    )
