"""Connections to the store's PostgreSQL: a SQLAlchemy engine for metadata, ADBC for bulk data.

All SQL the store runs is either fixed text with bound parameters, or text composed with
``psycopg.sql`` / :func:`quote_ident` from identifiers the store controls (its schema name, which
is validated, and partition names built from integer step ids). No user string ever becomes SQL.

Faults: :meth:`Database.retry` runs one whole store call (one transaction, or a sequence of
idempotent ones) again after a *transient* error — the connection was lost or refused while the
server restarts (SQLSTATE class 08, 57P01/57P02/57P03, 53300, libpq's "server closed the
connection", "Connection refused", …), or a serialization failure or deadlock (40001, 40P01) —
with capped exponential backoff and jitter until ``settings.retry_max_seconds`` have passed
since the call began (the time budget: the last wait is cut to end at it, and one last attempt
runs then), at most ``settings.retries`` times. Everything else fails at once: our own errors
(``MatchboxError``) as they are, a refused connection (bad password, unknown database or role)
as :class:`MatchboxConnectionError`, any other database error as
:class:`MatchboxDatabaseWriteError`; each names the server with its password redacted. Pooled
connections recover after a restart: SQLAlchemy pings before each checkout, ADBC connections
idle for a while are pinged, and a lost connection empties the ADBC pool.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import unquote

import psycopg
import sqlalchemy as sa

from matchbox_dagster.common.errors import (
    MatchboxConnectionError,
    MatchboxDatabaseWriteError,
    MatchboxError,
)
from matchbox_dagster.common.redaction import redact
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres.embedded import embedded_uri

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc


def adbc_dbapi() -> ModuleType:
    """The ADBC driver's DB-API module, imported on first use (it imports pandas: ~0.6 s)."""
    import adbc_driver_postgresql.dbapi

    return adbc_driver_postgresql.dbapi


logger = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10
"""libpq ``connect_timeout`` when the URI sets none: a server that does not answer counts as
unreachable after this long (then the call's retries decide)."""

ADBC_PING_AFTER_SECONDS = 1.0
"""An ADBC connection idle in the pool for longer than this is pinged before it is handed out."""

BACKOFF_FIRST_SECONDS = 0.25
"""The first retry waits about this long; each further one twice as long (with jitter)."""

BACKOFF_MAX_SECONDS = 4.0
"""No single backoff wait is longer than this (so a server that is back is seen soon)."""

TRANSIENT_SQLSTATES = frozenset(
    {
        "08000",  # connection_exception
        "08001",  # sqlclient_unable_to_establish_sqlconnection
        "08003",  # connection_does_not_exist
        "08006",  # connection_failure
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery)
    }
)
"""SQLSTATEs after which the whole call is run again."""

_PERMANENT_CONNECT = re.compile(
    r"does not exist|authentication failed|pg_hba\.conf|password|not permitted to log in|"
    r"permission denied|invalid (?:connection option|URI|integer value|sslmode)|"
    r"certificate|no such user",
    re.IGNORECASE,
)
"""Connection failures no retry can mend (libpq gives them without a SQLSTATE)."""

_TRANSIENT_CONNECT = re.compile(
    r"connection refused|server closed the connection|terminating connection|"
    r"no connection to the server|connection is (?:lost|closed|bad)|could not receive data|"
    r"could not send data|connection reset|broken pipe|timeout expired|timed out|"
    r"starting up|shutting down|in recovery mode|not yet accepting connections|"
    r"too many clients|no such file or directory|consuming input failed|"
    r"lost synchronization|could not translate host name|network is unreachable|"
    r"no route to host|ssl syscall|eof detected",
    re.IGNORECASE,
)
"""Messages of connection failures that end when the server is back."""

Fault = Literal["transient", "refused", "database"]


