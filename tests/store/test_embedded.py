"""The zero-set-up default: no URI ⇒ an embedded PostgreSQL from the wheel."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, embedded
from tests.factories import add_source, ids_of


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data directory outside pytest's tmp tree, whose root pytest may close to everyone but
    its owner while the server (run as another user under root) still needs it; the server is
    stopped and the directory removed afterwards."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    scratch = Path(tempfile.mkdtemp(prefix="mb-embedded-"))
    scratch.chmod(0o755)
    path = (scratch / "pg").resolve()
    yield path
    server = embedded._servers.pop(path, None)
    if server is not None:
        embedded._release(path, server)
    shutil.rmtree(scratch, ignore_errors=True)


def test_embedded_server_when_no_uri(data_dir: Path) -> None:
    settings = MatchboxSettings(postgres_uri=None, embedded_data_dir=data_dir)
    store = MatchboxPostgres(settings)
    try:
        assert "host=" in store.db.uri  # a Unix socket, not a TCP port
        store.create_collection("embedded")
        run = store.create_run("embedded").run_id
        src = add_source(store, "embedded", run, "people", {"alice": ["1"], "bob": ["2"]})
        assert set(ids_of(store, src, None)) == {"1", "2"}
        # A second store on the same data directory reuses the running server.
        again = MatchboxPostgres(settings)
        assert again.list_collections() == ["embedded"]
        again.close()
    finally:
        store.close()
    assert (data_dir / "PG_VERSION").exists()
    assert (data_dir / embedded.INITIALISED).exists()  # initdb finished before it was moved in
