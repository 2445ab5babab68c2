"""``MatchboxResource``: the store as a Dagster resource.

A thin configuration shell: its fields mirror :class:`MatchboxSettings` (any field left unset
falls back to the ``MATCHBOX_*`` environment), and :meth:`MatchboxResource.get_store` builds
the :class:`MatchboxPostgres` adapter — once per process and settings, because building it
connects, migrates the schema and, without a URI, starts the embedded PostgreSQL.

Pass a URI holding a password as ``dg.EnvVar("MATCHBOX_POSTGRES_URI")`` (or leave it unset): a
literal value is resource configuration, which the Dagster UI displays.

S3 (S3 sources, snapshots to ``s3://``) goes through ``dagster_aws.s3.S3Resource`` when one is
set as :attr:`MatchboxResource.s3`: this layer builds the boto3 client from it and hands the
client factory down to the sources and the store, which never import Dagster. Without one, they
build boto3 from the environment (``MATCHBOX_DATASTORE__*`` or the standard AWS variables).

>>> import dagster as dg
>>> from dagster_aws.s3 import S3Resource
>>> MatchboxResource(
...     postgres_uri=dg.EnvVar("MATCHBOX_POSTGRES_URI"),
...     s3=S3Resource(aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
...                   aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY")),
... )  # doctest: +SKIP

:meth:`MatchboxResource.run_preflight` runs a collection's preflight once per Dagster run, the
pass recorded in the run's tags (:data:`PREFLIGHT_TAG`) so the multiprocess executor's other
step processes skip it.
"""

import threading
from collections.abc import Callable
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.specs.preflight import RunPreflight
from matchbox_dagster.store.postgres import MatchboxPostgres

PREFLIGHT_TAG = "matchbox/preflight"
"""Run tag set to ``passed`` once a run's preflight passed (by a step, or by the CLI)."""

_STORES: dict[tuple[Any, ...], MatchboxPostgres] = {}
_LOCK = threading.Lock()


class MatchboxResource(dg.ConfigurableResource):
    """Connection to the matchbox store (PostgreSQL; embedded when no URI is configured)."""

    postgres_uri: str | None = Field(
        default=None,
        description="PostgreSQL URI of the store. Unset: MATCHBOX_POSTGRES_URI, else an "
        "embedded PostgreSQL under embedded_data_dir.",
    )
    postgres_schema: str | None = Field(
        default=None,
        description="Schema of the store's tables (default MATCHBOX_POSTGRES_SCHEMA or 'mb').",
    )
    embedded_data_dir: str | None = Field(
        default=None, description="Data directory of the embedded PostgreSQL."
    )
    batch_size: int | None = Field(
        default=None, description="Rows per batch when extracting and moving bulk data."
    )
    user_name: str | None = Field(
        default=None, description="Act as this store user (when authorisation is enforced)."
    )
    s3: S3Resource | None = Field(
        default=None,
        description="S3 client for S3 sources and snapshots (credentials from the environment "
        "or EnvVar). Unset: boto3 from MATCHBOX_DATASTORE__* or the standard AWS variables.",
    )

    _settings: MatchboxSettings | None = PrivateAttr(default=None)

    def settings(self) -> MatchboxSettings:
        """Settings from this resource's fields over the ``MATCHBOX_*`` environment.

        Read from the environment once per resource object, then kept.
        """
        if self._settings is not None:
            return self._settings
        given: dict[str, Any] = {
            "postgres_uri": self.postgres_uri,
            "postgres_schema": self.postgres_schema,
            "embedded_data_dir": self.embedded_data_dir,
            "batch_size": self.batch_size,
        }
        self._settings = MatchboxSettings(**{k: v for k, v in given.items() if v is not None})
        return self._settings

    def get_store(self) -> MatchboxPostgres:
        """The store adapter (shared within the process for the same settings)."""
        settings = self.settings()
        uri = settings.postgres_uri.get_secret_value() if settings.postgres_uri else None
        # Every setting is part of the key: a store built for other settings (authorisation,
        # retries, review URL, location roots, …) must not answer for these.
        # So is the S3 client's configuration (kept in memory only, never shown).
        s3 = self.s3.model_dump_json() if self.s3 is not None else None
        key = (uri, str(settings.embedded_data_dir.resolve()), settings.model_dump_json(), s3)
        with _LOCK:
            store = _STORES.get(key)
            if store is None:
                if self.s3 is None:
                    store = MatchboxPostgres(settings)
                else:
                    store = MatchboxPostgres(settings, s3_client_factory=self.s3.get_client)
                _STORES[key] = store
        return store.as_user(self.user_name) if self.user_name else store

    @property
    def s3_client_factory(self) -> Callable[[], Any] | None:
        """Makes the configured ``S3Resource``'s boto3 client (None: boto3 from the env)."""
        return self.s3.get_client if self.s3 is not None else None

    def run_preflight(
        self, preflight: RunPreflight | None, context: dg.AssetExecutionContext
    ) -> None:
        """Run ``preflight`` before a step writes, once per Dagster run, with this S3 client.

        The pass is recorded in the run's tags (:class:`RunTags`), so the step processes of the
        multiprocess executor that start later skip it and those starting together wait for
        the first one's verdict.
        """
        if preflight is None:
            return
        preflight(
            context.run.run_id,
            marker=RunTags(context.instance),
            s3_client_factory=self.s3_client_factory,
        )

    @property
    def batch_rows(self) -> int:
        """Rows per batch in effect."""
        return self.settings().batch_size


class RunTags:
    """A run's preflight pass kept in its Dagster tags (:data:`PREFLIGHT_TAG`), seen by all."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def passed(self, run_id: str) -> bool:
        """Whether the run carries ``matchbox/preflight: passed`` (read afresh)."""
        run = self.instance.get_run_by_id(run_id)
        return run is not None and run.tags.get(PREFLIGHT_TAG) == "passed"

    def mark_passed(self, run_id: str) -> None:
        """Tag the run (the Dagster UI shows the tag on the run)."""
        self.instance.add_run_tags(run_id, {PREFLIGHT_TAG: "passed"})
