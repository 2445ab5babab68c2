"""Settings, read from the environment with the prefix ``MATCHBOX_``.

========================================  =====================================================
variable                                  meaning
========================================  =====================================================
``MATCHBOX_POSTGRES_URI``                 PostgreSQL URI; unset ⇒ an embedded server is started
``MATCHBOX_POSTGRES_SCHEMA``              schema holding the store's tables (``mb``)
``MATCHBOX_EMBEDDED_DATA_DIR``            data directory of the embedded server
``MATCHBOX_BATCH_SIZE``                   rows per batch when moving bulk data (250000)
``MATCHBOX_AUTHORISATION``                enforce permissions (``false``: single-user use)
``MATCHBOX_REVIEW_URL``                   base URL of the review app (checks link to it)
``MATCHBOX_UPLOADS_EXPIRY_MINUTES``       a PROCESSING upload older than this is stuck (60)
``MATCHBOX_STEP_LOCK_TIMEOUT_SECONDS``    write_step waits this long for a write of the step (60)
``MATCHBOX_RETRIES``                      at most this many retries of a call (50; the time
                                          budget below usually ends them first; 0: none)
``MATCHBOX_RETRY_MAX_SECONDS``            a call is retried after transient database errors
                                          until this many seconds after it began (30)
``MATCHBOX_LOG_LEVEL``                    ``DEBUG``/``INFO``/``WARNING``/``ERROR``
``MATCHBOX_LOCATION_ROOTS``               folders (``os.pathsep``-separated) file locations
                                          must resolve under; unset: any (sources/roots.py)
``MATCHBOX_DATASTORE__*``                 S3 datastore: ``HOST``, ``PORT``, ``ACCESS_KEY_ID``,
                                          ``SECRET_ACCESS_KEY``, ``DEFAULT_REGION``,
                                          ``CACHE_BUCKET_NAME``
========================================  =====================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BATCH_SIZE = 250_000
"""Rows per batch when reading a source or moving bulk data: the one default of ``batch_size``."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatastoreSettings(BaseSettings):
    """An S3-compatible object store, used for snapshots and staging files."""

    model_config = SettingsConfigDict(env_prefix="MATCHBOX_DATASTORE__", extra="ignore")

    host: str | None = None
    port: int | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    default_region: str | None = None
    cache_bucket_name: str = "matchbox"

    @property
    def endpoint_url(self) -> str | None:
        """``http://host:port`` when a host is set, else None (AWS itself)."""
        if self.host is None:
            return None
        scheme = "" if "://" in self.host else "http://"
        return f"{scheme}{self.host}{f':{self.port}' if self.port else ''}"

    def get_client(self):
        """An S3 client for the datastore (credentials never logged)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=(
                self.access_key_id.get_secret_value() if self.access_key_id else None
            ),
            aws_secret_access_key=(
                self.secret_access_key.get_secret_value() if self.secret_access_key else None
            ),
            region_name=self.default_region,
        )


class MatchboxSettings(BaseSettings):
    """All settings of a store. Build from the environment with ``MatchboxSettings()``."""

    model_config = SettingsConfigDict(
        env_prefix="MATCHBOX_", env_nested_delimiter="__", extra="ignore"
    )

    postgres_uri: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URI. Unset: an embedded PostgreSQL is started (zero set-up).",
    )
    postgres_schema: str = Field(default="mb", description="Schema of the store's tables.")
    embedded_data_dir: Path = Field(
        default=Path(".matchbox/postgres"),
        description="Data directory of the embedded PostgreSQL.",
    )
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0, description="Rows per bulk batch.")
    authorisation: bool = Field(default=False, description="Enforce permissions.")
    review_url: str | None = Field(default=None, description="Base URL of the review app.")
    uploads_expiry_minutes: int | None = Field(default=60, gt=0)
    step_lock_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long write_step waits for another write of the same step to finish.",
    )
    retries: int = Field(
        default=50,
        ge=0,
        le=100,
        description="At most this many retries of a whole store call after transient database "
        "errors (lost connection, server restarting, serialization failure, deadlock); the "
        "time budget (retry_max_seconds) usually ends them first; 0 disables them.",
    )
    retry_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Time budget of a call's retries: after transient errors the call is run "
        "again, with capped exponential backoff, until this many seconds after it began.",
    )
    log_level: LogLevel = "INFO"
    datastore: DatastoreSettings = Field(default_factory=DatastoreSettings)

    @field_validator("postgres_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        if not _SCHEMA_NAME.fullmatch(value):
            raise ValueError(
                f"postgres_schema {value!r} must be a lower-case identifier "
                "(letters, digits, underscores; at most 63 characters)"
            )
        return value
