"""Fixtures of the fault tests: a PostgreSQL cluster of their own, and stores on it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.faults.cluster import Cluster, new_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster on a free loopback port (removed at the end)."""
    server = new_cluster()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(autouse=True)
def _cluster_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """Start the cluster again after a test that left it stopped."""
    yield
    if "cluster" in request.fixturenames:
        server: Cluster = request.getfixturevalue("cluster")
        if not server.is_running():
            server.start()


@pytest.fixture
def make_store(cluster: Cluster) -> Iterator[Callable[..., MatchboxPostgres]]:
    """Build stores on the cluster, each in a fresh schema unless ``schema`` is given."""
    made: list[MatchboxPostgres] = []

    def make(
        schema: str | None = None, uri: str | None = None, **settings: object
    ) -> MatchboxPostgres:
        store = MatchboxPostgres(
            MatchboxSettings(
                postgres_uri=uri or cluster.uri(),
                postgres_schema=schema or f"f_{uuid.uuid4().hex[:10]}",
                **settings,  # type: ignore[arg-type]
            )
        )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The store's retry warnings logged so far in the test."""
    caplog.set_level(logging.WARNING, logger="matchbox_dagster.store.postgres.db")

    def messages() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "matchbox_dagster.store.postgres.db" and "transient" in r.getMessage()
        ]

    return messages