class CommitInDoubt(MatchboxConnectionError):
    """The connection was lost while committing: the transaction may or may not have applied."""


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
    """The store's connections: URI, schema, engine and ADBC connections, and call retries."""

    def __init__(self, settings: MatchboxSettings) -> None:
        self.settings = settings
        self.schema = settings.postgres_schema
        if settings.postgres_uri is not None:
            self.uri = settings.postgres_uri.get_secret_value()
        else:
            self.uri = embedded_uri(settings.embedded_data_dir)
        self._adbc_uri = _with_connect_timeout(self.uri)
        self.engine = sa.create_engine(
            _sqlalchemy_uri(self.uri),
            pool_pre_ping=True,
            pool_size=4,
            max_overflow=8,
            connect_args={
                "options": f"-c search_path={self.schema},public",
                **(
                    {}
                    if "connect_timeout" in self.uri
                    else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
                ),
            },
        )
        self._adbc_lock = threading.Lock()
        self._adbc_idle: list[tuple[adbc.Connection, int, float]] = []
        self._generation = 0
        self.retry("connecting", self._ping)

    def __repr__(self) -> str:
        return f"Database({redact(self.uri)!r}, schema={self.schema!r})"

    @property
    def server(self) -> str:
        """The server's URI with any password redacted, for messages.

        Percent-decoded, so that an embedded server's socket directory reads as a path.
        """
        return unquote(redact(self.uri))

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
        self._drop_idle_adbc()

    def invalidate(self) -> None:
        """Forget pooled connections after a lost connection (the server may have restarted).

        Idle ADBC connections are closed and those in use are closed when they come back;
        SQLAlchemy's pool pings each connection before handing it out.
        """
        with self._adbc_lock:
            self._generation += 1
        self._drop_idle_adbc()

    def _drop_idle_adbc(self) -> None:
        with self._adbc_lock:
            idle, self._adbc_idle = self._adbc_idle, []
        for conn, _, _ in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def _ping(self) -> None:
        with self.connection() as conn:
            conn.execute("SELECT 1")

    # --- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg connection inside one transaction (commit on success).

        A failure inside the block rolls the transaction back; a lost connection while
        committing raises :class:`CommitInDoubt`.
        """
        with self.engine.connect() as sa_conn:
            raw = sa_conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            try:
                try:
                    yield raw
                except BaseException:
                    with contextlib.suppress(Exception):
                        raw.rollback()
                    raise
                self._commit(raw.commit)
            finally:
                if getattr(raw, "broken", False) or raw.closed:
                    sa_conn.invalidate()

    @contextlib.contextmanager
    def adbc(self) -> Iterator[adbc.Connection]:
        """A pooled ADBC connection (autocommit off) with the store's search path.

        Whatever the block does not commit is rolled back when it ends; a connection that
        failed is closed instead of being returned to the pool. A lost connection during
        ``conn.commit()`` raises :class:`CommitInDoubt`.
        """
        conn, generation = self._take_adbc()
        healthy = False
        try:
            yield conn
            healthy = True
        finally:
            try:
                conn.rollback()
                # Some drivers end a transaction with ROLLBACK AND CHAIN (ADBC 1.11), which
                # carries a READ ONLY or isolation level set for it into the next one: a
                # connection whose next transaction is not the session's default is dropped.
                healthy = healthy and _adbc_is_reset(conn)
            except Exception:  # a broken connection cannot roll back; it is discarded
                healthy = False
            with self._adbc_lock:
                keep = healthy and generation == self._generation and len(self._adbc_idle) < 4
                if keep:
                    self._adbc_idle.append((conn, generation, time.monotonic()))
            if not keep:
                with contextlib.suppress(Exception):
                    conn.close()

    def _take_adbc(self) -> tuple[adbc.Connection, int]:
        while True:
            with self._adbc_lock:
                if not self._adbc_idle:
                    generation = self._generation
                    break
                conn, generation, since = self._adbc_idle.pop()
            if time.monotonic() - since < ADBC_PING_AFTER_SECONDS or _adbc_alive(conn):
                return conn, generation
            with contextlib.suppress(Exception):
                conn.close()
        try:
            conn = adbc_dbapi().connect(self._adbc_uri)
        except adbc_dbapi().Error as exc:
            fault = classify(exc)
            error = MatchboxConnectionError(
                f"Could not connect to PostgreSQL at {self.server}: {_first_line(exc)}"
            )
            error.transient = fault == "transient"  # type: ignore[attr-defined]
            raise error from exc
        raw_commit = conn.commit
        with conn.cursor() as cur:
            cur.execute(f"SET search_path TO {quote_ident(self.schema)}, public")
        raw_commit()
        conn.commit = lambda: self._commit(raw_commit)  # type: ignore[method-assign]
        return conn, generation

    def _commit(self, commit: Callable[[], None]) -> None:
        try:
            commit()
        except Exception as exc:
            if classify(exc) == "transient" and sqlstate(exc) not in ("40001", "40P01"):
                raise CommitInDoubt(
                    f"The connection to PostgreSQL at {self.server} was lost while committing: "
                    f"{_first_line(exc)}"
                ) from exc
            raise

    # --- retries --------------------------------------------------------------------------

    def retry(
        self,
        what: str,
        call: Callable[[], T],
        *,
        done_if: tuple[type[BaseException], ...] = (),
        repeatable: bool = True,
    ) -> T:
        """Run ``call`` (one whole unit of work), again after transient errors.

        ``what`` names the call in messages. When an attempt was lost while committing, the
        next one may find its work done: ``done_if`` are the errors that then mean success (e.g.
        "already exists" after a create), and a call that is not ``repeatable`` (it would do its
        work twice) is not run again but fails with :class:`CommitInDoubt`.
        """
        retries = self.settings.retries
        budget = self.settings.retry_max_seconds
        started = time.monotonic()
        deadline = started + budget
        in_doubt = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Exception as exc:
                if in_doubt and done_if and isinstance(exc, done_if):
                    logger.warning(
                        "%s: the attempt whose commit was cut off had succeeded (%s)",
                        what,
                        _first_line(exc),
                    )
                    return None  # type: ignore[return-value]
                fault = classify(exc)
                if fault is None:
                    raise
                if fault == "refused" and self.settings.postgres_uri is None:
                    raise MatchboxConnectionError(
                        f"The embedded PostgreSQL under {self.settings.embedded_data_dir} "
                        f"refused the connection ({what}): {_cause_line(exc)}. "
                        "MATCHBOX_POSTGRES_URI is unset, so the data directory itself is at "
                        "fault (damaged, or not made by this library): move it away to start "
                        "afresh, or set MATCHBOX_EMBEDDED_DATA_DIR or MATCHBOX_POSTGRES_URI."
                    ) from exc
                if fault == "refused":
                    raise MatchboxConnectionError(
                        f"PostgreSQL at {self.server} refused the connection ({what}): "
                        f"{_cause_line(exc)}. This is not transient: check MATCHBOX_POSTGRES_URI "
                        "(host, port, database, user, password) and the server's access rules."
                    ) from exc
                if fault == "database":
                    state = sqlstate(exc)
                    raise MatchboxDatabaseWriteError(
                        f"PostgreSQL at {self.server} failed {what}: {_cause_line(exc)}"
                        f"{f' (SQLSTATE {state})' if state else ''}. The transaction was rolled "
                        "back: nothing was changed."
                    ) from exc
                if sqlstate(exc) not in ("40001", "40P01"):
                    self.invalidate()
                if isinstance(exc, CommitInDoubt):
                    in_doubt = True
                    if not repeatable:
                        raise CommitInDoubt(
                            f"{exc} — {what} may or may not have been applied, and running it "
                            "again could apply it twice: look before retrying."
                        ) from exc
                now = time.monotonic()
                if attempt > retries or now >= deadline:
                    elapsed = now - started
                    tried = f"{attempt} attempt{'s' if attempt > 1 else ''} over {elapsed:.1f}s"
                    raise MatchboxConnectionError(
                        f"{what} failed after {tried} (MATCHBOX_RETRY_MAX_SECONDS={budget:g}, "
                        f"MATCHBOX_RETRIES={retries}); PostgreSQL at {self.server}: "
                        f"{_cause_line(exc)}. Check that the server is running and reachable."
                    ) from exc
                delay = min(backoff(attempt), deadline - now)
                logger.warning(
                    "%s: transient database error (%s); attempt %d in %.2fs (%.1fs of the %gs "
                    "retry budget left)",
                    what,
                    _cause_line(exc),
                    attempt + 1,
                    delay,
                    deadline - now,
                    budget,
                )
                time.sleep(delay)


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …): exponential, jittered.

    ``BACKOFF_FIRST_SECONDS · 2^(attempt-1)``, at most ``BACKOFF_MAX_SECONDS``, times a random
    factor in [0.5, 1) so that many clients do not come back in step.
    """
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1))
    return base * random.uniform(0.5, 1.0)


