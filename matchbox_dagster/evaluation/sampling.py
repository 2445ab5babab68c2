"""Which entities a reviewer judges: the sampling strategies of the review app (no Dagster).

Every strategy returns :class:`EvalSample` objects: a set of leaf ids to show together (the records
of one entity, or of two entities a pair just missed joining) and their keys by source.

``random``     the contract's ``sample_for_eval``: random entities of two or more records the
               user did not judge in the last year.
``uncertain``  the edges scoring closest to their model's threshold in the resolver: at or above
               it, the entity the edge helped form; below it, the two entities the edge would
               have joined, shown together. These decide precision (above) and recall (below).
``changed``    entities of this run whose records differ from every entity of the collection's
               default run (same resolver name): the churn a promotion would ship.

``uncertain`` and ``changed`` skip sets of leaves the user already judged (as shown), and sets
over :data:`MAX_RECORDS` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from matchbox_dagster.common.dtos import ModelConfig, ResolverConfig, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxNotFoundError
from matchbox_dagster.store.base import MatchboxDBAdapter

MAX_RECORDS = 50
"""Largest set of records a strategy offers at once (a page a person can read)."""

TABLE_MAX_KEYS = 200_000
"""Sources with more keys show only keys in the resolver's ``entities`` table (no full re-read,
:mod:`~matchbox_dagster.evaluation.entity_tables`)."""


class Strategy(StrEnum):
    """The sampling strategies."""

    RANDOM = "random"
    UNCERTAIN = "uncertain"
    CHANGED = "changed"


@dataclass(frozen=True)
class EvalSample:
    """Leaves to judge together, why they were picked, and their ``source``/``key``/``leaf``."""

    leaves: tuple[int, ...]
    reason: str
    records: pl.DataFrame


@dataclass(frozen=True)
class Lineage:
    """A resolver's models (with their thresholds) and the sources beneath it, in order."""

    thresholds: dict[str, float]
    sources: list[str]


def lineage(store: MatchboxDBAdapter, path: StepPath) -> Lineage:
    """The models (and thresholds) a resolver reads and every source beneath it."""
    config = store.get_step(path).config
    if not isinstance(config, ResolverConfig):
        raise MatchboxInvalidData(f"Step {path} is not a resolver.")
    raw = config.resolver_settings.get("thresholds", {})
    thresholds = {m: float(raw.get(m, 0.0)) for m in config.inputs}  # type: ignore[union-attr]
    sources: list[str] = []

    def visit(step: StepPath) -> None:
        found = store.get_step(step).config
        queries = []
        if isinstance(found, ModelConfig):
            queries = [q for q in (found.left_query, found.right_query) if q is not None]
        elif isinstance(found, ResolverConfig):
            for model in found.inputs:
                visit(step.model_copy(update={"name": model}))
            return
        for query in queries:
            sources.extend(s for s in query.sources if s not in sources)
            if query.resolver:
                visit(step.model_copy(update={"name": query.resolver}))

    visit(path)
    return Lineage(thresholds=thresholds, sources=sources)


def resolver_records(
    store: MatchboxDBAdapter, path: StepPath, sources: Sequence[str]
) -> pl.DataFrame:
    """``source``, ``key``, ``leaf``, ``entity``: every key under the resolver at ``path``."""
    frames = []
    for name in sources:
        table = store.query(path.model_copy(update={"name": name}), path, return_leaf_id=True)
        frames.append(
            pl.DataFrame(pl.from_arrow(table)).select(
                pl.lit(name).alias("source"),
                pl.col("key").cast(pl.String),
                pl.col("leaf_id").cast(pl.Int64).alias("leaf"),
                pl.col("id").cast(pl.Int64).alias("entity"),
            )
        )
    return (
        pl.concat(frames)
        if frames
        else pl.DataFrame(
            schema={"source": pl.String, "key": pl.String, "leaf": pl.Int64, "entity": pl.Int64}
        )
    )


