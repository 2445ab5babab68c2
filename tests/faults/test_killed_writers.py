"""A writer process SIGKILLed in the middle of each insert_* call leaves nothing behind.

Each writer (a process of its own) locks its step (READY → PROCESSING, committed), then
inserts a payload of a million rows or so; the test watches ``pg_stat_activity``/``pg_locks``
and kills the writer while its backend streams the data in (``COPY … FROM STDIN``) or — for the
resolver — once its transaction has loaded the partition and is building its indexes. Afterwards:

* the store holds exactly what it held before (a digest of every relation and row),
* the upload audit finds the step stuck in PROCESSING and resets it to READY,
* the step can be inserted again, and then holds exactly its data, once.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.faults.cluster import Cluster, backends, wait_for, wait_gone
from tests.faults.workload import (
    Writer,
    deduper_step,
    digest,
    edges_table,
    leaf_ids,
    pairs_table,
    resolver_step,
    save,
    source_step,
    source_table,
)


def application(name: str) -> str:
    """The ``application_name`` of the writer of step ``name``."""
    return f"mb_writer_{name}"


SOURCE_KEYS = 1_000_000
BASE_KEYS = 400_000
EDGE_DISTANCES = 4  # 1.6M model edges


@dataclass
class World:
    """A store holding a complete source and deduper, three declared steps and their writers."""

    cluster: Cluster
    store: MatchboxPostgres
    schema: str
    run: int
    payloads: dict[str, Any] = field(default_factory=dict)
    writers: dict[str, Writer] = field(default_factory=dict)

    def path(self, name: str) -> StepPath:
        return StepPath(collection="killed", run=self.run, name=name)

    def digest(self) -> dict[str, str]:
        with self.cluster.admin() as conn:
            return digest(conn, self.schema)


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    schema = f"f_{uuid.uuid4().hex[:10]}"
    scratch = tmp_path_factory.mktemp("writers")
    steps = {"people": "source", "scores": "model", "entities": "resolver"}
    # Writers first: their imports run while this process builds the data.
    writers = {
        name: Writer(
            cluster.uri(application_name=application(name)),
            schema,
            kind,
            StepPath(collection="killed", run=1, name=name),
            str(scratch / f"{name}.arrow"),
        )
        for name, kind in steps.items()
    }
    store = MatchboxPostgres(MatchboxSettings(postgres_uri=cluster.uri(), postgres_schema=schema))
    try:
        store.create_collection("killed")
        here = World(cluster, store, schema, store.create_run("killed").run_id, writers=writers)
        assert here.run == 1
        base = source_table(BASE_KEYS, seed=1, prefix="base")
        store.create_step(source_step(base, "base"), here.path("base"))
        store.insert_source_data(here.path("base"), base)
        leaves = leaf_ids(base)
        dedupe = edges_table(leaves, distances=1, seed=1)
        store.create_step(deduper_step(dedupe, "base"), here.path("dedupe"))
        store.insert_model_data(here.path("dedupe"), dedupe)

        here.payloads = {
            "people": source_table(SOURCE_KEYS, seed=2, prefix="s"),
            "scores": edges_table(leaves, distances=EDGE_DISTANCES, seed=3),
            "entities": pairs_table(leaves),
        }
        declare = {
            "people": lambda p: source_step(p, "people"),
            "scores": lambda p: deduper_step(p, "base"),
            "entities": lambda p: resolver_step(p, "dedupe"),
        }
        for name, payload in here.payloads.items():
            store.create_step(declare[name](payload), here.path(name))
            save(payload.table, str(scratch / f"{name}.arrow"))
            writers[name].load()
        yield here
    finally:
        for writer in writers.values():
            writer.stop()
        store.close()


Probe = Callable[[psycopg.Connection, str], bool]
"""Whether the writer (by its application name) has reached the point to kill it at."""


def loading(conn: psycopg.Connection, writer: str) -> bool:
    """Whether the writer's backend is streaming data in (``COPY … FROM STDIN``)."""
    return bool(backends(conn, writer, "COPY%FROM STDIN%"))


def kill_writer(world: World, name: str, when: Probe) -> None:
    """Let the writer of step ``name`` go, SIGKILL it as soon as ``when`` holds, check."""
    writer = world.writers[name]
    before = world.digest()
    writer.go()
    with world.cluster.admin() as conn:
        found = wait_for(
            lambda: "now" if when(conn, application(name)) else writer.process.exitcode is not None,
            timeout=120,
            interval=0.002,
            what=f"the writer's backend to be {when.__name__}",
        )
        assert found == "now", (
            f"the writer ended (exit code {writer.process.exitcode}) before it was "
            f"{when.__name__}: make the payload bigger"
        )
        os.kill(writer.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.process.join(30)
        assert writer.process.exitcode == -signal.SIGKILL
        wait_gone(
            conn, application(name)
        )  # the server saw the client go and rolled its transaction back
    assert world.digest() == before, "a killed writer left data behind"
    assert world.store.get_step_stage(world.path(name)) == UploadStage.PROCESSING


def audit_and_retry(world: World, name: str) -> None:
    """The audit finds the step stuck and resets it; the insert then completes."""
    path = world.path(name)
    # As far as the audit is concerned, the writer died long ago (expiry: 60 minutes).
    with world.cluster.admin() as conn:
        conn.execute(
            f"UPDATE {world.schema}.steps SET stage_updated_at = now() - interval '2 hours' "
            "WHERE run_id = %s AND name = %s",
            (world.run, name),
        )
    assert [s.path for s in world.store.audit_uploads().stuck] == [path]
    assert world.store.reset_stuck_uploads() == 1
    assert world.store.get_step_stage(path) == UploadStage.READY
    insert = {
        "people": world.store.insert_source_data,
        "scores": world.store.insert_model_data,
        "entities": world.store.insert_resolver_data,
    }[name]
    insert(path, world.payloads[name])
    assert world.store.get_step_stage(path) == UploadStage.COMPLETE


def test_killed_mid_source_copy(world: World) -> None:
    kill_writer(world, "people", loading)
    audit_and_retry(world, "people")
    rows = world.store.get_source_data(world.path("people"))
    assert rows.num_rows == SOURCE_KEYS
    assert len(rows["key"].unique()) == SOURCE_KEYS


def test_killed_mid_model_copy(world: World) -> None:
    kill_writer(world, "scores", loading)
    audit_and_retry(world, "scores")
    stored = world.store.get_model_data(world.path("scores"))
    expected = world.payloads["scores"]
    assert stored.num_rows == expected.num_rows == (BASE_KEYS * EDGE_DISTANCES - 10)
    pairs = stored.select(["left_id", "right_id"]).group_by(["left_id", "right_id"]).aggregate([])
    assert pairs.num_rows == stored.num_rows  # no pair twice


def indexing(conn: psycopg.Connection, writer: str) -> bool:
    """Whether the writer's backend is building an index (after loading the partition)."""
    return bool(backends(conn, writer, "CREATE%INDEX%"))


def test_killed_after_resolver_loaded_its_partition(world: World) -> None:
    """Killed while indexing its partition: every cluster row had been written in the same
    transaction."""
    kill_writer(world, "entities", indexing)
    audit_and_retry(world, "entities")
    stored = world.store.get_resolver_data(world.path("entities"))
    assert stored.num_rows == BASE_KEYS
    assert len(stored["parent_id"].unique()) == BASE_KEYS // 2
