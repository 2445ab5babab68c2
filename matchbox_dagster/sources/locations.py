"""Sources: where records come from, and how they are read in batches.

A source is described by a :class:`~matchbox_dagster.common.dtos.SourceConfig` (stored with the
step, so any later step can re-read the same data; build it from a
:class:`~matchbox_dagster.specs.SourceSpec` with ``SourceSpec.config()``) and read by
:func:`extract`, which yields polars frames of at most ``batch_size`` rows (default
:data:`~matchbox_dagster.common.settings.DEFAULT_BATCH_SIZE`) holding the key field and the index
fields.

Locations (``LocationConfig.type`` / ``name``):

``rdbms``
    ``name`` is a database URI (SQLAlchemy form, e.g. ``postgresql://…``, ``sqlite:///file.db``,
    or ``duckdb:///file.duckdb``); ``extract_transform`` is the SQL query (required). Rows are
    fetched in batches through a server-side cursor where the driver has one. A password is
    never written in the URI (it is stored and shown; ``LocationConfig`` refuses it): reference
    an environment variable, ``postgresql://reader:${PG_PASSWORD}@host/db``, filled in by
    :func:`database_engine` when connecting, and nowhere else.
``parquet`` / ``csv``
    ``name`` is a path, folder or glob; ``extract_transform`` optionally a SQL query over the
    table ``source`` (polars SQL). Scanned lazily and streamed. With ``MATCHBOX_LOCATION_ROOTS``
    set, every file must resolve under one of its folders (:mod:`.roots`). CSV columns are read
    as text, with no type inference (keys keep leading zeros; cast in the query where a type is
    needed).
``s3``
    ``name`` is ``s3://bucket/key.parquet`` or ``….csv``; the object is downloaded to a
    temporary file and read as above. The client is the one given (under Dagster, built by the
    ``S3Resource`` configured on ``MatchboxResource``, :func:`s3_client_for`), else boto3 with
    endpoint and credentials from :class:`~matchbox_dagster.common.settings.DatastoreSettings`
    or the standard AWS variables.
``arrow``
    ``name`` is ``module:function``, a Python callable returning a polars, pandas or Arrow
    table (for data generated in Python, e.g. the FEBRL examples); ``extract_transform`` as for
    files.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import LocationConfig, LocationType, SourceConfig
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.common.redaction import redact, redact_text, resolve_credentials
from matchbox_dagster.common.settings import DEFAULT_BATCH_SIZE
from matchbox_dagster.methods.hashing import RowDigests, digest_rows
from matchbox_dagster.sources.roots import (
    allowed_files,
    database_file_allowed,
    location_roots,
    refuse_file_functions,
)


def extract(
    config: SourceConfig,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    s3_client: Any | None = None,
    s3_client_factory: S3ClientFactory | None = None,
    roots: Sequence[str | Path] | None = None,
) -> Iterator[pl.DataFrame]:
    """Read a source in batches of at most ``batch_size`` rows: key field + index fields.

    The key is cast to ``String``; index fields keep their type. A missing column raises
    :class:`MatchboxInvalidData` naming it. File locations must resolve under ``roots``
    (default: ``MATCHBOX_LOCATION_ROOTS``; none set: anywhere), see :func:`allowed_files`.
    An S3 location is read with ``s3_client``, else ``s3_client_factory()``, else boto3 from
    the environment (:func:`s3_client_for`); the factory is called only for S3 locations.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    columns = [config.key_field.name, *(f.name for f in config.index_fields)]
    location = config.location_config
    allowed = location_roots() if roots is None else [Path(r) for r in roots]
    if location.type == LocationType.RDBMS:
        if allowed:
            database_file_allowed(location.name, allowed)
        batches = _read_database(
            location.name, config.extract_transform, batch_size, local_only=bool(allowed)
        )
    elif location.type == LocationType.S3:
        client = s3_client_for(s3_client, s3_client_factory)
        batches = _read_s3(location.name, config.extract_transform, batch_size, client)
    else:
        files = None
        if allowed:
            files = allowed_files(location, allowed)
            refuse_file_functions(location.name, config.extract_transform)
        batches = _collect(_scan(location, config.extract_transform, files), batch_size)
    for batch in batches:
        missing = [c for c in columns if c not in batch.columns]
        if missing:
            raise MatchboxInvalidData(
                f"Source {_safe(location.name)!r} has no column(s) {missing}; it has "
                f"{batch.columns}. Check key_field/index_fields or the extract_transform query."
            )
        yield batch.select(columns).with_columns(pl.col(columns[0]).cast(pl.String))


