"""ExactMatch, DeterministicRules and the shared model helpers (finish_pairs, the registry)."""

from __future__ import annotations

import itertools
from unittest.mock import patch

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.models import (
    DeterministicRules,
    ExactMatch,
    Model,
    build_model,
    deterministic,
    finish_pairs,
    model_class,
)
from tests.factories import f32, pairs

PEOPLE = pl.DataFrame(
    {
        "id": [5, 1, 3, 2, 4, 6, 7, 7],
        "name": ["ann", "ann", "bob", "", None, "", "cy", "cy"],
        "dob": ["1990", "1990", "1990", "2000", "2000", "2000", "1985", "1985"],
        "nino": ["A1", None, "A1", "", "", None, "C3", "C3"],
    }
)


# --- ExactMatch ----------------------------------------------------------------------------


def test_exact_dedupe_canonical_pairs_without_self_pairs():
    results = ExactMatch(fields=["name", "dob"]).dedupe(PEOPLE)
    # ann/1990 are ids 5 and 1; id 7 has two identical rows but cannot pair with itself.
    assert pairs(results) == {(1, 5): 1.0}
    assert results.table.schema == SCHEMA_MODEL_EDGES


def test_exact_empty_strings_and_nulls_never_match():
    # ids 2, 4, 6 agree on dob but their names are "", None, "": no pair.
    assert pairs(ExactMatch(fields=["name"]).dedupe(PEOPLE)) == {(1, 5): 1.0}
    # nino: "" for 2 and 4, None for 1 and 6; only the real "A1" pairs.
    assert pairs(ExactMatch(fields=["nino"]).dedupe(PEOPLE)) == {(3, 5): 1.0}


def test_exact_dedupe_every_pair_of_a_block():
    frame = pl.DataFrame({"id": [9, 3, 6, 1], "x": ["v", "v", "v", "v"]})
    assert pairs(ExactMatch(fields=["x"]).dedupe(frame)) == {
        (a, b): 1.0 for a, b in itertools.combinations([1, 3, 6, 9], 2)
    }


def test_exact_link_keeps_directions():
    left = pl.DataFrame({"id": [10, 20, 30], "name": ["ann", "bob", ""]})
    right = pl.DataFrame({"id": [1, 2, 3, 20], "name": ["bob", "ann", "", "zed"]})
    results = ExactMatch(fields=["name"]).link(left, right)
    # left_id from the left input, right_id from the right one, even when left_id > right_id.
    assert pairs(results) == {(10, 2): 1.0, (20, 1): 1.0}


def test_exact_link_both_directions_are_distinct_pairs():
    left = pl.DataFrame({"id": [1, 2], "name": ["ann", "bob"]})
    right = pl.DataFrame({"id": [2, 1], "name": ["ann", "bob"]})
    assert pairs(ExactMatch(fields=["name"]).link(left, right)) == {(1, 2): 1.0, (2, 1): 1.0}


def test_exact_link_drops_the_same_cluster_on_both_sides():
    """Identical rows share a leaf across sources: an id never links to itself."""
    left = pl.DataFrame({"id": [1, 2], "name": ["ann", "bob"]})
    right = pl.DataFrame({"id": [1, 3], "name": ["ann", "bob"]})
    assert pairs(ExactMatch(fields=["name"]).link(left, right)) == {(2, 3): 1.0}


def test_exact_link_across_differently_typed_fields():
    left = pl.DataFrame({"id": [1, 2], "age": [25, 30]})
    right = pl.DataFrame({"id": [10, 20], "age": ["25", "31"]})  # e.g. read from CSV
    assert pairs(ExactMatch(fields=["age"]).link(left, right)) == {(1, 10): 1.0}
    left32 = left.with_columns(pl.col("age").cast(pl.Int32))
    right64 = pl.DataFrame({"id": [10, 20], "age": [30, 31]})
    assert pairs(ExactMatch(fields=["age"]).link(left32, right64)) == {(2, 10): 1.0}


def test_sliced_joins_across_differently_typed_fields():
    """Big inputs are joined in hash slices; types that hash differently are joined whole."""
    left = pl.DataFrame({"id": list(range(1, 41)), "age": [i % 10 for i in range(40)]})
    as_text = pl.DataFrame({"id": [100, 200], "age": ["3", "11"]})
    as_float = pl.DataFrame({"id": [100, 200], "age": [3.0, 11.0]})
    with patch.object(deterministic, "CHUNK_ROWS", 4):
        model = ExactMatch(fields=["age"])
        expected = {(i, 100): 1.0 for i in range(1, 41) if (i - 1) % 10 == 3}
        assert pairs(model.link(left, as_text)) == expected
        assert pairs(model.link(left, as_float)) == expected
        assert len(pairs(model.dedupe(left))) == 10 * 6  # ten ages, four ids each: C(4,2) pairs


