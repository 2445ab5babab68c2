"""Unchanged models and resolvers are not recomputed: they share the default run's steps.

Real materialisations of the FEBRL4 demo graph on a real Dagster instance and the session's
store, with table B read through this module (so a run can change some of its rows):

1. run 1 computes everything; it is promoted (the default run);
2. run 2, nothing changed: the sources re-extract and share run 1's data; every model and the
   resolver reuse run 1's step without reading an input (``matchbox/inputs_loaded`` 0) and say
   ``matchbox/reused_from: run N (label)``; their checks still run and pass;
3. run 3, 1% of B's rows changed: B and its descendants (``dedupe_b``, ``link_ab``,
   ``people``) compute, ``febrl_a`` and ``dedupe_a`` are reused;
4. run 4, nothing changed, tagged ``matchbox/recompute=true``: every model and the resolver
   compute again (and, being identical, still share run 1's stored data);
5. run 5, nothing changed but a judgement added: the resolver is still reused, but its checks
   are computed again (the evaluation reads judgements); the models' are carried over.

Checks of a reused step are carried over from the step it shares (``matchbox/carried_over_from``)
when nothing else they read changed; churn against the default run is 0 by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import (
    DefaultGroup,
    Judgement,
    LocationConfig,
    LocationType,
    PermissionType,
    StepPath,
    User,
)
from matchbox_dagster.dagster.carry import CARRIED_FROM
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.reuse import RECOMPUTE_TAG
from matchbox_dagster.dagster.sensors import promote_run
from matchbox_dagster.examples.febrl import febrl4_b, febrl4_spec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import (
    STEPS,
    actions,
    check_evaluations,
    materializations,
    unique_collection,
)

MODELS = ["dedupe_a", "dedupe_b", "link_ab", "people"]
"""Steps that may reuse the default run's (models and the resolver)."""
SOURCES = ["febrl_a", "febrl_b"]

_CHANGED_ROWS = 0


def febrl_b() -> pl.DataFrame:
    """FEBRL4 table B, with the surname of its first ``_CHANGED_ROWS`` records changed."""
    frame = febrl4_b().sort("rec_id")
    changed = pl.int_range(pl.len()) < _CHANGED_ROWS
    return frame.with_columns(
        pl.when(changed).then(pl.lit("zz-changed")).otherwise(pl.col("surname")).alias("surname")
    )


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


@dataclass
class Runs:
    collection: str
    run_ids: dict[int, int]
    results: dict[int, dg.ExecuteInProcessResult]

    def meta(self, n: int) -> dict[str, dict[str, Any]]:
        return {
            step: {k: _plain(v) for k, v in values.items()}
            for step, values in materializations(self.results[n]).items()
        }

    def data_versions(self, n: int) -> dict[str, str | None]:
        found = {}
        for event in self.results[n].get_asset_materialization_events():
            mat = event.event_specific_data.materialization  # type: ignore[union-attr]
            found[mat.asset_key.path[-1]] = (mat.tags or {}).get("dagster/data_version")
        return found

    def reused_from(self, n: int) -> str:
        return f"run {self.run_ids[n]} (reuse-{n:04d})"


def _judge(store: MatchboxPostgres, collection: str, run_id: int) -> None:
    """One judgement on two of the collection's records, by a user who may read it."""
    source = StepPath(collection=collection, run=run_id, name="febrl_a")
    leaves = store.query(source, return_leaf_id=True).column("leaf_id").to_pylist()[:2]
    store.grant_permission(DefaultGroup.PUBLIC, PermissionType.READ, collection)
    store.login(User(user_name="reuse-judge"))
    store.as_user("reuse-judge").insert_judgement(
        "reuse-judge", Judgement(shown=leaves, endorsed=[[leaves[0]], [leaves[1]]])
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        key: {"passed": e.passed, **{k: _plain(v) for k, v in e.metadata.items()}}
        for key, e in check_evaluations(result).items()
    }


