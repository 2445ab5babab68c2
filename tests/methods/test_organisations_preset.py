"""The OrganisationLinker preset: cleaning, Splink scoring, conflicts; from Python and a spec."""

from __future__ import annotations

import polars as pl
import pytest

from matchbox_dagster.methods import build_model
from matchbox_dagster.methods.clustering import SplitConflicts
from matchbox_dagster.methods.models.organisation import (
    OrganisationLinker,
    conflict_pairs,
    organisation_resolver,
)
from matchbox_dagster.methods.resolvers import ConnectedComponents
from tests.factories import cluster_sets

ROLES = {
    "name": "company",
    "postcode": "pc",
    "town": "town",
    "address": "street",
    "company_number": "crn",
}


def registers() -> tuple[pl.DataFrame, pl.DataFrame, dict[int, int]]:
    """Two small registers (ids 1.. and 1001..) and each record's true firm."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from companies import generate_companies

    a, b, truth = generate_companies(600, seed=3)
    rename = {"name": "company", "postcode": "pc", "address": "street", "company_number": "crn"}
    a = a.rename(rename).with_row_index("id", offset=1)
    b = b.rename(rename).with_row_index("id", offset=100_001)
    ids = pl.concat(
        [
            a.select("id", pl.lit("a").alias("source"), "key"),
            b.select("id", pl.lit("b").alias("source"), "key"),
        ]
    ).join(truth, on=["source", "key"])
    return (
        a.with_columns(pl.col("id").cast(pl.Int64)),
        b.with_columns(pl.col("id").cast(pl.Int64)),
        dict(zip(ids["id"].to_list(), ids["entity"].to_list(), strict=True)),
    )


def test_roles_are_checked_and_the_model_is_registered():
    with pytest.raises(ValueError, match="'name' role is required"):
        OrganisationLinker(roles={"postcode": "pc"})
    with pytest.raises(ValueError, match="unknown role"):
        OrganisationLinker(roles={"name": "n", "vat": "v"})
    model = build_model("OrganisationLinker", {"roles": {"name": "n", "town": "t"}})
    assert isinstance(model, OrganisationLinker)
    assert model.input_fields == ["n", "t"]
    assert OrganisationLinker.from_settings(model.settings()) == model


def test_conflicts_of_sisters_and_company_numbers():
    model = OrganisationLinker(roles={"name": "n", "postcode": "p", "company_number": "c"})
    frame = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "n": ["Acme Ltd", "Acme Holdings Ltd", "ACME LIMITED", "Acme Holdngs", "Acme Ltd"],
            "p": ["AB1 2CD", "ab12cd", "AB1 2CD", "AB1 2CD", "AB1 2CD"],
            "c": ["01234567", "07654321", "1234567", None, "9999"],
        }
    )
    pairs = conflict_pairs(model.prepare(frame), None)
    got = {tuple(p) for p in pairs.select("left_id", "right_id").rows()}
    # 1-2 sisters (tokens, numbers), 1-5 and 3-5 (numbers), 2-3, 2-5; 1-3 agree (same number);
    # 4's "Holdngs" is read as "holdings": a sister of 1, 3 and 5, and the same firm as 2.
    assert got == {(1, 2), (1, 5), (2, 3), (2, 5), (3, 5), (1, 4), (3, 4), (4, 5)}
    # Without typos read as the word, 4's core stays "acme holdngs": no conflict on tokens.
    plain = model.model_copy(update={"typos": False})
    got = {tuple(p) for p in conflict_pairs(plain.prepare(frame), None).rows()}
    assert got == {(1, 2), (1, 5), (2, 3), (2, 5), (3, 5)}


def test_the_preset_links_and_its_resolver_splits_conflicts():
    a, b, entity = registers()
    model = OrganisationLinker(roles=ROLES, max_pairs=2e5)
    results = model.link(a, b)
    edges = pl.DataFrame(pl.from_arrow(results.table))
    assert edges["left_id"].max() < 100_001 <= edges["right_id"].min()
    zero = edges.filter(pl.col("score") == 0)
    assert zero.height > 0  # conflicts are marked
    apart = [entity[x] != entity[y] for x, y in zero.select("left_id", "right_id").rows()]
    assert sum(apart) / len(apart) > 0.95  # nearly always two firms (a trading name may clash)

    kept = edges.filter(pl.col("score") >= 0.9)
    right = sum(entity[x] == entity[y] for x, y in kept.select("left_id", "right_id").rows())
    assert right / kept.height > 0.9  # precise pairs on a hard sample
    settings = organisation_resolver("orgs")
    resolver = SplitConflicts(thresholds=settings["thresholds"], **settings["settings"])
    for clusters in (
        resolver.resolve({"orgs": results}),
        ConnectedComponents(thresholds={"orgs": 0.9}).resolve({"orgs": results}),
    ):
        frame = pl.DataFrame(pl.from_arrow(clusters.table))
        assert frame.height > 0
    split = pl.DataFrame(pl.from_arrow(resolver.resolve({"orgs": results}).table))
    members = split.group_by("parent_id").agg("child_id")["child_id"].to_list()
    zero_pairs = {tuple(p) for p in zero.select("left_id", "right_id").rows()}
    for group in members:
        inside = set(group)
        assert not any(x in inside and y in inside for x, y in zero_pairs)


def test_the_preset_deduplicates_one_register():
    a, b, entity = registers()
    both = pl.concat([a, b])
    model = OrganisationLinker(roles={"name": "company", "postcode": "pc"}, max_pairs=2e5)
    edges = pl.DataFrame(pl.from_arrow(model.dedupe(both).table))
    assert (edges["left_id"] < edges["right_id"]).all()
    kept = edges.filter(pl.col("score") >= 0.9)
    right = sum(entity[x] == entity[y] for x, y in kept.select("left_id", "right_id").rows())
    assert kept.height > 100 and right / kept.height > 0.8


def test_a_yaml_spec_plans_the_preset_and_its_resolver():
    import yaml

    from matchbox_dagster.specs import CollectionSpec, plan_collection

    text = """
