"""The demo graph, materialised by Dagster, completes although PostgreSQL restarts mid-run.

A trigger on the store's ``steps`` table makes the insert of the linker ``link_ab`` pause just
before it sets its step COMPLETE (its data is loaded, its transaction open); a watcher sees the
pause in ``pg_stat_activity`` and restarts the server (``pg_ctl restart -m fast``). Two ways to
survive it:

* the store's own retries (the default) run the insert again: the run completes with no step
  failed;
* with store retries off (``MATCHBOX_RETRIES=0``) the step fails and Dagster's ``RetryPolicy``
  (``CollectionSpec.retries``) runs it again: the run completes after one step retry.

Either way every step is COMPLETE once and the resolver's entities are right.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import dagster as dg
import pytest

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.examples.febrl import febrl4_spec
from tests.faults.cluster import Cluster, wait_for

STEPS = ["febrl_a", "febrl_b", "dedupe_a", "dedupe_b", "link_ab", "people"]


def pause_before_completing(cluster: Cluster, schema: str, step: str) -> None:
    """Make the first insert of ``step`` sleep before it marks the step COMPLETE."""
    with cluster.admin() as conn:
        conn.execute(
            f"""
            CREATE SEQUENCE {schema}.pause_counter;
            CREATE FUNCTION {schema}.pause() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.name = '{step}' AND nextval('{schema}.pause_counter') = 1 THEN
                PERFORM pg_sleep(30);
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER pause BEFORE UPDATE ON {schema}.steps FOR EACH ROW
              WHEN (NEW.upload_stage = 'complete') EXECUTE FUNCTION {schema}.pause();
            """
        )


@pytest.mark.parametrize("survivor", ["store retries", "dagster RetryPolicy"])
def test_graph_completes_through_a_restart(
    cluster: Cluster,
    survivor: str,
    monkeypatch: pytest.MonkeyPatch,
    retry_log: Callable[[], list[str]],
) -> None:
    app = f"mb_dagster_{uuid.uuid4().hex[:6]}"
    schema = f"f_{uuid.uuid4().hex[:10]}"
    by_dagster = survivor == "dagster RetryPolicy"
    monkeypatch.setenv("MATCHBOX_RETRIES", "0" if by_dagster else "5")
    resource = MatchboxResource(
        postgres_uri=cluster.uri(application_name=app), postgres_schema=schema
    )
    store = resource.get_store()
    assert store.settings.retries == (0 if by_dagster else 5)
    pause_before_completing(cluster, schema, "link_ab")
    spec = febrl4_spec(collection=f"febrl_{uuid.uuid4().hex[:6]}", schedule=None)
    spec = spec.model_copy(update={"retries": 2 if by_dagster else 0})
    defs = build_collection_defs(spec, resource=resource)
    job = defs.resolve_job_def(f"{spec.collection}_graph")

    restarted: list[float] = []

    def watch() -> None:
        with cluster.admin() as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event = 'PgSleep'",
                    (app,),
                ).fetchone(),
                timeout=120,
                interval=0.02,
            )
        restarted.append(cluster.restart())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, store, spec.collection, "restarted")
        result = job.execute_in_process(
            instance=instance, partition_key=label, raise_on_error=False
        )
        watcher.join(60)
        assert restarted, "the server was not restarted"
        assert result.success, [
            e.event_specific_data.error.message  # type: ignore[union-attr]
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ]
        retried = [
            e.step_key for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"
        ]
    if by_dagster:
        assert len(retried) == 1 and "link_ab" in retried[0], retried
    else:
        assert retried == []
        # The model's write (write_step, or insert_model_data before the IO manager used it).
        assert any(m.startswith(("write_step", "insert_model_data")) for m in retry_log())

    for name in STEPS:
        path = StepPath(collection=spec.collection, run=run.run_id, name=name)
        assert store.get_step_stage(path) == UploadStage.COMPLETE, name
    assert set(store.get_run(spec.collection, run.run_id).steps) == set(STEPS)
    link = store.get_model_data(
        StepPath(collection=spec.collection, run=run.run_id, name="link_ab")
    )
    pairs = link.select(["left_id", "right_id"]).group_by(["left_id", "right_id"]).aggregate([])
    assert link.num_rows > 3000 and pairs.num_rows == link.num_rows
    resolver = StepPath(collection=spec.collection, run=run.run_id, name="people")
    keys: list[str] = []
    for source in ("febrl_a", "febrl_b"):
        table = store.query(
            StepPath(collection=spec.collection, run=run.run_id, name=source), resolver
        )
        assert table.num_rows == 5000
        keys += table["key"].to_pylist()
    assert len(set(keys)) == 10_000
