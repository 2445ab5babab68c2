"""Reading sources from every location type, in batches, and indexing them.

Real services only: files written to a temporary directory, SQLite and DuckDB files, a table in a
throwaway schema of the test PostgreSQL, and moto's S3-compatible server on loopback. Every
location holds the same rows, so every location must index to the same hashes as the in-memory
frame they were written from.
"""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import numpy as np
import pandas as pd
import polars as pl
import psycopg
import pyarrow as pa
import pytest
from pydantic import ValidationError

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import DataTypes, LocationConfig, LocationType, SourceConfig
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.hashing import index_rows
from matchbox_dagster.sources.locations import extract, index_source
from matchbox_dagster.specs import SourceSpec
from tests.conftest import drop_schema, postgres_uri

KEY = "person_id"
FIELDS = ("name", "age", "dob")
N = 2_500
BATCH = 700
THIS_MODULE = "tests.sources.test_locations"


def make_people() -> pl.DataFrame:
    """Rows with many exact duplicates (so keys aggregate), nulls, and keys with leading zeros."""
    rng = np.random.default_rng(11)
    names = rng.choice(["ann", "bob", "cy", "dee", "éva"], N).tolist()
    ages = rng.integers(20, 30, N).tolist()
    days = rng.integers(0, 4, N).tolist()
    for i in np.flatnonzero(rng.random(N) < 0.05):
        names[i] = None
    for i in np.flatnonzero(rng.random(N) < 0.05):
        ages[i] = None
    return pl.DataFrame(
        {
            KEY: [f"{i:06d}" for i in range(N)],
            "name": names,
            "age": ages,
            "dob": [dt.date(1990, 1, 1) + dt.timedelta(days=d) for d in days],
            "unused": rng.random(N),
        },
        schema_overrides={"name": pl.String, "age": pl.Int64},
    )


PEOPLE = make_people()


# Callables for arrow locations (``module:function``).
def people_polars() -> pl.DataFrame:
    return PEOPLE


def people_arrow() -> pa.Table:
    return PEOPLE.to_arrow()


def people_lazy() -> pl.LazyFrame:
    return PEOPLE.lazy()


def people_pandas() -> pd.DataFrame:
    return PEOPLE.select(KEY, "name", "age").to_pandas(use_pyarrow_extension_array=True)


def not_a_table() -> list[int]:
    return [1, 2, 3]


NOT_CALLABLE = 3


def grouped(result: SourceHashes) -> dict[bytes, list[str]]:
    """{hash: sorted keys}, independent of row and key order."""
    table = pl.DataFrame(pl.from_arrow(result.table))
    return {h: sorted(keys) for h, keys in table.iter_rows()}


EXPECTED = grouped(index_rows([PEOPLE], key_field=KEY, index_fields=FIELDS))


def config(type_: LocationType | str, name: str, sql: str = "", fields=FIELDS) -> SourceConfig:
    return SourceSpec(
        name="people",
        location=LocationConfig(type=type_, name=name),
        key_field=KEY,
        index_fields=list(fields),
        extract_transform=sql,
    ).config()


# --- locations -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[dict[str, Any]]:
    """moto's S3-compatible server on loopback, holding the people as Parquet and CSV objects."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        settings = {
            "host": "127.0.0.1",
            "port": port,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "region": "us-east-1",
        }
        client = s3_client(settings)
        client.create_bucket(Bucket="people")
        parquet = pa.BufferOutputStream()
        PEOPLE.write_parquet(parquet)
        client.put_object(
            Bucket="people", Key="raw/people.parquet", Body=parquet.getvalue().to_pybytes()
        )
        client.put_object(Bucket="people", Key="raw/people.csv", Body=PEOPLE.write_csv().encode())
        yield settings
    finally:
        server.stop()


def s3_client(settings: dict[str, Any]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://{settings['host']}:{settings['port']}",
        aws_access_key_id=settings["access_key_id"],
        aws_secret_access_key=settings["secret_access_key"],
        region_name=settings["region"],
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The people as Parquet and CSV, whole and in three parts, and as SQLite and DuckDB files."""
    root = tmp_path_factory.mktemp("sources")
    (root / "parts").mkdir()
    PEOPLE.write_parquet(root / "people.parquet", row_group_size=1000)
    PEOPLE.write_csv(root / "people.csv")
    for i, offset in enumerate(range(0, N, 1000)):
        PEOPLE.slice(offset, 1000).write_parquet(root / "parts" / f"part-{i}.parquet")
        PEOPLE.slice(offset, 1000).write_csv(root / "parts" / f"part-{i}.csv")

    rows = [
        (key, name, age, None if dob is None else dob.isoformat())
        for key, name, age, dob in PEOPLE.select(KEY, *FIELDS).iter_rows()
    ]
    with sqlite3.connect(root / "people.sqlite") as con:
        con.execute(f"CREATE TABLE people ({KEY} TEXT, name TEXT, age INTEGER, dob TEXT)")
        con.executemany("INSERT INTO people VALUES (?, ?, ?, ?)", rows)
        con.execute("CREATE TABLE numbered (id INTEGER, name TEXT)")
        con.executemany("INSERT INTO numbered VALUES (?, ?)", [(7, "a"), (8, "a"), (9, "b")])
    con.close()

    with duckdb.connect(str(root / "people.duckdb")) as con:
        con.register("frame", PEOPLE.select(KEY, *FIELDS).to_arrow())
        con.execute("CREATE TABLE people AS SELECT * FROM frame")
    return {
        "root": root,
        "parquet": root / "people.parquet",
        "csv": root / "people.csv",
        "sqlite": root / "people.sqlite",
        "duckdb": root / "people.duckdb",
    }


