"""A resolver's inputs are explicit: no model is dropped from it without a word."""

from __future__ import annotations

import pytest

from matchbox_dagster.common.dtos import LocationType
from matchbox_dagster.specs import (
    CollectionSpec,
    ModelSpec,
    ResolverSpec,
    SpecError,
    plan_collection,
)
from tests.factories import source_spec


def _model(name: str, left: str, right: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        left=left,
        right=right,
        model_class="ExactMatch",
        settings={"fields": ["name"]},
    )


MODELS = [_model("dedupe_a", "a"), _model("dedupe_b", "b"), _model("link_ab", "a", "b")]


def _spec(*resolvers: ResolverSpec, models: list[ModelSpec] = MODELS) -> CollectionSpec:
    return CollectionSpec(
        collection="c",
        sources=[source_spec(n, LocationType.CSV, f"{n}.csv") for n in ("a", "b")],
        models=models,
        resolvers=list(resolvers),
    )


def test_a_model_left_out_is_refused_naming_it_and_what_to_write() -> None:
    spec = _spec(ResolverSpec(name="people", thresholds={"dedupe_a": 1.0, "link_ab": 0.9}))
    with pytest.raises(SpecError) as caught:
        plan_collection(spec)
    message = str(caught.value)
    assert "['dedupe_b']" in message
    assert "thresholds: {dedupe_a: 1.0, link_ab: 0.9, dedupe_b: 1.0}" in message
    assert "exclude: ['dedupe_b']" in message


def test_every_model_listed_plans() -> None:
    spec = _spec(
        ResolverSpec(name="people", thresholds={"dedupe_a": 1.0, "dedupe_b": 1.0, "link_ab": 0.9})
    )
    plan = plan_collection(spec)
    assert plan.resolvers[0].models == ["dedupe_a", "dedupe_b", "link_ab"]
    assert list(plan.resolvers[0].config.inputs) == ["dedupe_a", "dedupe_b", "link_ab"]


def test_exclude_leaves_a_model_out_on_purpose() -> None:
    spec = _spec(
        ResolverSpec(name="strict", thresholds={"link_ab": 1.0}, exclude=["dedupe_a", "dedupe_b"]),
        ResolverSpec(name="people", thresholds={"dedupe_a": 1.0, "dedupe_b": 1.0, "link_ab": 0.9}),
    )
    plan = plan_collection(spec)
    assert plan.resolvers[0].models == ["link_ab"]


def test_exclude_must_name_models_not_also_thresholded() -> None:
    with pytest.raises(ValueError, match="both in thresholds and in exclude"):
        ResolverSpec(name="r", thresholds={"dedupe_a": 1.0}, exclude=["dedupe_a"])
    spec = _spec(
        ResolverSpec(
            name="people",
            thresholds={"dedupe_a": 1.0, "dedupe_b": 1.0, "link_ab": 0.9},
            exclude=["nope"],
        )
    )
    with pytest.raises(SpecError, match=r"excludes \['nope'\], which are not models"):
        plan_collection(spec)


def test_a_model_of_other_sources_is_not_required() -> None:
    # dedupe_b scores only b, which only_a does not resolve: nothing of it is dropped there.
    spec = _spec(ResolverSpec(name="only_a", thresholds={"dedupe_a": 1.0}), models=MODELS[:2])
    assert [r.spec.name for r in plan_collection(spec).resolvers] == ["only_a"]


def test_models_read_through_an_earlier_resolver_count_as_resolved() -> None:
    models = [
        _model("dedupe_a", "a"),
        _model("dedupe_b", "b"),
        _model("link", "first", "b"),
    ]
    spec = _spec(
        ResolverSpec(name="first", thresholds={"dedupe_a": 1.0}),
        ResolverSpec(name="second", thresholds={"link": 0.9, "dedupe_b": 1.0}),
        models=models,
    )
    plan = plan_collection(spec)
    assert plan.resolvers[1].sources == ["a", "b"]
