"""Fixtures and helpers for the Dagster layer: real Dagster instances on the session's store.

Every test materialises the FEBRL4 demo graph (``febrl4_spec``) under its own collection name,
so tests share the session's PostgreSQL schema without seeing each other's runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from matchbox_dagster.dagster.assets import IO_MANAGER_KEY, build_collection_assets
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.examples.febrl import febrl4_spec
from matchbox_dagster.specs import CollectionSpec
from tests.conftest import postgres_uri

STEPS = ["febrl_a", "febrl_b", "dedupe_a", "dedupe_b", "link_ab", "people"]
"""Every step (and asset) of the demo graph."""


def unique_collection(prefix: str = "dg") -> str:
    """A collection name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A persistent (temporary directory, SQLite) Dagster instance."""
    with dg.instance_for_test() as inst:
        yield inst


def _admin(statement: sql.Composable) -> None:
    """Run a statement outside a transaction on the server's ``postgres`` database."""
    server = psycopg.conninfo.conninfo_to_dict(postgres_uri())
    server["dbname"] = "postgres"
    with psycopg.connect(psycopg.conninfo.make_conninfo(**server), autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def pg_instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run, event and schedule storage is dagster-postgres.

    Uses a database of its own on the store's server, created here and dropped afterwards.
    The URL names the psycopg2 driver: with SQLAlchemy 2.1 a bare ``postgresql://`` selects
    psycopg 3, on which dagster-postgres 0.29's event log fails at the first run event
    (``NOTIFY run_events, $1``: a syntax error, psycopg 3 binds parameters server-side).
    """
    database = f"dagster_test_{uuid.uuid4().hex[:10]}"
    server = psycopg.conninfo.conninfo_to_dict(postgres_uri())
    server["dbname"] = database
    url = "postgresql+psycopg2://{user}@{host}:{port}/{db}".format(
        user=server.get("user", "postgres"),
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 5432),
        db=database,
    )
    if server.get("password"):
        url = url.replace("@", f":{server['password']}@", 1)
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": url}}}
        ) as inst:
            yield inst
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


# --- graphs -----------------------------------------------------------------------------------


@dataclass
class Graph:
    """A collection's spec and definitions bound to the session's store."""

    spec: CollectionSpec
    defs: dg.Definitions
    resource: MatchboxResource

    @property
    def collection(self) -> str:
        return self.spec.collection

    @property
    def slug(self) -> str:
        return self.collection.replace("-", "_").replace(".", "_")

    @property
    def job(self) -> Any:
        return self.defs.resolve_job_def(f"{self.slug}_graph")

    @property
    def sensor(self) -> dg.SensorDefinition:
        return self.defs.resolve_sensor_def(f"{self.slug}_promotion")

    @property
    def schedule(self) -> dg.ScheduleDefinition:
        return self.defs.resolve_schedule_def(f"{self.slug}_new_run")

    def resolver_key(self) -> dg.AssetKey:
        return dg.AssetKey([self.collection, "people"])

    def run(
        self, instance: dg.DagsterInstance, label: str, *, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        """Execute the graph job for partition ``label``."""
        return self.job.execute_in_process(
            instance=instance, partition_key=label, raise_on_error=raise_on_error
        )

    def materialize(
        self, instance: dg.DagsterInstance, label: str, *, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        """``dg.materialize`` of every asset (and its checks) for partition ``label``."""
        return dg.materialize(
            build_collection_assets(self.spec),
            instance=instance,
            partition_key=label,
            resources={
                "matchbox": self.resource,
                IO_MANAGER_KEY: MatchboxIOManager(matchbox=self.resource),
            },
            raise_on_error=raise_on_error,
        )


def make_graph(resource: MatchboxResource, **params: Any) -> Graph:
    """The FEBRL4 demo graph under a fresh collection unless ``collection`` is given."""
    params.setdefault("collection", unique_collection())
    spec = febrl4_spec(**params)
    return Graph(spec=spec, defs=build_collection_defs(spec, resource=resource), resource=resource)


# --- reading results --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Step name → output metadata (plain values) of each materialisation in a result."""
    found: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization  # type: ignore[union-attr]
        found[mat.asset_key.path[-1]] = dict(mat.metadata)
    return found


def actions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Step name → ``matchbox/action`` of each materialisation in a result."""
    return {
        step: _plain(meta["matchbox/action"]) for step, meta in materializations(result).items()
    }


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], Any]:
    """``(step, check name)`` → the check evaluation of a result."""
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Step key → the failure's message, its class and its causes' messages, joined."""
    found: dict[str, str] = {}
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.event_specific_data.error  # type: ignore[union-attr]
        parts = []
        while error is not None:
            parts.append(f"{error.cls_name}: {error.message}")
            error = error.cause
        found[event.step_key] = "\n".join(parts)  # type: ignore[index]
    return found


# --- sensor evaluation ------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class SensorTick:
    """One evaluation of the promotion sensor."""

    result: Any
    cursor: str | None
    logs: list[tuple[int, str]] = field(default_factory=list)

    @property
    def message(self) -> str:
        return getattr(self.result, "skip_message", None) or ""

    def log_text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(m for lvl, m in self.logs if lvl >= level)


def evaluate_sensor(
    graph: Graph, instance: dg.DagsterInstance, cursor: str | None = None
) -> SensorTick:
    """Evaluate the graph's promotion sensor once against ``instance``, capturing its log."""
    handler = _ListHandler()
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"matchbox": graph.resource}
    ) as ctx:
        ctx.log.addHandler(handler)
        try:
            out = graph.sensor(ctx)
        finally:
            ctx.log.removeHandler(handler)
        new_cursor = ctx.cursor
    return SensorTick(
        result=out,
        cursor=new_cursor,
        logs=[(r.levelno, r.getMessage()) for r in handler.records],
    )