def judged_sets(store: MatchboxDBAdapter, collection: str, user: str) -> set[tuple[int, ...]]:
    """The leaf sets ``user`` was shown in their judgements (as sorted tuples)."""
    judgements, expansion = store.get_collection_judgements(collection)
    mine = pl.DataFrame(pl.from_arrow(judgements)).filter(pl.col("user_name") == user)
    shown = set(mine.get_column("shown").to_list())
    leaves = pl.DataFrame(pl.from_arrow(expansion))
    return {
        tuple(sorted(row["leaves"])) for row in leaves.iter_rows(named=True) if row["root"] in shown
    }


def judgement_count(store: MatchboxDBAdapter, collection: str, leaves: pl.Series) -> int:
    """Judgements (one per user and shown set) by readers of ``collection`` within ``leaves``."""
    judgements, expansion = store.get_collection_judgements(collection)
    shown = pl.DataFrame(pl.from_arrow(judgements)).select("user_name", "shown").unique()
    if shown.is_empty():
        return 0
    known = set(leaves.to_list())
    inside = {
        row["root"]
        for row in pl.DataFrame(pl.from_arrow(expansion)).iter_rows(named=True)
        if set(row["leaves"]) <= known
    }
    return shown.filter(pl.col("shown").is_in(list(inside))).height


def draw(
    store: MatchboxDBAdapter,
    path: StepPath,
    strategy: Strategy | str,
    n: int,
    user: str,
    records: pl.DataFrame | None = None,
) -> list[EvalSample]:
    """Up to ``n`` samples of the resolver at ``path`` for ``user`` by ``strategy``.

    ``records`` is :func:`resolver_records` (read here when not given).
    """
    strategy = Strategy(strategy)
    if strategy is Strategy.RANDOM:
        table = pl.DataFrame(pl.from_arrow(store.sample_for_eval(n, path, user)))
        out = []
        for (root,), part in table.group_by("root", maintain_order=True):
            frame = part.select(
                "source", pl.col("key").cast(pl.String), pl.col("leaf").cast(pl.Int64)
            )
            leaves = tuple(sorted(set(frame.get_column("leaf").to_list())))
            out.append(EvalSample(leaves, f"random entity {root}", frame))
        return out
    if records is None:
        records = resolver_records(store, path, lineage(store, path).sources)
    done = judged_sets(store, path.collection, user)
    if strategy is Strategy.UNCERTAIN:
        candidates = _uncertain(store, path, records)
    else:
        candidates = _changed(store, path, records)
    out = []
    seen: set[tuple[int, ...]] = set()
    for leaves, reason in candidates:
        if len(out) >= n:
            break
        if leaves in done or leaves in seen or not 1 < len(leaves) <= MAX_RECORDS:
            continue
        seen.add(leaves)
        frame = records.filter(pl.col("leaf").is_in(list(leaves))).select("source", "key", "leaf")
        out.append(EvalSample(leaves, reason, frame))
    return out


def _uncertain(
    store: MatchboxDBAdapter, path: StepPath, records: pl.DataFrame
) -> list[tuple[tuple[int, ...], str]]:
    """Leaf sets by the distance of an edge's score to its model's threshold, nearest first."""
    entity_leaves = records.group_by("entity").agg(pl.col("leaf").unique().sort())
    of_leaf = records.select("leaf", "entity").unique()
    found = []
    for model, threshold in lineage(store, path).thresholds.items():
        edges = pl.DataFrame(
            pl.from_arrow(store.get_model_data(path.model_copy(update={"name": model})))
        )
        if edges.is_empty():
            continue
        edges = edges.select(
            pl.col("left_id").cast(pl.Int64),
            pl.col("right_id").cast(pl.Int64),
            pl.col("score").cast(pl.Float64),
        ).with_columns((pl.col("score") - threshold).abs().alias("distance"))
        # An edge's ids are leaves, or clusters of an input resolver: map each through any of
        # its leaves to this resolver's entity (a cluster's leaves share one entity here).
        ids = input_ids(store, path, model, records.get_column("leaf"))
        ends = ids.join(of_leaf, on="leaf").select("id", "entity").unique("id")
        edges = edges.join(ends, left_on="left_id", right_on="id").join(
            ends, left_on="right_id", right_on="id", suffix="_r"
        )
        for row in edges.sort("distance").head(500).iter_rows(named=True):
            above = row["score"] >= threshold
            wanted = {row["entity"], row["entity_r"]}
            leaves = entity_leaves.filter(pl.col("entity").is_in(list(wanted)))
            flat = tuple(sorted({x for part in leaves.get_column("leaf").to_list() for x in part}))
            side = "at or above" if above else "below"
            reason = f"{model} edge scoring {row['score']:.3f}, {side} its threshold {threshold}"
            found.append((row["distance"], flat, reason))
    found.sort(key=lambda item: item[0])
    return [(leaves, reason) for _, leaves, reason in found]


