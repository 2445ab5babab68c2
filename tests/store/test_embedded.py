"""The zero-set-up default: no URI ⇒ an embedded PostgreSQL from the wheel."""

from __future__ import annotations

from pathlib import Path

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_source, ids_of


def test_embedded_server_when_no_uri(tmp_path: Path) -> None:
    settings = MatchboxSettings(postgres_uri=None, embedded_data_dir=tmp_path / "pg")
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
    assert (tmp_path / "pg" / "PG_VERSION").exists()
