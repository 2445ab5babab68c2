"""Organisation-name, postcode and company-number cleaning building blocks."""

from __future__ import annotations

import polars as pl
import pytest

from matchbox_dagster.methods.organisations import (
    address_clean,
    cleaning_expr,
    company_number_clean,
    org_legal_form,
    org_name,
    org_name_core,
    org_name_tokens,
    postcode_area,
    postcode_clean,
    postcode_district,
    postcode_sector,
    town_clean,
)


def apply(expr: pl.Expr, values: list) -> list:
    return pl.DataFrame({"x": values}, schema={"x": pl.String}).select(expr).to_series().to_list()


def test_legal_forms_ampersand_the_and_punctuation_normalise_alike():
    variants = [
        "The Acme Widgets Limited",
        "ACME WIDGETS LTD.",
        "Acme Widgets Ltd",
        "acme-widgets limited",
    ]
    assert set(apply(org_name("x"), variants)) == {"acme widgets ltd"}
    plc = ["Smith & Jones PLC", "Smith and Jones Public Limited Company"]
    assert apply(org_name("x"), plc) == ["smith and jones plc"] * 2
    assert apply(org_name("x"), ["Brown & Co", "Brown and Company"]) == ["brown co"] * 2
    assert apply(org_name("x"), ["O'Neill's Bar LLP"]) == ["oneills bar llp"]
    assert apply(org_name("x"), [None, "", "  ..  "]) == [None, None, None]


def test_abbreviations_expand_from_a_configurable_dictionary():
    assert apply(org_name("x"), ["Acme Intl Mfg Ltd"]) == ["acme international manufacturing ltd"]
    custom = org_name("x", abbreviations={"wdgt": "widgets"})
    assert apply(custom, ["Acme Wdgt Intl"]) == ["acme widgets intl"]


def test_adjacent_words_are_mapped_and_a_word_mapped_to_nothing_goes():
    assert apply(org_name("x"), ["Intl Mfg Eng Ltd Ltd"]) == [
        "international manufacturing engineering ltd ltd"
    ]
    assert apply(address_clean("x"), ["Unit 1, Ind. Est.", "No 5 The Sq", "st st", "No", None]) == [
        "unit 1 industrial estate",
        "5 the square",
        "street street",
        None,
        None,
    ]
    assert apply(address_clean("x", words={"rd": "road"}), ["1 Mill Rd St"]) == ["1 mill road st"]


def test_core_tokens_and_legal_form_split_the_name():
    names = ["The Acme Holdings Limited", "Acme Trading & Services Ltd", "Acme", "Holdings Ltd"]
    assert apply(org_name_core("x"), names) == ["acme", "acme", "acme", "holdings ltd"]
    assert apply(org_name_tokens("x"), names) == [
        "holdings",
        "services trading",
        None,
        "holdings",
    ]
    assert apply(org_legal_form("x"), names) == ["ltd", "ltd", None, "ltd"]
    own = org_name_core("x", distinguishing={"widgets"})
    assert apply(own, ["Acme Widgets Holdings Ltd"]) == ["acme holdings"]


def test_postcodes_and_districts():
    raw = ["sw1a1aa", " m1 1ae", "EC1A-1BB", "B338TH", "not a postcode", None, "12345"]
    assert apply(postcode_clean("x"), raw) == [
        "SW1A 1AA",
        "M1 1AE",
        "EC1A 1BB",
        "B33 8TH",
        None,
        None,
        None,
    ]
    assert apply(postcode_district("x"), raw) == ["SW1A", "M1", "EC1A", "B33", None, None, None]
    assert apply(postcode_area("x"), raw[:4]) == ["SW", "M", "EC", "B"]
    assert apply(postcode_sector("x"), raw) == [
        "SW1A 1",
        "M1 1",
        "EC1A 1",
        "B33 8",
        None,
        None,
        None,
    ]


def test_company_numbers_and_towns():
    assert apply(company_number_clean("x"), ["1234567", "sc 123456", "00000000", "", None]) == [
        "01234567",
        "SC123456",
        None,
        None,
        None,
    ]
    assert apply(town_clean("x"), ["The  Wirral", "Stoke-on-Trent", " "]) == [
        "wirral",
        "stoke on trent",
        None,
    ]


def test_cleaning_entries_name_a_building_block_or_are_sql():
    frame = pl.DataFrame({"name": ["The Acme Holdings Ltd"], "pc": ["sw1a1aa"]})
    out = frame.select(
        cleaning_expr("org_name_core(name)").alias("core"),
        cleaning_expr(" postcode_district( pc ) ").alias("district"),
        cleaning_expr("upper(name)").alias("sql"),
        cleaning_expr("name || '!'").alias("concat"),
    )
    assert out.row(0) == ("acme", "SW1A", "THE ACME HOLDINGS LTD", "The Acme Holdings Ltd!")
    with pytest.raises(Exception):  # noqa: B017 - polars raises its own SQL errors
        frame.select(cleaning_expr("no_such_block(name)"))


def test_vectorised_on_many_rows():
    frame = pl.DataFrame({"x": ["Acme Holdings Ltd", "Smith & Co"] * 50_000})
    out = frame.select(org_name_core("x").alias("c")).get_column("c")
    assert out.n_unique() == 2 and out.len() == 100_000


def test_a_model_input_applies_building_blocks_and_sql(store, collection, run, tmp_path):
    """Through the store: a query's cleaning names a building block beside a SQL entry."""
    from matchbox_dagster.common.dtos import QueryConfig
    from matchbox_dagster.sources.inputs import query_frame
    from tests.sources.test_inputs import indexed

    pl.DataFrame(
        {
            "pid": [1, 2, 3],
            "name": ["The Acme Holdings Ltd", "ACME & Co.", "Smith Bros Limited"],
            "town": ["Leeds", "York", "Hull"],
        }
    ).write_parquet(tmp_path / "people.parquet")
    indexed(store, collection, run, tmp_path / "people.parquet")
    query = QueryConfig(
        sources=("people",),
        cleaning={"core": "org_name_core(name)", "shout": "upper(town)"},
    )
    frame = query_frame(store, collection, run, query).sort("core")
    assert frame.get_column("core").to_list() == ["acme", "acme", "smith brothers"]
    assert sorted(frame.get_column("shout").to_list()) == ["HULL", "LEEDS", "YORK"]
