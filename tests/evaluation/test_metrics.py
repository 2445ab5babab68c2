"""Pairwise precision/recall against judgements and ground truth; threshold curves."""

from __future__ import annotations

from itertools import combinations

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchbox_dagster.common.arrow import SCHEMA_CLUSTER_EXPANSION, SCHEMA_JUDGEMENTS
from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxNoJudgements
from matchbox_dagster.evaluation import (
    PairwiseScores,
    best_threshold,
    judged_pairs,
    score_against_judgements,
    score_against_truth,
    threshold_curve,
    truth_labels,
)

SHOWN = 100  # cluster of leaves 1, 2, 3
A12 = 112  # cluster of leaves 1, 2


def judgement_tables() -> tuple[pa.Table, pa.Table]:
    """alice: {1,2} and {3}; bob: {1,2,3} all together; carol judged {4,5} apart."""
    judgements = pa.Table.from_pylist(
        [
            {"user_name": "alice", "endorsed": A12, "shown": SHOWN},
            {"user_name": "alice", "endorsed": 3, "shown": SHOWN},
            {"user_name": "bob", "endorsed": SHOWN, "shown": SHOWN},
            {"user_name": "carol", "endorsed": 4, "shown": 45},
            {"user_name": "carol", "endorsed": 5, "shown": 45},
        ],
        schema=SCHEMA_JUDGEMENTS,
    )
    expansion = pa.Table.from_pylist(
        [
            {"root": SHOWN, "leaves": [1, 2, 3]},
            {"root": A12, "leaves": [1, 2]},
            {"root": 3, "leaves": [3]},
            {"root": 45, "leaves": [4, 5]},
            {"root": 4, "leaves": [4]},
            {"root": 5, "leaves": [5]},
        ],
        schema=SCHEMA_CLUSTER_EXPANSION,
    )
    return judgements, expansion


def test_judged_pairs_share_of_endorsements() -> None:
    pairs = judged_pairs(*judgement_tables())
    assert pairs.to_dicts() == [
        {"left_id": 1, "right_id": 2, "match": 1.0, "judgements": 2},
        {"left_id": 1, "right_id": 3, "match": 0.5, "judgements": 2},
        {"left_id": 2, "right_id": 3, "match": 0.5, "judgements": 2},
        {"left_id": 4, "right_id": 5, "match": 0.0, "judgements": 1},
    ]


def test_score_against_judgements() -> None:
    judgements, expansion = judgement_tables()
    everything = pl.DataFrame({"root": [9, 9, 9, 9, 9], "leaf": [1, 2, 3, 4, 5]})
    scores = score_against_judgements(everything, judgements, expansion)
    assert (scores.tp, scores.fp, scores.fn, scores.pairs) == (2.0, 2.0, 0.0, 4)
    assert scores.precision == 0.5 and scores.recall == 1.0
    assert scores.f1 == pytest.approx(2 / 3)
    # A resolver keeping 1 and 2 together, everything else apart (as get_resolver_data gives).
    split = pa.table({"parent_id": [7, 7, 3], "child_id": [1, 2, 3]})
    scores = score_against_judgements(
        split, judgements, expansion, root="parent_id", leaf="child_id"
    )
    assert (scores.tp, scores.fp, scores.fn) == (1.0, 0.0, 1.0)
    assert scores.as_dict()["precision"] == 1.0 and scores.recall == 0.5
    # Only pairs within the universe count.
    scores = score_against_judgements(everything, judgements, expansion, universe=[4, 5])
    assert (scores.tp, scores.fp, scores.fn, scores.pairs) == (0.0, 1.0, 0.0, 1)
    with pytest.raises(MatchboxNoJudgements):
        score_against_judgements(everything, judgements, expansion, universe=[1, 4])
    with pytest.raises(MatchboxNoJudgements):
        score_against_judgements(everything, judgements.slice(0, 0), expansion)
    with pytest.raises(MatchboxInvalidData, match="lacks"):
        score_against_judgements(pl.DataFrame({"a": [1]}), judgements, expansion)


def test_zero_denominators_score_one() -> None:
    nothing = PairwiseScores(tp=0, fp=0, fn=0, pairs=0)
    assert (nothing.precision, nothing.recall, nothing.f1) == (1.0, 1.0, 1.0)
    missed = PairwiseScores(tp=0, fp=0, fn=3, pairs=3)
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)


