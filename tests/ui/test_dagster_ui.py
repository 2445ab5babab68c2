"""The real Dagster UI, in a real browser: the default run is marked, a check shows its partition.

The test materialises two runs of a collection with the CLI (``check`` adds ``ci-0001``, not
promoted; ``demo`` adds ``run-0001``, promoted by the sensor), starts ``dagster-webserver`` on a
free loopback port over the same Dagster home, and drives Debian's chromium with Playwright
(no browser download: ``executable_path``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from matchbox_dagster.cli import main
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.browser import chromium

DEFS = """
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec

defs = build_collection_defs(febrl4_spec(collection={collection!r}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reset_sigint() -> None:
    # A process started from a background shell job inherits SIGINT ignored; Dagster's
    # webserver then ignores SIGTERM too. Restore the default so it stops when told.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ui_project(
    settings: MatchboxSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str, dict[str, str]]:
    """A definitions file, a Dagster home and the environment pointing both at the store."""
    assert settings.postgres_uri is not None
    collection = f"ui_{uuid.uuid4().hex[:8]}"
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = tmp_path / "definitions.py"
    defs.write_text(DEFS.format(collection=collection))
    env = {
        "MATCHBOX_POSTGRES_URI": settings.postgres_uri.get_secret_value(),
        "MATCHBOX_POSTGRES_SCHEMA": settings.postgres_schema,
        "DAGSTER_HOME": str(home),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return defs, collection, env


@pytest.fixture
def webserver(ui_project: tuple[Path, str, dict[str, str]]) -> Iterator[str]:
    """``dagster-webserver`` over the project, on a free loopback port; its base URL."""
    defs, _, env = ui_project
    port = _free_port()
    log = defs.parent / "webserver.log"
    binary = Path(sys.executable).with_name("dagster-webserver")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-f", str(defs), "-h", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **env},
            cwd=defs.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_reset_sigint,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"webserver exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"webserver not up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _text(page: Page, url: str, expect: str) -> list[str]:
    """Open ``url`` and wait for ``expect`` to show; the page's non-empty text lines."""
    page.goto(url)
    page.get_by_text(expect, exact=True).first.wait_for(timeout=60_000)
    return [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]


def _after(lines: list[str], name: str) -> str:
    """The line after the first line reading ``name`` (a metadata or field value)."""
    assert name in lines, f"{name!r} not on the page: {lines[:80]}"
    return lines[lines.index(name) + 1]


def test_ui_marks_the_default_run_and_shows_a_checks_partition(
    ui_project: tuple[Path, str, dict[str, str]],
    store: MatchboxPostgres,
    webserver: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    defs, collection, _ = ui_project
    assert main(["check", "--definitions", str(defs)]) == 0  # ci-0001, passes, not promoted
    assert main(["demo", "--definitions", str(defs)]) == 0  # run-0001, promoted by the sensor
    capsys.readouterr()
    default = store.get_collection(collection).default_run
    assert store.run_labels(collection)[default] == "run-0001"  # type: ignore[index]

    asset = f"{webserver}/assets/{collection}/people"
    with chromium() as browser:
        try:
            page = browser.new_page()
            # The UI's first-visit "join the community" dialog would cover the page: mark it
            # dismissed, as the UI itself does when one clicks "Skip".
            page.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
            # The resolver's events: an observation names the default run (text, not a plot).
            lines = _text(page, f"{asset}?view=events", "matchbox/default_run")
            assert _after(lines, "matchbox/default_run") == "run-0001"
            assert "Partition run-0001 observed" in lines
            assert _after(lines, "matchbox/promoted_by") == f"sensor {collection}_promotion"

            # A check's latest execution names its partition (the run label), not "—".
            lines = _text(page, f"{asset}?view=checks&checkDetail=evaluation", "Partition")
            assert _after(lines, "Partition") == "run-0001"
            assert "Passed" in lines
            # Its execution history lists both runs' partitions.
            page.get_by_text("Execution history", exact=True).first.click()
            page.get_by_text("ci-0001", exact=True).first.wait_for(timeout=60_000)
            assert page.get_by_text("run-0001", exact=True).count() >= 1
        except Exception:
            page.screenshot(path=str(defs.parent / "failure.png"))
            raise
