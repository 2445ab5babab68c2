"""Thresholds from judgements: per model, the score threshold maximising F1, with an interval.

:func:`suggest_threshold` takes a model's edges and labelled pairs (from
:func:`~matchbox_dagster.evaluation.metrics.judged_pairs` or
:func:`~matchbox_dagster.evaluation.metrics.truth_labels`) and returns the threshold whose kept
edges score the best F1 on the labelled pairs, and a bootstrap interval of that threshold: the
labelled pairs are resampled (Poisson weights, seeded) and the best threshold found again on
each resample. A wide interval says the judgements do not yet pin the threshold down.
:func:`suggest_thresholds` does it for each model of a resolver. Vectorised with numpy, over
groups of pairs with one score and label (not over pairs), so millions of labels cost little.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from matchbox_dagster.common.errors import MatchboxNoJudgements
from matchbox_dagster.evaluation.metrics import FrameLike, _frame, _ordered, threshold_curve


@dataclass(frozen=True)
class ThresholdSuggestion:
    """The best threshold on labelled pairs, its figures, and its bootstrap interval."""

    threshold: float
    f1: float
    precision: float
    recall: float
    low: float
    high: float
    labelled: int
    positives: float = 0.0
    """Recall's denominator: the positive weight of the labels (or ``total_positives``)."""


def _labelled_scores(edges: FrameLike, labels: FrameLike) -> pl.DataFrame:
    """Each labelled pair's ``match`` (0–1) and the model's best ``score`` (null: unscored)."""
    scored = (
        _ordered(_frame(edges, ["left_id", "right_id", "score"], "edges"), "left_id", "right_id")
        .group_by("left_id", "right_id")
        .agg(pl.col("score").max())
    )
    labelled = (
        _ordered(_frame(labels, ["left_id", "right_id", "match"], "labels"), "left_id", "right_id")
        .group_by("left_id", "right_id")
        .agg(pl.col("match").cast(pl.Float64).mean())
    )
    return labelled.join(scored, on=["left_id", "right_id"], how="left")