def test_sliced_joins_of_categorical_fields_with_different_categories():
    left = pl.DataFrame({"id": list(range(1, 31)), "town": [f"t{i % 6}" for i in range(30)]})
    right = pl.DataFrame({"id": [100, 200], "town": ["t5", "zz"]})
    left = left.with_columns(pl.col("town").cast(pl.Enum([f"t{i}" for i in range(6)])))
    right = right.with_columns(pl.col("town").cast(pl.Enum(["zz", "t5"])))
    expected = {(i, 100): 1.0 for i in range(1, 31) if (i - 1) % 6 == 5}
    with patch.object(deterministic, "CHUNK_ROWS", 4):
        assert pairs(ExactMatch(fields=["town"]).link(left, right)) == expected


def test_exact_non_string_fields():
    frame = pl.DataFrame({"id": [1, 2, 3], "n": [0, 0, None]})
    assert pairs(ExactMatch(fields=["n"]).dedupe(frame)) == {(1, 2): 1.0}


def test_exact_no_pairs():
    frame = pl.DataFrame({"id": [1, 2], "name": ["a", "b"]})
    results = ExactMatch(fields=["name"]).dedupe(frame)
    assert results.table.num_rows == 0
    assert results.table.schema == SCHEMA_MODEL_EDGES
    empty = frame.head(0)
    assert ExactMatch(fields=["name"]).dedupe(empty).table.num_rows == 0
    assert ExactMatch(fields=["name"]).link(empty, frame).table.num_rows == 0


def test_exact_missing_columns_named():
    with pytest.raises(MatchboxInvalidData, match=r"\['surname'\]"):
        ExactMatch(fields=["name", "surname"]).dedupe(PEOPLE)
    with pytest.raises(MatchboxInvalidData, match=r"right input lacks column\(s\) \['id'\]"):
        ExactMatch(fields=["name"]).link(PEOPLE, PEOPLE.drop("id"))


def test_exact_needs_a_field():
    with pytest.raises(ValidationError):
        ExactMatch(fields=[])


# --- DeterministicRules --------------------------------------------------------------------

RULES = DeterministicRules(
    rules=[
        {"fields": ["nino"], "score": 1.0},
        {"fields": ["name", "dob"], "score": 0.9},
        {"fields": ["dob"], "score": 0.2},
    ]
)


def test_rules_dedupe_keeps_the_best_score():
    got = pairs(RULES.dedupe(PEOPLE))
    expected = {
        (3, 5): 1.0,  # nino A1 (and dob 1990 at 0.2)
        (1, 5): f32(0.9),  # name + dob (and dob at 0.2)
        (1, 3): f32(0.2),  # dob 1990 only
        (2, 4): f32(0.2),
        (2, 6): f32(0.2),
        (4, 6): f32(0.2),
    }
    assert got == expected
    assert all(left < right for left, right in got)


def test_rules_link_keeps_directions_and_best_score():
    left = PEOPLE.filter(pl.col("id").is_in([5, 2]))
    right = PEOPLE.filter(pl.col("id").is_in([1, 3]))
    assert pairs(RULES.link(left, right)) == {(5, 3): 1.0, (5, 1): f32(0.9)}
    assert pairs(RULES.link(right, left)) == {(3, 5): 1.0, (1, 5): f32(0.9)}


def test_rules_shorthand_and_fields():
    model = DeterministicRules(rules=[["nino"], ("name", "dob")])
    assert [r.score for r in model.rules] == [1.0, 1.0]
    assert model.fields == ["nino", "name", "dob"]


@pytest.mark.parametrize(
    "rules",
    [
        [],
        [{"fields": [], "score": 1}],
        [{"fields": ["a"], "score": 1.5}],
        [{"fields": ["a"], "x": 1}],
    ],
)
def test_rules_validation(rules):
    with pytest.raises(ValidationError):
        DeterministicRules(rules=rules)


def test_rules_missing_column_named():
    with pytest.raises(MatchboxInvalidData, match=r"\['nino'\]"):
        RULES.dedupe(PEOPLE.drop("nino"))


# A brute-force reference: every pair of rows, every rule.

VALUES = st.sampled_from(["a", "b", "", None])
ROWS = st.lists(st.tuples(st.integers(0, 9), VALUES, VALUES, VALUES), max_size=14)
RULE_SETS = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3, unique=True),
        st.sampled_from([0.1, 0.5, 0.75, 1.0]),
    ),
    min_size=1,
    max_size=3,
)


def frame_of(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["id", "x", "y", "z"], orient="row").with_columns(
        pl.col("id").cast(pl.Int64), pl.col("x", "y", "z").cast(pl.String)
    )


def reference(left_rows, right_rows, rules, dedupe: bool) -> dict[tuple[int, int], float]:
    names = {"x": 1, "y": 2, "z": 3}
    best: dict[tuple[int, int], float] = {}
    for a in left_rows:
        for b in right_rows:
            if a[0] == b[0]:
                continue
            for fields, score in rules:
                if all(
                    a[names[f]] not in (None, "") and a[names[f]] == b[names[f]] for f in fields
                ):
                    key = (min(a[0], b[0]), max(a[0], b[0])) if dedupe else (a[0], b[0])
                    best[key] = max(best.get(key, 0.0), f32(score))
    return best


