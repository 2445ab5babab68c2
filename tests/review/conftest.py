"""Fixtures of the review app's browser tests: a judged-by-people collection and the app.

The collection is FEBRL4 whose resolver is evaluated against judgements (no truth), with
``min_judgements``; ``matchbox-dagster demo`` materialises run ``run-0001`` (not promoted: no
judgements yet). Its rows carry a salt, so its leaves are its own: leaves are content-addressed
across collections, and a judgement another test makes on FEBRL rows would count here too. The
app is the real CLI, ``matchbox-dagster review``, in a subprocess on a free loopback port; the
browser is Debian's chromium driven by Playwright (no download).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from playwright.sync_api import Browser

from matchbox_dagster.cli import main
from matchbox_dagster.common.dtos import (
    Group,
    LocationConfig,
    LocationType,
    PermissionType,
    StepPath,
    User,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.examples.febrl import febrl4_a, febrl4_b, febrl4_spec
from matchbox_dagster.specs import CollectionSpec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.browser import chromium

MIN_JUDGEMENTS = 10
SALT_FIELD = "batch"
"""A column of the review collection's sources holding the module's salt (indexed, read by no
model)."""
DEFS = """
from pathlib import Path

from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.specs import CollectionSpec

defs = build_collection_defs(CollectionSpec.model_validate_json(Path({spec!r}).read_text()))
"""


def review_spec(collection: str, folder: Path) -> CollectionSpec:
    """The demo's FEBRL4 collection checked against judgements, its tables salted.

    Each FEBRL table is written to ``folder`` as Parquet with a column ``SALT_FIELD`` holding
    one salt, indexed beside the FEBRL fields: every leaf is new, whatever other tests judged.
    """
    salt = f"review-{uuid.uuid4().hex[:8]}"
    spec = febrl4_spec(collection=collection, max_churn=None, min_precision=0.9, min_recall=0.9)
    tables = {"febrl_a": febrl4_a, "febrl_b": febrl4_b}
    sources = []
    for source in spec.sources:
        path = folder / f"{source.name}.parquet"
        tables[source.name]().with_columns(pl.lit(salt).alias(SALT_FIELD)).write_parquet(path)
        location = LocationConfig(type=LocationType.PARQUET, name=str(path))
        fields = [*source.index_fields, SALT_FIELD]
        sources.append(source.model_copy(update={"location": location, "index_fields": fields}))
    resolver = spec.resolvers[0]
    checks = resolver.checks.model_copy(update={"truth": None, "min_judgements": MIN_JUDGEMENTS})
    resolvers = [resolver.model_copy(update={"checks": checks})]
    return spec.model_copy(update={"sources": sources, "resolvers": resolvers})


@dataclass(frozen=True)
class Project:
    """The collection under review and how to reach its store and definitions."""

    collection: str
    defs: Path
    env: dict[str, str]
    run_id: int
    leaves: frozenset[int]


def source_leaves(
    store: MatchboxPostgres, collection: str, run: int, *names: str
) -> frozenset[int]:
    """The leaf ids of the named sources of a run."""
    leaves: set[int] = set()
    for name in names:
        path = StepPath(collection=collection, run=run, name=name)
        leaves.update(store.query(path, return_leaf_id=True).column("leaf_id").to_pylist())
    return frozenset(leaves)


def judgements_within(
    store: MatchboxPostgres, collection: str, leaves: frozenset[int], user: str | None = None
) -> pl.DataFrame:
    """Judgements (one row per endorsed group: ``user_name``, ``shown``, ``endorsed``) whose shown
    cluster holds only ``leaves``, by ``user`` if given.

    The store gives the judgements of every reader of the collection wherever they were made
    (of every user, with authorisation off, as here): a test counts only those of its records.
    """
    judgements, expansion = store.get_collection_judgements(collection)
    inside = [
        row["root"]
        for row in expansion.to_pylist()
        if row["leaves"] and set(row["leaves"]) <= leaves
    ]
    frame = pl.DataFrame(pl.from_arrow(judgements)).filter(pl.col("shown").is_in(inside))
    return frame if user is None else frame.filter(pl.col("user_name") == user)


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def project(
    settings: MatchboxSettings, store: MatchboxPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """Salted FEBRL4 judged by people: run-0001 materialised, readable by ``alice``, not
    ``bob``."""
    assert settings.postgres_uri is not None
    tmp = tmp_path_factory.mktemp("review")
    collection = f"rv_{uuid.uuid4().hex[:8]}"
    home = tmp / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    spec = tmp / "spec.json"
    spec.write_text(review_spec(collection, tmp).model_dump_json())
    defs = tmp / "definitions.py"
    defs.write_text(DEFS.format(spec=str(spec)))
    env = {
        "MATCHBOX_POSTGRES_URI": settings.postgres_uri.get_secret_value(),
        "MATCHBOX_POSTGRES_SCHEMA": settings.postgres_schema,
        "DAGSTER_HOME": str(home),
        "MATCHBOX_REVIEW_URL": "http://reviews.example:8765/",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        store.login(User(user_name="review_admin"))  # the first user of a schema is an admin
        assert main(["demo", "--definitions", str(defs), "--label", "run-0001"]) == 1
        run_id = store.run_for_label(collection, "run-0001", create=False).run_id
        leaves = source_leaves(store, collection, run_id, "febrl_a", "febrl_b")
        assert judgements_within(store, collection, leaves).is_empty()  # salted: new leaves
        assert store.get_collection(collection).default_run is None  # no judgements: no promotion
        for user in ("alice", "bob"):
            store.login(User(user_name=user))
        group = f"readers_{collection}"
        store.create_group(Group(name=group, description="reviewers"))
        store.add_user_to_group("alice", group)
        store.grant_permission(group, PermissionType.READ, collection)
        yield Project(collection, defs, env, run_id, leaves)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reset_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def start_app(project: Project) -> Iterator[Callable[..., str]]:
    """Start ``matchbox-dagster review`` for a user; its base URL (stopped at the end)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(user: str, *extra: str) -> str:
        port = free_port()
        log = project.defs.parent / f"review-{user}-{port}.log"
        command = [sys.executable, "-m", "matchbox_dagster.cli", "review", "--user", user]
        command += ["--collection", project.collection, "--label", "run-0001"]
        command += ["--port", str(port), "--target", str(MIN_JUDGEMENTS), *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                env={**os.environ, **project.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_reset_sigint,
            )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"review app exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (a refusal is an answer)
            except OSError:
                pass
            assert time.monotonic() < deadline, f"review app not up:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        assert f"http://127.0.0.1:{port}/" in log.read_text()  # it printed its URL
        return base

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium."""
    with chromium() as opened:
        yield opened


def screenshot(page: object, name: str) -> None:
    """Save a screenshot under ``$MATCHBOX_REVIEW_SCREENSHOTS`` (docs/img/review) when set."""
    folder = os.environ.get("MATCHBOX_REVIEW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]
