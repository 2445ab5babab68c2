"""Secrets never leak: PostgreSQL passwords and S3 keys stay out of logs (captured at DEBUG, every
logger), reprs, error messages and tracebacks, and Dagster's events, logs and run records.

The local server trusts loopback connections, so a URI with a password still connects (the
password is simply not checked); refusals come from a role or database that does not exist, or
a port nobody listens on. S3 is a moto server on 127.0.0.1 that, for the refusal cases, enforces
credentials.
"""

from __future__ import annotations

import logging
import socket
import traceback
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from matchbox_dagster.common.errors import (
    MatchboxConnectionError,
    MatchboxDatastoreError,
    MatchboxError,
    MatchboxSnapshotError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.examples.febrl import febrl4_spec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.conftest import drop_schema, own_schema_store, postgres_uri
from tests.hostile.conftest import World, observe

PASSWORD = "Pw-7f3a9c-hostile-SECRET"
ENCODED = "p%40ss%3Aw0rd%2F7f3a9c"  # "p@ss:w0rd/7f3a9c", percent-encoded in the URI
DECODED = "p@ss:w0rd/7f3a9c"
S3_SECRET = "s3-SECRET-7f3a9c-wJalrXUtnFEMI"
S3_KEY_ID = "AKIA7F3A9CHOSTILE"


def _server() -> dict[str, str]:
    """Host, port, user and database of the test server (from ``postgres_uri()``)."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(postgres_uri())
    return {
        "host": str(info.get("host", "127.0.0.1")),
        "port": str(info.get("port", 5432)),
        "user": str(info.get("user", "postgres")),
        "dbname": str(info.get("dbname", "test")),
    }


def _uri(password: str, **over: str) -> str:
    s = {**_server(), **over}
    return f"postgresql://{s['user']}:{password}@{s['host']}:{s['port']}/{s['dbname']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(uri: str, **extra: Any) -> MatchboxSettings:
    fields = MatchboxSettings.model_fields
    quick = {"retries": 0} if "retries" in fields else {}
    return MatchboxSettings(
        postgres_uri=uri, postgres_schema=f"mbt_{uuid.uuid4().hex[:10]}", **quick, **extra
    )


def _text_of(exc: BaseException) -> str:
    """Everything an error shows: message, repr, the whole traceback with its chain."""
    return "\n".join(
        [
            str(exc),
            repr(exc),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        ]
    )


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}… leaked:\n{text[:2000]}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, captured."""
    caplog.set_level(logging.DEBUG)
    for name in ("matchbox_dagster", "sqlalchemy", "alembic", "botocore", "boto3", "dagster"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def _all_logs(caplog: pytest.LogCaptureFixture) -> str:
    return (
        "\n".join(
            f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
        )
        + caplog.text
    )


# --- PostgreSQL passwords -----------------------------------------------------------------------

REFUSALS = {
    "a role that does not exist": lambda pw: _uri(pw, user="no_such_role_7f3a"),
    "a database that does not exist": lambda pw: _uri(pw, dbname="no_such_db_7f3a"),
    "a port nobody listens on": lambda pw: _uri(pw, port=str(_free_port())),
    "password in the query string": lambda pw: (
        f"postgresql://no_such_role_7f3a@{_server()['host']}:{_server()['port']}/"
        f"{_server()['dbname']}?password={pw}"
    ),
}


@pytest.mark.parametrize("password", [PASSWORD, ENCODED], ids=["plain", "percent-encoded"])
@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_refused_connections_never_show_the_password(
    debug_logs: pytest.LogCaptureFixture, refusal: str, password: str
) -> None:
    settings = _settings(REFUSALS[refusal](password))
    with pytest.raises(MatchboxConnectionError) as info:
        MatchboxPostgres(settings)
    secrets = [password, DECODED] if password == ENCODED else [password]
    _assert_clean(_text_of(info.value), *secrets)
    _assert_clean(_all_logs(debug_logs), *secrets)
    _assert_clean(repr(settings) + str(settings) + settings.model_dump_json(), *secrets)


@pytest.fixture
def pw_store() -> Iterator[MatchboxPostgres]:
    """A working store whose URI carries a password (the loopback server does not check it)."""
    with own_schema_store(_settings(_uri(PASSWORD), batch_size=1000)) as store:
        yield store


def test_a_working_store_never_shows_its_password(
    pw_store: MatchboxPostgres, debug_logs: pytest.LogCaptureFixture
) -> None:
    store = pw_store
    store.create_collection("c")
    run = store.create_run("c").run_id
    texts = [repr(store), str(store), repr(store.db), repr(store.settings), str(store.settings)]
    texts.append(store.settings.model_dump_json())
    # Errors the store raises on the way: ours, and the database's (typed by the store).
    for call in (
        lambda: store.get_collection("missing"),
        lambda: store.get_run("c", run + 1000),
        lambda: store.get_judgements(tag="a\x00b"),  # the database refuses the parameter
        lambda: store.restore(store.dump()),  # not empty
    ):
        with pytest.raises(MatchboxError) as info:
            call()
        texts.append(_text_of(info.value))
    texts.append(_all_logs(debug_logs))
    _assert_clean("\n".join(texts), PASSWORD)


def test_a_lost_adbc_connection_never_shows_the_password(
    pw_store: MatchboxPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk connection that cannot be made names the server, not the password."""
    db = pw_store.db
    attribute = "_adbc_uri" if hasattr(db, "_adbc_uri") else "uri"
    monkeypatch.setattr(db, attribute, _uri(PASSWORD, port=str(_free_port())))
    monkeypatch.setattr(db, "_adbc_idle", [])
    with pytest.raises(MatchboxConnectionError) as info:
        with db.adbc():
            pass
    _assert_clean(_text_of(info.value), PASSWORD)


# --- Dagster ------------------------------------------------------------------------------------


def test_dagster_materialisation_never_shows_the_password(
    debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The FEBRL demo graph, materialised with a store URI carrying a password: nothing that
    Dagster records or prints (events, metadata, logs, the run record) holds it."""
    schema = f"mbt_{uuid.uuid4().hex[:10]}"
    resource = MatchboxResource(postgres_uri=_uri(PASSWORD), postgres_schema=schema)
    spec = febrl4_spec(collection=f"sec_{uuid.uuid4().hex[:8]}")
    defs = build_collection_defs(spec, resource=resource)
    try:
        with dg.instance_for_test() as instance:
            label, _ = add_run_partition(instance, resource.get_store(), spec.collection, "s1")
            job = defs.resolve_job_def(f"{spec.collection}_graph")
            result = job.execute_in_process(instance=instance, partition_key=label)
            assert result.success
            texts = [repr(e) for e in result.all_events]
            for event in result.get_asset_materialization_events():
                mat = event.event_specific_data.materialization  # type: ignore[union-attr]
                texts += [f"{k}={v!r}" for k, v in mat.metadata.items()]
            texts += [repr(e) for e in result.get_asset_check_evaluations()]
            texts += [repr(entry) for entry in instance.all_logs(result.run_id)]
            texts.append(repr(instance.get_run_by_id(result.run_id)))
            texts.append(_all_logs(debug_logs))
            out, err = capfd.readouterr()
            texts += [out, err]
            assert len(texts) > 50
            _assert_clean("\n".join(texts), PASSWORD)
            # The store it wrote to says what it is without the password, too.
            _assert_clean(repr(resource.get_store()), PASSWORD)
    finally:
        drop_schema(schema)


def test_the_default_resource_reads_the_uri_at_run_time_and_shows_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """definitions.py's MatchboxResource() holds no URI: the password stays in the environment.

    (A literal ``postgres_uri=...`` is resource configuration, which Dagster displays; the docs
    say to use ``dg.EnvVar`` or leave it unset.)"""
    from dagster._core.remote_representation.external_data import RepositorySnap

    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", _uri(PASSWORD))
    resource = MatchboxResource()
    defs = build_collection_defs(febrl4_spec(collection="sec"), resource=resource)
    snap = RepositorySnap.from_def(defs.get_repository_def())
    _assert_clean(repr(resource) + repr(snap.resources), PASSWORD)
    assert PASSWORD in resource.settings().postgres_uri.get_secret_value()


def test_a_resource_configured_from_the_environment_keeps_the_password_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster._core.remote_representation.external_data import RepositorySnap

    monkeypatch.setenv("HOSTILE_PG_URI", _uri(PASSWORD))
    resource = MatchboxResource(postgres_uri=dg.EnvVar("HOSTILE_PG_URI"), postgres_schema="x")
    defs = build_collection_defs(febrl4_spec(collection="sec"), resource=resource)
    snap = RepositorySnap.from_def(defs.get_repository_def())
    _assert_clean(repr(resource) + repr(snap.resources), PASSWORD)


# --- S3 keys ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """A moto S3 server on loopback; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _enforce_credentials(endpoint: str, enforce: bool) -> None:
    """Make moto check credentials (unknown keys are refused), or stop checking them."""
    body = b"0" if enforce else b"inf"
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=body,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def s3_env(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The datastore settings in the environment, as an operator would set them."""
    host, port = moto.removeprefix("http://").split(":")
    for key, value in {
        "HOST": host,
        "PORT": port,
        "ACCESS_KEY_ID": S3_KEY_ID,
        "SECRET_ACCESS_KEY": S3_SECRET,
        "DEFAULT_REGION": "us-east-1",
        "CACHE_BUCKET_NAME": "hostile",
    }.items():
        monkeypatch.setenv(f"MATCHBOX_DATASTORE__{key}", value)
    try:
        yield moto
    finally:
        _enforce_credentials(moto, False)


def _store_from_env(schema: str) -> MatchboxPostgres:
    fields = MatchboxSettings.model_fields
    quick = {"retries": 0} if "retries" in fields else {}
    return MatchboxPostgres(
        MatchboxSettings(postgres_uri=postgres_uri(), postgres_schema=schema, **quick)
    )


def test_s3_keys_never_show(
    w: World, s3_env: str, debug_logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    source = _store_from_env(w.store.db.schema)  # the populated world, with S3 from the env
    target_schema = f"mbt_{uuid.uuid4().hex[:10]}"
    target = _store_from_env(target_schema)
    texts: list[str] = []
    try:
        assert source.settings.datastore.secret_access_key is not None
        texts += [repr(source.settings), str(source.settings), source.settings.model_dump_json()]
        texts += [repr(source.settings.datastore), repr(source)]
        client = source.settings.datastore.get_client()
        client.create_bucket(Bucket="hostile")
        # A round trip works, and logs nothing secret (botocore included, at DEBUG).
        source.dump_to("s3://hostile/ok")
        target.restore_from("s3://hostile/ok")
        assert observe(target)["tables"] == observe(source)["tables"]
        target.clear(certain=True)
        empty = observe(target)
        # Now the server checks credentials, and refuses ours: typed errors, nothing written.
        _enforce_credentials(s3_env, True)
        for call, error in (
            (lambda: source.dump_to("s3://hostile/refused"), MatchboxDatastoreError),
            (lambda: target.restore_from("s3://hostile/ok"), MatchboxDatastoreError),
            (lambda: target.restore_from("s3://no-such-bucket/x"), MatchboxError),
        ):
            with pytest.raises(error) as info:
                call()
            texts.append(_text_of(info.value))
            assert observe(target) == empty
        _enforce_credentials(s3_env, False)
        # A missing snapshot, and a server that is not there at all.
        with pytest.raises(MatchboxSnapshotError) as missing:
            target.restore_from("s3://hostile/nothing-here")
        texts.append(_text_of(missing.value))
        gone = source.settings.datastore.model_copy(update={"port": _free_port()})
        source.settings = source.settings.model_copy(update={"datastore": gone})
        with pytest.raises(MatchboxDatastoreError) as unreachable:
            source.dump_to("s3://hostile/unreachable")
        texts.append(_text_of(unreachable.value))
        assert observe(target) == empty
        texts.append(_all_logs(debug_logs))
        _assert_clean("\n".join(texts), S3_SECRET)
    finally:
        target.close()
        source.close()
        drop_schema(target_schema)
