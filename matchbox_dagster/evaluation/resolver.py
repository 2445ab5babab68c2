"""A resolver's pairwise precision and recall, against ground truth or the store's judgements.

Against ground truth, each model's edges also get a precision/recall curve over
:data:`CURVE_THRESHOLDS`, to show where a threshold would sit best. Its recall is of pairs
*before clustering*: the share of all true pairs the model could propose (pairs of records of
the same entity in two of its input ids; for a linker, one on each side) that its edges kept
at the threshold hold. The resolver's headline recall is *after clustering* (its entities'
pairs). A threshold keeping no labelled edge has no precision: its row says so (``None``).

Against either, each model also gets its threshold in use (the resolver's setting), its F1
there, and the threshold that maximises F1 on the labelled pairs with a bootstrap interval
(:func:`~matchbox_dagster.evaluation.thresholds.model_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from matchbox_dagster.common.dtos import ModelConfig, QueryConfig, ResolverConfig, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.evaluation.metrics import (
    PairwiseScores,
    _collect,
    judged_pairs,
    score_against_judgements,
    score_against_truth,
    threshold_curve,
    truth_labels,
)
from matchbox_dagster.evaluation.thresholds import ModelThreshold, labels_within, model_threshold
from matchbox_dagster.store.base import MatchboxDBAdapter

CURVE_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(11)]
"""Thresholds of the per-model precision/recall curve: 0.50, 0.55, …, 1.00."""


@dataclass(frozen=True)
class ResolverEvaluation:
    """Pairwise scores of a resolver, what they were measured against, and model curves."""

    scores: PairwiseScores
    against: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    """Rows of ``model``, ``threshold``, ``edges``, ``precision``, ``recall``, ``f1`` (the
    three None when no labelled edge is kept) and ``true_pairs`` (the recall's denominator)."""
    thresholds: list[ModelThreshold] = field(default_factory=list)
    """Per model: the threshold in use, its F1, and the suggested threshold with its interval."""

    def passes(self, min_precision: float | None, min_recall: float | None) -> bool:
        """Whether precision and recall reach the minimums (None: no minimum)."""
        return (min_precision is None or self.scores.precision >= min_precision) and (
            min_recall is None or self.scores.recall >= min_recall
        )


def evaluate_resolver(
    store: MatchboxDBAdapter,
    path: StepPath,
    models: Sequence[str],
    entities: pl.DataFrame,
    *,
    truth: bool,
    sources: Sequence[str] | None = None,
) -> ResolverEvaluation:
    """Score the resolver at ``path`` from its ``entities`` frame.

    ``entities`` comes from :func:`~matchbox_dagster.evaluation.entities.resolver_entities`
    over ``sources`` (in that order: its keys are hashed by position; needed for the curves).
    With ``truth``, scores against its ``entity`` column (and a curve per model of ``models``);
    otherwise against the judgements of users who may read the collection
    (:class:`MatchboxNoJudgements` when there are none). Either way each model of ``models``
    gets its suggested threshold (:attr:`ResolverEvaluation.thresholds`).
    """
    in_use = thresholds_in_use(store, path)
    if truth:
        scores = score_against_truth(entities, cluster="id", truth="entity")
        curve: list[dict[str, Any]] = []
        suggested = []
        for model in models:
            step = StepPath(collection=path.collection, run=path.run, name=model)
            edges, labels, positives = model_truth(store, step, entities, sources or [])
            curve += _curve_rows(model, edges, labels, positives, CURVE_THRESHOLDS)
            suggested.append(
                model_threshold(
                    model, edges, labels, in_use.get(model, 0.0), total_positives=positives
                )
            )
            del edges, labels  # one model's edges in memory at a time
        return ResolverEvaluation(
            scores=scores, against="ground truth", curve=curve, thresholds=suggested
        )
    # Only judgements by users who may read the collection count (issue 15 item 7).
    judgements, expansion = store.get_collection_judgements(path.collection)
    clusters = entities.select(pl.col("id").alias("root"), pl.col("leaf_id").alias("leaf")).unique()
    scores = score_against_judgements(
        clusters, judgements, expansion, universe=clusters.get_column("leaf")
    )
    suggested = []
    if models:
        labels = labels_within(judged_pairs(judgements, expansion), clusters.get_column("leaf"))
        for model in models:
            step = StepPath(collection=path.collection, run=path.run, name=model)
            edges = store.get_model_data(step)
            suggested.append(model_threshold(model, edges, labels, in_use.get(model, 0.0)))
    return ResolverEvaluation(scores=scores, against="judgements", thresholds=suggested)


def thresholds_in_use(store: MatchboxDBAdapter, path: StepPath) -> dict[str, float]:
    """The resolver's threshold per input model (0 for a model its settings do not name)."""
    config = store.get_step(path).config
    if not isinstance(config, ResolverConfig):
        raise MatchboxInvalidData(f"Step {path} is not a resolver.")
    raw = config.resolver_settings.get("thresholds") or {}
    named = raw if isinstance(raw, dict) else {}
    return {m: float(named.get(m, 0.0)) for m in config.inputs}  # type: ignore[arg-type]


def model_curve(
    store: MatchboxDBAdapter,
    model: StepPath,
    entities: pl.DataFrame,
    sources: Sequence[str],
    thresholds: Sequence[float] = CURVE_THRESHOLDS,
) -> list[dict[str, Any]]:
    """The precision/recall curve of a model's edges against the ``entities``' truth.

    Each input's records get their id in the model's id space (the input's resolver, else the
    leaf) and their true entity; recall divides by every true pair the model could propose.
    """
    edges, labels, positives = model_truth(store, model, entities, sources)
    return _curve_rows(model.name, edges, labels, positives, thresholds)


def _curve_rows(
    model: str,
    edges: Any,
    labels: pl.DataFrame,
    positives: float,
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    rows = threshold_curve(edges, labels, thresholds=thresholds, total_positives=positives)
    out = []
    for row in rows.iter_rows(named=True):
        if not row["edges"]:
            row |= {"precision": None, "recall": None, "f1": None}
        out.append({"model": model, **row, "true_pairs": positives})
    return out


def model_truth(
    store: MatchboxDBAdapter, model: StepPath, entities: pl.DataFrame, sources: Sequence[str]
) -> tuple[Any, pl.DataFrame, float]:
    """A model's edges, their truth labels, and every true pair it could propose."""
    config = store.get_step(model).config
    if not isinstance(config, ModelConfig):
        raise MatchboxInvalidData(f"Step {model} is not a model; it has no edges to curve.")
    left = _input_truth(store, model, config.left_query, entities, sources)
    right = (
        _input_truth(store, model, config.right_query, entities, sources)
        if config.right_query is not None
        else None
    )
    # Sides reading no source in common share no record: nothing to count once.
    shared = right is not None and bool(
        set(config.left_query.sources) & set(config.right_query.sources)  # type: ignore[union-attr]
    )
    positives = true_pairs(left, right, shared=shared)
    if right is None:
        truth = left.select("id", "entity")
    else:
        both = pl.concat([left.lazy(), right.lazy()])
        truth = _collect((both.unique(["id", "key"]) if shared else both).select("id", "entity"))
    del left, right  # before the edges are read: at 10M keys each is hundreds of MB
    edges = store.get_model_data(model)
    return edges, truth_labels(edges, truth), positives


def _input_truth(
    store: MatchboxDBAdapter,
    model: StepPath,
    query: QueryConfig,
    entities: pl.DataFrame,
    sources: Sequence[str],
) -> pl.DataFrame:
    """``id`` (in the input's id space), ``key`` (hashed as in ``entities``), ``entity``."""
    resolver = (
        StepPath(collection=model.collection, run=model.run, name=query.resolver)
        if query.resolver
        else None
    )
    truth = entities.select("key", "entity").drop_nulls()
    parts = []
    for name in query.sources:
        if name not in sources:
            continue  # not a source of the evaluated resolver: no truth for it
        source = StepPath(collection=model.collection, run=model.run, name=name)
        ids = pl.DataFrame(pl.from_arrow(store.query(source, resolver)))
        ids = ids.select(pl.col("id").cast(pl.Int64), pl.col("key").hash(seed=sources.index(name)))
        parts.append(ids.join(truth, on="key", how="inner"))
    if not parts:
        return pl.DataFrame(schema={"id": pl.Int64, "key": pl.UInt64, "entity": pl.UInt64})
    return pl.concat(parts)


_TRUE_PAIRS_PART_ROWS = 2_500_000
"""Rows of (id, entity) grouped at a time by :func:`true_pairs`."""


def true_pairs(
    left: pl.DataFrame, right: pl.DataFrame | None = None, *, shared: bool = True
) -> float:
    """True pairs a model could propose, in the units of :func:`truth_labels`' ``match``.

    An id pair ``(i, j)`` weighs the share of its record pairs that are one entity; with
    ``w[i, e]`` the share of id ``i``'s records of entity ``e``, a deduper's total is
    ``Σ_e ((Σ_i w[i,e])² − Σ_i w[i,e]²) / 2`` (pairs of two ids of its input), a linker's
    ``Σ_e (Σ_left w[i,e] · Σ_right w[j,e] − Σ_both w[i,e]²)`` (one id on each side, never an id
    with itself). For leaves of one record each it is the number of true record pairs.
    ``shared=False`` says no record is on both sides (their sources differ): cheaper.
    """
    sides = [left] if right is None else [left, right]
    both = pl.concat(
        [
            f.lazy().select("id", "key", "entity", pl.lit(i, dtype=pl.UInt8).alias("side"))
            for i, f in enumerate(sides)
        ]
    )
    # Records per id (a record on both sides once: distinct keys) and the sides it is on...
    count = pl.col("key").n_unique() if right is not None and shared else pl.len()
    totals = _collect(
        both.group_by("id").agg(
            count.cast(pl.Float64).alias("t"),
            (pl.col("side").min() == 0).alias("in_left"),
            (pl.col("side").max() == 1).alias("in_right"),
        )
    ).lazy()
    # ...then each id's share of each entity, the entities a part at a time (a part holds
    # every row of its entities, so every (id, entity) and every record of one, as a key has
    # one entity): at 5M keys a side the (id, entity) group-by held ~0.5 GB in one part.
    parts = max(1, -(-sum(f.height for f in sides) // _TRUE_PAIRS_PART_ROWS))
    w = pl.col("w")
    total = 0.0
    for part in range(parts):
        rows = both.filter(pl.col("entity").hash() % parts == part) if parts > 1 else both
        shares = (
            rows.group_by("id", "entity")
            .agg(count.cast(pl.Float64).alias("n"))
            .join(totals, on="id")
            .with_columns(w=pl.col("n") / pl.col("t"))
        )
        if right is None:
            found = shares.group_by("entity").agg(((w.sum() ** 2 - (w**2).sum()) / 2).alias("p"))
        else:
            left_w, right_w = w.filter(pl.col("in_left")), w.filter(pl.col("in_right"))
            # Pairs across the sides, less an id paired with itself (on both sides).
            found = shares.group_by("entity").agg(
                (
                    left_w.sum() * right_w.sum()
                    - (w**2).filter(pl.col("in_left") & pl.col("in_right")).sum()
                ).alias("p")
            )
        total += float(_collect(found.select(pl.col("p").sum())).item() or 0.0)
    return total