@pytest.fixture(scope="module")
def pg_table() -> Iterator[str]:
    """The people in a table of a throwaway schema of the test PostgreSQL: its qualified name."""
    schema = f"mbsrc_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".people ({KEY} text, name text, age integer, dob date)'
        )
        with conn.cursor().copy(f'COPY "{schema}".people FROM STDIN') as copy:
            for row in PEOPLE.select(KEY, *FIELDS).iter_rows():
                copy.write_row(row)
    try:
        yield f'"{schema}".people'
    finally:
        drop_schema(schema)


LOCATIONS = [
    "parquet",
    "parquet-glob",
    "csv",
    "csv-glob",
    "arrow-polars",
    "arrow-arrow",
    "arrow-lazy",
    "sqlite",
    "duckdb",
    "postgresql",
    "s3-parquet",
    "s3-csv",
]


@pytest.fixture
def located(request: pytest.FixtureRequest, files: dict[str, Path]) -> tuple[SourceConfig, dict]:
    """(config, extract keyword arguments) of the people at the location ``request.param``."""
    kind: str = request.param
    query = f"SELECT {KEY}, name, age, dob FROM people"
    if kind == "parquet":
        return config("parquet", str(files["parquet"])), {}
    if kind == "parquet-glob":
        return config("parquet", str(files["root"] / "parts" / "part-*.parquet")), {}
    if kind == "csv":
        return config("csv", str(files["csv"])), {}
    if kind == "csv-glob":
        return config("csv", str(files["root"] / "parts" / "*.csv")), {}
    if kind.startswith("arrow-"):
        return config("arrow", f"{THIS_MODULE}:people_{kind.removeprefix('arrow-')}"), {}
    if kind == "sqlite":
        return config("rdbms", f"sqlite:///{files['sqlite']}", query), {}
    if kind == "duckdb":
        return config("rdbms", f"duckdb:///{files['duckdb']}", query), {}
    if kind == "postgresql":
        table = request.getfixturevalue("pg_table")
        return config("rdbms", postgres_uri(), query.replace("people", table)), {}
    if kind.startswith("s3-"):
        settings = request.getfixturevalue("s3_endpoint")
        suffix = kind.removeprefix("s3-")
        return config("s3", f"s3://people/raw/people.{suffix}"), {"s3_client": s3_client(settings)}
    raise AssertionError(kind)


@pytest.mark.parametrize("located", LOCATIONS, indirect=True)
def test_extract_in_batches(located: tuple[SourceConfig, dict]):
    cfg, kwargs = located
    batches = list(extract(cfg, batch_size=BATCH, **kwargs))
    assert len(batches) >= N // BATCH
    assert all(0 < b.height <= BATCH for b in batches)
    assert sum(b.height for b in batches) == N
    for batch in batches:
        assert batch.columns == [KEY, *FIELDS]
        assert batch.schema[KEY] == pl.String
    keys = pl.concat([b.get_column(KEY) for b in batches])
    assert sorted(keys.to_list()) == PEOPLE.get_column(KEY).to_list()  # leading zeros kept