def classify(exc: BaseException) -> Fault | None:
    """What kind of failure ``exc`` is, for :meth:`Database.retry`.

    ``"transient"``: a lost or refused connection that will come back, a serialization failure
    or a deadlock — run the whole call again. ``"refused"``: the server refuses to connect
    (authentication, unknown database or role). ``"database"``: any other database error.
    ``None``: not a database error (e.g. our own ``MatchboxError``) — raise it as it is.
    """
    if isinstance(exc, CommitInDoubt):
        return "transient"
    if isinstance(exc, MatchboxConnectionError) and hasattr(exc, "transient"):
        return "transient" if exc.transient else "refused"  # type: ignore[attr-defined]
    if isinstance(exc, MatchboxError):
        return None
    driver = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    adbc = adbc_dbapi()  # only on an error: the classification needs its error types
    if not isinstance(driver, psycopg.Error | adbc.Error):
        return None
    state = sqlstate(driver)
    if state in TRANSIENT_SQLSTATES:
        return "transient"
    if state is not None and (state.startswith("28") or state == "3D000"):
        return "refused"  # invalid authorization, unknown database
    if state is None or state.startswith("08"):
        text = str(driver)
        connection_level = isinstance(
            driver,
            psycopg.OperationalError | psycopg.InterfaceError | adbc.OperationalError,
        )
        if connection_level and _PERMANENT_CONNECT.search(text):
            return "refused"
        if _TRANSIENT_CONNECT.search(text):
            return "transient"
    return "database"


