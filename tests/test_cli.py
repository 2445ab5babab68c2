"""``matchbox-dagster``: demo, check (the CI gate), runs, promote and query, in process."""

from pathlib import Path

import polars as pl
import pytest

from matchbox_dagster.cli import main
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres

STRICT = """
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec

defs = build_collection_defs(
    febrl4_spec(collection="cli_strict", min_precision=0.99999, min_recall=0.99999)
)
"""
LENIENT = STRICT.replace("cli_strict", "cli_lenient").replace("0.99999", "0.9")


@pytest.fixture
def cli_env(settings: MatchboxSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI pointed at the session's store schema and a throwaway Dagster home."""
    assert settings.postgres_uri is not None
    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", settings.postgres_uri.get_secret_value())
    monkeypatch.setenv("MATCHBOX_POSTGRES_SCHEMA", settings.postgres_schema)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "strict.py").write_text(STRICT)
    (tmp_path / "lenient.py").write_text(LENIENT)
    return tmp_path


def test_check_fails_on_a_failed_evaluation_and_passes_otherwise(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--definitions", str(cli_env / "strict.py"), "--label", "ci-1"]) == 1
    out = capsys.readouterr()
    assert "check cli_strict/people:evaluation" in out.out and "FAIL" in out.out
    assert "people:evaluation" in out.err
    assert store.get_collection("cli_strict").default_run is None

    assert main(["check", "--definitions", str(cli_env / "lenient.py"), "--label", "ci-1"]) == 0
    assert "all blocking checks passed" in capsys.readouterr().out


def test_demo_promotes_then_runs_promote_and_query(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    lenient = str(cli_env / "lenient.py")
    assert main(["demo", "--definitions", lenient, "--label", "first"]) == 0
    first = store.run_for_label("cli_lenient", "first", create=False).run_id
    assert store.get_collection("cli_lenient").default_run == first
    assert main(["demo", "--definitions", lenient, "--label", "second"]) == 0
    second = store.run_for_label("cli_lenient", "second", create=False).run_id
    assert store.get_collection("cli_lenient").default_run == second
    capsys.readouterr()

    assert main(["runs", "--definitions", lenient]) == 0
    listing = capsys.readouterr().out
    assert "first" in listing and "second" in listing

    # Rollback to the first run is one command.
    assert main(["promote", "--definitions", lenient, "--label", "first"]) == 0
    assert store.get_collection("cli_lenient").default_run == first

    output = cli_env / "people.parquet"
    assert (
        main(["query", "--definitions", lenient, "--source", "febrl_b", "--output", str(output)])
        == 0
    )
    frame = pl.read_parquet(output)
    assert frame.height == 5000
    assert frame.get_column("key").n_unique() == 5000


def test_promote_unknown_label_is_a_clear_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lenient = str(cli_env / "lenient.py")
    assert main(["check", "--definitions", lenient, "--label", "exists"]) == 0
    assert main(["promote", "--definitions", lenient, "--label", "nope"]) == 2
    assert "no run labelled 'nope'" in capsys.readouterr().err