def input_ids(
    store: MatchboxDBAdapter,
    path: StepPath,
    model: str,
    leaves: pl.Series,
    ids: pl.Series | None = None,
) -> pl.DataFrame:
    """``id`` (in the model's id space), ``leaf``: the model's input ids and their leaves.

    An id is one of ``leaves`` itself, or a cluster of one of the model's input resolvers;
    with ``ids``, only those.
    """
    config = store.get_step(path.model_copy(update={"name": model})).config
    assert isinstance(config, ModelConfig)

    def kept(frame: pl.DataFrame) -> pl.DataFrame:
        return frame if ids is None else frame.filter(pl.col("id").is_in(ids.implode()))

    parts = [
        kept(leaves.cast(pl.Int64).to_frame("leaf").select(pl.col("leaf").alias("id"), "leaf"))
    ]
    for query in (config.left_query, config.right_query):
        if query is None or not query.resolver:
            continue
        resolver = path.model_copy(update={"name": query.resolver})
        for name in query.sources:
            table = store.query(
                path.model_copy(update={"name": name}), resolver, return_leaf_id=True
            )
            frame = pl.DataFrame(pl.from_arrow(table.select(["id", "leaf_id"])))
            parts.append(
                kept(
                    frame.select(
                        pl.col("id").cast(pl.Int64), pl.col("leaf_id").cast(pl.Int64).alias("leaf")
                    )
                )
            )
    return pl.concat(parts).unique()


def _changed(
    store: MatchboxDBAdapter, path: StepPath, records: pl.DataFrame
) -> list[tuple[tuple[int, ...], str]]:
    """Entities of this run whose leaf set is no entity of the default run, largest first."""
    default = store.get_collection(path.collection).default_run
    if default is None or default == path.run:
        raise MatchboxNotFoundError(
            f"Collection {path.collection!r} has no other default run to compare run "
            f"{path.run} with: the 'changed' strategy needs one."
        )
    before_path = path.model_copy(update={"run": default})
    before = resolver_records(store, before_path, sorted(set(records.get_column("source"))))
    old = {
        tuple(leaves)
        for leaves in before.group_by("entity")
        .agg(pl.col("leaf").unique().sort())["leaf"]
        .to_list()
    }
    now = records.group_by("entity").agg(pl.col("leaf").unique().sort())
    now = now.with_columns(pl.col("leaf").list.len().alias("size")).sort("size", descending=True)
    new = [tuple(leaves) for leaves in now.get_column("leaf").to_list()]
    merged = [
        (leaves, f"an entity no entity of default run {default} equals")
        for leaves in new
        if len(leaves) > 1 and leaves not in old
    ]
    # Entities of the default run this run splits (their records, shown together again).
    known = set(records.get_column("leaf").to_list())
    split = [
        (leaves, f"an entity of default run {default} that this run splits")
        for leaves in sorted(old - set(new), key=len, reverse=True)
        if len(leaves) > 1 and set(leaves) <= known
    ]
    return merged + split


__all__ = [
    "MAX_RECORDS",
    "EvalSample",
    "Lineage",
    "Strategy",
    "draw",
    "judged_sets",
    "judgement_count",
    "lineage",
    "resolver_records",
]