@settings(max_examples=150, deadline=None)
@given(rows=ROWS, rules=RULE_SETS)
def test_rules_dedupe_matches_reference(rows, rules):
    model = DeterministicRules(rules=[{"fields": f, "score": s} for f, s in rules])
    assert pairs(model.dedupe(frame_of(rows))) == reference(rows, rows, rules, dedupe=True)


@settings(max_examples=150, deadline=None)
@given(left=ROWS, right=ROWS, rules=RULE_SETS)
def test_rules_link_matches_reference(left, right, rules):
    model = DeterministicRules(rules=[{"fields": f, "score": s} for f, s in rules])
    got = pairs(model.link(frame_of(left), frame_of(right)))
    assert got == reference(left, right, rules, dedupe=False)


@settings(max_examples=100, deadline=None)
@given(left=ROWS, right=ROWS, rules=RULE_SETS, chunk=st.integers(1, 5))
def test_rules_in_hash_slices_match_reference(left, right, rules, chunk):
    """Joining in slices (tiny ``CHUNK_ROWS``) finds exactly the pairs of a whole join."""
    model = DeterministicRules(rules=[{"fields": f, "score": s} for f, s in rules])
    with patch.object(deterministic, "CHUNK_ROWS", chunk):
        deduped = pairs(model.dedupe(frame_of(left)))
        linked = pairs(model.link(frame_of(left), frame_of(right)))
    assert deduped == reference(left, left, rules, dedupe=True)
    assert linked == reference(left, right, rules, dedupe=False)


# --- settings and the registry -------------------------------------------------------------


@pytest.mark.parametrize("model", [ExactMatch(fields=["name", "dob"]), RULES])
def test_settings_round_trip_through_build_model(model: Model):
    stored = model.settings()
    rebuilt = build_model(model.model_class, stored)
    assert rebuilt == model
    assert type(rebuilt) is type(model)
    assert rebuilt.settings() == stored
    assert pairs(rebuilt.dedupe(PEOPLE)) == pairs(model.dedupe(PEOPLE))


def test_stored_settings_are_plain_json():
    assert ExactMatch(fields=["a"]).settings() == {"fields": ["a"]}
    assert DeterministicRules(rules=[["a"], {"fields": ["b", "c"], "score": 0.5}]).settings() == {
        "rules": [{"fields": ["a"], "score": 1.0}, {"fields": ["b", "c"], "score": 0.5}]
    }


def test_registry():
    assert model_class("ExactMatch") is ExactMatch
    assert model_class("DeterministicRules") is DeterministicRules


def test_unknown_model_class():
    with pytest.raises(MatchboxInvalidData, match=r"Unknown model class 'NoSuchModel'.*ExactMatch"):
        build_model("NoSuchModel", {})


def test_bad_settings_refused():
    with pytest.raises(ValidationError):
        build_model("ExactMatch", {"fields": ["a"], "extra": 1})
    with pytest.raises(ValidationError):
        build_model("DeterministicRules", {"rules": "nino"})


# --- finish_pairs --------------------------------------------------------------------------


def test_finish_pairs_dedupe():
    raw = pl.DataFrame(
        {
            "left_id": [3, 1, 2, 2, 5, 4],
            "right_id": [1, 3, 2, 4, 4, 5],
            "score": [0.4, 0.7, 1.0, 1.3, -0.1, 0.2],
        }
    )
    got = pairs(finish_pairs(raw, dedupe=True))
    # (3, 1) and (1, 3) merge with the best score; (2, 2) is dropped; scores are clipped.
    assert got == {(1, 3): f32(0.7), (2, 4): 1.0, (4, 5): f32(0.2)}


def test_finish_pairs_link_keeps_both_directions():
    raw = pl.DataFrame(
        {"left_id": [3, 1, 1, 2], "right_id": [1, 3, 3, 2], "score": [0.4, 0.5, 0.7, 1.0]}
    )
    assert pairs(finish_pairs(raw, dedupe=False)) == {(3, 1): f32(0.4), (1, 3): f32(0.7)}


def test_finish_pairs_empty_and_only_self_pairs():
    for raw in (
        pl.DataFrame(schema={"left_id": pl.Int64, "right_id": pl.Int64, "score": pl.Float64}),
        pl.DataFrame({"left_id": [1, 2], "right_id": [1, 2], "score": [1.0, 1.0]}),
    ):
        for dedupe in (True, False):
            results = finish_pairs(raw, dedupe=dedupe)
            assert results.table.num_rows == 0
            assert results.table.schema == SCHEMA_MODEL_EDGES


def test_finish_pairs_casts_ids_and_scores():
    raw = pl.DataFrame(
        {"left_id": [1], "right_id": [2], "score": [1]},
        schema={"left_id": pl.UInt32, "right_id": pl.Int16, "score": pl.Int8},
    )
    results = finish_pairs(raw, dedupe=True)
    assert results.table.schema == SCHEMA_MODEL_EDGES
    assert pairs(results) == {(1, 2): 1.0}
