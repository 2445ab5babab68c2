"""The preset's unique-name pairs, its tokens comparison and its address blocking."""

from __future__ import annotations

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.methods.models.organisation import (
    TOKENS_COMPARISON,
    OrganisationLinker,
    unique_name_pairs,
)
from matchbox_dagster.methods.organisations import typo_variants

ROLES = {"name": "n", "postcode": "p", "town": "t", "address": "s", "company_number": "c"}


def _prepared(ids: list[int], names: list[str]) -> pl.DataFrame:
    model = OrganisationLinker(roles={"name": "n"})
    return model.prepare(pl.DataFrame({"id": ids, "n": names}))


def test_unique_names_pair_only_unmatched_records_whose_name_no_other_holds():
    left = _prepared(
        [1, 2, 3, 4, 5, 6],
        ["Acme Ltd", "Bolt Ltd", "Bolt Limited", "Crane Ltd", "Delta Ltd", "Eagle Holdings"],
    )
    right = _prepared([11, 12, 14, 15, 16, 7], ["ACME", "Bolt", "Crane", "Delta", "Eagle", "Fox"])
    scored = pl.DataFrame({"left_id": [4], "right_id": [99], "score": [0.8]})
    got = {tuple(r) for r in unique_name_pairs(left, right, scored).rows()}
    # Bolt is held twice on the left; Crane's left record is already scored; Eagle Holdings
    # and Eagle differ by their tokens; Fox has no partner.
    assert got == {(1, 11), (5, 15)}


def test_unique_names_in_one_register_pair_exactly_two_records():
    rows = _prepared(
        [1, 2, 3, 4, 5, 6], ["Acme Ltd", "ACME LIMITED", "Bolt", "Bolt", "Eagle", "Eagle"]
    )
    scored = pl.DataFrame({"left_id": [5], "right_id": [9], "score": [0.7]})
    got = {tuple(r) for r in unique_name_pairs(rows, None, scored).rows()}
    assert got == {(1, 2), (3, 4)}  # Eagle 5 is scored already: 5-6 is no pair


def test_identical_rows_sharing_an_id_are_no_pair():
    left, right = _prepared([1], ["Acme Ltd"]), _prepared([1], ["Acme"])
    empty = pl.DataFrame(schema={"left_id": pl.Int64, "right_id": pl.Int64})
    assert unique_name_pairs(left, right, empty).height == 0


def test_the_preset_pairs_a_moved_firm_unless_numbers_conflict():
    firms = ["Acme Widgets", "Bolt Gears", "Crane Hoists", "Delta Pumps"]
    n = len(firms)
    left = pl.DataFrame(
        {
            "id": list(range(1, n + 1)),
            "n": [f"{f} Ltd" for f in firms],
            "p": [f"AB{i} 1CD" for i in range(n)],
            "t": ["Leeds"] * n,
            "s": [f"{i} High Street" for i in range(n)],
            "c": [f"0000000{i}" for i in range(n)],
        }
    )
    # The same firms elsewhere (moved): Bolt with another company number, Delta matched.
    right = left.with_columns(
        (pl.col("id") + 100).alias("id"),
        pl.col("p").str.replace("AB", "ZY"),
        pl.lit("York").alias("t"),
        pl.when(pl.col("id") == 2).then(pl.lit("99999999")).otherwise(None).alias("c"),
    )
    model = OrganisationLinker(roles=ROLES)
    a, b = model.prepare(left), model.prepare(right)
    scored = ModelResults(
        pa.table({"left_id": [4], "right_id": [104], "score": [0.97]}, schema=SCHEMA_MODEL_EDGES)
    )
    edges = pl.DataFrame(pl.from_arrow(model._finish(scored, a, b).table))
    got = {(x, y): s for x, y, s in edges.rows()}
    assert got[(1, 101)] == got[(3, 103)] == pytest.approx(0.9)  # unique names, unmatched
    assert got[(2, 102)] == 0  # two company numbers: a conflict, not a unique-name pair
    assert got[(4, 104)] == pytest.approx(0.97)  # scored by Splink: kept as it is
    assert len(got) == 4
    off = OrganisationLinker(roles=ROLES, unique_names=None)._finish(scored, a, b)
    assert pl.DataFrame(pl.from_arrow(off.table)).filter(pl.col("score") > 0).height == 1


def test_tokens_on_one_side_only_disagree():
    levels = TOKENS_COMPARISON["comparison_levels"]
    cases = [
        ("acme", None, None),
        ("acme", "holdings", None),
        ("acme", None, "holdings"),
        ("acme", "group", "group"),
        ("acme", "group", "trading"),
        (None, None, None),
    ]
    con = duckdb.connect()
    got = []
    for core, tl, tr in cases:
        for level in levels:
            sql = level["sql_condition"]
            if sql == "ELSE":
                got.append(level["label_for_charts"])
                break
            hit = con.execute(
                f"SELECT {sql} FROM (SELECT ?::VARCHAR AS core_l, ?::VARCHAR AS core_r, "
                "?::VARCHAR AS tokens_l, ?::VARCHAR AS tokens_r)",
                [core, core, tl, tr],
            ).fetchone()[0]
            if hit:
                got.append(level["label_for_charts"])
                break
    same, other = levels[1]["label_for_charts"], levels[2]["label_for_charts"]
    assert got == [same, other, other, same, other, levels[0]["label_for_charts"]]


def test_a_typo_or_a_missing_place_still_blocks_on_the_address():
    rules = (
        OrganisationLinker(roles=ROLES)
        .splink()
        .splink_settings["blocking_rules_to_generate_predictions"]
    )
    assert "l.address = r.address and substr(l.core, 1, 4) = substr(r.core, 1, 4)" in rules


def test_distinguishing_words_misspelt_by_one_letter_are_read_as_the_word():
    variants = typo_variants(["holdings", "trading", "group"], avoid={"tradng"})
    assert variants["holdngs"] == variants["hodlings"] == "holdings"  # dropped, swapped
    assert variants["tradig"] == "trading"
    assert "tradng" not in variants  # avoided
    assert "group" not in variants.values()  # shorter than 7 letters
    assert "rading" not in variants and "grading" not in variants  # first letter, replaced
    assert "holding" not in variants or variants["holding"] == "holdings"
    assert "capita" not in typo_variants(["capital"])  # a word of its own
    model = OrganisationLinker(roles={"name": "n"})
    rows = model.prepare(
        pl.DataFrame({"id": [1, 2, 3], "n": ["Acme Holdngs Ltd", "ACME TRDAING", "Acme Grading"]})
    )
    assert rows.select("core", "tokens").rows() == [
        ("acme", "holdings"),
        ("acme", "trading"),
        ("acme grading", None),
    ]
    plain = model.model_copy(update={"typos": False})
    off = plain.prepare(pl.DataFrame({"id": [1], "n": ["Acme Holdngs Ltd"]}))
    assert off.select("core", "tokens").rows() == [("acme holdngs", None)]
