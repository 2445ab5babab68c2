"""Helpers for running the real ``matchbox-dagster`` CLI in a subprocess against the test store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matchbox_dagster.common.settings import MatchboxSettings
from tests.conftest import postgres_uri

SCRIPT = Path(sys.executable).parent / "matchbox-dagster"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "matchbox_dagster.cli"]
"""The installed console script (what a user types), else the module."""


class Cli:
    """``matchbox-dagster`` run as a new process in ``cwd``, on the session's store schema."""

    def __init__(self, settings: MatchboxSettings, home: Path) -> None:
        self.env = {
            **os.environ,
            "MATCHBOX_POSTGRES_URI": postgres_uri(),
            "MATCHBOX_POSTGRES_SCHEMA": settings.postgres_schema,
            "DAGSTER_HOME": str(home),
        }
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def __call__(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run one command; the result holds its exit code and output."""
        return subprocess.run(
            [*COMMAND, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture
def cli(settings: MatchboxSettings, tmp_path: Path) -> Cli:
    """The CLI on this session's store, with a Dagster home of the test's own."""
    return Cli(settings, tmp_path / "dagster_home")


