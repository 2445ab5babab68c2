"""Two runs of one collection materialised at the same time, with the multiprocess executor;
and one partition materialised twice at the same time."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.partitions import add_run_partition
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import STEPS, unique_collection

ROOT = Path(__file__).resolve().parents[2]


def _environment(
    settings: MatchboxSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """Point child processes at the session's store and a fresh Dagster home; a collection."""
    assert settings.postgres_uri is not None
    collection = unique_collection("conc")
    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", settings.postgres_uri.get_secret_value())
    monkeypatch.setenv("MATCHBOX_POSTGRES_SCHEMA", settings.postgres_schema)
    monkeypatch.setenv("MB_TEST_COLLECTION", collection)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return collection


def _run_at_once(labels: list[str]) -> list[dict[str, str]]:
    """Materialise each label in a process of its own, all at once; their actions per step.

    Separate processes: threads would share Dagster's logging configuration.
    """
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dagster.concurrent_defs", label],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for label in labels
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return [
        json.loads(
            next(line for line in reversed(out.splitlines()) if line.startswith("ACTIONS "))[8:]
        )
        for out in outputs
    ]


def test_two_partitions_at_once_both_complete_and_are_correct(
    settings: MatchboxSettings,
    mb_store: MatchboxPostgres,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    collection = _environment(settings, monkeypatch, tmp_path)
    with dg.DagsterInstance.get() as instance:
        labels = [add_run_partition(instance, mb_store, collection, f"p{i}")[0] for i in (1, 2)]
    # Each partition with the multiprocess executor, at the same time.
    actions = _run_at_once(labels)
    # Identical data: each step stored by one partition at least; the other may share it
    # (content addressed) when the first was complete by the time it wrote.
    for step in STEPS:
        pair = [a[step] for a in actions]
        assert set(pair) <= {"stored", "shared"} and "stored" in pair, actions

    runs = [mb_store.run_for_label(collection, label, create=False) for label in labels]
    assert runs[0].run_id != runs[1].run_id
    for run in runs:
        assert sorted(run.steps) == sorted(STEPS)
        for source in ("febrl_a", "febrl_b"):
            frame = pl.DataFrame(
                pl.from_arrow(
                    mb_store.query(
                        StepPath(collection=collection, run=run.run_id, name=source),
                        StepPath(collection=collection, run=run.run_id, name="people"),
                    )
                )
            )
            assert frame.height == 5000
            assert frame.get_column("key").n_unique() == 5000
    # Both runs resolved the same data into the same content-addressed entities.
    a, b = (
        pl.DataFrame(
            pl.from_arrow(
                mb_store.get_resolver_data(
                    StepPath(collection=collection, run=r.run_id, name="people")
                )
            )
        ).sort(pl.all())
        for r in runs
    )
    assert a.equals(b)


def test_one_partition_twice_at_once_stores_once_and_reports_unchanged(
    settings: MatchboxSettings,
    mb_store: MatchboxPostgres,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Identical data written twice at once: one write stores, the other waits and finds it."""
    collection = _environment(settings, monkeypatch, tmp_path)
    with dg.DagsterInstance.get() as instance:
        label, run = add_run_partition(instance, mb_store, collection, "same")
    first, second = _run_at_once([label, label])
    assert set(first) == set(second) == set(STEPS)
    for step in STEPS:
        assert sorted([first[step], second[step]]) == ["stored", "unchanged"], (first, second)
    assert sorted(mb_store.get_run(collection, run.run_id).steps) == sorted(STEPS)
    for step in STEPS:
        path = StepPath(collection=collection, run=run.run_id, name=step)
        assert mb_store.get_step_stage(path) == UploadStage.COMPLETE
