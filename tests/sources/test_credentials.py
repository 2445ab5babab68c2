"""Issue 15 item 6: a source's database password is never persisted or shown.

A location references its password (``${NAME}``), read from the environment only when the
source is read; a literal one is refused. Every channel is searched for the secret, raw,
decoded and percent-encoded: the store's rows (a full dump), the asset metadata and the event
log of a real materialisation, Dagster's run record and printed output, every log record (all
loggers at DEBUG), and the errors raised on the way. The test server trusts loopback
connections, so a URI with any password connects.
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
import uuid
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from matchbox_dagster.common.dtos import LocationConfig, LocationType, SourceConfig, StepPath
from matchbox_dagster.common.errors import MatchboxCredentialInLocation, MatchboxInvalidData
from matchbox_dagster.common.redaction import literal_password, redact, redact_text
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.sources.locations import extract
from matchbox_dagster.specs import (
    CollectionSpec,
    InputSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
)
from tests.conftest import postgres_uri

SECRET = "p@ss:w0rd/7f3a9c-SRC-SECRET"
VARIABLE = "MBX_TEST_SOURCE_PASSWORD"
FORMS = [SECRET, quote(SECRET, safe=""), quote_plus(SECRET), "w0rd/7f3a9c-SRC", "7f3a9c-SRC"]
"""The secret as written, percent-encoded both ways, and pieces of it."""


def _server(**over: str) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(postgres_uri())
    return {
        "host": str(info.get("host", "127.0.0.1")),
        "port": str(info.get("port", 5432)),
        "user": str(info.get("user", "postgres")),
        "dbname": str(info.get("dbname", "test")),
        **over,
    }


def _uri(password: str, **over: str) -> str:
    s = _server(**over)
    return f"postgresql://{s['user']}:{password}@{s['host']}:{s['port']}/{s['dbname']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _text_of(exc: BaseException) -> str:
    """Message, repr and the whole traceback with its chain."""
    chain = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{exc}\n{exc!r}\n{chain}"


def _assert_clean(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"secret form {form!r} leaked:\n{text[:3000]}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("matchbox_dagster", "sqlalchemy", "dagster", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def _all_logs(caplog: pytest.LogCaptureFixture) -> str:
    records = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    return records + caplog.text


@pytest.fixture
def people_table() -> Iterator[str]:
    """A table of 60 people (30 pairs of identical rows) in a throwaway schema."""
    schema = f"src_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.people (pid text, name text, town text)").format(
                sql.Identifier(schema)
            )
        )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {}.people VALUES (%s, %s, %s)").format(sql.Identifier(schema)),
                [(f"p{i}", f"name{i % 30}", f"town{i % 30}") for i in range(60)],
            )
    try:
        yield f"{schema}.people"
    finally:
        with psycopg.connect(postgres_uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _spec(collection: str, uri: str, table: str) -> CollectionSpec:
    return CollectionSpec(
        collection=collection,
        sources=[
            SourceSpec(
                name="people",
                location=LocationConfig(type=LocationType.RDBMS, name=uri),
                key_field="pid",
                index_fields=["name", "town"],
                extract_transform=f"SELECT pid, name, town FROM {table}",
            )
        ],
        models=[
            ModelSpec(
                name="dedupe",
                left=InputSpec(step="people"),
                model_class="DeterministicRules",
                settings={"rules": [{"fields": ["name", "town"]}]},
            )
        ],
        resolvers=[
            ResolverSpec(
                name="resolved",
                thresholds={"dedupe": 1.0},
                # The truth reads an index field, so the check re-reads the source too.
                checks=ResolverChecksSpec(
                    max_cluster_size=10,
                    min_precision=0.5,
                    min_recall=0.5,
                    truth={"people": "name"},
                    max_churn=None,
                ),
            )
        ],
        schedule=None,
    )


def test_a_literal_password_is_refused_without_showing_it() -> None:
    for uri in (
        _uri(SECRET),
        _uri(quote(SECRET, safe="")),
        f"postgresql://u@h/db?sslmode=require&password={quote(SECRET, safe='')}",
        f"postgresql://u@h/db?PWD={SECRET}",
    ):
        assert literal_password(uri)
        _assert_clean(redact(uri) + redact_text(f"failed: {uri}"))
        for build in (
            lambda uri=uri: LocationConfig(type=LocationType.RDBMS, name=uri),
            lambda uri=uri: SourceConfig.model_validate(
                {
                    "location_config": {"type": "rdbms", "name": uri},
                    "key_field": {"name": "pid"},
                    "index_fields": [{"name": "name"}],
                }
            ),
            lambda uri=uri: _spec("c", uri, "people"),
        ):
            with pytest.raises(MatchboxCredentialInLocation, match=r"\$\{PG_PASSWORD\}") as info:
                build()
            _assert_clean(_text_of(info.value))
    # A reference is no secret: it is kept, stored and shown as written.
    referenced = _uri("${" + VARIABLE + "}")
    assert not literal_password(referenced)
    assert redact(referenced) == referenced


def test_a_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch, people_table: str) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    cfg = _spec("c", _uri("${" + VARIABLE + "}"), people_table).sources[0].config()
    with pytest.raises(MatchboxInvalidData, match=VARIABLE):
        list(extract(cfg))


def test_driver_errors_never_show_the_password(
    monkeypatch: pytest.MonkeyPatch, debug_logs: pytest.LogCaptureFixture, people_table: str
) -> None:
    monkeypatch.setenv(VARIABLE, SECRET)
    reference = "${" + VARIABLE + "}"
    texts = []
    for uri in (
        _uri(reference, port=str(_free_port())),  # nobody listens
        _uri(reference, user="no_such_role_7f3a"),
        _uri(reference, dbname="no_such_db_7f3a"),
        f"postgresql://{_server()['host']}:{_server()['port']}/{_server()['dbname']}"
        f"?user=no_such_role_7f3a&password={reference}",
    ):
        cfg = _spec("c", uri, people_table).sources[0].config()
        with pytest.raises(MatchboxInvalidData, match="Reading the database source") as info:
            list(extract(cfg))
        texts.append(_text_of(info.value))
    # A query error after connecting, and a missing column, name the location redacted.
    cfg = _spec("c", _uri(reference), "no_such_table_7f3a").sources[0].config()
    with pytest.raises(MatchboxInvalidData) as info:
        list(extract(cfg))
    texts.append(_text_of(info.value))
    texts.append(_all_logs(debug_logs))
    _assert_clean("\n".join(texts))


def test_materialising_an_rdbms_source_never_persists_or_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    settings: MatchboxSettings,
    people_table: str,
) -> None:
    """The whole graph over a PostgreSQL source whose password is in the environment."""
    monkeypatch.setenv(VARIABLE, SECRET)
    # The user is referenced too: the test server ignores passwords but not user names, so a
    # reader that does not fill the references in (source, model, check or preflight) fails.
    monkeypatch.setenv("MBX_TEST_SOURCE_USER", _server()["user"])
    uri = _uri("${" + VARIABLE + "}", user="${MBX_TEST_SOURCE_USER}")
    assert settings.postgres_uri is not None
    resource = MatchboxResource(
        postgres_uri=settings.postgres_uri.get_secret_value(),
        postgres_schema=settings.postgres_schema,
    )
    store = resource.get_store()
    collection = f"cred_{uuid.uuid4().hex[:8]}"
    spec = _spec(collection, uri, people_table)
    defs = build_collection_defs(spec, resource=resource)
    texts: list[str] = []
    with dg.instance_for_test() as instance:
        label, run = add_run_partition(instance, store, collection, "s1")
        job = defs.resolve_job_def(f"{collection}_graph")
        result = job.execute_in_process(instance=instance, partition_key=label)
        assert result.success
        materialised = result.get_asset_materialization_events()
        assert len(materialised) == 3
        for event in materialised:
            mat = event.event_specific_data.materialization  # type: ignore[union-attr]
            texts += [f"{k}={v!r}" for k, v in mat.metadata.items()]
        for node in defs.resolve_asset_graph().asset_nodes:
            texts += [f"{k}={v!r}" for k, v in node.metadata.items()]
        assert any("${" + VARIABLE + "}" in t for t in texts)  # matchbox/config shows it
        texts += [repr(e) for e in result.all_events]
        texts += [repr(e) for e in result.get_asset_check_evaluations()]
        assert all(e.passed for e in result.get_asset_check_evaluations())
        texts += [repr(entry) for entry in instance.all_logs(result.run_id)]
        texts.append(repr(instance.get_run_by_id(result.run_id)))
        # The source's step holds the reference (so a later step can re-read it), not the value.
        step = store.get_step(StepPath(collection=collection, run=run.run_id, name="people"))
        assert step.config.location_config.name == uri
        # Every row of the store, config JSON included.
        dump = json.dumps(store.dump().model_dump(mode="json"))
        assert "${" + VARIABLE + "}" in dump  # the channel holds the location: it is searched
        texts.append(dump)
        # A run whose source cannot connect: the failure, as Dagster records it.
        port = str(_free_port())
        broken = _spec(f"{collection}_x", _uri("${" + VARIABLE + "}", port=port), people_table)
        failing = build_collection_defs(broken, resource=resource)
        label_x, _ = add_run_partition(instance, store, broken.collection, "s1")
        failed = failing.resolve_job_def(f"{broken.collection}_graph").execute_in_process(
            instance=instance, partition_key=label_x, raise_on_error=False
        )
        assert not failed.success
        texts += [repr(e) for e in failed.all_events]
        texts += [repr(entry) for entry in instance.all_logs(failed.run_id)]
        assert any(port in t and "refused" in t for t in texts)  # the failure is recorded
    texts.append(_all_logs(debug_logs))
    out, err = capfd.readouterr()
    texts += [out, err]
    assert len(texts) > 50
    _assert_clean("\n".join(texts))


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://u:pw@h:1/db", "postgresql://u:***@h:1/db"),
        (
            "postgresql://u:p%40ss%2Fx@h/db?sslmode=require",
            "postgresql://u:***@h/db?sslmode=require",
        ),
        ("postgresql://u:p@ss/w0rd@h/db", "postgresql://u:***@h/db"),  # written unencoded
        (
            "postgresql://h/db?user=u&Password=x%20y&a=b#f",
            "postgresql://h/db?user=u&Password=***&a=b#f",
        ),
        ("mssql+pyodbc:///?odbc_connect=DSN%3Dx%3BPWD%3Dabc", "mssql+pyodbc:///?odbc_connect=***"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("duckdb:////abs/file.duckdb", "duckdb:////abs/file.duckdb"),
        ("postgresql://u:${PW}@h/db", "postgresql://u:${PW}@h/db"),
        ("data/people.parquet", "data/people.parquet"),
    ],
)
def test_redact_keeps_everything_but_the_password(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert literal_password(uri) == (uri != shown)
