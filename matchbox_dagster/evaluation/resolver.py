"""A resolver's pairwise precision and recall, against ground truth or the store's judgements.

Against ground truth, each model's edges also get a precision/recall curve over
:data:`CURVE_THRESHOLDS`, to show where a threshold would sit best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.evaluation.metrics import (
    PairwiseScores,
    score_against_judgements,
    score_against_truth,
    threshold_curve,
    truth_labels,
)
from matchbox_dagster.store.base import MatchboxDBAdapter

CURVE_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(11)]
"""Thresholds of the per-model precision/recall curve: 0.50, 0.55, …, 1.00."""


@dataclass(frozen=True)
class ResolverEvaluation:
    """Pairwise scores of a resolver, what they were measured against, and model curves."""

    scores: PairwiseScores
    against: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    """Rows of ``model``, ``threshold``, ``edges``, ``precision``, ``recall``, ``f1``."""

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
) -> ResolverEvaluation:
    """Score the resolver at ``path`` from its ``entities`` frame.

    ``entities`` comes from :func:`~matchbox_dagster.evaluation.entities.resolver_entities`.
    With ``truth``, scores against its ``entity`` column (and a curve per model of ``models``);
    otherwise against the store's judgements (:class:`MatchboxNoJudgements` when there are none).
    """
    if truth:
        scores = score_against_truth(entities, cluster="id", truth="entity")
        leaf_truth = entities.select(pl.col("leaf_id").alias("id"), "entity").drop_nulls()
        curve: list[dict[str, Any]] = []
        for model in models:
            edges = store.get_model_data(
                StepPath(collection=path.collection, run=path.run, name=model)
            )
            labels = truth_labels(edges, leaf_truth)
            rows = threshold_curve(edges, labels, thresholds=CURVE_THRESHOLDS)
            del edges, labels
            curve += [{"model": model, **row} for row in rows.iter_rows(named=True)]
        return ResolverEvaluation(scores=scores, against="ground truth", curve=curve)
    judgements, expansion = store.get_judgements()
    clusters = entities.select(pl.col("id").alias("root"), pl.col("leaf_id").alias("leaf")).unique()
    scores = score_against_judgements(
        clusters, judgements, expansion, universe=clusters.get_column("leaf")
    )
    return ResolverEvaluation(scores=scores, against="judgements")