def digest_source(
    config: SourceConfig,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    s3_client: Any | None = None,
    s3_client_factory: S3ClientFactory | None = None,
) -> RowDigests:
    """Extract a source and hash its rows: enough to fingerprint it (see :class:`RowDigests`)."""
    batches = extract(
        config, batch_size=batch_size, s3_client=s3_client, s3_client_factory=s3_client_factory
    )
    return digest_rows(
        batches,
        key_field=config.key_field.name,
        index_fields=[f.name for f in config.index_fields],
    )


def index_source(
    config: SourceConfig,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    s3_client: Any | None = None,
    s3_client_factory: S3ClientFactory | None = None,
) -> SourceHashes:
    """Extract a source and hash its rows: the data its source step stores."""
    return digest_source(
        config, batch_size=batch_size, s3_client=s3_client, s3_client_factory=s3_client_factory
    ).index()


def _transform(frame: pl.LazyFrame, sql: str) -> pl.LazyFrame:
    if not sql.strip():
        return frame
    return pl.SQLContext(source=frame).execute(sql, eager=False)


def _scan(location: LocationConfig, sql: str, files: list[str] | None = None) -> pl.LazyFrame:
    """A lazy scan of a file or callable location (of ``files``, when checked and resolved)."""
    source: str | list[str] = location.name if files is None else files
    if location.type == LocationType.PARQUET:
        return _transform(pl.scan_parquet(source), sql)
    if location.type == LocationType.CSV:
        # Every column as text: inference would turn key "007" into 7, and a value past the
        # inferred prefix that does not parse would fail the scan half-way.
        return _transform(pl.scan_csv(source, infer_schema=False), sql)
    if location.type == LocationType.ARROW:
        return _transform(read_callable(location.name).lazy(), sql)
    raise MatchboxInvalidData(f"Unsupported location type {location.type!r}.")


def _collect(frame: pl.LazyFrame, batch_size: int) -> Iterator[pl.DataFrame]:
    for batch in frame.collect_batches(chunk_size=batch_size):
        if batch.height:
            yield batch


def read_callable(target: str) -> pl.DataFrame:
    """The table an ``arrow`` location's callable returns, as a polars frame.

    ``target`` is ``module:function``: the module is imported and the function called with no
    arguments; it returns a polars (lazy) frame, a pandas frame (a named index is kept as a
    column) or an Arrow table or batch. :class:`MatchboxInvalidData` says what is wrong when
    the name does not import, is not callable, or returns anything else. The extract and the
    preflight both read arrow locations through it.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise MatchboxInvalidData(
            f"An arrow location names a callable as 'module:function'; got {target!r}."
        )
    try:
        function: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MatchboxInvalidData(f"Cannot import the source callable {target!r}: {exc}") from exc
    if not callable(function):
        raise MatchboxInvalidData(f"The source {target!r} is not callable.")
    data = function()
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pa.Table | pa.RecordBatch):
        return pl.DataFrame(pl.from_arrow(data))
    if type(data).__module__.split(".")[0] == "pandas" and type(data).__name__ == "DataFrame":
        # A named index (e.g. recordlinkage's ``rec_id``) is data, often the key: keep it.
        named = any(name is not None for name in data.index.names)
        return pl.from_pandas(data, include_index=named)
    raise MatchboxInvalidData(
        f"The source callable {target!r} returned a {type(data).__name__}; it must return a "
        "polars, pandas or Arrow table."
    )


def _read_database(
    uri: str, sql: str, batch_size: int, *, local_only: bool = False
) -> Iterator[pl.DataFrame]:
    """A database query's rows in batches (``local_only``: DuckDB may read no other file)."""
    if not sql.strip():
        raise MatchboxInvalidData(
            f"A database source needs an extract_transform query; none given for {_safe(uri)}."
        )
    if uri.startswith("duckdb://"):
        import duckdb

        path = uri.removeprefix("duckdb://").removeprefix("/") or ":memory:"
        settings = {"enable_external_access": False} if local_only else {}
        with duckdb.connect(path, read_only=path != ":memory:", config=settings) as con:
            relation = con.sql(sql)
            if relation is None:
                raise MatchboxInvalidData(f"The extract_transform of {uri!r} is not a query.")
            # DuckDB 2 dropped the connection's fetch_record_batch; 1.x lacks to_arrow_reader.
            if hasattr(relation, "to_arrow_reader"):
                reader = relation.to_arrow_reader(batch_size)
            else:
                reader = relation.fetch_arrow_reader(batch_size)
            for record_batch in reader:
                if record_batch.num_rows:
                    yield pl.DataFrame(pl.from_arrow(record_batch))
        return
    # A failure is re-raised with every form of the password taken out, without the driver's
    # error chained (Dagster records the chain).
    engine, secrets = database_engine(uri)
    failure = None
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(stream_results=True, max_row_buffer=batch_size)
            yield from pl.read_database(
                sql, conn, iter_batches=True, batch_size=batch_size, infer_schema_length=None
            )
    except Exception as exc:  # the driver's errors, of many types
        failure = redact_text(f"{type(exc).__name__}: {exc}", secrets)
    finally:
        engine.dispose()
    if failure is not None:
        raise MatchboxInvalidData(f"Reading the database source {_safe(uri)} failed: {failure}")


