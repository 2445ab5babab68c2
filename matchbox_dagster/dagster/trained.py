"""Trained Splink models kept in the store and reused by later runs (issue 17 item 2).

A Splink model with training steps trains (EM, u-sampling) then predicts. Training is the slow
part, and a collection re-run on a schedule mostly trains on the same records. So a model step:

1. keys its trained parameters by :func:`config_key` — a digest of what shapes training (the
   inputs' queries, the Splink settings, the training steps, the engine; not the threshold);
2. sketches its training data (:func:`~matchbox_dagster.methods.sketch.id_sketch`: the bottom
   1024 hashes of the training rows' ids — leaf ids for source inputs);
3. asks the store for the latest trained version of (collection, model, key) not retired. When
   there is one and the estimated Jaccard similarity of its training ids and this run's is at
   least :data:`~matchbox_dagster.methods.sketch.TRAINING_TOLERANCE` (0.95), it predicts with
   the stored parameters, without training;
4. otherwise (none stored, the model's ``retrain: true``, or the data changed beyond the
   tolerance) it trains and predicts, and stores the parameters as a new version.

``matchbox-dagster retrain --collection C --model M`` retires every stored version, so the next
run trains anew. What a step did is in its output metadata and its ``scores_in_range`` check:
``trained_version``, ``trained_model`` (``reused`` or ``trained now``) and why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.common.dtos import ModelConfig, StepPath
from matchbox_dagster.common.reuse import TrainedModel
from matchbox_dagster.methods.models.splink import SplinkModel
from matchbox_dagster.methods.sketch import (
    TRAINING_TOLERANCE,
    id_sketch,
    ids_fingerprint,
    sketch_jaccard,
)
from matchbox_dagster.store.base import MatchboxDBAdapter

REUSED = "reused"
TRAINED = "trained now"


def config_key(config: ModelConfig, model: SplinkModel) -> str:
    """Hex digest of what shapes a model's training: its inputs' queries and training settings."""
    shaped = {
        "model_class": config.model_class,
        "left_query": config.left_query.model_dump(mode="json"),
        "right_query": (
            config.right_query.model_dump(mode="json") if config.right_query is not None else None
        ),
        "training": model.training_settings(),
    }
    text = json.dumps(shaped, sort_keys=True)
    return hashlib.sha256(b"matchbox-dagster/trained-model/v1" + text.encode()).hexdigest()


def needs_store(model: Any) -> bool:
    """Whether a methodology trains, so its trained parameters are kept and reused."""
    return isinstance(model, SplinkModel) and bool(model.training)


@dataclass(frozen=True)
class TrainedUse:
    """Which trained parameters a model step predicted with, and why."""

    version: int | None
    how: str
    reason: str
    jaccard: float | None = None
    trained_in_run: int | None = None

    def metadata(self) -> dict[str, Any]:
        """Output and check metadata (``trained_version``, ``trained_model``, …)."""
        found: dict[str, Any] = {
            "trained_version": self.version,
            "trained_model": self.how,
            "trained_reason": self.reason,
        }
        if self.jaccard is not None:
            found["training_jaccard"] = round(self.jaccard, 4)
        if self.trained_in_run is not None:
            found["trained_in_run"] = self.trained_in_run
        return found

    def summary(self) -> str:
        """One sentence for the check's description."""
        if self.version is None:
            return f"Model not trained: {self.reason}."
        return f"Trained model version {self.version} ({self.how}: {self.reason})."


def score(
    store: MatchboxDBAdapter,
    path: StepPath,
    config: ModelConfig,
    model: SplinkModel,
    left: pl.DataFrame,
    right: pl.DataFrame | None = None,
) -> tuple[ModelResults, TrainedUse]:
    """Score the inputs with the stored trained parameters when they fit, else train and store."""
    key = config_key(config, model)
    ids = [left.get_column("id")] + ([right.get_column("id")] if right is not None else [])
    sketch = id_sketch(ids)
    stored = None if model.retrain else store.get_trained_model(path.collection, path.name, key)
    jaccard = None if stored is None else sketch_jaccard(stored.sketch, sketch)
    if stored is not None and jaccard is not None and jaccard >= TRAINING_TOLERANCE:
        use = model.with_parameters(stored.params)
        results = use.dedupe(left) if right is None else use.link(left, right)
        reason = f"training data Jaccard {jaccard:.3f} ≥ {TRAINING_TOLERANCE}"
        return results, TrainedUse(stored.version, REUSED, reason, jaccard, stored.trained_in_run)
    if model.retrain:
        reason = "the model's setting retrain: true"
    elif stored is None:
        reason = "no trained model stored for this config"
    else:
        reason = f"training data changed: Jaccard {jaccard:.3f} < {TRAINING_TOLERANCE}"
    results, parameters = model.fit_predict(left, right)
    if parameters is None:
        return results, TrainedUse(None, "not trained", "an input is empty")
    version = store.put_trained_model(
        TrainedModel(
            collection=path.collection,
            model=path.name,
            config_key=key,
            training_fingerprint=ids_fingerprint(ids),
            sketch=sketch,
            params=json.loads(json.dumps(parameters)),
            trained_in_run=path.run,
        )
    )
    return results, TrainedUse(version, TRAINED, reason, jaccard, path.run)


def retire(store: MatchboxDBAdapter, collection: str, model: str) -> int:
    """Retire a model's stored trained versions so the next run trains anew; how many."""
    return store.retire_trained_models(collection, model)
