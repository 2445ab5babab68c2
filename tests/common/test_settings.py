"""Settings from the environment, and secrets kept out of text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from matchbox_dagster.common.redaction import redact
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres.db import Database


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", "postgresql://u:s3cret@127.0.0.1:5432/test")
    monkeypatch.setenv("MATCHBOX_POSTGRES_SCHEMA", "other")
    monkeypatch.setenv("MATCHBOX_BATCH_SIZE", "1000")
    monkeypatch.setenv("MATCHBOX_DATASTORE__HOST", "127.0.0.1")
    monkeypatch.setenv("MATCHBOX_DATASTORE__PORT", "9000")
    monkeypatch.setenv("MATCHBOX_DATASTORE__SECRET_ACCESS_KEY", "topsecret")
    settings = MatchboxSettings()
    assert settings.postgres_schema == "other" and settings.batch_size == 1000
    assert settings.datastore.endpoint_url == "http://127.0.0.1:9000"
    assert "s3cret" not in repr(settings) and "topsecret" not in repr(settings)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATCHBOX_POSTGRES_URI", raising=False)
    settings = MatchboxSettings()
    assert settings.postgres_uri is None and settings.batch_size == 250_000
    assert settings.postgres_schema == "mb"


@pytest.mark.parametrize("schema", ["Bad", "x;drop", "1abc", "a" * 64, 'q"'])
def test_schema_names_are_identifiers(schema: str) -> None:
    with pytest.raises(ValidationError):
        MatchboxSettings(postgres_schema=schema)


def test_redact_and_repr_hide_passwords() -> None:
    assert redact("postgresql://u:pw@h:1/db") == "postgresql://u:***@h:1/db"
    assert "pw" not in redact("postgresql://u@h/db?password=pw")
    db = Database(
        MatchboxSettings(postgres_uri="postgresql://postgres:hunter2@127.0.0.1:5432/test")
    )
    assert "hunter2" not in repr(db)
    db.dispose()


def test_log_level_applies_to_the_library_logger(settings: MatchboxSettings) -> None:
    import logging

    from matchbox_dagster.store.postgres import MatchboxPostgres

    logger = logging.getLogger("matchbox_dagster")
    before = logger.level
    try:
        MatchboxPostgres(settings.model_copy(update={"log_level": "DEBUG"})).close()
        assert logger.level == logging.DEBUG
        MatchboxPostgres(settings.model_copy(update={"log_level": "WARNING"})).close()
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(before)
