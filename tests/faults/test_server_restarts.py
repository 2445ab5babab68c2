"""PostgreSQL restarted, a backend terminated, a commit's answer lost: calls complete, once.

Every store call is one unit of work that the store runs again after a transient error; these
tests make real transient errors happen in the middle of calls and check that the calls return
normally and the store holds each row exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import StepPath, UploadStage, WriteOutcome
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.db import CommitInDoubt
from tests.faults.cluster import DATABASE, Cluster, backends, wait_for
from tests.faults.proxy import CommitCutter
from tests.faults.workload import (
    deduper_step,
    edges_table,
    leaf_ids,
    pairs_table,
    resolver_step,
    source_step,
    source_table,
)

APP = "mb_fault_store"
KEYS = 400_000


@pytest.fixture(scope="module")
def payloads() -> list[SourceHashes]:
    """Three sources of ``KEYS`` keys (validated once for the module)."""
    return [source_table(KEYS, seed=10 + i, prefix=f"r{i}_") for i in range(3)]


def step_counts(store: MatchboxPostgres, collection: str) -> dict[str, tuple[int, int]]:
    """Per source step: (rows, distinct keys) as stored."""
    with store.db.connection() as conn:
        rows = conn.execute(
            "SELECT s.name, count(*), count(DISTINCT r.key) FROM source_rows r "
            "JOIN steps s USING (step_id) JOIN runs USING (run_id) "
            "JOIN collections c USING (collection_id) WHERE c.name = %s GROUP BY s.name",
            (collection,),
        ).fetchall()
    return {name: (int(n), int(d)) for name, n, d in rows}


class RestartWhenLoading:
    """Restarts the cluster once ``app``'s backend streams data in (after :meth:`arm`)."""

    def __init__(self, cluster: Cluster, app: str, down_seconds: float = 0.0) -> None:
        self.cluster, self.app, self.down = cluster, app, down_seconds
        self.seconds: float | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def arm(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        with self.cluster.admin() as conn:
            wait_for(
                lambda: backends(conn, self.app, "COPY%FROM STDIN%"), timeout=120, interval=0.002
            )
        self.seconds = self.cluster.restart(down_seconds=self.down)

    def join(self) -> float:
        self.thread.join(120)
        assert self.seconds is not None, "the cluster was not restarted"
        return self.seconds


def test_restart_in_the_middle_of_a_sequence_of_calls(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    payloads: list[SourceHashes],
    retry_log: Callable[[], list[str]],
) -> None:
    """``pg_ctl restart -m fast`` while the second source is loading; the sequence completes."""
    store = make_store(uri=cluster.uri(application_name=APP))
    started = time.monotonic()
    restart = RestartWhenLoading(cluster, APP, down_seconds=0.5)
    store.create_collection("restarts")
    run = store.create_run("restarts").run_id
    paths = [StepPath(collection="restarts", run=run, name=f"s{i}") for i in range(3)]
    for i, (path, payload) in enumerate(zip(paths, payloads, strict=True)):
        store.create_step(source_step(payload, path.name), path)
        if i == 1:
            restart.arm()  # the server goes down while this source loads
        store.insert_source_data(path, payload)
        assert store.query(path).num_rows == KEYS
    leaves = leaf_ids(payloads[0])
    edges = edges_table(leaves, distances=1, seed=5)
    model = StepPath(collection="restarts", run=run, name="dedupe")
    store.create_step(deduper_step(edges, "s0"), model)
    store.insert_model_data(model, edges)
    clusters = pairs_table(leaves)
    resolver = StepPath(collection="restarts", run=run, name="people")
    store.create_step(resolver_step(clusters, "dedupe"), resolver)
    store.insert_resolver_data(resolver, clusters)
    restart.join()
    elapsed = time.monotonic() - started

    assert retry_log(), "no call was interrupted by the restart"
    assert step_counts(store, "restarts") == {p.name: (KEYS, KEYS) for p in paths}
    assert set(store.get_run("restarts", run).steps) == {"s0", "s1", "s2", "dedupe", "people"}
    for path in [*paths, model, resolver]:
        assert store.get_step_stage(path) == UploadStage.COMPLETE
    assert store.get_model_data(model).num_rows == KEYS - 1
    assert len(store.query(paths[0], resolver)["id"].unique()) == KEYS // 2
    assert store.get_collection("restarts").runs == [run]
    assert elapsed < 120


def test_terminated_backend_mid_insert_is_retried(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    payloads: list[SourceHashes],
    retry_log: Callable[[], list[str]],
) -> None:
    """``pg_terminate_backend`` (SQLSTATE 57P01) on the COPY: the insert runs again, once."""
    app = "mb_fault_terminated"
    store = make_store(uri=cluster.uri(application_name=app))
    store.create_collection("terminated")
    path = StepPath(collection="terminated", run=store.create_run("terminated").run_id, name="s")
    store.create_step(source_step(payloads[0], "s"), path)
    killed: list[int] = []

    def terminate() -> None:
        with cluster.admin() as conn:
            pids = wait_for(lambda: backends(conn, app, "COPY%FROM STDIN%"), timeout=60)
            conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            killed.extend(pids)

    thread = threading.Thread(target=terminate, daemon=True)
    thread.start()
    store.insert_source_data(path, payloads[0])
    thread.join(60)
    assert killed
    assert [m for m in retry_log() if m.startswith("insert_source_data")]
    assert step_counts(store, "terminated") == {"s": (KEYS, KEYS)}


def test_serialization_failures_and_deadlocks_are_retried(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    payloads: list[SourceHashes],
    retry_log: Callable[[], list[str]],
) -> None:
    """40001 at the end of an insert (ADBC) and 40P01 in a create (psycopg): whole calls rerun."""
    store = make_store()
    schema = store.db.schema
    with cluster.admin() as conn:
        conn.execute(
            f"""
            CREATE SEQUENCE {schema}.serialization_counter;
            CREATE SEQUENCE {schema}.deadlock_counter;
            CREATE FUNCTION {schema}.serialization() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('{schema}.serialization_counter') <= 2 THEN
                RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
            END $$;
            CREATE FUNCTION {schema}.deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('{schema}.deadlock_counter') <= 1 THEN
                RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER complete_fails BEFORE UPDATE ON {schema}.steps FOR EACH ROW
              WHEN (NEW.upload_stage = 'complete') EXECUTE FUNCTION {schema}.serialization();
            """
        )
    store.create_collection("serial")
    path = StepPath(collection="serial", run=store.create_run("serial").run_id, name="s")
    store.create_step(source_step(payloads[1], "s"), path)
    store.insert_source_data(path, payloads[1])
    assert sum("injected serialization failure" in m for m in retry_log()) == 2
    assert step_counts(store, "serial") == {"s": (KEYS, KEYS)}

    with cluster.admin() as conn:
        conn.execute(
            f"CREATE TRIGGER create_fails BEFORE INSERT ON {schema}.collections FOR EACH ROW "
            f"EXECUTE FUNCTION {schema}.deadlock()"
        )
    store.create_collection("deadlocked")
    assert sum("injected deadlock" in m for m in retry_log()) == 1
    assert store.list_collections().count("deadlocked") == 1


def test_pooled_connections_recover_after_a_restart(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    retry_log: Callable[[], list[str]],
) -> None:
    """Connections pooled before a restart are noticed and replaced; no call fails."""
    store = make_store()
    store.create_collection("pooled")
    run = store.create_run("pooled").run_id
    path = StepPath(collection="pooled", run=run, name="s")
    small = source_table(1000, seed=99)
    store.create_step(source_step(small, "s"), path)
    store.insert_source_data(path, small)  # an ADBC connection is pooled now
    cluster.restart()
    time.sleep(1.1)  # idle longer than ADBC_PING_AFTER_SECONDS: pinged before use
    assert store.query(path).num_rows == 1000
    assert store.get_step_stage(path) == UploadStage.COMPLETE
    cluster.restart()
    assert store.query(path).num_rows == 1000  # pooled moments ago: a lost one is retried
    assert store.list_collections() == ["pooled"]


def test_lost_commit_answer(
    cluster: Cluster, make_store: Callable[..., MatchboxPostgres], payloads: list[SourceHashes]
) -> None:
    """The server commits but its answer is lost: the store neither fails nor writes twice.

    An insert, a create and a delete find on their rerun that the lost attempt had succeeded
    and return normally; ``create_run`` (which would create a second run) refuses to rerun.
    """
    cutter = CommitCutter(cluster.port)
    try:
        store = make_store(uri=cutter.uri(DATABASE))
        store.create_collection("doubt")
        run = store.create_run("doubt").run_id
        path = StepPath(collection="doubt", run=run, name="s")
        small = source_table(10_000, seed=7)
        store.create_step(source_step(small, "s"), path)
        warm = StepPath(collection="doubt", run=run, name="warm")
        tiny = source_table(10, seed=8, prefix="w")
        store.create_step(source_step(tiny, "warm"), warm)
        store.insert_source_data(warm, tiny)  # the insert below reuses this ADBC connection
        cutter.arm()
        store.insert_source_data(path, small)
        assert cutter.cuts == 1
        assert step_counts(store, "doubt") == {"s": (10_000, 10_000), "warm": (10, 10)}
        assert store.get_step_stage(path) == UploadStage.COMPLETE

        cutter.arm()
        store.create_collection("doubt_two")
        assert cutter.cuts == 2
        assert store.list_collections() == ["doubt", "doubt_two"]

        cutter.arm()
        with pytest.raises(CommitInDoubt, match="may or may not have been applied"):
            store.create_run("doubt")
        assert cutter.cuts == 3
        assert len(store.get_collection("doubt").runs) == 2  # applied once, not twice
    finally:
        cutter.close()


def test_lost_commit_answer_of_write_step(
    cluster: Cluster, make_store: Callable[..., MatchboxPostgres]
) -> None:
    """write_step's commit applies but its answer is lost: the rerun finds the step written
    (same fingerprint and config, complete) and returns UNCHANGED; the data is there once."""
    cutter = CommitCutter(cluster.port)
    try:
        store = make_store(uri=cutter.uri(DATABASE))
        store.create_collection("doubt_write")
        run = store.create_run("doubt_write").run_id
        warm = StepPath(collection="doubt_write", run=run, name="warm")
        tiny = source_table(10, seed=8, prefix="w")
        assert store.write_step(warm, source_step(tiny, "warm"), tiny) == WriteOutcome.STORED
        path = StepPath(collection="doubt_write", run=run, name="s")
        small = source_table(10_000, seed=9)
        cutter.arm()
        assert store.write_step(path, source_step(small, "s"), small) == WriteOutcome.UNCHANGED
        assert cutter.cuts == 1
        assert step_counts(store, "doubt_write") == {"s": (10_000, 10_000), "warm": (10, 10)}
        assert store.get_step_stage(path) == UploadStage.COMPLETE
    finally:
        cutter.close()
