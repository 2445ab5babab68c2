"""The retry budget is time: a call is retried until ``MATCHBOX_RETRY_MAX_SECONDS`` (30 s by
default) have passed, not for a fixed number of backoffs.

A server restart that keeps PostgreSQL down for 15 s in the middle of a model insert is
survived with the default settings, and a server that never comes back fails the call once the
budget is spent, not before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.errors import MatchboxConnectionError
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.faults.cluster import DATABASE, Cluster, free_port
from tests.faults.test_server_restarts import RestartWhenLoading
from tests.faults.workload import deduper_step, edges_table, leaf_ids, source_step, source_table

APP = "mb_fault_budget"
KEYS = 200_000
DOWN_SECONDS = 15.0


def test_a_fifteen_second_restart_is_survived_with_the_default_budget(
    cluster: Cluster,
    make_store: Callable[..., MatchboxPostgres],
    retry_log: Callable[[], list[str]],
) -> None:
    store = make_store(uri=cluster.uri(application_name=APP))
    defaults = MatchboxSettings()
    assert store.settings.retry_max_seconds == defaults.retry_max_seconds == 30
    assert store.settings.retries == defaults.retries
    store.create_collection("budget")
    run = store.create_run("budget").run_id
    source = source_table(KEYS, seed=41)
    src = StepPath(collection="budget", run=run, name="s")
    store.create_step(source_step(source, "s"), src)
    store.insert_source_data(src, source)
    edges = edges_table(leaf_ids(source), distances=2, seed=42)
    model = StepPath(collection="budget", run=run, name="dedupe")
    store.create_step(deduper_step(edges, "s"), model)

    restart = RestartWhenLoading(cluster, APP, down_seconds=DOWN_SECONDS)
    restart.arm()  # the server goes down for 15 s while the model's edges stream in
    started = time.monotonic()
    store.insert_model_data(model, edges)
    elapsed = time.monotonic() - started
    assert restart.join() >= DOWN_SECONDS

    assert DOWN_SECONDS <= elapsed < 45
    assert [m for m in retry_log() if m.startswith("insert_model_data")]
    assert store.get_step_stage(model) == UploadStage.COMPLETE
    assert store.get_model_data(model).num_rows == edges.num_rows


def test_a_server_that_stays_away_fails_the_call_when_the_budget_is_spent(
    retry_log: Callable[[], list[str]],
) -> None:
    port = free_port()
    settings = MatchboxSettings(
        postgres_uri=f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}", retry_max_seconds=3
    )
    started = time.monotonic()
    with pytest.raises(MatchboxConnectionError) as info:
        MatchboxPostgres(settings)
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed < 4.5  # the whole budget, and not much more
    message = str(info.value)
    assert "connecting failed after" in message and "MATCHBOX_RETRY_MAX_SECONDS=3" in message
    assert len(retry_log()) >= 4
