"""The one step-path helper, and the resource reading its settings once."""

from __future__ import annotations

import uuid

import pytest

from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxRunLabelNotFound,
)
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
