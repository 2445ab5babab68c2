"""Helpers shared by store tests that need steps without data."""

from __future__ import annotations

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.dtos import Step, StepPath, StepType
from matchbox_dagster.store.base import MatchboxDBAdapter
from tests.factories import hashes_table, source_config


def declare_pending_source(store: MatchboxDBAdapter, path: StepPath) -> None:
    """Create a source step whose data has not been inserted."""
    store.create_step(
        Step(
            step_type=StepType.SOURCE,
            fingerprint=SourceHashes(hashes_table({"x": ["1"]})).fingerprint,
            config=source_config(),
        ),
        path,
    )
