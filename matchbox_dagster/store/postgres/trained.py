"""Trained models: versioned artefacts of a model's trained parameters (table ``trained_models``).

A version is kept per (collection, model, config key), numbered from 1; putting the same
parameters and training fingerprint as the latest live version returns that version (so a
retried put never makes a second one). Retiring marks every version of a model retired: they
stay, for the record of which version a run used, but are never returned again, so the next
run trains anew. Rows go with their collection; a deleted run leaves ``trained_in_run`` null.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg.types.json import Jsonb

from matchbox_dagster.common.dtos import CollectionName, validate_name
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.common.reuse import TrainedModel
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import dict_cursor, logger

_LATEST = """
SELECT t.model, t.config_key, t.version, t.training_fingerprint, t.sketch, t.params,
       t.trained_in_run, t.created_at, t.retired
FROM trained_models t
WHERE t.collection_id = %s AND t.model = %s AND t.config_key = %s AND NOT t.retired
ORDER BY t.version DESC LIMIT 1
"""


def _model(collection: str, row: dict[str, Any]) -> TrainedModel:
    """A :class:`TrainedModel` from a row of ``_LATEST``."""
    return TrainedModel(
        collection=collection,
        model=row["model"],
        config_key=row["config_key"],
        version=int(row["version"]),
        training_fingerprint=bytes(row["training_fingerprint"]),
        sketch=[int(v) for v in row["sketch"]],
        params=row["params"],
        trained_in_run=row["trained_in_run"],
        created_at=row["created_at"],
        retired=bool(row["retired"]),
    )


class TrainedModels:
    """Putting, getting and retiring trained-model versions."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def put(self, model: TrainedModel) -> int:
        """Store ``model`` as the next version of its key; return the version.

        One transaction; versions of a key are numbered under a lock on the collection's row,
        so concurrent puts get distinct numbers. ``trained_in_run`` must be a run of the
        collection (``MatchboxRunNotFoundError``); ``params`` plain JSON
        (``MatchboxInvalidData``).
        """
        validate_name(model.collection)
        validate_name(model.model)
        try:
            json.dumps(model.params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MatchboxInvalidData(
                f"The parameters of trained model {model.collection}/{model.model} are not "
                f"plain JSON ({exc}); store numbers (no NaN or infinity), strings, lists and "
                "dicts. Nothing was stored."
            ) from None
        with self.db.connection() as conn:
            cid = core.collection_id(conn, model.collection, for_update=True)
            if model.trained_in_run is not None:
                core.run_row(conn, model.collection, model.trained_in_run)
            latest = self._latest(conn, cid, model.model, model.config_key)
            if (
                latest is not None
                and latest["training_fingerprint"] == model.training_fingerprint
                and latest["params"] == model.params
                and [int(v) for v in latest["sketch"]] == list(model.sketch)
            ):
                return int(latest["version"])
            version = conn.execute(
                "INSERT INTO trained_models (collection_id, model, config_key, version, "
                "training_fingerprint, sketch, params, trained_in_run) "
                "SELECT %s, %s, %s, coalesce(max(version), 0) + 1, %s, %s, %s, %s "
                "FROM trained_models WHERE collection_id = %s AND model = %s AND config_key = %s "
                "RETURNING version",
                (
                    cid,
                    model.model,
                    model.config_key,
                    model.training_fingerprint,
                    Jsonb([int(v) for v in model.sketch]),
                    Jsonb(model.params),
                    model.trained_in_run,
                    cid,
                    model.model,
                    model.config_key,
                ),
            ).fetchone()
        assert version is not None
        logger.info(
            "Stored trained model %s/%s (%s) version %s",
            model.collection,
            model.model,
            model.config_key[:12],
            version[0],
        )
        return int(version[0])

    @staticmethod
    def _latest(conn: Any, cid: int, model: str, key: str) -> dict[str, Any] | None:
        return dict_cursor(conn).execute(_LATEST, (cid, model, key)).fetchone()

    def get(self, collection: CollectionName, model: str, config_key: str) -> TrainedModel | None:
        """The latest version not retired of a model's key, or None."""
        validate_name(collection)
        with self.db.connection() as conn:
            cid = core.collection_id(conn, collection)
            row = self._latest(conn, cid, model, config_key)
        return None if row is None else _model(collection, row)

    def retire(self, collection: CollectionName, model: str) -> int:
        """Retire every live version of a collection's model; return how many."""
        validate_name(collection)
        with self.db.connection() as conn:
            cid = core.collection_id(conn, collection, for_update=True)
            retired = conn.execute(
                "UPDATE trained_models SET retired = true "
                "WHERE collection_id = %s AND model = %s AND NOT retired",
                (cid, model),
            ).rowcount
        logger.info("Retired %d version(s) of trained model %s/%s", retired, collection, model)
        return int(retired)