@pytest.fixture(scope="module")
def runs(mb_resource: MatchboxResource) -> Iterator[Runs]:
    global _CHANGED_ROWS
    base = febrl4_spec(collection=unique_collection("reuse"), schedule=None)
    b = base.sources[1].model_copy(
        update={"location": LocationConfig(type=LocationType.ARROW, name=f"{__name__}:febrl_b")}
    )
    spec = base.model_copy(update={"sources": [base.sources[0], b]})
    defs = build_collection_defs(spec, resource=mb_resource)
    job = defs.resolve_job_def(f"{spec.collection}_graph")
    store = mb_resource.get_store()
    found = Runs(spec.collection, {}, {})
    plan = {1: (0, {}), 2: (0, {}), 3: (50, {}), 4: (0, {RECOMPUTE_TAG: "true"}), 5: (0, {})}
    judged = False
    try:
        with dg.instance_for_test() as instance:
            for n, (changed, tags) in plan.items():
                _CHANGED_ROWS = changed
                if n == 5:
                    _judge(store, spec.collection, found.run_ids[1])
                    judged = True
                label, run = add_run_partition(instance, store, spec.collection, f"reuse-{n:04d}")
                found.run_ids[n] = run.run_id
                found.results[n] = job.execute_in_process(
                    instance=instance, partition_key=label, tags=tags
                )
                if n == 1:
                    promote_run(store, spec.collection, run.run_id)
            yield found
    finally:
        _CHANGED_ROWS = 0
        if judged:  # leaves are content-addressed: later FEBRL tests must not see this verdict
            store.as_user("reuse-judge").delete_last_judgement("reuse-judge")


def test_first_run_computes_and_stores_everything(runs: Runs) -> None:
    assert runs.results[1].success
    assert actions(runs.results[1]) == dict.fromkeys(STEPS, "stored")
    meta = runs.meta(1)
    for step in MODELS:
        assert meta[step]["matchbox/computed"] is True, step
        assert meta[step]["matchbox/inputs_loaded"] >= 1, step
        assert "matchbox/reused_from" not in meta[step]
    assert all(meta[source]["matchbox/indexed"] is True for source in SOURCES)


def test_unchanged_run_reuses_every_model_and_the_resolver(
    runs: Runs, mb_store: MatchboxPostgres
) -> None:
    result = runs.results[2]
    assert result.success
    assert actions(result) == dict.fromkeys(STEPS, "shared")
    meta = runs.meta(2)
    for step in MODELS:
        # Reused without reading an input or computing: no timings of either.
        assert meta[step]["matchbox/computed"] is False, step
        assert meta[step]["matchbox/inputs_loaded"] == 0, step
        assert "load_seconds" not in meta[step] and "model_seconds" not in meta[step]
        assert meta[step]["matchbox/reused_from"] == runs.reused_from(1), step
        assert meta[step]["matchbox/fingerprint"] == runs.meta(1)[step]["matchbox/fingerprint"]
        assert meta[step]["dagster/row_count"] == runs.meta(1)[step]["dagster/row_count"]
    # Sources re-extract (the only way to know they did not change) and share run 1's data.
    # Their fingerprint, taken before indexing, equals run 1's: nothing is indexed.
    for source in SOURCES:
        assert meta[source]["matchbox/reused_from"] == runs.reused_from(1)
        assert meta[source]["matchbox/indexed"] is False, source
        assert meta[source]["dagster/row_count"] == runs.meta(1)[source]["dagster/row_count"]
    # The resolver's entity table (UI) is the one run 1 tabulated, copied.
    assert meta["people"]["entities"] == runs.meta(1)["people"]["entities"]
    assert "| " in meta["people"]["entities"]
    # Dagster data versions are the steps' fingerprints: equal to run 1's.
    assert runs.data_versions(2) == runs.data_versions(1)
    assert all(runs.data_versions(2).values())
    # The checks still ran, on the stored (shared) steps, and passed.
    evaluations = check_evaluations(result)
    assert {step for step, _ in evaluations} == set(STEPS)
    assert all(e.passed for e in evaluations.values())
    assert evaluations[("people", "churn")].passed
    # The reused steps answer queries as run 1's do.
    for run in (1, 2):
        resolver = StepPath(collection=runs.collection, run=runs.run_ids[run], name="people")
        source = StepPath(collection=runs.collection, run=runs.run_ids[run], name="febrl_a")
        ids = mb_store.query(source, resolver).sort_by("key").column("id").to_pylist()
        if run == 1:
            first = ids
    assert ids == first


