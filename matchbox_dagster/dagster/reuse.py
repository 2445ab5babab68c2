"""Unchanged steps are not recomputed: they reuse the default run's step.

Before a model or resolver asset reads its inputs it asks the store
(:meth:`~matchbox_dagster.store.base.MatchboxDBAdapter.find_reusable_step`) for the collection's
default run's step of the same name whose config equals this step's and whose inputs have, in
the default run, the fingerprints they have in this run. When there is one, the asset outputs
:class:`~matchbox_dagster.common.reuse.ReusedStep` — no input is read, nothing is computed —
and the IO manager writes it with one ``write_step``: the step shares the default run's data
(outcome ``shared``, metadata ``matchbox/reused_from``). Its checks still run, on the stored step.

A source always re-extracts and re-hashes its rows (the only way to know they did not change),
then compares their fingerprint with the default run's step before indexing them: when equal,
it reuses that step the same way (``matchbox/indexed: false``).

Forcing a recompute: tag the Dagster run ``matchbox/recompute=true`` (the launchpad's tags,
``dagster job launch --tags '{"matchbox/recompute": "true"}'``, or ``tags=`` of
``execute_in_process``). Every model and resolver of that run then computes (a Splink model
still predicts with its stored trained parameters; retraining is its own switch).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import dagster as dg

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.store.base import MatchboxDBAdapter

RECOMPUTE_TAG = "matchbox/recompute"
"""Run tag that makes every model and resolver of the run compute (value ``true``)."""

META_COMPUTED = "matchbox/computed"
META_INPUTS_LOADED = "matchbox/inputs_loaded"
META_INDEXED = "matchbox/indexed"
"""A source's metadata: whether its rows were indexed for storing (False: the extracted rows'
fingerprint equals the default run's step, whose data the source shares without indexing)."""


def recompute_forced(context: dg.AssetExecutionContext) -> bool:
    """Whether the Dagster run carries ``matchbox/recompute=true``."""
    try:
        value = context.run.tags.get(RECOMPUTE_TAG, "")
    except Exception:  # no run (a direct invocation in a unit test)
        return False
    return str(value).strip().lower() in {"true", "1", "yes"}


def reusable_step(
    context: dg.AssetExecutionContext,
    store: MatchboxDBAdapter,
    path: StepPath,
    config: Any,
    inputs: list[str],
    fingerprint: bytes | None = None,
) -> StepPath | None:
    """The default run's step this step may reuse, or None (also when a recompute is forced).

    ``fingerprint``: this step's data is already known (a source's extracted rows); only a step
    holding the same data is reused.
    """
    if recompute_forced(context):
        context.log.info("Run tag %s=true: computing %s anew", RECOMPUTE_TAG, path)
        return None
    found = store.find_reusable_step(path, config.model_dump(mode="json"), sorted(set(inputs)))
    if found is not None and found.run == path.run:
        return None  # this run is the default one: its own step is rewritten as usual
    if found is not None and fingerprint is not None:
        if store.get_step(found).fingerprint != fingerprint:
            return None  # same config, other data (a source whose rows changed)
    return found  # the IO manager's log line and metadata say it was reused


def code_version(config: Any) -> str:
    """A Dagster code version for a step config: a short digest of its JSON."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def versioned_output(value: Any, fingerprint: bytes, metadata: dict[str, Any]) -> dg.Output:
    """An asset output whose Dagster data version is the step's content fingerprint.

    ``Output(data_version=…)`` is a beta parameter in Dagster 1.13; its warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, data_version=dg.DataVersion(fingerprint.hex()), metadata=metadata)
