"""``dagster definitions validate`` on the shipped definitions, as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matchbox_dagster.common.settings import MatchboxSettings

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")


def _validate(
    args: list[str], settings: MatchboxSettings, home: Path
) -> subprocess.CompletedProcess:
    assert settings.postgres_uri is not None
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # Validation must not need the store, but never let it start an embedded server here.
        "MATCHBOX_POSTGRES_URI": settings.postgres_uri.get_secret_value(),
        "MATCHBOX_POSTGRES_SCHEMA": settings.postgres_schema,
    }
    return subprocess.run(
        [str(DAGSTER), "definitions", "validate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "args", [["-f", "definitions.py"], ["-w", "workspace.yaml"]], ids=["file", "workspace"]
)
def test_definitions_validate(args: list[str], settings: MatchboxSettings, tmp_path: Path) -> None:
    done = _validate(args, settings, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "All code locations passed validation" in output


def test_definitions_validate_reports_an_invalid_graph(
    settings: MatchboxSettings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_definitions.py"
    broken.write_text(
        "from matchbox_dagster.dagster.collection import build_collection_defs\n"
        "from matchbox_dagster.examples.febrl import febrl4_spec\n"
        "spec = febrl4_spec(collection='broken')\n"
        "people = spec.resolvers[0]\n"
        "people = people.model_copy(update={'thresholds': {**people.thresholds, 'ghost': 0.5}})\n"
        "defs = build_collection_defs(spec.model_copy(update={'resolvers': [people]}))\n"
    )
    done = _validate(["-f", str(broken)], settings, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "DagsterInvalidDefinitionError" in output
    assert "thresholds for ['ghost']" in output
