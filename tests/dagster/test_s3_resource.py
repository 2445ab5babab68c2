"""S3 through ``dagster_aws.s3.S3Resource``: sources and snapshots, on real Definitions.

An S3-compatible server (moto) on loopback. The matchbox datastore settings point at a dead port
and no AWS variable is set, so anything that reached S3 went through the ``S3Resource``
configured on ``MatchboxResource`` in the Definitions, its credentials given as ``dg.EnvVar``.
The secret appears in no metadata, event log or error.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from dagster_aws.s3 import S3Resource

from matchbox_dagster.common.dtos import LocationType, StepPath
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.specs import CollectionSpec
from tests.conftest import drop_schema
from tests.factories import rules_deduper, single_model_collection, source_spec

KEY_ID = "matchbox-test-key"
SECRET = f"s3-secret-{uuid.uuid4().hex}"
PEOPLE = pl.DataFrame({"id": ["1", "2", "3", "4"], "name": ["ann", "ann", "bob", "cy"]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on loopback with a bucket of people (CSV) and one for snapshots."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="people")
        client.create_bucket(Bucket="snapshots")
        client.put_object(Bucket="people", Key="raw/people.csv", Body=PEOPLE.write_csv().encode())
        yield url
    finally:
        server.stop()


@pytest.fixture
def only_the_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    """No way to S3 but the S3Resource: the datastore on a dead port, no AWS variables."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MATCHBOX_DATASTORE__HOST", "127.0.0.1")
    monkeypatch.setenv("MATCHBOX_DATASTORE__PORT", "1")
    monkeypatch.setenv("MB_TEST_S3_KEY", KEY_ID)
    monkeypatch.setenv("MB_TEST_S3_SECRET", SECRET)


def _s3(endpoint: str) -> S3Resource:
    return S3Resource(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=dg.EnvVar("MB_TEST_S3_KEY"),
        aws_secret_access_key=dg.EnvVar("MB_TEST_S3_SECRET"),
    )


def _spec(collection: str, key: str) -> CollectionSpec:
    source = source_spec("people", LocationType.S3, f"s3://people/{key}")
    return single_model_collection(collection, [source], rules_deduper(), promote=False)


def _logged(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything Dagster recorded of a run, as text (messages, metadata, errors)."""
    return "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))


def _materialise(
    settings: MatchboxSettings, endpoint: str, key: str
) -> tuple[dg.ExecuteInProcessResult, str, MatchboxResource, dg.DagsterInstance]:
    assert settings.postgres_uri is not None
    resource = MatchboxResource(
        postgres_uri=settings.postgres_uri.get_secret_value(),
        postgres_schema=settings.postgres_schema,
        s3=_s3(endpoint),
    )
    collection = f"s3res_{uuid.uuid4().hex[:10]}"
    defs = build_collection_defs(_spec(collection, key), resource=resource)
    instance = dg.DagsterInstance.ephemeral()
    label, _ = add_run_partition(instance, resource.get_store(), collection, "p1")
    result = defs.resolve_job_def(f"{collection}_graph").execute_in_process(
        instance=instance, partition_key=label, raise_on_error=False
    )
    return result, collection, resource, instance


def test_an_s3_source_runs_through_the_s3_resource(
    settings: MatchboxSettings, endpoint: str, only_the_resource: None
) -> None:
    result, collection, resource, instance = _materialise(settings, endpoint, "raw/people.csv")
    assert result.success
    store = resource.get_store()
    run = store.run_for_label(collection, "p1", create=False)
    keys = pl.DataFrame(
        pl.from_arrow(
            store.query(
                StepPath(collection=collection, run=run.run_id, name="people"),
                StepPath(collection=collection, run=run.run_id, name="entities"),
            )
        )
    )
    assert sorted(keys.get_column("key").to_list()) == ["1", "2", "3", "4"]
    assert keys.get_column("id").n_unique() == 3  # ann and ann are one entity
    assert SECRET not in _logged(instance, result.run_id)


def test_a_missing_object_fails_before_any_write_and_shows_no_secret(
    settings: MatchboxSettings, endpoint: str, only_the_resource: None
) -> None:
    result, collection, resource, instance = _materialise(settings, endpoint, "raw/none.csv")
    assert not result.success
    logged = _logged(instance, result.run_id)
    assert "Preflight" in logged and "s3://people/raw/none.csv" in logged
    assert SECRET not in logged
    run = resource.get_store().run_for_label(collection, "p1", create=False)
    assert run.steps == {}  # nothing written


def test_snapshots_go_to_s3_through_the_s3_resource(
    settings: MatchboxSettings, endpoint: str, only_the_resource: None, tmp_path: Path
) -> None:
    assert settings.postgres_uri is not None
    schema = f"mbt_{uuid.uuid4().hex[:10]}"
    resource = MatchboxResource(
        postgres_uri=settings.postgres_uri.get_secret_value(),
        postgres_schema=schema,
        s3=_s3(endpoint),
    )
    try:
        with dg.build_resources({"matchbox": resource}) as built:  # EnvVar resolved here
            store = built.matchbox.get_store()
            store.create_collection("snapped")
            manifest = store.dump_to("s3://snapshots/run-1")
            store.clear(certain=True)
            store.restore_from("s3://snapshots/run-1")
            assert "snapped" in store.list_collections()
        listed = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).list_objects_v2(Bucket="snapshots", Prefix="run-1/")
        names = {item["Key"] for item in listed.get("Contents", [])}
        assert "run-1/manifest.json" in names and len(names) > 1
        assert SECRET not in manifest.model_dump_json()
    finally:
        drop_schema(schema)
