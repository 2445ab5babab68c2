"""Re-materialising a partition with different data: replaced on a mutable run, refused on an
immutable one."""

from __future__ import annotations

import dagster as dg

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import promote_run
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import STEPS, Graph, actions, make_graph, step_failures


def _entities(store: MatchboxPostgres, collection: str, run: int) -> int:
    resolver = StepPath(collection=collection, run=run, name="people")
    ids: set[int] = set()
    for source in ("febrl_a", "febrl_b"):
        table = store.query(StepPath(collection=collection, run=run, name=source), resolver)
        assert table.num_rows == 5_000
        ids.update(table.column("id").to_pylist())
    return len(ids)


def _with_fewer_link_rules(graph: Graph) -> Graph:
    """The same graph with the linker's last rule dropped."""
    models = list(graph.spec.models)
    link = models[2]
    assert link.name == "link_ab"
    rules = link.settings["rules"][:-1]
    models[2] = link.model_copy(update={"settings": {**link.settings, "rules": rules}})
    spec = graph.spec.model_copy(update={"models": models})
    return Graph(
        spec=spec,
        defs=build_collection_defs(spec, resource=graph.resource),
        resource=graph.resource,
    )


def test_changed_threshold_replaces_then_immutable_run_refuses(
    instance: dg.DagsterInstance, mb_resource: MatchboxResource, mb_store: MatchboxPostgres
) -> None:
    graph = make_graph(mb_resource, link_threshold=0.75)
    collection = graph.collection
    label, run = add_run_partition(instance, mb_store, collection, "r1")
    assert graph.run(instance, label).success
    resolver = StepPath(collection=collection, run=run.run_id, name="people")
    before = mb_store.get_step(resolver)
    entities_before = _entities(mb_store, collection, run.run_id)

    # Same collection and partition, a stricter link threshold: only the resolver changes.
    stricter = make_graph(mb_resource, collection=collection, link_threshold=0.95)
    result = stricter.run(instance, label)
    assert result.success
    assert actions(result) == {
        **dict.fromkeys(STEPS, "unchanged"),
        "people": "replaced",
    }
    after = mb_store.get_step(resolver)
    assert after.fingerprint != before.fingerprint
    assert after.config != before.config
    assert mb_store.get_step_stage(resolver) == UploadStage.COMPLETE
    # Fewer A-B edges kept: more, smaller entities; still every key answers.
    assert _entities(mb_store, collection, run.run_id) > entities_before
    assert set(mb_store.get_run(collection, run.run_id).steps) == set(STEPS)

    # A changed linker (one rule fewer): the linker is replaced and its descendant, the
    # resolver, is written anew; the sources and dedupers stay.
    fewer_rules = _with_fewer_link_rules(stricter)
    changed = fewer_rules.run(instance, label)
    assert changed.success
    changed_actions = actions(changed)
    assert changed_actions["link_ab"] == "replaced"
    # delete_step took the resolver with it, so the resolver is stored afresh.
    assert changed_actions["people"] == "stored"
    assert {changed_actions[s] for s in STEPS[:4]} == {"unchanged"}
    link = StepPath(collection=collection, run=run.run_id, name="link_ab")
    assert mb_store.get_step_stage(link) == UploadStage.COMPLETE
    assert mb_store.get_step_stage(resolver) == UploadStage.COMPLETE
    assert all(e.passed for e in changed.get_asset_check_evaluations())
    after = mb_store.get_step(resolver)
    _entities(mb_store, collection, run.run_id)
    stricter = fewer_rules

    # Promoted (immutable): the same data is still a no-op...
    promote_run(mb_store, collection, run.run_id)
    assert not mb_store.get_run(collection, run.run_id).is_mutable
    again = stricter.run(instance, label)
    assert again.success
    assert actions(again) == dict.fromkeys(STEPS, "unchanged")

    # ...but different data fails the resolver's step with a clear message.
    looser = _with_fewer_link_rules(
        make_graph(mb_resource, collection=collection, link_threshold=0.8)
    )
    refused = looser.run(instance, label, raise_on_error=False)
    assert not refused.success
    failures = step_failures(refused)
    assert list(failures) == [f"{collection}__people"], failures
    message = failures[f"{collection}__people"]
    assert "MatchboxRunNotWriteable" in message
    assert f"Run {run.run_id} of collection {collection!r} is immutable" in message
    assert "new run partition" in message
    # Upstream steps were unchanged; the stored resolver is the promoted one, untouched.
    assert actions(refused) == dict.fromkeys(STEPS[:-1], "unchanged")
    assert mb_store.get_step(resolver).fingerprint == after.fingerprint
    assert mb_store.get_step_stage(resolver) == UploadStage.COMPLETE
