"""The preflight reads each kind of location's columns without its rows.

Real readers only: files on disk, a DuckDB file, a table in the test PostgreSQL, an arrow
callable, and moto's S3-compatible server on loopback (a head and ranged reads).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import polars as pl
import psycopg
import pyarrow as pa
import pytest

from matchbox_dagster.common.dtos import LocationType
from matchbox_dagster.specs.preflight import source_schema
from tests.conftest import postgres_uri
from tests.factories import source_spec

PEOPLE = pl.DataFrame(
    {"id": ["1", "2"], "name": ["Ann", "Bob"], "dob": ["2000-01-01", "1999-02-02"], "extra": [1, 2]}
)
COLUMNS = ["id", "name", "dob", "extra"]


def people() -> pl.DataFrame:
    """An arrow location's callable."""
    return PEOPLE


def _columns(type_: LocationType, name: str, sql: str = "", **kw: Any) -> list[str]:
    spec = source_spec("people", type_, name, extract_transform=sql)
    return list(source_schema(spec.config(), **kw).names())


def test_files_and_callables(tmp_path: Path) -> None:
    PEOPLE.write_csv(tmp_path / "people.csv")
    PEOPLE.write_parquet(tmp_path / "people.parquet")
    assert _columns(LocationType.CSV, str(tmp_path / "people.csv")) == COLUMNS
    assert _columns(LocationType.PARQUET, str(tmp_path / "people.parquet")) == COLUMNS
    assert _columns(LocationType.ARROW, f"{__name__}:people") == COLUMNS
    renamed = "SELECT id, upper(name) AS full_name FROM source"
    assert _columns(LocationType.CSV, str(tmp_path / "people.csv"), renamed) == ["id", "full_name"]
    with pytest.raises(FileNotFoundError):
        _columns(LocationType.CSV, str(tmp_path / "nobody.csv"))


def test_databases_give_their_query_columns(tmp_path: Path) -> None:
    path = tmp_path / "people.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE people AS SELECT * FROM PEOPLE")
    sql = "SELECT id, name FROM people"
    assert _columns(LocationType.RDBMS, f"duckdb:///{path}", sql) == ["id", "name"]

    table = f"pf_people_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_uri(), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE TABLE {} (id text, name text, dob text)").format(
                psycopg.sql.Identifier(table)
            )
        )
        try:
            sql = f"SELECT id, name AS full_name FROM {table}"
            assert _columns(LocationType.RDBMS, postgres_uri(), sql) == ["id", "full_name"]
        finally:
            conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(table)))


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """moto's S3 server on loopback with the people as Parquet and CSV objects."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="people")
        parquet = pa.BufferOutputStream()
        PEOPLE.write_parquet(parquet)
        client.put_object(Bucket="people", Key="p.parquet", Body=parquet.getvalue().to_pybytes())
        client.put_object(Bucket="people", Key="p.csv", Body=PEOPLE.write_csv().encode())
        yield client
    finally:
        server.stop()


def test_s3_objects_are_read_by_head_and_ranges(s3: Any) -> None:
    assert _columns(LocationType.S3, "s3://people/p.csv", s3_client=s3) == COLUMNS
    assert _columns(LocationType.S3, "s3://people/p.parquet", s3_client=s3) == COLUMNS
    with pytest.raises(Exception, match=r"404|Not Found|NoSuchKey"):
        _columns(LocationType.S3, "s3://people/none.csv", s3_client=s3)


def test_location_roots_bind_the_preflight_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matchbox_dagster.common.errors import MatchboxLocationNotAllowed

    (tmp_path / "inside").mkdir()
    PEOPLE.write_csv(tmp_path / "outside.csv")
    PEOPLE.write_csv(tmp_path / "inside" / "people.csv")
    monkeypatch.setenv("MATCHBOX_LOCATION_ROOTS", str(tmp_path / "inside"))
    assert _columns(LocationType.CSV, str(tmp_path / "inside" / "people.csv")) == COLUMNS
    with pytest.raises(MatchboxLocationNotAllowed):
        _columns(LocationType.CSV, str(tmp_path / "outside.csv"))
    with pytest.raises(MatchboxLocationNotAllowed):
        _columns(
            LocationType.CSV,
            str(tmp_path / "inside" / "people.csv"),
            f"SELECT * FROM read_csv('{tmp_path / 'outside.csv'}')",
        )
