"""The YAML component builds the same Dagster definitions as the Python factories."""

from pathlib import Path

import dagster as dg
import pytest

from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.component import MatchboxCollectionComponent
from matchbox_dagster.examples.febrl import febrl4_spec

ROOT = Path(__file__).resolve().parents[1]


def _shape(defs: dg.Definitions) -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = (
            sorted(k.to_user_string() for k in node.parent_keys),
            {k: str(v) for k, v in node.metadata.items() if not k.startswith("dagster/")},
            node.group_name,
            node.description,
            sorted(c.name for c in node.check_keys),
        )
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted((s.name, s.cron_schedule) for s in defs.schedules or []),
        "jobs": sorted(j.name for j in defs.jobs or []),
    }


def test_yaml_component_builds_what_python_builds() -> None:
    from_yaml = dg.load_from_defs_folder(path_within_project=ROOT)
    from_python = build_collection_defs(febrl4_spec(collection="febrl4_yaml"))
    yaml_shape, python_shape = _shape(from_yaml), _shape(from_python)
    assert yaml_shape["assets"], "the YAML component built no assets"
    assert yaml_shape == python_shape


def test_yaml_typos_are_refused() -> None:
    with pytest.raises(Exception, match="index_field"):
        MatchboxCollectionComponent.resolve_from_dict(
            {
                "collection": "c",
                "sources": [
                    {
                        "name": "s",
                        "location": {"type": "csv", "name": "x.csv"},
                        "key_field": "id",
                        "index_field": ["a"],
                    }
                ],
            }
        )


def test_readme_python_example_builds() -> None:
    from matchbox_dagster.specs import CollectionSpec, ModelSpec, ResolverSpec, SourceSpec

    defs = build_collection_defs(
        CollectionSpec(
            collection="companies",
            sources=[
                SourceSpec(
                    name="crm",
                    location={"type": "parquet", "name": "data/crm.parquet"},
                    key_field="id",
                    index_fields=["name", "postcode"],
                )
            ],
            models=[
                ModelSpec(
                    name="crm_dedupe",
                    left="crm",
                    model_class="DeterministicRules",
                    settings={"rules": [["name", "postcode"]]},
                )
            ],
            resolvers=[ResolverSpec(name="companies", thresholds={"crm_dedupe": 1.0})],
        )
    )
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"companies/crm", "companies/crm_dedupe", "companies/companies"}
    assert [s.name for s in defs.sensors] == ["companies_promotion"]
