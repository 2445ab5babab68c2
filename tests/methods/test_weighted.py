"""WeightedRules: weighted share of exactly agreeing fields, blocking, dedupe and link."""

from __future__ import annotations

import itertools

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods import WeightedRules, build_model
from matchbox_dagster.methods.models import model_class
from tests.factories import f32, pairs

PEOPLE = pl.DataFrame(
    {
        "id": [1, 2, 3, 4, 5, 6, 6],
        "surname": ["smith", "smith", "smith", "jones", "", None, "brown"],
        "dob": ["1990", "1990", "1985", "1990", "1990", "1990", "2001"],
        "postcode": ["AB1", "AB1", "AB1", "ZZ9", "AB1", "AB1", "CD2"],
    }
)
WEIGHTS = {"surname": 2.0, "dob": 2.0, "postcode": 1.0}


def test_scores_are_weighted_share_of_agreements():
    model = WeightedRules(weights=WEIGHTS, threshold=0.0)
    got = pairs(model.dedupe(PEOPLE))
    assert got[(1, 2)] == 1.0  # all three fields
    assert got[(1, 3)] == f32(3 / 5)  # surname + postcode
    assert got[(1, 4)] == f32(2 / 5)  # dob only
    assert got[(1, 5)] == f32(3 / 5)  # dob + postcode; "" never agrees
    assert got[(1, 6)] == f32(3 / 5)  # id 6's first row: null surname, dob + postcode
    assert got[(5, 6)] == f32(3 / 5)  # "" and null never agree with each other either
    assert all(0 <= s <= 1 for s in got.values())


def test_threshold_is_inclusive():
    model = WeightedRules(weights=WEIGHTS, threshold=0.6)
    got = pairs(model.dedupe(PEOPLE))
    assert (1, 3) in got and got[(1, 3)] == f32(0.6)
    assert (1, 4) not in got
    # Weights summing to a float with rounding error still reach the threshold.
    odd = WeightedRules(weights={"surname": 0.1, "dob": 0.2}, threshold=0.1 / 0.3)
    assert (1, 3) in pairs(odd.dedupe(PEOPLE))


def test_dedupe_pairs_canonical_and_without_self_pairs():
    frame = pl.DataFrame(
        {"id": [9, 9, 3, 7], "surname": ["lee", "lee", "lee", "lee"], "dob": ["1", "1", "2", "1"]}
    )
    got = pairs(WeightedRules(weights={"surname": 1, "dob": 1}, threshold=0).dedupe(frame))
    assert got == {(3, 7): 0.5, (3, 9): 0.5, (7, 9): 1.0}
    assert all(left < right for left, right in got)


def test_several_rows_of_an_id_keep_the_best_score():
    frame = pl.DataFrame({"id": [1, 1, 2], "surname": ["lee", "li", "li"], "dob": ["1", "2", "2"]})
    got = pairs(WeightedRules(weights={"surname": 1, "dob": 1}, threshold=0).dedupe(frame))
    assert got == {(1, 2): 1.0}


def test_blocking_limits_candidates():
    # Blocking on postcode only: (1, 4) agree on dob but not postcode, so never compared.
    model = WeightedRules(weights=WEIGHTS, threshold=0.0, blocking=[["postcode"]])
    got = pairs(model.dedupe(PEOPLE))
    assert (1, 4) not in got
    assert (1, 3) in got
    # A compound rule needs every field equal.
    strict = WeightedRules(weights=WEIGHTS, threshold=0.0, blocking=[["surname", "dob"]])
    assert set(pairs(strict.dedupe(PEOPLE))) == {(1, 2)}


def test_blocking_only_fields_are_read_but_not_scored():
    frame = PEOPLE.with_columns(pl.lit("x").alias("region"))
    model = WeightedRules(weights={"surname": 1}, threshold=0.0, blocking=[["region"]])
    assert model.fields == ["surname", "region"]
    got = pairs(model.dedupe(frame))
    assert got[(1, 2)] == 1.0 and got[(1, 4)] == 0.0  # compared, but only surname counts
    with pytest.raises(MatchboxInvalidData, match="region"):
        model.dedupe(PEOPLE)


def test_link_orients_pairs_left_to_right():
    left = pl.DataFrame({"id": [10, 11], "surname": ["smith", "jones"], "dob": [1990, 1985]})
    right = pl.DataFrame(
        {"id": [1, 2, 11], "surname": ["smith", "smith", "jones"], "dob": ["1990", "1991", "1985"]}
    )
    model = WeightedRules(weights={"surname": 1, "dob": 3}, threshold=0.2)
    got = pairs(model.link(left, right))
    # Integer and string dobs compare as text; id 11 on both sides is the same leaf: dropped.
    assert got == {(10, 1): 1.0, (10, 2): 0.25}
    assert model.link(left, right).table.schema == SCHEMA_MODEL_EDGES


def test_no_candidates_gives_empty_results():
    frame = pl.DataFrame({"id": [1, 2], "surname": ["a", "b"]})
    results = WeightedRules(weights={"surname": 1}, threshold=0).dedupe(frame)
    assert results.num_rows == 0
    assert results.table.schema == SCHEMA_MODEL_EDGES


def test_settings_round_trip_with_default_blocking():
    model = WeightedRules(weights=WEIGHTS, threshold=0.5)
    settings = model.settings()
    assert settings == {
        "weights": WEIGHTS,
        "threshold": 0.5,
        "blocking": [["surname"], ["dob"], ["postcode"]],
    }
    assert build_model("WeightedRules", settings) == model
    assert model_class("WeightedRules") is WeightedRules


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": {}, "threshold": 0.5},
        {"weights": {"a": 0}, "threshold": 0.5},
        {"weights": {"a": -1}, "threshold": 0.5},
        {"weights": {"a": 1}, "threshold": 1.5},
        {"weights": {"a": 1}, "threshold": 0.5, "blocking": [[]]},
        {"weights": {"a": 1}, "threshold": 0.5, "unknown": 1},
    ],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValidationError):
        WeightedRules(**kwargs)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),
            st.sampled_from(["a", "b", "", None]),
            st.sampled_from(["x", "y", None]),
        ),
        min_size=0,
        max_size=12,
    )
)
def test_matches_a_brute_force_reference(rows):
    frame = pl.DataFrame(
        rows, schema={"id": pl.Int64, "f": pl.String, "g": pl.String}, orient="row"
    )
    weights = {"f": 1.0, "g": 3.0}
    model = WeightedRules(weights=weights, threshold=0.25)
    expected: dict[tuple[int, int], float] = {}
    for (i, *a), (j, *b) in itertools.combinations(rows, 2):
        if i == j:
            continue
        agree = [x is not None and x != "" and x == y for x, y in zip(a, b, strict=True)]
        if not any(agree):
            continue  # no blocking rule brings them together
        score = f32((agree[0] * 1.0 + agree[1] * 3.0) / 4.0)
        if score >= 0.25:
            key = (min(i, j), max(i, j))
            expected[key] = max(expected.get(key, 0.0), score)
    assert pairs(model.dedupe(frame)) == expected
