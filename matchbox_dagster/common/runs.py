"""A run's lifecycle records: who promoted it and why, and a run at a glance."""

from __future__ import annotations

import datetime
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, Field, model_validator

from matchbox_dagster.common.dtos import RunID, StepName, UploadStage, validate_text


def _text(value: str | None) -> str | None:
    return None if value is None else validate_text(value, "The text")


class Promotion(BaseModel):
    """Who makes a run the default and why; ``forced`` overrides the gate and needs a reason."""

    promoted_by: Annotated[str, AfterValidator(_text), Field(min_length=1, max_length=200)]
    reason: Annotated[str | None, AfterValidator(_text), Field(max_length=2000)] = None
    forced: bool = False

    @model_validator(mode="after")
    def _forced_needs_reason(self) -> Self:
        if self.forced and not (self.reason or "").strip():
            raise ValueError("a forced promotion needs a reason: say why the gate is overridden")
        return self


class RunSummary(BaseModel):
    """A run at a glance: flags, label, step stages, check outcomes, its last promotion."""

    run_id: RunID
    label: str | None = None
    is_mutable: bool = True
    is_default: bool = False
    created_at: datetime.datetime
    steps: dict[StepName, UploadStage] = Field(default_factory=dict)
    checks: dict[str, bool] = Field(default_factory=dict)
    """``step:check`` → passed, for outcomes recorded since the step's data and the latest
    Dagster attempt (older ones are not current, so not here)."""
    dagster_run: str | None = None
    """The latest Dagster run noted materialising the run's label (None: never noted)."""
    promoted_by: str | None = None
    promoted_at: datetime.datetime | None = None
    promotion_reason: str | None = None
    promotion_forced: bool = False
