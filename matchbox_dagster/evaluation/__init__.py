"""Evaluation: every figure about a run's quality (no Dagster here).

:mod:`.metrics` pairwise precision/recall against judgements or ground truth, threshold curves;
:mod:`.entities` a resolver's lean per-key entity frame; :mod:`.quality` stored source keys,
model scores and entity sizes; :mod:`.resolver` a resolver's precision/recall (and curves per
model); :mod:`.churn` keys changing entity against the default run. The Dagster checks
(:mod:`matchbox_dagster.dagster.checks`) only turn these results into ``AssetCheckResult``.

>>> from matchbox_dagster.evaluation import score_against_truth
>>> import polars as pl
>>> score_against_truth(pl.DataFrame({"id": [1, 1, 2], "entity": ["a", "a", "a"]})).recall
0.3333333333333333
"""

from matchbox_dagster.evaluation.metrics import PairwiseScores as PairwiseScores
from matchbox_dagster.evaluation.metrics import best_threshold as best_threshold
from matchbox_dagster.evaluation.metrics import judged_pairs as judged_pairs
from matchbox_dagster.evaluation.metrics import (
    score_against_judgements as score_against_judgements,
)
from matchbox_dagster.evaluation.metrics import score_against_truth as score_against_truth
from matchbox_dagster.evaluation.metrics import threshold_curve as threshold_curve
from matchbox_dagster.evaluation.metrics import truth_labels as truth_labels

__all__ = [
    "PairwiseScores",
    "best_threshold",
    "judged_pairs",
    "score_against_judgements",
    "score_against_truth",
    "threshold_curve",
    "truth_labels",
]
