"""The one step-path helper, and the resource reading its settings once."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxRunLabelNotFound,
)
from matchbox_dagster.dagster.lifecycle import note_attempt
from matchbox_dagster.dagster.partitions import step_path
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.dagster.conftest import unique_collection


def test_step_path_creates_on_write_and_only_finds_on_read(mb_store: MatchboxPostgres) -> None:
    collection = unique_collection("path")
    with pytest.raises(MatchboxCollectionNotFoundError):
        step_path(mb_store, collection, "r1", "febrl_a", create=False)
    written = step_path(mb_store, collection, "r1", "febrl_a", create=True)
    assert written.collection == collection and written.name == "febrl_a"
    assert mb_store.run_for_label(collection, "r1", create=False).run_id == written.run
    read = step_path(mb_store, collection, "r1", "dedupe_a", create=False)
    assert (read.run, read.name) == (written.run, "dedupe_a")
    with pytest.raises(MatchboxRunLabelNotFound):
        step_path(mb_store, collection, "r2", "febrl_a", create=False)


def test_step_path_asks_the_store_once_per_dagster_run(mb_store: MatchboxPostgres) -> None:
    collection = unique_collection("path")
    dagster_run = uuid.uuid4().hex
    first = step_path(mb_store, collection, "r1", "a", create=True, dagster_run=dagster_run)
    mb_store.delete_collection(collection, certain=True)
    # Within the same Dagster run the label's run is known: no store call is made...
    again = step_path(mb_store, collection, "r1", "b", create=False, dagster_run=dagster_run)
    assert (again.run, again.name) == (first.run, "b")
    # ...while another Dagster run (or none) asks the store, which no longer has it.
    for other in (uuid.uuid4().hex, None):
        with pytest.raises(MatchboxCollectionNotFoundError):
            step_path(mb_store, collection, "r1", "a", create=False, dagster_run=other)


def _asset_context(dagster_run: str, label: str) -> SimpleNamespace:
    """What note_attempt reads of an asset's context: its Dagster run, its partition, its log."""
    warnings: list[str] = []
    return SimpleNamespace(
        run=SimpleNamespace(run_id=dagster_run),
        has_partition_key=True,
        partition_key=label,
        log=SimpleNamespace(warning=lambda *a: warnings.append(a[0] % a[1:])),
        warnings=warnings,
    )


def test_an_attempt_is_noted_once_per_dagster_run_and_again_after_a_failed_note(
    mb_store: MatchboxPostgres,
) -> None:
    collection = unique_collection("attempt")
    mb_store.create_collection(collection)
    mb_store.run_for_label(collection, "r1")
    first, second = uuid.uuid4().hex, uuid.uuid4().hex

    def last_attempt() -> str | None:
        (summary,) = mb_store.run_summaries(collection)
        return summary.dagster_run

    note_attempt(_asset_context(first, "r1"), mb_store, collection)
    assert last_attempt() == first
    # A later asset of another Dagster run on the same label is noted...
    note_attempt(_asset_context(second, "r1"), mb_store, collection)
    assert last_attempt() == second
    # ...while the first run's later assets are not noted again (this process knows).
    note_attempt(_asset_context(first, "r1"), mb_store, collection)
    assert last_attempt() == second
    # A note that fails is logged, remembered as not done, and tried by the next asset.
    third = uuid.uuid4().hex
    missing = _asset_context(third, "r1")
    note_attempt(missing, MatchboxPostgresWithoutRuns(mb_store), collection)
    assert missing.warnings and "not noted" in missing.warnings[0]
    note_attempt(_asset_context(third, "r1"), mb_store, collection)
    assert last_attempt() == third


class MatchboxPostgresWithoutRuns:
    """A store whose attempt notes fail (as when the database is briefly unreachable)."""

    def __init__(self, store: MatchboxPostgres) -> None:
        self.settings = store.settings

    def note_dagster_attempt(self, *args: object) -> None:
        raise ConnectionError("the store is unreachable")


def test_resource_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHBOX_BATCH_SIZE", "123")
    resource = MatchboxResource()
    assert resource.batch_rows == 123
    monkeypatch.setenv("MATCHBOX_BATCH_SIZE", "7")
    assert resource.batch_rows == 123
    assert resource.settings() is resource.settings()
    assert MatchboxResource().batch_rows == 7
    assert MatchboxResource(batch_size=50).batch_rows == 50


def test_a_store_is_shared_only_between_identical_settings(
    mb_resource: MatchboxResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same URI and schema, other settings: another store, whose settings are its own."""
    fields = {
        "postgres_uri": mb_resource.postgres_uri,
        "postgres_schema": mb_resource.postgres_schema,
    }
    first = MatchboxResource(**fields).get_store()
    assert MatchboxResource(**fields).get_store() is first
    monkeypatch.setenv("MATCHBOX_AUTHORISATION", "true")
    monkeypatch.setenv("MATCHBOX_REVIEW_URL", "http://reviews.example/")
    other = MatchboxResource(**fields).get_store()
    assert other is not first
    assert other.settings.authorisation and other.settings.review_url == "http://reviews.example/"
    assert not first.settings.authorisation and first.settings.review_url is None
