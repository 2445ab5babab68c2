"""Asset factories validate eagerly; the IO manager refuses what it cannot store."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from matchbox_dagster.common.arrow import ModelResults, SourceHashes
from matchbox_dagster.common.dtos import StepType
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.dagster.assets import (
    IO_MANAGER_KEY,
    MatchboxTranslator,
    build_collection_assets,
    build_model_asset,
    build_resolver_asset,
    build_source_asset,
)
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.io_manager import MatchboxIOManager, step_metadata
from matchbox_dagster.dagster.partitions import run_partitions
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import build_promotion_sensor
from matchbox_dagster.examples.febrl import febrl4_spec
from matchbox_dagster.specs import (
    CollectionSpec,
    InputSpec,
    ResolverSpec,
    SpecError,
    plan_collection,
    validate_spec,
)
from tests.dagster.conftest import STEPS, step_failures, unique_collection
from tests.factories import edges_table, hashes_table

BASE = febrl4_spec(collection="validation")
MODELS = list(BASE.models)
PEOPLE = BASE.resolvers[0]


def _spec(**update: object) -> CollectionSpec:
    return BASE.model_copy(update=update)


INVALID_SPECS = {
    "unknown input step": (
        _spec(
            models=[
                *MODELS,
                MODELS[0].model_copy(update={"name": "mx", "left": InputSpec(step="nowhere")}),
            ]
        ),
        ["model 'mx' reads 'nowhere'", "neither a source nor a resolver"],
    ),
    "threshold on unknown model": (
        _spec(
            resolvers=[
                PEOPLE.model_copy(update={"thresholds": {**PEOPLE.thresholds, "ghost": 0.5}})
            ]
        ),
        ["resolver 'people' has thresholds for ['ghost']", "not models"],
    ),
    "threshold on a source": (
        _spec(
            resolvers=[
                PEOPLE.model_copy(update={"thresholds": {**PEOPLE.thresholds, "febrl_a": 0.5}})
            ]
        ),
        ["thresholds for ['febrl_a']"],
    ),
    "repeated model name": (
        _spec(models=[*MODELS, MODELS[0]]),
        ["step names must be unique", "['dedupe_a']"],
    ),
    "model named like a source": (
        _spec(models=[*MODELS, MODELS[0].model_copy(update={"name": "febrl_b"})]),
        ["step names must be unique", "['febrl_b']"],
    ),
    "cycle through a second resolver": (
        _spec(
            models=[
                *MODELS,
                MODELS[0].model_copy(update={"name": "mc", "left": InputSpec(step="rc")}),
            ],
            resolvers=[PEOPLE, ResolverSpec(name="rc", thresholds={"mc": 0.5})],
        ),
        ["cycle through mc → rc → mc"],
    ),
    "cycle through the resolver itself": (
        _spec(
            models=[
                *MODELS,
                MODELS[0].model_copy(update={"name": "mc", "left": InputSpec(step="people")}),
            ],
            resolvers=[PEOPLE.model_copy(update={"thresholds": {**PEOPLE.thresholds, "mc": 0.9}})],
        ),
        ["cycle through", "people"],
    ),
    "unknown final resolver": (
        _spec(final_resolver="nobody"),
        ["final_resolver 'nobody' is not a resolver"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID_SPECS))
def test_invalid_spec_is_named(case: str) -> None:
    spec, fragments = INVALID_SPECS[case]
    # The spec validates itself (no Dagster)...
    with pytest.raises(SpecError) as spec_info:
        validate_spec(spec)
    assert spec_info.value.argument == "spec"
    for fragment in fragments:
        assert fragment in str(spec_info.value), str(spec_info.value)
    # ...and the Dagster layer names the argument to fix.
    for build in (build_collection_assets, build_collection_defs):
        with pytest.raises(dg.DagsterInvalidDefinitionError) as info:
            build(spec)  # type: ignore[operator]
        assert str(info.value).startswith("Argument 'spec': "), str(info.value)
        for fragment in fragments:
            assert fragment in str(info.value), (build.__name__, str(info.value))


def test_unknown_model_class_is_named() -> None:
    spec = _spec(models=[MODELS[0].model_copy(update={"model_class": "NoSuchModel"}), *MODELS[1:]])
    with pytest.raises(dg.DagsterInvalidDefinitionError) as info:
        build_collection_assets(spec)
    message = str(info.value)
    assert "'dedupe_a'" in message and "NoSuchModel" in message
    assert "DeterministicRules" in message  # the known classes are listed


def test_invalid_model_settings_are_named() -> None:
    model = MODELS[0].model_copy(update={"settings": {"rules": "not a list"}})
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"(?s)'dedupe_a'.*rules"):
        build_model_asset(collection="validation", model=model)


def test_threshold_out_of_range_is_named() -> None:
    resolver = PEOPLE.model_copy(update={"thresholds": {**PEOPLE.thresholds, "link_ab": 1.5}})
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"'link_ab' must lie in \[0, 1\]"):
        build_collection_assets(_spec(resolvers=[resolver]))


def test_truth_for_a_source_not_upstream_is_named() -> None:
    checks = PEOPLE.checks.model_copy(update={"truth": {"elsewhere": "key"}})
    resolver = PEOPLE.model_copy(update={"checks": checks})
    with pytest.raises(
        dg.DagsterInvalidDefinitionError, match=r"checks.truth names \['elsewhere'\]"
    ):
        build_resolver_asset(collection="validation", resolver=resolver, sources=["febrl_a"])


def test_single_factories_check_their_arguments() -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"Argument 'source'.*SourceSpec"):
        build_source_asset(collection="validation", source=MODELS[0])  # type: ignore[arg-type]
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=r"Argument 'model'.*ModelSpec"):
        build_model_asset(collection="validation", model=PEOPLE)  # type: ignore[arg-type]
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="Argument 'sources'"):
        build_resolver_asset(collection="validation", resolver=PEOPLE, sources=[])
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="Argument 'check_names'"):
        build_promotion_sensor(
            collection="validation", resolver_key=dg.AssetKey("x"), check_names=[]
        )


def test_translator_customises_keys_and_groups() -> None:
    class Prefixed(MatchboxTranslator):
        def get_asset_key(self, collection: str, step: str) -> dg.AssetKey:
            return dg.AssetKey(["er", collection, step])

        def get_group_name(self, collection: str, step: str) -> str:
            return "entity_resolution"

    assets = build_collection_assets(BASE, translator=Prefixed())
    keys = {key for a in assets for key in a.keys}
    assert keys == {dg.AssetKey(["er", "validation", s]) for s in STEPS}
    assert {a.group_names_by_key[a.key] for a in assets} == {"entity_resolution"}
    people = next(a for a in assets if a.key.path[-1] == "people")
    upstream = {dep.asset_key for dep in people.specs_by_key[people.key].deps}
    assert upstream == {
        dg.AssetKey(["er", "validation", m]) for m in ("dedupe_a", "dedupe_b", "link_ab")
    }
    # The spec's own prefix and group work without Python.
    spec = _spec(key_prefix=["team", "people"], group_name="team_er")
    assets = build_collection_assets(spec)
    assert {key for a in assets for key in a.keys} == {
        dg.AssetKey(["team", "people", s]) for s in STEPS
    }
    defs = build_collection_defs(spec)
    assert defs.resolve_job_def("validation_graph") is not None


def test_asset_checks_are_blocking() -> None:
    assets = build_collection_assets(BASE)
    specs = {(s.asset_key.path[-1], s.name): s for a in assets for s in a.check_specs}
    assert set(specs) >= {
        ("people", "evaluation"),
        ("people", "churn"),
        ("febrl_a", "source_quality"),
    }
    assert all(s.blocking for s in specs.values())


# --- the IO manager -----------------------------------------------------------------------------


def _output_context(metadata: dict | None, partition_key: str | None = "p1") -> dg.OutputContext:
    return dg.build_output_context(
        asset_key=dg.AssetKey(["validation", "febrl_a"]),
        definition_metadata=metadata,
        partition_key=partition_key,
    )


SOURCE_METADATA = step_metadata("validation", "febrl_a", StepType.SOURCE, BASE.sources[0].config())


@pytest.mark.parametrize(
    "payload",
    ["a string", ModelResults(edges_table([(1, 2, 0.5)])), None],
    ids=["str", "ModelResults", "None"],
)
def test_io_manager_refuses_wrong_payload(payload: object, mb_resource: MatchboxResource) -> None:
    manager = MatchboxIOManager(matchbox=mb_resource)
    with pytest.raises(MatchboxInvalidData) as info:
        manager.handle_output(_output_context(SOURCE_METADATA), payload)
    message = str(info.value)
    assert "validation/febrl_a" in message
    assert "must return SourceHashes" in message
    assert type(payload).__name__ in message


def test_io_manager_refuses_assets_without_step_metadata(mb_resource: MatchboxResource) -> None:
    manager = MatchboxIOManager(matchbox=mb_resource)
    with pytest.raises(MatchboxInvalidData, match="no matchbox step metadata"):
        manager.handle_output(_output_context({}), SourceHashes(hashes_table({"a": ["1"]})))


def test_io_manager_refuses_unpartitioned_output(mb_resource: MatchboxResource) -> None:
    manager = MatchboxIOManager(matchbox=mb_resource)
    with pytest.raises(MatchboxInvalidData, match="without a partition"):
        manager.handle_output(
            _output_context(SOURCE_METADATA, partition_key=None),
            SourceHashes(hashes_table({"a": ["1"]})),
        )


def test_asset_returning_wrong_type_fails_its_step(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource
) -> None:
    collection = unique_collection("wrong")
    partitions = run_partitions(collection)
    metadata = step_metadata(collection, "febrl_a", StepType.SOURCE, BASE.sources[0].config())

    @dg.asset(
        key=[collection, "febrl_a"],
        metadata=metadata,
        partitions_def=partitions,
        io_manager_key=IO_MANAGER_KEY,
    )
    def tiny() -> list[int]:
        return [1, 2, 3]

    instance.add_dynamic_partitions(partitions.name, ["p1"])
    result = dg.materialize(
        [tiny],
        instance=instance,
        partition_key="p1",
        resources={IO_MANAGER_KEY: MatchboxIOManager(matchbox=mb_resource)},
        raise_on_error=False,
    )
    assert not result.success
    (message,) = step_failures(result).values()
    assert "MatchboxInvalidData" in message
    assert "must return SourceHashes; it returned list" in message
    # Nothing reached the store: the payload was refused before any write.
    assert collection not in mb_resource.get_store().list_collections()


# --- resolver inputs naming their sources ------------------------------------------------------


def test_cycle_through_input_with_explicit_sources_is_named() -> None:
    spec = _spec(
        models=[
            *MODELS,
            MODELS[0].model_copy(
                update={"name": "mc", "left": InputSpec(step="rc", sources=["febrl_a"])}
            ),
        ],
        resolvers=[PEOPLE, ResolverSpec(name="rc", thresholds={"mc": 0.5})],
    )
    with pytest.raises(SpecError, match="cycle"):
        validate_spec(spec)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="cycle"):
        build_collection_assets(spec)


def test_input_sources_must_be_sources_upstream() -> None:
    reader = MODELS[0].model_copy(
        update={"name": "reader", "left": InputSpec(step="people", sources=["nonexistent"])}
    )
    with pytest.raises(SpecError, match="nonexistent"):
        validate_spec(_spec(models=[*MODELS, reader]))


# --- the plan: each step's config and methodology built once -----------------------------------


def test_collection_is_planned_once_and_assets_carry_the_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from matchbox_dagster.specs import graph

    built: list[str] = []
    real = graph.build_model

    def counting(name: str, settings: dict) -> object:
        built.append(name)
        return real(name, settings)

    monkeypatch.setattr(graph, "build_model", counting)
    assets = build_collection_assets(BASE)
    # One methodology per model, built by the spec's plan; the asset bodies reuse it.
    assert sorted(built) == sorted(m.model_class for m in BASE.models)
    plan = plan_collection(BASE)
    metadata = {a.key.path[-1]: a.metadata_by_key[a.key] for a in assets}
    for model in plan.models:
        assert model.config.model_settings == model.methodology.settings()
        stored = metadata[model.spec.name]["matchbox/config"]
        assert json.loads(stored) == json.loads(model.config.model_dump_json())
    (people,) = plan.resolvers
    assert people.sources == ["febrl_a", "febrl_b"]
    assert people.config.resolver_settings == people.resolver.settings()
