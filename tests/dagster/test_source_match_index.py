"""A source materialisation leaves match's lookup indexes built (after the write's commit)."""

from __future__ import annotations

import dagster as dg

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import actions, make_graph, materializations


def test_a_stored_source_gets_its_lookup_indexes(
    mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    graph = make_graph(mb_resource)
    source = dg.AssetKey([graph.collection, "febrl_a"])

    def materialise(instance: dg.DagsterInstance, label: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            build_collection_assets(graph.spec),
            selection=[source],
            instance=instance,
            partition_key=label,
            resources={
                "matchbox": mb_resource,
                IO_MANAGER_KEY: MatchboxIOManager(matchbox=mb_resource),
            },
        )

    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, mb_store, graph.collection, "first")
        result = materialise(instance, label)
        assert actions(result) == {"febrl_a": "stored"}
        seconds = materializations(result)["febrl_a"]["matchbox/match_index_seconds"]
        assert getattr(seconds, "value", seconds) >= 0
        path = StepPath(collection=graph.collection, run=run.run_id, name="febrl_a")
        assert mb_store.index_for_match(path) is False  # built by the materialisation
        again = materialise(instance, label)
        assert actions(again) == {"febrl_a": "unchanged"}
        assert "matchbox/match_index_seconds" not in materializations(again)["febrl_a"]