def test_score_against_truth() -> None:
    records = pl.DataFrame(
        {
            "id": [1, 1, 1, 2, 2, 3, 4],
            "entity": ["a", "a", "b", "b", "b", "c", None],
        }
    )
    scores = score_against_truth(records)
    # claimed pairs: C(3,2) + C(2,2) = 4; true pairs: C(2,2) + C(3,2) = 4; right: 1 + 1.
    assert (scores.tp, scores.fp, scores.fn, scores.pairs) == (2.0, 2.0, 2.0, 4)
    assert score_against_truth(records.to_arrow()).recall == 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), min_size=0, max_size=30))
def test_score_against_truth_equals_counting_pairs(rows: list[tuple[int, int]]) -> None:
    frame = pl.DataFrame(rows, schema=["cluster", "truth"], orient="row")
    scores = score_against_truth(frame, cluster="cluster", truth="truth")
    pairs = list(combinations(rows, 2))
    claimed = sum(a[0] == b[0] for a, b in pairs)
    actual = sum(a[1] == b[1] for a, b in pairs)
    right = sum(a[0] == b[0] and a[1] == b[1] for a, b in pairs)
    assert (scores.tp, scores.fp, scores.fn) == (right, claimed - right, actual - right)


def test_threshold_curve_and_best_threshold() -> None:
    edges = pl.DataFrame(
        {
            "left_id": [1, 3, 2, 5, 8],
            "right_id": [2, 1, 3, 6, 9],
            "score": [0.9, 0.8, 0.7, 0.4, 0.95],
        }
    )
    labels = pl.DataFrame(
        {
            "left_id": [2, 1, 3, 5, 6],
            "right_id": [1, 3, 2, 6, 7],  # (6, 7) is a positive the model never scored
            "match": [True, False, True, True, True],
        }
    )
    curve = threshold_curve(edges, labels)
    assert curve.get_column("threshold").to_list() == pytest.approx([0.9, 0.8, 0.7, 0.4])
    assert curve.get_column("edges").to_list() == [1, 2, 3, 4]
    assert curve.get_column("tp").to_list() == [1, 1, 2, 3]
    assert curve.get_column("precision").to_list() == pytest.approx([1, 0.5, 2 / 3, 0.75])
    assert curve.get_column("recall").to_list() == pytest.approx([0.25, 0.25, 0.5, 0.75])
    assert best_threshold(curve) == pytest.approx(0.4)
    assert best_threshold(curve, "precision") == pytest.approx(0.9)
    grid = threshold_curve(edges.to_arrow(), labels, thresholds=[0.0, 0.5, 1.0],
                           total_positives=3)  # fmt: skip
    assert grid.get_column("threshold").to_list() == [1.0, 0.5, 0.0]
    assert grid.get_column("edges").to_list() == [0, 3, 4]
    assert grid.get_column("precision").to_list() == pytest.approx([1.0, 2 / 3, 0.75])
    assert grid.get_column("recall").to_list() == pytest.approx([0, 2 / 3, 1.0])
    with pytest.raises(MatchboxNoJudgements):
        best_threshold(threshold_curve(edges, labels.filter(pl.col("left_id") > 100)))


def test_threshold_curve_with_judged_pairs() -> None:
    labels = judged_pairs(*judgement_tables())
    edges = pl.DataFrame({"left_id": [1, 1, 4], "right_id": [2, 3, 5], "score": [0.9, 0.6, 0.3]})
    curve = threshold_curve(edges, labels)
    # (1,2) positive; (1,3) half; (4,5) negative. Positive weight in labels: 1 + .5 + .5 = 2.
    assert curve.get_column("tp").to_list() == [1.0, 1.5, 1.5]
    assert curve.get_column("fp").to_list() == [0.0, 0.5, 1.5]
    assert curve.get_column("recall").to_list() == pytest.approx([0.5, 0.75, 0.75])


def test_truth_labels() -> None:
    edges = pl.DataFrame({"left_id": [1, 2, 10], "right_id": [2, 3, 3], "score": [0.9, 0.5, 0.7]})
    truth = pl.DataFrame(
        {
            "id": [1, 2, 3, 10, 10],  # 10 is a cluster of two records
            "entity": ["a", "a", "b", "a", "b"],
        }
    )
    labels = truth_labels(edges, truth)
    assert labels.to_dicts() == [
        {"left_id": 1, "right_id": 2, "match": 1.0},
        {"left_id": 2, "right_id": 3, "match": 0.0},
        {"left_id": 3, "right_id": 10, "match": 0.5},
    ]
    curve = threshold_curve(edges, labels)
    assert curve.get_column("tp").to_list() == [1.0, 1.5, 1.5]
    missing = truth_labels(edges, truth.filter(pl.col("id") != 3))
    assert missing.height == 1
