"""The organisations preset end to end in Dagster: cleaning blocks, the preset, split_conflicts."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import polars as pl

from matchbox_dagster.common.dtos import LocationConfig, LocationType, StepPath
from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.methods.models.organisation import organisation_resolver
from matchbox_dagster.specs import CollectionSpec, InputSpec, ModelSpec, ResolverSpec, SourceSpec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import step_failures, unique_collection

FIELDS = ["name", "postcode", "town", "address", "company_number"]


def test_the_preset_and_split_conflicts_materialise(
    mb_resource: MatchboxResource,
    mb_store: MatchboxPostgres,
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from companies import generate_companies

    a, b, truth = generate_companies(300, seed=5)
    sources = []
    for name, frame in (("register_a", a), ("register_b", b)):
        frame.write_parquet(tmp_path / f"{name}.parquet")
        sources.append(
            SourceSpec(
                name=name,
                location=LocationConfig(
                    type=LocationType.PARQUET, name=str(tmp_path / f"{name}.parquet")
                ),
                key_field="key",
                index_fields=FIELDS,
            )
        )
    cleaning = {"name": "org_name(name)"}  # a building block in a cleaning entry
    spec = CollectionSpec(
        collection=unique_collection("orgs"),
        sources=sources,
        models=[
            ModelSpec(
                name="organisations",
                left=InputSpec(step="register_a", cleaning=cleaning),
                right=InputSpec(step="register_b", cleaning=cleaning),
                model_class="OrganisationLinker",
                settings={"roles": {f: f for f in FIELDS}, "max_pairs": 1e5},
            )
        ],
        resolvers=[ResolverSpec(name="firms", **organisation_resolver("organisations"))],
        schedule=None,
    )
    assets = build_collection_assets(spec)
    resources = {"matchbox": mb_resource, IO_MANAGER_KEY: MatchboxIOManager(matchbox=mb_resource)}
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, mb_store, spec.collection, "r1")
        result = dg.materialize(
            assets, instance=instance, partition_key=label, resources=resources,
            raise_on_error=False,
        )
    assert result.success, step_failures(result)

    def path(name: str) -> StepPath:
        return StepPath(collection=spec.collection, run=run.run_id, name=name)

    assert mb_store.get_step(path("firms")).config.resolver_class == "SplitConflicts"
    edges = pl.DataFrame(pl.from_arrow(mb_store.get_model_data(path("organisations"))))
    assert edges.filter(pl.col("score") == 0).height > 0  # conflicts were stored
    found = pl.concat(
        pl.DataFrame(pl.from_arrow(mb_store.query(path(s), path("firms")))).select(
            pl.lit(s.removeprefix("register_")).alias("source"), pl.col("key").cast(pl.String), "id"
        )
        for s in ("register_a", "register_b")
    ).join(truth, on=["source", "key"])
    # Mostly one firm per entity, and no entity of many firms.
    firms = found.group_by("id").agg(pl.col("entity").n_unique().alias("firms"))
    assert firms.get_column("firms").max() <= 2
    assert (firms.get_column("firms") == 1).mean() > 0.97