collection: orgs
sources:
  - {name: register_a, key_field: key, index_fields: [name, postcode],
     location: {type: parquet, name: a.parquet}}
  - {name: register_b, key_field: key, index_fields: [name, postcode],
     location: {type: parquet, name: b.parquet}}
models:
  - name: organisations
    model_class: OrganisationLinker
    left: {step: register_a, cleaning: {district: "postcode_district(postcode)"}}
    right: {step: register_b}
    settings: {roles: {name: name, postcode: postcode}}
resolvers:
  - name: firms
    thresholds: {organisations: 0.9}
    method: split_conflicts
    settings: {strong: {organisations: 0.99}}
"""
    plan = plan_collection(CollectionSpec.model_validate(yaml.safe_load(text)))
    model = plan.models[0]
    assert isinstance(model.methodology, OrganisationLinker)
    assert model.config.model_settings["roles"] == {"name": "name", "postcode": "postcode"}
    resolver = plan.resolvers[0]
    assert isinstance(resolver.resolver, SplitConflicts)
    assert resolver.config.resolver_class == "SplitConflicts"
    assert resolver.config.resolver_settings["strong"] == {"organisations": 0.99}


def _training_step(model, name):
    return [next(iter(s.values())) for s in model.training if next(iter(s)) == name]


def test_training_and_blocking_follow_the_roles_and_the_data():
    model = OrganisationLinker(roles=ROLES)
    many = model.splink(records=34_000, shared_numbers=4_000)
    em = _training_step(many, "estimate_parameters_using_expectation_maximisation")
    # EM first on pairs sharing a company number (nearly all matches), then on the core name
    # within a town (the first session trained town's m).
    assert [s["blocking_rule"] for s in em] == [["company_number"], ["core", "town"]]
    few = model.splink(records=34_000, shared_numbers=10)
    em = _training_step(few, "estimate_parameters_using_expectation_maximisation")
    assert [s["blocking_rule"] for s in em] == [["postcode"], ["core", "town"]]
    # Without a first session the core name alone, then the town.
    townish = OrganisationLinker(roles={"name": "n", "town": "t"}).splink(records=1_000)
    em = _training_step(townish, "estimate_parameters_using_expectation_maximisation")
    assert [s["blocking_rule"] for s in em] == [["core"], ["town"]]
    # The u sample grows with the records, within bounds, unless max_pairs is set.
    sizes = [
        _training_step(m, "estimate_u_using_random_sampling")[0]["max_pairs"]
        for m in (
            model.splink(records=1_000),
            model.splink(records=100_000),
            model.splink(records=10**7),
            OrganisationLinker(roles=ROLES, max_pairs=5e4).splink(records=10**7),
        )
    ]
    assert sizes == [2.5e5, 3e5, 2e6, 5e4]
    u = _training_step(many, "estimate_u_using_random_sampling")[0]
    assert u["num_chunks"] == 1  # one pass a comparison, not a probe and ten chunks
    # No bare postcode or address block: an estate or "1 High Street" is not one block.
    rules = many.splink_settings["blocking_rules_to_generate_predictions"]
    assert ["postcode"] not in rules and ["address"] not in rules
    assert "l.address = r.address and (l.town = r.town or l.district = r.district)" in rules
    bare = OrganisationLinker(roles={"name": "n", "address": "a"}).splink()
    assert bare.splink_settings["blocking_rules_to_generate_predictions"] == [
        ["core"],
        ["address"],
    ]


def test_shared_company_numbers_are_counted_per_pair():
    from matchbox_dagster.methods.models.organisation import _shared_numbers

    left = pl.DataFrame({"company_number": ["1", "1", "2", None]})
    right = pl.DataFrame({"company_number": ["1", "2", "2", None, "3"]})
    assert _shared_numbers(left, right) == 2 * 1 + 1 * 2
    assert _shared_numbers(left, None) == 1  # the two "1" records
    assert _shared_numbers(pl.DataFrame({"core": ["a"]}), None) == 0


def test_conflicts_between_two_registers_either_way():
    model = OrganisationLinker(roles={"name": "n", "postcode": "p", "company_number": "c"})
    left = model.prepare(
        pl.DataFrame(
            {
                "id": [1, 2, 3],
                "n": ["Acme Ltd", "Bolt Holdings Ltd", "Crane Ltd"],
                "p": ["AB1 2CD", "EF3 4GH", "JK5 6LM"],
                "c": [None, None, "00000001"],
            }
        )
    )
    right = model.prepare(
        pl.DataFrame(
            {
                "id": [11, 12, 13, 14],
                "n": ["Acme Trading Ltd", "Bolt Ltd", "Crane Limited", "Acme Ltd"],
                "p": ["ZZ9 9ZZ", "EF3 4GH", "JK5 6LM", "AB1 2CD"],
                "c": [None, None, "2", None],
            }
        )
    )
    got = {tuple(p) for p in conflict_pairs(left, right).rows()}
    # tokens on the right only (1-11), on the left only (2-12), numbers differ (3-13); 1-14 agree
    assert got == {(1, 11), (2, 12), (3, 13)}


def test_linked_conflicts_are_those_within_a_component_and_change_no_entity():
    from matchbox_dagster.methods.models.organisation import _shared_numbers
    from matchbox_dagster.methods.resolvers import components

    a, b, _ = registers()
    model = OrganisationLinker(roles=ROLES, max_pairs=2e5)
    left, right = model.prepare(a), model.prepare(b)
    scored = model.splink(left.height + right.height, _shared_numbers(left, right)).link(
        left, right
    )  # one Splink run for both scopes
    linked = pl.DataFrame(pl.from_arrow(model._finish(scored, left, right).table))
    wide = model.model_copy(update={"conflict_scope": "all"})
    every = pl.DataFrame(pl.from_arrow(wide._finish(scored, left, right).table))

    def zero(frame: pl.DataFrame) -> set[tuple[int, int]]:
        return {
            tuple(p)
            for p in frame.filter(pl.col("score") == 0).select("left_id", "right_id").rows()
        }

    positive = linked.filter(pl.col("score") > 0).sort("left_id", "right_id")
    assert positive.equals(every.filter(pl.col("score") > 0).sort("left_id", "right_id"))
    labels = dict(
        pl.DataFrame(pl.from_arrow(components(positive).table))
        .select("child_id", "parent_id")
        .rows()
    )
    # Every conflict inside an entity's reach is kept; those between unlinked records go.
    same = {(x, y) for x, y in zero(every) if x in labels and labels.get(y) == labels[x]}
    assert same <= zero(linked) <= zero(every)
    assert len(zero(linked)) < len(zero(every)) / 2
    settings = organisation_resolver("orgs")
    resolver = SplitConflicts(thresholds=settings["thresholds"], **settings["settings"])
    assert cluster_sets(resolver.resolve({"orgs": linked.to_arrow()})) == cluster_sets(
        resolver.resolve({"orgs": every.to_arrow()})
    )


def test_splitting_conflicts_across_models_needs_every_conflict():
    from matchbox_dagster.specs import CollectionSpec, SpecError, plan_collection

    def spec(scope: str | None) -> CollectionSpec:
        settings = {"roles": {"name": "name"}} | ({"conflict_scope": scope} if scope else {})
        return CollectionSpec.model_validate(
            {
                "collection": "orgs",
                "sources": [
                    {
                        "name": "register_a",
                        "key_field": "key",
                        "index_fields": ["name"],
                        "location": {"type": "parquet", "name": "a.parquet"},
                    }
                ],
                "models": [
                    {
                        "name": "organisations",
                        "model_class": "OrganisationLinker",
                        "left": {"step": "register_a"},
                        "settings": settings,
                    },
                    {
                        "name": "exact",
                        "model_class": "DeterministicRules",
                        "left": {"step": "register_a"},
                        "settings": {"rules": [["name"]]},
                    },
                ],
                "resolvers": [
                    {
                        "name": "firms",
                        "thresholds": {"organisations": 0.9, "exact": 1.0},
                        "method": "split_conflicts",
                    }
                ],
            }
        )

    with pytest.raises(SpecError, match="conflict_scope: all") as caught:
        plan_collection(spec(None))
    assert "'organisations'" in str(caught.value) and "firms" in str(caught.value)
    plan = plan_collection(spec("all"))
    assert plan.models[0].methodology.conflict_scope == "all"


def test_postcode_levels_on_cut_parts_equal_splinks_postcode_comparison():
    import duckdb
    import splink.comparison_library as cl

    from matchbox_dagster.methods.models.organisation import POSTCODE_COMPARISON

    model = OrganisationLinker(roles={"name": "n", "postcode": "p"})
    codes = ["SW1A 1AA", "sw1a1ab", "SW1A 2AA", "SW1B 1AA", "SE1 9SG", "B1 1AA", "B11 1AA"]
    codes += ["B1 2AA", "W1A 0AX", "EC1A 1BB", "M1 1AE", "CR2 6XH", "DN55 1PT", None, "bad"]
    frame = model.prepare(pl.DataFrame({"id": range(len(codes)), "n": "x", "p": codes}))
    parts = ["postcode", "sector", "district", "area"]
    pairs = frame.select(parts).join(frame.select(parts), how="cross", suffix="_r")
    connection = duckdb.connect()
    connection.register("pairs", pairs.rename({c: f"{c}_l" for c in parts}).to_arrow())

    def levels(comparison: dict) -> list[int]:
        cases = " ".join(
            f"WHEN {level['sql_condition']} THEN {i}"
            for i, level in enumerate(comparison["comparison_levels"])
            if level["sql_condition"] != "ELSE"
        )
        rows = connection.sql(f"SELECT CASE {cases} ELSE -1 END FROM pairs").fetchall()
        return [row[0] for row in rows]

    splinks = cl.PostcodeComparison("postcode").get_comparison("duckdb").as_dict()
    ours = levels(POSTCODE_COMPARISON)
    assert ours == levels(splinks)
    assert set(ours) == {-1, 0, 1, 2, 3, 4}  # every level met
