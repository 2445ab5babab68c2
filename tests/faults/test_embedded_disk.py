"""The embedded default's disk: no room for a load, then a data directory it cannot write.

The embedded server is started with a file-size limit (``RLIMIT_FSIZE``, inherited by the server
and enforced by the kernel: writes past it fail like writes to a full disk, without root or a
special filesystem), so a bulk load runs out of room. Later the server is stopped and its data
directory made unwritable. Each time the store says clearly what is wrong, and once the cause is
gone the same data is there, unchanged.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.errors import MatchboxConnectionError, MatchboxDatabaseWriteError
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, embedded
from tests.faults.workload import digest, source_step, source_table

FILE_LIMIT = 24 * 2**20  # bytes; WAL segments (16 MiB) fit, a 500k-key source partition does not


def stop_server(data_dir: Path) -> None:
    """Stop the embedded server this process started under ``data_dir``."""
    server = embedded._servers.pop(data_dir.resolve())
    server._cleanup()  # type: ignore[attr-defined]


def state(store: MatchboxPostgres) -> dict[str, str]:
    with psycopg.connect(store.db.uri, autocommit=True) as conn:
        return digest(conn, store.db.schema)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory outside pytest's tmp tree (whose root other pytest sessions may close to
    everyone but its owner, while the server, run as another user under root, still needs it).

    The wheel's lock file (``XDG_RUNTIME_DIR``, which the store otherwise puts next to the data
    directory) goes to pytest's tmp tree, so nothing is left behind in /tmp.
    """
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    path = Path(tempfile.mkdtemp(prefix="mb-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_disk_faults(scratch: Path) -> None:
    data_dir = scratch / "pg"
    settings = MatchboxSettings(postgres_uri=None, embedded_data_dir=data_dir, retries=2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, hard))
    try:
        store = MatchboxPostgres(settings)  # initdb and start under the limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        store.create_collection("disk")
        run = store.create_run("disk").run_id
        small = source_table(1000, seed=1, prefix="small")
        kept = StepPath(collection="disk", run=run, name="kept")
        store.create_step(source_step(small, "kept"), kept)
        store.insert_source_data(kept, small)

        # 1. No room for the load: a clear error, nothing written, the server still serves.
        big = source_table(500_000, seed=2, prefix="big")
        path = StepPath(collection="disk", run=run, name="big")
        store.create_step(source_step(big, "big"), path)
        before = state(store)
        started = time.monotonic()
        with pytest.raises(MatchboxDatabaseWriteError) as info:
            store.insert_source_data(path, big)
        assert time.monotonic() - started < 30
        message = str(info.value)
        assert "insert_source_data" in message and "could not extend file" in message
        assert "nothing was changed" in message and str(data_dir.resolve()) in message
        assert state(store) == before
        assert store.get_step_stage(path) == UploadStage.READY
        assert store.query(kept).num_rows == 1000
        store.close()
        stop_server(data_dir)

        # 2. The data directory cannot be written: the server cannot start; a clear error.
        data_dir.chmod(0o500)
        try:
            with pytest.raises(MatchboxConnectionError) as info:
                MatchboxPostgres(settings)
            message = str(info.value)
            assert f"The embedded PostgreSQL under {data_dir.resolve()} could not start" in message
            assert "writable" in message and "disk is not full" in message
        finally:
            data_dir.chmod(0o700)

        # 3. Writable again, and no file-size limit: everything is as it was; the load fits.
        store = MatchboxPostgres(settings)
        assert state(store) == before
        assert store.query(kept).num_rows == 1000
        store.insert_source_data(path, big)
        assert store.query(path).num_rows == 500_000
    finally:
        store.close()
        if data_dir.resolve() in embedded._servers:
            stop_server(data_dir)