def test_changed_source_recomputes_only_its_descendants(runs: Runs) -> None:
    result = runs.results[3]
    assert result.success
    meta = runs.meta(3)
    assert actions(result) == {
        "febrl_a": "shared",
        "dedupe_a": "shared",
        "febrl_b": "stored",
        "dedupe_b": "stored",
        "link_ab": "stored",
        "people": "stored",
    }
    assert meta["dedupe_a"]["matchbox/computed"] is False
    assert meta["dedupe_a"]["matchbox/reused_from"] == runs.reused_from(1)
    assert (meta["febrl_a"]["matchbox/indexed"], meta["febrl_b"]["matchbox/indexed"]) == (
        False,
        True,
    )
    for step in ("dedupe_b", "link_ab", "people"):
        assert meta[step]["matchbox/computed"] is True, step
        assert meta[step]["matchbox/inputs_loaded"] >= 1, step
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_recompute_tag_computes_every_model_and_resolver(runs: Runs) -> None:
    result = runs.results[4]
    assert result.success
    meta = runs.meta(4)
    # Sources index their rows too (then share them: identical data is stored once).
    assert all(meta[source]["matchbox/indexed"] is True for source in SOURCES)
    assert all(meta[source]["matchbox/action"] == "shared" for source in SOURCES)
    for step in MODELS:
        assert meta[step]["matchbox/computed"] is True, step
        assert meta[step]["matchbox/inputs_loaded"] >= 1, step
        # Computed again, identical: the store still keeps one copy (run 1's).
        assert meta[step]["matchbox/action"] == "shared", step
        assert meta[step]["matchbox/reused_from"] == runs.reused_from(1), step
    assert runs.data_versions(4) == runs.data_versions(1)
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_checks_of_reused_steps_are_carried_over(runs: Runs) -> None:
    first, second = _checks(runs.results[1]), _checks(runs.results[2])
    assert set(second) == set(first)
    for key, values in second.items():
        assert values[CARRIED_FROM] == runs.reused_from(1), key
        if key[1] == "churn":  # against the default run, whose data this run shares
            assert values["churn"] == 0.0 and values["passed"]
            continue
        same = {k: v for k, v in first[key].items() if k != CARRIED_FROM}
        assert {k: values[k] for k in same} == same, key  # the values, as computed in run 1
    assert second[("people", "evaluation")]["precision"] >= 0.95
    # Computed, not carried: a run whose steps were computed.
    for n in (1, 3, 4):
        for key, values in _checks(runs.results[n]).items():
            if n == 3 and key[0] in ("febrl_a", "dedupe_a"):
                assert CARRIED_FROM in values, key  # shared with run 1 there
            elif key[0] not in ("febrl_a", "febrl_b"):
                assert CARRIED_FROM not in values, (n, key)


def test_a_new_judgement_makes_a_reused_resolver_check_again(runs: Runs) -> None:
    result = runs.results[5]
    assert result.success
    meta, checks = runs.meta(5), _checks(result)
    assert meta["people"]["matchbox/computed"] is False  # the step itself is still reused
    for name in ("resolver_quality", "evaluation", "churn"):
        assert CARRIED_FROM not in checks[("people", name)], name
        assert checks[("people", name)]["passed"], name
    for model in ("dedupe_a", "dedupe_b", "link_ab"):
        assert checks[(model, "scores_in_range")][CARRIED_FROM] == runs.reused_from(1)
