"""The preflight runs once per Dagster run, whichever process a step runs in.

The pass is a tag of the Dagster run (``matchbox/preflight: passed``, set through
``dagster/resources.py``'s :class:`RunTags`); steps of one run on one machine take turns on a lock,
so those starting together wait for the first one's verdict instead of each re-reading every
source. The source here counts its reads (``tests/specs/preflight_once_defs.py``).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.dagster.resources import PREFLIGHT_TAG, RunTags
from matchbox_dagster.specs.preflight import PreflightError, RunPreflight
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.specs.preflight_once_defs import spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the counting source appends a line to at each read."""
    path = tmp_path / "reads.txt"
    path.touch()
    monkeypatch.setenv("MB_TEST_COUNTER", str(path))
    return path


def _reads(counter: Path, who: str = "preflight") -> int:
    return sum(line.startswith(f"{who} ") for line in counter.read_text().splitlines())


def _a_run(instance: dg.DagsterInstance) -> str:
    """A real Dagster run id on ``instance``."""

    @dg.asset(name=f"noop_{uuid.uuid4().hex[:8]}")
    def noop() -> None:
        return None

    return dg.materialize([noop], instance=instance).run_id


def test_a_pass_recorded_in_the_run_tags_is_seen_by_another_process(counter: Path) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        run_id, other_run = _a_run(instance), _a_run(instance)
        first = RunPreflight(spec("once_tags"))
        first(run_id, marker=RunTags(instance))
        assert (first.checks, _reads(counter)) == (1, 1)
        assert instance.get_run_by_id(run_id).tags[PREFLIGHT_TAG] == "passed"  # type: ignore[union-attr]

        # A fresh object, as in another step process: the tagged run is not checked again,
        # even though this spec would now fail (its source cannot be imported).
        broken = spec("once_tags")
        location = broken.sources[0].location.model_copy(update={"name": "nowhere.at:all"})
        source = broken.sources[0].model_copy(update={"location": location})
        second = RunPreflight(broken.model_copy(update={"sources": [source]}))
        second(run_id, marker=RunTags(instance))
        assert second.checks == 0
        with pytest.raises(PreflightError, match=r"nowhere\.at:all"):
            second(other_run, marker=RunTags(instance))  # an untagged run is checked
        assert PREFLIGHT_TAG not in instance.get_run_by_id(other_run).tags  # type: ignore[union-attr]


def test_steps_starting_together_check_once(
    counter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        run_id = _a_run(instance)
    script = (
        "import sys, dagster as dg\n"
        "from matchbox_dagster.dagster.resources import RunTags\n"
        "from matchbox_dagster.specs.preflight import RunPreflight\n"
        "from tests.specs.preflight_once_defs import spec\n"
        "with dg.DagsterInstance.get() as instance:\n"
        "    RunPreflight(spec('once_lock'))(sys.argv[1], marker=RunTags(instance))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, run_id], cwd=ROOT, text=True)
        for _ in range(3)
    ]
    assert [p.wait(timeout=600) for p in processes] == [0, 0, 0]
    assert _reads(counter) == 1


def test_a_multiprocess_run_checks_once(
    counter: Path,
    settings: MatchboxSettings,
    mb_store: MatchboxPostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three step processes, one preflight (before: one in each step process, three)."""
    assert settings.postgres_uri is not None
    collection = f"once_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", settings.postgres_uri.get_secret_value())
    monkeypatch.setenv("MATCHBOX_POSTGRES_SCHEMA", settings.postgres_schema)
    monkeypatch.setenv("MB_TEST_COLLECTION", collection)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        label, _ = add_run_partition(instance, mb_store, collection, "p1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.specs.preflight_once_defs", label],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _reads(counter) == 1
    assert _reads(counter, "data") >= 1  # the source step did read it
    run_id = next(line for line in done.stdout.splitlines() if line.startswith("RUN "))[4:]
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).tags[PREFLIGHT_TAG] == "passed"  # type: ignore[union-attr]