def database_engine(uri: str) -> tuple[Any, list[str]]:
    """A SQLAlchemy engine for a database location, and the secrets it was given.

    The location's ``${NAME}`` references are filled in from the environment here, at connect
    time, and nowhere else. Pass the secrets to
    :func:`~matchbox_dagster.common.redaction.redact_text` before showing any error of the
    engine's. The caller disposes of the engine.
    """
    import sqlalchemy as sa

    resolved, secrets = resolve_credentials(uri)
    return sa.create_engine(_sqlalchemy_uri(resolved), hide_parameters=True), secrets


def _sqlalchemy_uri(uri: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri.removeprefix(prefix)
    return uri


def s3_object(uri: str) -> tuple[str, str, str]:
    """Bucket, key and suffix (``.parquet`` or ``.csv``) of an s3 location, else a clear error."""
    if not uri.startswith("s3://") or "/" not in uri.removeprefix("s3://"):
        raise MatchboxInvalidData(f"An s3 location is 's3://bucket/key'; got {uri!r}.")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    suffix = Path(key).suffix.lower()
    if suffix not in {".parquet", ".csv"}:
        raise MatchboxInvalidData(f"S3 sources are .parquet or .csv objects; got {key!r}.")
    return bucket, key, suffix


def _read_s3(uri: str, sql: str, batch_size: int, client: Any) -> Iterator[pl.DataFrame]:
    bucket, key, suffix = s3_object(uri)
    with tempfile.TemporaryDirectory(prefix="matchbox-s3-") as tmp:
        local = Path(tmp) / f"object{suffix}"
        client.download_file(bucket, key, str(local))
        kind = LocationType.PARQUET if suffix == ".parquet" else LocationType.CSV
        yield from _collect(_scan(LocationConfig(type=kind, name=str(local)), sql), batch_size)


def default_s3_client() -> Any:
    """An S3 client from ``MATCHBOX_DATASTORE__*`` settings (or the standard AWS variables)."""
    from matchbox_dagster.common.settings import MatchboxSettings

    return MatchboxSettings().datastore.get_client()


S3ClientFactory = Callable[[], Any]
"""Makes a boto3 S3 client: under Dagster, ``S3Resource.get_client`` (dagster/resources.py)."""


def s3_client_for(client: Any | None = None, factory: S3ClientFactory | None = None) -> Any:
    """The S3 client to read with: ``client``, else ``factory()``, else :func:`default_s3_client`.

    This layer never imports Dagster: the Dagster layer hands its ``S3Resource``'s client
    factory down; outside Dagster, boto3 is configured from the environment.
    """
    if client is not None:
        return client
    return factory() if factory is not None else default_s3_client()


def _safe(uri: str) -> str:
    """A URI without its password, for messages."""
    return redact(uri)


def field_names(config: SourceConfig) -> Sequence[str]:
    """The index field names of a source config."""
    return [f.name for f in config.index_fields]