@pytest.mark.parametrize("located", LOCATIONS, indirect=True)
def test_index_source_batched_equals_unbatched_equals_the_data(
    located: tuple[SourceConfig, dict],
):
    cfg, kwargs = located
    batched = index_source(cfg, batch_size=BATCH, **kwargs)
    whole = index_source(cfg, batch_size=10 * N, **kwargs)
    assert grouped(batched) == grouped(whole) == EXPECTED
    assert batched.num_keys == N
    assert batched.num_rows < N  # identical rows share a hash


def test_s3_client_from_matchbox_datastore_environment(
    s3_endpoint: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MATCHBOX_DATASTORE__HOST", s3_endpoint["host"])
    monkeypatch.setenv("MATCHBOX_DATASTORE__PORT", str(s3_endpoint["port"]))
    monkeypatch.setenv("MATCHBOX_DATASTORE__ACCESS_KEY_ID", s3_endpoint["access_key_id"])
    monkeypatch.setenv("MATCHBOX_DATASTORE__SECRET_ACCESS_KEY", s3_endpoint["secret_access_key"])
    monkeypatch.setenv("MATCHBOX_DATASTORE__DEFAULT_REGION", s3_endpoint["region"])
    for suffix in ("parquet", "csv"):
        result = index_source(config("s3", f"s3://people/raw/people.{suffix}"), batch_size=BATCH)
        assert grouped(result) == EXPECTED


def test_s3_with_transform(s3_endpoint: dict[str, Any]):
    cfg = config("s3", "s3://people/raw/people.parquet", "SELECT * FROM source WHERE name = 'bob'")
    batches = list(extract(cfg, batch_size=BATCH, s3_client=s3_client(s3_endpoint)))
    got = pl.concat(batches)
    assert got.height == PEOPLE.filter(pl.col("name") == "bob").height
    assert set(got.get_column("name")) == {"bob"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://people", "s3://bucket/key"),
        ("people/raw/people.parquet", "s3://bucket/key"),
        ("s3://people/raw/people.json", ".parquet or .csv"),
    ],
)
def test_bad_s3_uri_refused(s3_endpoint: dict[str, Any], uri: str, message: str):
    with pytest.raises(MatchboxInvalidData, match=message):
        list(extract(config("s3", uri), s3_client=s3_client(s3_endpoint)))


# --- transforms ----------------------------------------------------------------------------

TRANSFORM_EXPECTED = PEOPLE.filter(pl.col("name") == "ann").with_columns(
    pl.col("name").str.to_uppercase()
)


@pytest.mark.parametrize(
    ("kind", "sql"),
    [
        ("parquet", "SELECT {key}, UPPER(name) AS name, age, dob FROM source WHERE name = 'ann'"),
        ("csv", "SELECT {key}, UPPER(name) AS name, age, dob FROM source WHERE name = 'ann'"),
        ("arrow", "SELECT {key}, UPPER(name) AS name, age, dob FROM source WHERE name = 'ann'"),
        ("sqlite", "SELECT {key}, UPPER(name) AS name, age, dob FROM people WHERE name = 'ann'"),
        ("duckdb", "SELECT {key}, UPPER(name) AS name, age, dob FROM people WHERE name = 'ann'"),
        ("postgresql", "SELECT {key}, UPPER(name) AS name, age, dob FROM {pg} WHERE name = 'ann'"),
    ],
)
def test_extract_transform(
    request: pytest.FixtureRequest, files: dict[str, Path], kind: str, sql: str
):
    pg = request.getfixturevalue("pg_table") if kind == "postgresql" else ""
    sql = sql.format(key=KEY, pg=pg)
    name = {
        "parquet": str(files["parquet"]),
        "csv": str(files["csv"]),
        "arrow": f"{THIS_MODULE}:people_polars",
        "sqlite": f"sqlite:///{files['sqlite']}",
        "duckdb": f"duckdb:///{files['duckdb']}",
        "postgresql": postgres_uri(),
    }[kind]
    location = "rdbms" if kind in {"sqlite", "duckdb", "postgresql"} else kind
    batches = list(extract(config(location, name, sql), batch_size=100))
    assert all(b.height <= 100 for b in batches)
    got = pl.concat(batches)
    assert sorted(got.get_column(KEY)) == sorted(TRANSFORM_EXPECTED.get_column(KEY))
    assert set(got.get_column("name")) == {"ANN"}
    assert grouped(index_source(config(location, name, sql), batch_size=100)) == grouped(
        index_rows([TRANSFORM_EXPECTED], key_field=KEY, index_fields=FIELDS)
    )


