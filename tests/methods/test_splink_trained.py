"""Trained Splink parameters round trip, and the sketches that decide when they are reused."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from matchbox_dagster.methods.models.splink import SplinkModel
from matchbox_dagster.methods.sketch import (
    SKETCH_SIZE,
    id_sketch,
    ids_fingerprint,
    sketch_jaccard,
)
from tests.factories import pairs
from tests.methods.test_splink import febrl3_slice, febrl4_slice, model

# --- parameters round trip ----------------------------------------------------------------------


def test_fit_predict_parameters_predict_the_same_dedupe_scores():
    frame = febrl3_slice().drop("rec_id", "entity")
    trained_results, parameters = model().fit_predict(frame)
    assert parameters is not None
    # JSON-able (the store keeps them as JSON) and holding trained m and u probabilities.
    parameters = json.loads(json.dumps(parameters))
    levels = [lv for c in parameters["comparisons"] for lv in c["comparison_levels"]]
    assert any("m_probability" in lv and "u_probability" in lv for lv in levels)
    # Training then predicting equals predicting alone (same linker) and dedupe() alike.
    again = model().with_parameters(parameters)
    assert again.training == [] and again.threshold == 0.9
    before, after = pairs(trained_results), pairs(again.dedupe(frame))
    assert before, "no pairs"
    assert before.keys() == after.keys()
    assert all(abs(before[k] - after[k]) < 1e-5 for k in before)
    assert pairs(model().dedupe(frame)).keys() == before.keys()


def test_fit_predict_parameters_predict_the_same_link_scores():
    a, b = (f.drop("rec_id", "entity") for f in febrl4_slice())
    trained_results, parameters = model().fit_predict(a, b)
    assert parameters is not None
    before = pairs(trained_results)
    after = pairs(model().with_parameters(parameters).link(a, b))
    assert before and before.keys() == after.keys()
    assert all(abs(before[k] - after[k]) < 1e-5 for k in before)


def test_parameters_differ_from_untrained_ones():
    """The export holds what training estimated, not the settings it started from."""
    frame = febrl3_slice().drop("rec_id", "entity")
    _, parameters = model().fit_predict(frame)
    untrained = model(training=[]).trained(frame).splink_settings
    assert parameters is not None
    assert parameters["comparisons"] != untrained["comparisons"]


def test_empty_input_exports_no_parameters():
    frame = febrl3_slice().drop("rec_id", "entity").head(0)
    results, parameters = model().fit_predict(frame)
    assert results.num_rows == 0 and parameters is None


def test_training_settings_leave_out_threshold_and_retrain():
    base = model().training_settings()
    assert model(threshold=0.5, retrain=True).training_settings() == base
    assert model(engine="spark").training_settings() != base
    assert model(training=[]).training_settings() != base
    assert set(base) == {"splink_settings", "training", "engine"}


def test_retrain_is_a_stored_setting():
    rebuilt = SplinkModel.from_settings(json.loads(json.dumps(model(retrain=True).settings())))
    assert rebuilt.retrain is True
    assert model().retrain is False


# --- sketches and Jaccard -------------------------------------------------------------------------


def _ids(start: int, stop: int) -> pl.Series:
    # Spread like real leaf ids (63-bit content hashes), not consecutive integers.
    values = (np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> 1
    return pl.Series("id", values.astype(np.int64))


def test_sketch_is_the_bottom_k_of_distinct_ids_in_any_order():
    ids = _ids(0, 50_000)
    sketch = id_sketch([ids])
    assert len(sketch) == SKETCH_SIZE
    assert sketch == sorted(sketch)
    assert all(0 <= h < 2**63 for h in sketch)
    repeated = pl.concat([ids, ids.head(1000)]).sample(fraction=1.0, shuffle=True, seed=3)
    assert id_sketch([repeated]) == sketch
    assert ids_fingerprint([repeated]) == ids_fingerprint([ids])
    assert ids_fingerprint([ids.head(49_999)]) != ids_fingerprint([ids])


def test_small_sets_are_exact():
    a, b = _ids(0, 100), _ids(50, 150)  # 50 shared of 150
    assert sketch_jaccard(id_sketch([a]), id_sketch([b])) == pytest.approx(50 / 150)
    assert sketch_jaccard(id_sketch([a]), id_sketch([a])) == 1.0
    assert sketch_jaccard([], []) == 1.0
    assert sketch_jaccard(id_sketch([a]), []) == 0.0


@pytest.mark.parametrize("changed", [0.0, 0.01, 0.03, 0.2, 0.6])
def test_estimate_is_within_four_standard_errors(changed: float):
    n = 200_000
    shift = int(n * changed)
    a, b = _ids(0, n), _ids(shift, n + shift)  # ``shift`` ids gone, ``shift`` new
    truth = (n - shift) / (n + shift)
    estimate = sketch_jaccard(id_sketch([a]), id_sketch([b]))
    error = math.sqrt(truth * (1 - truth) / SKETCH_SIZE)
    assert abs(estimate - truth) <= max(4 * error, 1e-9), (estimate, truth)


def test_tolerance_separates_one_percent_from_ten_percent_changes():
    n = 100_000
    base = id_sketch([_ids(0, n)])
    assert sketch_jaccard(base, id_sketch([_ids(n // 100, n + n // 100)])) >= 0.95
    assert sketch_jaccard(base, id_sketch([_ids(n // 10, n + n // 10)])) < 0.95


def test_linker_sides_are_told_apart():
    """An id on the left and the same id on the right are two elements of the training data."""
    ids = _ids(0, 500)
    assert id_sketch([ids, ids]) != id_sketch([ids])
    assert sketch_jaccard(id_sketch([ids, ids]), id_sketch([ids, ids.head(0)])) == pytest.approx(
        0.5
    )
