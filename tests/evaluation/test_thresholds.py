"""Thresholds from judgements: the best-F1 threshold per model and its bootstrap interval."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from matchbox_dagster.common.errors import MatchboxNoJudgements
from matchbox_dagster.evaluation.metrics import best_threshold, threshold_curve
from matchbox_dagster.evaluation.thresholds import suggest_threshold, suggest_thresholds


def model(n: int, cut: float, noise: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Edges scored around ``cut`` (matches above, non-matches below, ``noise`` overlap)."""
    rng = np.random.default_rng(seed)
    match = rng.random(n) < 0.5
    score = np.clip(np.where(match, cut + 0.1, cut - 0.1) + rng.normal(0, noise, n), 0, 1)
    ids = np.arange(n)
    edges = pl.DataFrame({"left_id": ids, "right_id": ids + n, "score": score.round(3)})
    labels = pl.DataFrame({"left_id": ids + n, "right_id": ids, "match": match})  # any order
    return edges, labels


def test_the_threshold_maximises_f1_like_the_curve():
    edges, labels = model(400, 0.7, 0.05, seed=1)
    got = suggest_threshold(edges, labels, resamples=200)
    curve = threshold_curve(edges, labels)
    assert got.threshold == pytest.approx(best_threshold(curve))
    best = curve.filter(pl.col("threshold") == got.threshold).row(0, named=True)
    assert got.f1 == pytest.approx(best["f1"])
    assert got.precision == pytest.approx(best["precision"])
    assert got.recall == pytest.approx(best["recall"])
    assert got.low <= got.threshold <= got.high
    assert 0.55 < got.threshold < 0.8 and got.labelled == 400


def test_the_interval_narrows_with_more_judgements_and_is_seeded():
    few = suggest_threshold(*model(40, 0.6, 0.1, seed=2), resamples=300)
    many = suggest_threshold(*model(4000, 0.6, 0.1, seed=2), resamples=300)
    assert many.high - many.low < few.high - few.low
    assert suggest_threshold(*model(40, 0.6, 0.1, seed=2), resamples=300) == few


def test_unscored_positives_count_against_recall_and_models_are_separate():
    edges = pl.DataFrame({"left_id": [1, 2], "right_id": [11, 12], "score": [0.9, 0.8]})
    labels = pl.DataFrame(
        {"left_id": [1, 2, 3, 4], "right_id": [11, 12, 13, 14], "match": [1.0, 1.0, 1.0, 0.0]}
    )
    got = suggest_threshold(edges, labels, resamples=50)
    assert got.threshold == pytest.approx(0.8) and got.recall == pytest.approx(2 / 3)
    assert got.precision == 1.0
    other = pl.DataFrame({"left_id": [99], "right_id": [100], "score": [0.5]})
    both = suggest_thresholds({"a": edges, "b": other}, labels, resamples=50)
    assert list(both) == ["a"]  # b scored no labelled pair
    with pytest.raises(MatchboxNoJudgements):
        suggest_threshold(other, labels)
    with pytest.raises(ValueError, match="level"):
        suggest_threshold(edges, labels, level=1.0)


def test_total_positives_raise_the_recall_denominator():
    # Labels hold only the model's edges: 3 true (0.9, 0.7, 0.5) and 1 false (0.6).
    edges = pl.DataFrame(
        {"left_id": [1, 2, 3, 4], "right_id": [11, 12, 13, 14], "score": [0.9, 0.7, 0.6, 0.5]}
    )
    labels = edges.select("left_id", "right_id", match=pl.Series([1.0, 1.0, 0.0, 1.0]))
    # Positives 3: F1 at 0.7 = 4/5, at 0.5 = 6/7: the lowest threshold wins.
    assert suggest_threshold(edges, labels, resamples=50).threshold == pytest.approx(0.5)
    # 100 true pairs of which the model proposed 3: recall is tiny either way, and F1 is
    # 2·tp / (kept + 100): 4/102 at 0.7 < 6/104 at 0.5; precision no longer decides.
    many = suggest_threshold(edges, labels, resamples=50, total_positives=100)
    assert many.positives == 100 and many.recall == pytest.approx(3 / 100)
    assert many.f1 == pytest.approx(6 / 104)
    # Fewer total positives than the labels hold are ignored.
    assert suggest_threshold(edges, labels, resamples=50, total_positives=1).positives == 3


def test_many_labelled_pairs_resample_in_bounded_chunks():
    """200k labelled edges: weights go 20 resamples at a time (not 100), same best threshold."""
    import tracemalloc

    edges, labels = model(200_000, 0.7, 0.05, seed=4)
    tracemalloc.start()
    try:
        got = suggest_threshold(edges, labels, resamples=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20  # 100 resamples at once held about 460 MB
    assert got.threshold == pytest.approx(best_threshold(threshold_curve(edges, labels)))
    assert got.low <= got.threshold <= got.high and got.labelled == 200_000


def _per_pair_interval(edges: pl.DataFrame, labels: pl.DataFrame, resamples: int) -> np.ndarray:
    """The bootstrap by its definition: one Poisson(1) weight per labelled pair."""
    joined = labels.join(
        edges.rename({"left_id": "right_id", "right_id": "left_id"}), on=["left_id", "right_id"]
    ).sort("score", descending=True)
    match = joined.get_column("match").cast(pl.Float64).to_numpy()
    score = joined.get_column("score").to_numpy()
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    weights = np.random.default_rng(7).poisson(1.0, (resamples, len(match)))
    tp = np.cumsum(weights * match, axis=1)[:, ends]
    kept = np.cumsum(weights, axis=1)[:, ends]
    f1 = 2 * tp / (kept + (weights @ match)[:, None])
    return score[ends[np.argmax(f1, axis=1)]]


def test_resampling_groups_of_equal_pairs_is_the_per_pair_bootstrap():
    """Resampling each (score, label) group's count is the bootstrap over its pairs."""
    edges, labels = model(3000, 0.6, 0.12, seed=4)
    edges = edges.with_columns(pl.col("score").round(2))  # few distinct scores, big groups
    got = suggest_threshold(edges, labels, resamples=2000, seed=3)
    reference = _per_pair_interval(edges, labels, 2000)
    low, high = np.quantile(reference, [0.025, 0.975])
    assert (got.low, got.high) == pytest.approx((low, high), abs=0.011)  # within a score step
    assert got.low < got.high  # a real interval, not a point