def test_database_query_returning_no_rows_indexes_nothing(files: dict[str, Path]):
    for uri in (f"sqlite:///{files['sqlite']}", f"duckdb:///{files['duckdb']}"):
        cfg = config("rdbms", uri, f"SELECT {KEY}, name, age, dob FROM people WHERE 1 = 0")
        assert index_source(cfg).num_rows == 0


# --- keys ----------------------------------------------------------------------------------


def test_integer_keys_come_out_as_strings(files: dict[str, Path]):
    cfg = SourceConfig.model_validate(
        {
            "location_config": {"type": "rdbms", "name": f"sqlite:///{files['sqlite']}"},
            "extract_transform": "SELECT id, name FROM numbered",
            "key_field": {"name": "id"},
            "index_fields": [{"name": "name"}],
        }
    )
    (batch,) = list(extract(cfg))
    assert batch.schema["id"] == pl.String
    assert sorted(batch.get_column("id")) == ["7", "8", "9"]
    assert sorted(grouped(index_source(cfg)).values()) == [["7", "8"], ["9"]]


def test_csv_keys_and_values_are_read_as_written(tmp_path: Path):
    """No inference: "007" stays "007", and a value past any inference window cannot fail."""
    path = tmp_path / "codes.csv"
    rows = [("007", "01234")] + [(f"k{i}", str(i)) for i in range(12_000)] + [("x", "AB1 2CD")]
    pl.DataFrame(rows, schema=["id", "postcode"], orient="row").write_csv(path)
    cfg = SourceSpec(
        name="codes",
        location=LocationConfig(type=LocationType.CSV, name=str(path)),
        key_field="id",
        index_fields=["postcode"],
    ).config()
    got = pl.concat(extract(cfg, batch_size=5_000))
    assert got.height == len(rows)
    assert got.row(0) == ("007", "01234")
    assert got.row(-1) == ("x", "AB1 2CD")


def test_duplicate_key_in_a_source_refused(tmp_path: Path):
    path = tmp_path / "dup.parquet"
    pl.DataFrame({KEY: ["1", "2", "1"], "name": ["a", "b", "c"]}).write_parquet(path)
    with pytest.raises(MatchboxInvalidData, match="more than once"):
        index_source(config("parquet", str(path), fields=["name"]), batch_size=2)


def test_null_key_in_a_source_refused(tmp_path: Path):
    path = tmp_path / "null.parquet"
    pl.DataFrame({KEY: ["1", None], "name": ["a", "b"]}).write_parquet(path)
    with pytest.raises(MatchboxInvalidData, match="null"):
        index_source(config("parquet", str(path), fields=["name"]))


# --- arrow callables -------------------------------------------------------------------------


def test_arrow_callable_returning_pandas():
    cfg = config("arrow", f"{THIS_MODULE}:people_pandas", fields=["name", "age"])
    got = pl.concat(extract(cfg, batch_size=BATCH))
    assert got.height == N
    assert got.schema[KEY] == pl.String
    assert grouped(index_source(cfg)) == grouped(
        index_rows([PEOPLE], key_field=KEY, index_fields=["name", "age"])
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_colon_here", "module:function"),
        (":people_polars", "module:function"),
        (f"{THIS_MODULE}:", "module:function"),
        ("tests.methods.no_such_module:f", "Cannot import"),
        (f"{THIS_MODULE}:no_such_function", "Cannot import"),
        (f"{THIS_MODULE}:NOT_CALLABLE", "not callable"),
        (f"{THIS_MODULE}:not_a_table", "returned a list"),
    ],
)
def test_bad_callable_refused(name: str, message: str):
    with pytest.raises(MatchboxInvalidData, match=message):
        list(extract(config("arrow", name)))


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "csv", "sqlite", "duckdb", "postgresql"])
def test_missing_columns_named(request: pytest.FixtureRequest, files: dict[str, Path], kind: str):
    fields = ["name", "surname", "dob"]
    if kind in {"parquet", "csv"}:
        cfg = config(kind, str(files[kind]), fields=fields)
    else:
        uri = {
            "sqlite": f"sqlite:///{files['sqlite']}",
            "duckdb": f"duckdb:///{files['duckdb']}",
            "postgresql": postgres_uri(),
        }[kind]
        table = request.getfixturevalue("pg_table") if kind == "postgresql" else "people"
        cfg = config("rdbms", uri, f"SELECT {KEY}, name FROM {table}", fields=fields)
    with pytest.raises(MatchboxInvalidData, match=r"no column\(s\) \['surname'(, 'dob')?\]"):
        list(extract(cfg))


