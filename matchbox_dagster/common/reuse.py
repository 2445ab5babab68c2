"""Step reuse and trained-model artefacts: what a store shares between runs (issue 17).

- :class:`ReusedStep` is a ``write_step`` payload saying "this step's data is exactly that
  step's data": the store points the new step at the stored data instead of copying it.
- :class:`TrainedModel` is a versioned artefact of a model's trained parameters, kept per
  collection, model (step name) and config key, so later runs predict without retraining.
- :class:`MatchboxReuseMismatch` is raised when a :class:`ReusedStep` names a step whose data
  cannot be this step's (another type, config, fingerprint or inputs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import CollectionName, StepName, StepPath
from matchbox_dagster.common.errors import MatchboxStepInvalidData


class ReusedStep(BaseModel):
    """A ``write_step`` payload: the step's data is exactly ``from_path``'s stored data.

    ``from_path`` must be a COMPLETE step of the same collection with the same step type and
    config as the step written, whose fingerprint is the written step's, and whose inputs
    (every step in its lineage, by name) have the fingerprints of the written step's inputs.
    The store checks all of it (:class:`MatchboxReuseMismatch`) and writes no data.
    """

    model_config = ConfigDict(frozen=True)

    from_path: StepPath


StepPayload = SourceHashes | ModelResults | ResolverClusters | ReusedStep
"""What ``write_step`` takes: the step type's data, or a reused step's."""


class TrainedModel(BaseModel):
    """A model's trained parameters, one version of the artefact of (collection, model, key).

    ``config_key`` is a hex digest of the part of the model config that shapes training;
    ``training_fingerprint`` identifies the training data; ``sketch`` is the bottom-k of the
    training rows' leaf ids (for a Jaccard estimate of how much the training data changed);
    ``params`` are the trained parameters (JSON-able). ``version``, ``created_at`` and
    ``retired`` are set by the store (``version`` 0 and ``created_at`` None when putting).
    """

    model_config = ConfigDict(frozen=True)

    collection: CollectionName
    model: StepName
    config_key: str = Field(pattern=r"^[0-9a-f]{8,128}$")
    version: int = Field(default=0, ge=0)
    training_fingerprint: bytes
    sketch: list[int] = Field(default_factory=list)
    params: dict[str, Any]
    trained_in_run: int | None = None
    created_at: datetime | None = None
    retired: bool = False


class MatchboxReuseMismatch(MatchboxStepInvalidData):
    """A :class:`ReusedStep` names a step whose data cannot be the written step's."""

    def __init__(self, path: StepPath, from_path: StepPath, why: str) -> None:
        self.path = path
        self.from_path = from_path
        super().__init__(
            f"Step {path} cannot reuse the data of step {from_path}: {why}. Nothing was "
            "written. Reuse only a step of the same collection, type and config whose data "
            "and inputs are this step's, or write the step's data instead."
        )


__all__ = ["MatchboxReuseMismatch", "ReusedStep", "StepPayload", "TrainedModel"]
