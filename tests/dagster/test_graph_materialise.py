"""The whole demo graph materialised for run partitions on a real instance and a real store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import LocationType, StepPath, UploadStage
from matchbox_dagster.common.errors import MatchboxRunLabelNotFound
from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.partitions import add_run_partition, partitions_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import (
    STEPS,
    Graph,
    actions,
    check_evaluations,
    make_graph,
    materializations,
    step_failures,
    unique_collection,
)
from tests.factories import (
    RUN_BOOKKEEPING,
    rules_deduper,
    single_model_collection,
    source_spec,
    store_state,
)

EXPECTED_CHECKS = {
    ("febrl_a", "source_quality"),
    ("febrl_b", "source_quality"),
    ("dedupe_a", "scores_in_range"),
    ("dedupe_b", "scores_in_range"),
    ("link_ab", "scores_in_range"),
    ("people", "resolver_quality"),
    ("people", "evaluation"),
    ("people", "churn"),
}


@dataclass
class Materialised:
    graph: Graph
    instance: dg.DagsterInstance
    label: str
    run_id: int
    result: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def first(mb_resource: MatchboxResource) -> Iterator[Materialised]:
    """The demo graph materialised once (with ``dg.materialize``) for partition ``first``."""
    graph = make_graph(mb_resource)
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, mb_resource.get_store(), graph.collection, "first")
        result = graph.materialize(instance, label)
        yield Materialised(graph, instance, label, run.run_id, result)


def test_whole_graph_stores_every_step(first: Materialised, mb_store: MatchboxPostgres) -> None:
    assert first.result.success
    collection = first.graph.collection
    run = mb_store.get_run(collection, first.run_id)
    assert set(run.steps) == set(STEPS)
    assert run.is_mutable and not run.is_default
    for name in STEPS:
        path = StepPath(collection=collection, run=first.run_id, name=name)
        assert mb_store.get_step_stage(path) == UploadStage.COMPLETE, name

    resolver = StepPath(collection=collection, run=first.run_id, name="people")
    ids: dict[str, int] = {}
    for source in ("febrl_a", "febrl_b"):
        table = mb_store.query(
            StepPath(collection=collection, run=first.run_id, name=source), resolver
        )
        assert table.num_rows == 5_000
        ids.update(
            zip(table.column("key").to_pylist(), table.column("id").to_pylist(), strict=True)
        )
    assert len(ids) == 10_000
    # FEBRL4 pairs rec-N-org with rec-N-dup-0: most pairs share an entity through the resolver.
    linked = sum(ids[k] == ids.get(k.replace("-org", "-dup-0")) for k in ids if k.endswith("-org"))
    assert linked > 4_500


def test_whole_graph_checks_all_pass(first: Materialised) -> None:
    evaluations = check_evaluations(first.result)
    assert set(evaluations) == EXPECTED_CHECKS
    failed = {k: e.description for k, e in evaluations.items() if not e.passed}
    assert not failed
    evaluation = evaluations[("people", "evaluation")]
    assert evaluation.metadata["precision"].value >= 0.95
    assert evaluation.metadata["recall"].value >= 0.9
    assert "after clustering" in evaluation.description
    # Issue 15 item 5: the table's recall is of every true pair a model could propose (FEBRL4:
    # 5,000 A-B pairs less those identical in every field, which share a leaf), and a model
    # without edges says so instead of scoring 1.0.
    table = evaluation.metadata["precision_recall_by_threshold"].value
    assert "recall (pairs, before clustering)" in table
    rows = {
        (cells[1], cells[2]): cells
        for line in table.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) > 7
    }
    assert rows[("dedupe_a", "0.75")][4:7] == ["no edges"] * 3
    link = rows[("link_ab", "1.00")]
    true_pairs, edges = int(link[7].replace(",", "")), int(link[3].replace(",", ""))
    assert 3_000 < edges < true_pairs < 5_000
    assert float(link[5]) == pytest.approx(edges / true_pairs, abs=1e-4)  # every edge is right
    assert evaluations[("people", "resolver_quality")].metadata["keys"].value == 10_000


def test_whole_graph_output_metadata(first: Materialised) -> None:
    meta = materializations(first.result)
    assert set(meta) == set(STEPS)
    assert actions(first.result) == dict.fromkeys(STEPS, "stored")
    for step, values in meta.items():
        assert values["dagster/row_count"].value >= 0, step
        assert values["matchbox/run"].value == str(first.run_id)
        assert values["matchbox/step_path"].value.endswith(f"/{step}")
    assert meta["febrl_a"]["dagster/row_count"].value == 5_000
    assert meta["febrl_b"]["dagster/row_count"].value == 5_000
    # FEBRL4 A and B hold no duplicates within themselves; the linker finds most A-B pairs
    # (records identical in every index field share a leaf, so need no edge).
    assert meta["link_ab"]["dagster/row_count"].value > 3_000
    assert meta["people"]["dagster/row_count"].value > 0
    for model in ("dedupe_a", "dedupe_b", "link_ab"):
        histogram = meta[model]["score_histogram"].value
        assert "| score | pairs |" in histogram
    assert meta["people"]["clusters"].value > 0


def test_second_materialisation_is_a_no_op(first: Materialised, mb_store: MatchboxPostgres) -> None:
    before = store_state(mb_store)
    again = first.graph.run(first.instance, first.label)
    assert again.success
    assert actions(again) == dict.fromkeys(STEPS, "unchanged")
    assert all(e.passed for e in again.get_asset_check_evaluations())
    after = store_state(mb_store)
    # The data is as it was; only the record of what Dagster did (this run, its checks) moved.
    assert {t: d for t, d in after.items() if t not in RUN_BOOKKEEPING} == {
        t: d for t, d in before.items() if t not in RUN_BOOKKEEPING
    }
    assert all(after[t] != before[t] for t in RUN_BOOKKEEPING)


def test_two_partitions_side_by_side(first: Materialised, mb_store: MatchboxPostgres) -> None:
    collection = first.graph.collection
    # Added the way the Dagster UI adds a partition: no store run yet; the IO manager creates
    # it on the first write.
    label = "second"
    first.instance.add_dynamic_partitions(partitions_name(collection), [label])
    with pytest.raises(MatchboxRunLabelNotFound):
        mb_store.run_for_label(collection, label, create=False)
    result = first.graph.run(first.instance, label)
    assert result.success
    # The same data as the first partition: stored once, shared by the second (content addressed).
    assert actions(result) == dict.fromkeys(STEPS, "shared")
    run = mb_store.run_for_label(collection, label, create=False)
    assert run.run_id != first.run_id
    assert set(run.steps) == set(STEPS)

    labels = mb_store.run_labels(collection)
    assert labels[first.run_id] == "first"
    assert labels[run.run_id] == "second"
    assert mb_store.run_for_label(collection, "second", create=False).run_id == run.run_id
    assert set(first.instance.get_dynamic_partitions(partitions_name(collection))) >= {
        "first",
        "second",
    }

    # Each run answers queries through its own resolver; same data, so the same keys.
    per_run = {}
    for run_id in (first.run_id, run.run_id):
        resolver = StepPath(collection=collection, run=run_id, name="people")
        table = mb_store.query(
            StepPath(collection=collection, run=run_id, name="febrl_a"), resolver
        )
        per_run[run_id] = sorted(table.column("key").to_pylist())
    assert len(per_run[run.run_id]) == 5_000
    assert per_run[first.run_id] == per_run[run.run_id]

    # Each partition's materialisation names its own run.
    meta = materializations(result)
    assert {m["matchbox/run"].value for m in meta.values()} == {str(run.run_id)}


def test_unknown_partition_is_refused(first: Materialised) -> None:
    with pytest.raises(dg.DagsterUnknownPartitionError):
        first.graph.run(first.instance, "never-added")


def test_a_source_rewritten_during_a_run_fails_the_model(
    mb_resource: MatchboxResource, mb_store: MatchboxPostgres, tmp_path: Path
) -> None:
    """Issue 15 item 2: 60 distinct rows, rewritten after indexing so that a rule on ``town``
    would make one entity of them, are never scored under their old ids: the model fails
    naming the source and run, and stores nothing."""
    file = tmp_path / "people.parquet"
    rows = pl.DataFrame(
        {"pid": [str(i) for i in range(60)], "name": [f"n{i}" for i in range(60)]}
    ).with_columns(pl.format("town{}", pl.col("pid")).alias("town"))
    rows.write_parquet(file)
    source = source_spec(
        "people", LocationType.PARQUET, str(file), key_field="pid", index_fields=["name", "town"]
    )
    spec = single_model_collection(
        unique_collection("changed"),
        [source],
        rules_deduper(fields=["town"]),
        resolver="resolved",
        schedule=None,
    )
    assets = build_collection_assets(spec)
    resources = {"matchbox": mb_resource, IO_MANAGER_KEY: MatchboxIOManager(matchbox=mb_resource)}
    key = {a.key.path[-1]: a.key for a in assets}
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, mb_store, spec.collection, "r1")

        def materialise(step: str) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                assets,
                selection=[key[step]],
                instance=instance,
                partition_key=label,
                resources=resources,
                raise_on_error=False,
            )

        assert materialise("people").success
        rows.with_columns(pl.lit("same town").alias("town")).write_parquet(file)
        result = materialise("dedupe")
    assert not result.success
    failure = "\n".join(step_failures(result).values())
    assert "MatchboxSourceChanged" in failure
    assert "'people'" in failure and f"run {run.run_id}" in failure
    assert "changed since it was indexed" in failure and "start a new run" in failure
    model = StepPath(collection=spec.collection, run=run.run_id, name="dedupe")
    assert "dedupe" not in mb_store.get_run(spec.collection, run.run_id).steps or (
        mb_store.get_step_stage(model) != UploadStage.COMPLETE
    )