def _best(
    match: np.ndarray, weights: np.ndarray, ends: np.ndarray, positives: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per weight row: index (into ``ends``) of the best-F1 threshold, and that F1."""
    tp = np.cumsum(weights * match, axis=1)[:, ends]
    kept = np.cumsum(weights, axis=1)[:, ends]
    denominator = kept + positives[:, None]
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    best = np.argmax(f1, axis=1)  # the first maximum: the highest threshold on ties
    return best, f1[np.arange(len(best)), best]


def suggest_threshold(
    edges: FrameLike,
    labels: FrameLike,
    *,
    resamples: int = 400,
    level: float = 0.95,
    seed: int = 0,
    total_positives: float | None = None,
) -> ThresholdSuggestion:
    """The threshold maximising F1 on ``labels`` and its ``level`` bootstrap interval.

    ``edges``: ``left_id``, ``right_id``, ``score``; ``labels``: ``left_id``, ``right_id``,
    ``match`` (bool or 0–1). A positive pair the model never scored counts against recall;
    ``total_positives`` (e.g. every true pair of a ground truth, when ``labels`` only label the
    model's edges) raises recall's denominator to it when above the labels' positive weight.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    joined = _labelled_scores(edges, labels)
    # Pairs with the same score and label are interchangeable: one row per (score, match) with
    # its count. The sum of n Poisson(1) weights is Poisson(n), so resampling a group's count
    # is the same bootstrap as resampling its pairs, in O(groups) instead of O(pairs).
    scored = (
        joined.drop_nulls("score")
        .group_by("score", "match")
        .agg(pl.len().alias("n"))
        .sort(["score", "match"], descending=True)
    )
    if scored.is_empty():
        raise MatchboxNoJudgements("No labelled pair was scored by the model.")
    match = scored.get_column("match").to_numpy()
    score = scored.get_column("score").to_numpy()
    count = scored.get_column("n").to_numpy().astype(np.float64)
    unscored = joined.filter(pl.col("score").is_null()).group_by("match").agg(pl.len().alias("n"))
    unscored_match = unscored.get_column("match").to_numpy()
    unscored_count = unscored.get_column("n").to_numpy().astype(np.float64)
    labelled_positives = float(count @ match + unscored_count @ unscored_match)
    # Positives no label holds (``total_positives`` above the labels'): resampled as a count.
    missing = max((total_positives or 0.0) - labelled_positives, 0.0)
    # The last row of each run of equal scores: keeping edges ≥ that score keeps the run.
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))

    positives = labelled_positives + missing
    best, f1 = _best(match, count[None, :], ends, np.array([positives]))
    at = ends[best[0]]
    tp, kept = float(count[: at + 1] @ match[: at + 1]), float(count[: at + 1].sum())

    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    # Bounded memory: at most ~4M weights (and their cumulative sums) at a time.
    chunk = max(1, min(100, 4_000_000 // max(len(match), len(unscored_count), 1)))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        weights = rng.poisson(count, (rows, len(count))).astype(np.float64)
        extra = (
            rng.poisson(unscored_count, (rows, len(unscored_count))) @ unscored_match
            if len(unscored_count)
            else 0.0
        )
        total = weights @ match + extra + (rng.poisson(missing, rows) if missing else 0.0)
        index, _ = _best(match, weights, ends, np.asarray(total, dtype=np.float64))
        chosen.append(score[ends[index]])
    thresholds = np.concatenate(chosen)
    tail = (1 - level) / 2
    return ThresholdSuggestion(
        threshold=float(score[at]),
        f1=float(f1[0]),
        precision=tp / kept,
        recall=tp / positives if positives else 0.0,
        low=float(np.quantile(thresholds, tail)),
        high=float(np.quantile(thresholds, 1 - tail)),
        labelled=joined.height,
        positives=positives,
    )


def suggest_thresholds(
    models: Mapping[str, FrameLike], labels: FrameLike, **kwargs: float | int
) -> dict[str, ThresholdSuggestion]:
    """:func:`suggest_threshold` for each model (``{model step name: edges}``).

    A model none of whose edges is labelled is left out.
    """
    suggestions = {}
    for name, edges in models.items():
        try:
            suggestions[name] = suggest_threshold(edges, labels, **kwargs)  # type: ignore[arg-type]
        except MatchboxNoJudgements:
            continue
    return suggestions


def labels_within(labels: pl.DataFrame, universe: pl.Series) -> pl.DataFrame:
    """The labelled pairs both of whose ids are in ``universe`` (e.g. a resolver's leaves).

    Judgements are the store's, of every collection a user may read: pairs of other records
    would otherwise count as positives no model of this resolver could score.
    """
    ids = universe.cast(pl.Int64).unique().implode()
    return labels.filter(
        pl.col("left_id").cast(pl.Int64).is_in(ids) & pl.col("right_id").cast(pl.Int64).is_in(ids)
    )


@dataclass(frozen=True)
class ModelThreshold:
    """A model's threshold in use and its F1 there, beside the suggested threshold.

    ``suggestion`` is None when no labelled pair is among the model's edges.
    """

    model: str
    in_use: float
    f1_in_use: float
    suggestion: ThresholdSuggestion | None

    def row(self) -> dict[str, object]:
        """Flat figures (for JSON metadata): the suggestion's fields None without one."""
        found = self.suggestion
        return {
            "model": self.model,
            "in_use": self.in_use,
            "f1_in_use": self.f1_in_use,
            "suggested": None if found is None else found.threshold,
            "f1": None if found is None else found.f1,
            "precision": None if found is None else found.precision,
            "recall": None if found is None else found.recall,
            "low": None if found is None else found.low,
            "high": None if found is None else found.high,
            "labelled": None if found is None else found.labelled,
        }


def model_threshold(
    model: str,
    edges: FrameLike,
    labels: FrameLike,
    in_use: float,
    *,
    total_positives: float | None = None,
    **kwargs: float | int,
) -> ModelThreshold:
    """``model``'s F1 at the threshold ``in_use`` and :func:`suggest_threshold` on ``labels``."""
    try:
        found: ThresholdSuggestion | None = suggest_threshold(
            edges,
            labels,
            total_positives=total_positives,
            **kwargs,  # type: ignore[arg-type]
        )
    except MatchboxNoJudgements:
        found = None
    positives = total_positives if found is None else found.positives
    current = threshold_curve(edges, labels, thresholds=[in_use], total_positives=positives)
    f1 = float(current.get_column("f1")[0])  # 0 when no labelled edge is kept
    return ModelThreshold(model=model, in_use=in_use, f1_in_use=f1, suggestion=found)


__all__ = [
    "ModelThreshold",
    "ThresholdSuggestion",
    "labels_within",
    "model_threshold",
    "suggest_threshold",
    "suggest_thresholds",
]