def test_missing_key_column_named(files: dict[str, Path]):
    cfg = config("parquet", str(files["parquet"]), "SELECT name, age, dob FROM source")
    with pytest.raises(MatchboxInvalidData, match=rf"\['{KEY}'\]"):
        list(extract(cfg))


@pytest.mark.parametrize("sql", ["", "   \n"])
def test_database_without_query_refused(sql: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MBX_TEST_PW", "s3cr3t")
    uri = "postgresql://someone:${MBX_TEST_PW}@127.0.0.1:5432/test"
    with pytest.raises(MatchboxInvalidData, match="needs an extract_transform query") as info:
        list(extract(config("rdbms", uri, sql)))
    assert "s3cr3t" not in str(info.value)


def test_batch_size_must_be_positive(files: dict[str, Path]):
    with pytest.raises(ValueError, match="batch_size"):
        list(extract(config("parquet", str(files["parquet"])), batch_size=0))


def test_batch_size_one(files: dict[str, Path]):
    cfg = config("parquet", str(files["parquet"]), "SELECT * FROM source WHERE age = 25")
    batches = list(extract(cfg, batch_size=1))
    assert len(batches) == PEOPLE.filter(pl.col("age") == 25).height
    assert {b.height for b in batches} == {1}


def test_duckdb_uri_paths_follow_sqlalchemy(files: dict[str, Path], monkeypatch):
    """``duckdb:///rel`` is relative to the working directory, ``duckdb:////abs`` absolute."""
    query = f"SELECT {KEY}, name, age, dob FROM people"
    monkeypatch.chdir(files["root"])
    relative = index_source(config("rdbms", "duckdb:///people.duckdb", query))
    absolute = index_source(config("rdbms", f"duckdb:///{files['duckdb']}", query))
    assert grouped(relative) == grouped(absolute) == EXPECTED
    memory = config(
        "rdbms",
        "duckdb:///:memory:",
        f"SELECT 1 AS {KEY}, 'a' AS name, 2 AS age, DATE '2000-01-01' AS dob",
    )
    assert [b.rows() for b in extract(memory)] == [[("1", "a", 2, dt.date(2000, 1, 1))]]


# --- SourceSpec.config(): the one conversion to the store's SourceConfig ----------------------


def test_source_config_round_trip():
    source = SourceSpec(
        name="people",
        location=LocationConfig(type=LocationType.PARQUET, name="data/people.parquet"),
        key_field="person_id",
        index_fields=["name", "dob"],
        extract_transform="SELECT * FROM source",
        field_types={"dob": DataTypes.DATE},
    )
    cfg = source.config()
    assert cfg.key_field.name == "person_id"
    assert cfg.key_field.type == DataTypes.STRING
    assert [(f.name, f.type) for f in cfg.index_fields] == [
        ("name", DataTypes.STRING),
        ("dob", DataTypes.DATE),
    ]
    assert cfg.extract_transform == "SELECT * FROM source"
    assert SourceConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_source_refuses_the_key_as_an_index_field():
    source = SourceSpec(
        name="x",
        location=LocationConfig(type=LocationType.PARQUET, name="x.parquet"),
        key_field="id",
        index_fields=["id", "name"],
    )
    with pytest.raises(ValidationError, match="must not be an index field"):
        source.config()


def test_postgresql_streams_through_a_server_side_cursor():
    """After one batch of a large query, the rest is still on the server behind a cursor."""
    app = f"mbtest_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_uri() else "?"
    uri = f"{postgres_uri()}{sep}application_name={app}"
    sql = f"SELECT g::text AS {KEY}, 'n' || (g % 10) AS name FROM generate_series(1, 500000) g"
    batches = extract(config("rdbms", uri, sql, fields=["name"]), batch_size=1000)
    try:
        assert next(batches).height == 1000
        with psycopg.connect(postgres_uri()) as conn:
            (query,) = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()
        assert query.startswith("FETCH FORWARD")
    finally:
        batches.close()
    # Closing the generator closes the connection (the backend exits shortly after).
    with psycopg.connect(postgres_uri(), autocommit=True) as conn:
        for _ in range(50):
            (left,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()
            if left == 0:
                break
            time.sleep(0.1)
    assert left == 0
