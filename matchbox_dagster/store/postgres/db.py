"""Connections to the store's PostgreSQL: a SQLAlchemy engine for metadata, ADBC for bulk data.

All SQL the store runs is either fixed text with bound parameters, or text composed with
``psycopg.sql`` / :func:`quote_ident` from identifiers the store controls (its schema name, which
is validated, and partition names built from integer step ids). No user string ever becomes SQL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import sqlalchemy as sa

from matchbox_dagster.common.errors import MatchboxConnectionError
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres.embedded import embedded_uri

logger = logging.getLogger(__name__)
T = TypeVar("T")


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (safe for logs and errors)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (doubling embedded quotes)."""
    return '"' + name.replace('"', '""') + '"'


def compose(template: str, **identifiers: str) -> str:
    """Fill ``{name}`` placeholders of fixed SQL text with quoted identifiers, and nothing else.

    The one place where the store builds SQL text: values always travel as bound parameters;
    only identifiers the store controls (table and column names, partition names made from
    integer step ids) are spliced in, quoted.
    """
    return template.format(**{k: quote_ident(v) for k, v in identifiers.items()})


class Database:
    """The store's connections: URI, schema, engine and ADBC connections."""

    def __init__(self, settings: MatchboxSettings) -> None:
        self.settings = settings
        self.schema = settings.postgres_schema
        if settings.postgres_uri is not None:
            self.uri = settings.postgres_uri.get_secret_value()
        else:
            self.uri = embedded_uri(settings.embedded_data_dir)
        self.engine = sa.create_engine(
            _sqlalchemy_uri(self.uri),
            pool_pre_ping=True,
            pool_size=4,
            max_overflow=8,
            connect_args={"options": f"-c search_path={self.schema},public"},
        )
        self._adbc_lock = threading.Lock()
        self._adbc_idle: list[adbc.Connection] = []

    def __repr__(self) -> str:
        return f"Database({redact(self.uri)!r}, schema={self.schema!r})"

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
        with self._adbc_lock:
            idle, self._adbc_idle = self._adbc_idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg connection inside one transaction (commit on success)."""
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            yield raw

    @contextlib.contextmanager
    def adbc(self) -> Iterator[adbc.Connection]:
        """A pooled ADBC connection (autocommit off) with the store's search path.

        Whatever the block does not commit is rolled back when it ends; a connection that
        failed is closed instead of being returned to the pool.
        """
        conn = self._take_adbc()
        healthy = False
        try:
            yield conn
            healthy = True
        finally:
            try:
                conn.rollback()
            except Exception:  # a broken connection cannot roll back; it is discarded
                healthy = False
            if healthy and len(self._adbc_idle) < 4:
                with self._adbc_lock:
                    self._adbc_idle.append(conn)
            else:
                with contextlib.suppress(Exception):
                    conn.close()

    def _take_adbc(self) -> adbc.Connection:
        with self._adbc_lock:
            if self._adbc_idle:
                return self._adbc_idle.pop()
        try:
            conn = adbc.connect(self.uri)
        except Exception as exc:
            raise MatchboxConnectionError(
                f"Could not connect to PostgreSQL at {redact(self.uri)}: {_first_line(exc)}"
            ) from None
        with conn.cursor() as cur:
            cur.execute(f"SET search_path TO {quote_ident(self.schema)}, public")
        conn.commit()
        return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sqlalchemy_uri(uri: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix) :]
    raise MatchboxConnectionError(
        f"MATCHBOX_POSTGRES_URI must start with postgresql://, got {redact(uri)!r}."
    )


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg or ADBC error, if any."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return str(state)
    diag = getattr(exc, "diag", None)
    return getattr(diag, "sqlstate", None) if diag is not None else None
