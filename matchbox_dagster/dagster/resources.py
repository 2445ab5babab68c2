"""``MatchboxResource``: the store as a Dagster resource.

A thin configuration shell: its fields mirror :class:`MatchboxSettings` (any field left unset
falls back to the ``MATCHBOX_*`` environment), and :meth:`MatchboxResource.get_store` builds
the :class:`MatchboxPostgres` adapter — once per process and settings, because building it
connects, migrates the schema and, without a URI, starts the embedded PostgreSQL.

Pass a URI holding a password as ``dg.EnvVar("MATCHBOX_POSTGRES_URI")`` (or leave it unset): a
literal value is resource configuration, which the Dagster UI displays.

>>> import dagster as dg
>>> MatchboxResource(postgres_uri=dg.EnvVar("MATCHBOX_POSTGRES_URI"))  # doctest: +SKIP
"""

import threading
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres

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
        key = (uri, str(settings.embedded_data_dir.resolve()), settings.model_dump_json())
        with _LOCK:
            store = _STORES.get(key)
            if store is None:
                store = _STORES[key] = MatchboxPostgres(settings)
        return store.as_user(self.user_name) if self.user_name else store

    @property
    def batch_rows(self) -> int:
        """Rows per batch in effect."""
        return self.settings().batch_size