def _adbc_alive(conn: adbc.Connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        conn.rollback()
    except Exception:
        return False
    return True


_TRANSACTION_IS_DEFAULT = (
    "SELECT current_setting('transaction_read_only') = "
    "(SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') "
    "AND current_setting('transaction_isolation') = "
    "(SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_isolation') "
    "AND current_setting('default_transaction_read_only') = "
    "(SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') "
    "AND current_setting('default_transaction_isolation') = "
    "(SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_isolation')"
)
"""True when a connection's transactions are as the server configured them for the session
(no ``SET TRANSACTION`` or ``SET SESSION CHARACTERISTICS`` carried over)."""


def _adbc_is_reset(conn: adbc.Connection) -> bool:
    """Whether a rolled-back ADBC connection starts its next transaction afresh (then ended)."""
    with conn.cursor() as cur:
        cur.execute(_TRANSACTION_IS_DEFAULT)
        row = cur.fetchone()
    conn.rollback()
    return bool(row and row[0])


def _with_connect_timeout(uri: str) -> str:
    """``uri`` with libpq's ``connect_timeout`` unless it sets one."""
    if "connect_timeout" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}connect_timeout={CONNECT_TIMEOUT_SECONDS}"


def _cause_line(exc: BaseException) -> str:
    """The first line of the driver's message behind ``exc``."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return _first_line(exc.orig)
    if isinstance(exc, MatchboxConnectionError) and exc.__cause__ is not None:
        return _first_line(exc.__cause__)
    return _first_line(exc)


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
