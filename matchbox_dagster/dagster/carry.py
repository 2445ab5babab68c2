"""Checks of a reused step carried over from the step whose data it shares.

A reused step (a model or resolver that reused the default run's step, a source whose data the
store found identical) holds exactly the data of its origin step, whose checks already ran. When
nothing else a check reads changed, computing it again gives the same answer, so the origin
partition's latest evaluation in the Dagster instance is re-emitted: same passed, severity,
description and metadata, plus ``matchbox/carried_over_from: run N (label)``.

"Nothing else changed" is per check:

* ``source_quality``: the extraction counted the keys and distinct rows the origin's check saw;
* ``scores_in_range``: nothing (the stored pairs are the origin's, and so are its inputs);
* ``resolver_quality`` and ``evaluation``: ``matchbox/check_inputs``, a digest of the check
  settings and, for ``evaluation``, of the collection's judgements and the review URL, equals
  the one recorded with the origin's evaluation (sources are shared too: reuse requires their
  fingerprints equal);
* ``churn``: the step shares the default run's data, so no key changed entity: 0 by
  construction, stated without reading anything.

Anything missing or different, and the check is computed as usual. Either way the outcomes are
also recorded in the store (:func:`~matchbox_dagster.dagster.checks.record_outcomes`), where
``matchbox-dagster runs`` reads them without Dagster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.dagster.checks import (
    CHURN,
    RESOLVER_QUALITY,
    SCORES_IN_RANGE,
    SOURCE_QUALITY,
    record_outcomes,
    resolver_check_names,
    resolver_checks,
    scores_in_range,
    source_quality,
)
from matchbox_dagster.dagster.io_manager import reused_from_text
from matchbox_dagster.specs import ResolverChecksSpec
from matchbox_dagster.store.base import MatchboxDBAdapter

if TYPE_CHECKING:
    from matchbox_dagster.dagster.trained import TrainedUse

CARRIED_FROM = "matchbox/carried_over_from"
CHECK_INPUTS = "matchbox/check_inputs"

_DONE = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def earlier_evaluations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, names: Sequence[str], label: str
) -> dict[str, Any]:
    """Check name → the latest finished evaluation of partition ``label`` (one query)."""
    keys = [dg.AssetCheckKey(asset_key, name) for name in names]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        keys, partition_filter=PartitionKeyFilter(key=label)
    )
    found = {}
    for key, record in records.items():
        event = record.event.dagster_event if record.event is not None else None
        if record.status in _DONE and event is not None:
            found[key.name] = event.event_specific_data
    return found


def with_inputs(result: dg.AssetCheckResult, digest: str) -> dg.AssetCheckResult:
    """``result`` recording the digest of what it read besides the step's data."""
    return dg.AssetCheckResult(
        check_name=result.check_name,
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata={**(result.metadata or {}), CHECK_INPUTS: digest},
    )


def _carried(evaluation: Any, origin: str) -> dg.AssetCheckResult:
    metadata = dict(evaluation.metadata)
    before = _plain(metadata.get(CARRIED_FROM))  # carried before: keep the first origin
    description = evaluation.description or ""
    if before is None:
        description += f" (carried over from {origin}: same data)"
    return dg.AssetCheckResult(
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=description,
        metadata={**metadata, CARRIED_FROM: before or origin},
    )


def carry_over(
    context: dg.AssetExecutionContext,
    store: MatchboxDBAdapter,
    origin: StepPath,
    expected: Mapping[str, Mapping[str, Any]],
) -> dict[str, dg.AssetCheckResult]:
    """The origin step's evaluations of the checks ``expected`` names, where they still hold.

    ``expected`` maps each check name to metadata values its earlier evaluation must have had
    (e.g. ``{CHECK_INPUTS: digest}``); a check whose evaluation is missing or differs is left
    out (the caller computes it).
    """
    label = store.run_labels(origin.collection).get(origin.run)
    if label is None:
        return {}
    try:
        earlier = earlier_evaluations(context.instance, context.asset_key, list(expected), label)
    except Exception as exc:  # an instance without check history: compute as usual
        context.log.warning("Could not read earlier check evaluations: %s", exc)
        return {}
    origin_text = reused_from_text(store, origin.collection, origin.run)
    found = {}
    for name, evaluation in earlier.items():
        metadata = evaluation.metadata
        if all(_plain(metadata.get(k)) == v for k, v in expected[name].items()):
            found[name] = _carried(evaluation, origin_text)
    return found


def resolver_check_inputs(
    store: MatchboxDBAdapter, collection: str, checks: ResolverChecksSpec, names: Sequence[str]
) -> dict[str, str]:
    """Per resolver check, a digest of what it reads besides the step's and sources' data."""
    settings = json.dumps(checks.model_dump(mode="json"), sort_keys=True)
    found = {name: _digest(name, settings) for name in names}
    if "evaluation" in found:
        judgements, _ = store.get_collection_judgements(collection)
        rows = pl.DataFrame(pl.from_arrow(judgements))
        judged = rows.hash_rows().sort().to_numpy().tobytes() if rows.height else b""
        review = str(store.settings.review_url or "")
        found["evaluation"] = _digest("evaluation", settings, review, judged.hex())
    return found


def no_churn(default: StepPath, store: MatchboxDBAdapter, keys: int | None) -> dg.AssetCheckResult:
    """``churn`` of a resolver sharing the default run's data: no key changed entity."""
    text = (
        f"0.00% of keys changed entity against default run {default.run}: this run's resolver "
        "shares the default run's data (nothing recomputed)."
    )
    return dg.AssetCheckResult(
        check_name="churn",
        passed=True,
        severity=dg.AssetCheckSeverity.ERROR,
        description=text,
        metadata={
            "summary": text,
            "churn": 0.0,
            **({"keys_compared": keys} if keys is not None else {}),
            "keys_added": 0,
            "keys_removed": 0,
            "default_run": dg.MetadataValue.text(str(default.run)),
            CARRIED_FROM: reused_from_text(store, default.collection, default.run),
        },
    )


# --- the checks of each kind of step ---------------------------------------------------------


def source_check(
    context: dg.AssetExecutionContext,
    store: MatchboxDBAdapter,
    path: StepPath,
    extracted_keys: int,
    distinct_hashes: int,
) -> dg.AssetCheckResult:
    """``source_quality``, carried over when the source shares data whose check saw the same."""
    origin = store.step_data_origin(path)
    if origin is not None and origin != path:
        expected = {"extracted_keys": extracted_keys, "distinct_hashes": distinct_hashes}
        carried = carry_over(context, store, origin, {SOURCE_QUALITY: expected})
        if SOURCE_QUALITY in carried:
            return record_outcomes(store, path, carried[SOURCE_QUALITY])
    return record_outcomes(
        store, path, source_quality(store, path, extracted_keys, distinct_hashes)
    )


def model_check(
    context: dg.AssetExecutionContext,
    store: MatchboxDBAdapter,
    path: StepPath,
    reused: StepPath | None,
    produced_pairs: int | None,
    trained: TrainedUse | None = None,
) -> dg.AssetCheckResult:
    """``scores_in_range``; a reused step's carried over from the step it reuses."""
    if reused is not None:
        carried = carry_over(context, store, reused, {SCORES_IN_RANGE: {}})
        if SCORES_IN_RANGE in carried:
            return record_outcomes(store, path, carried[SCORES_IN_RANGE])
        produced_pairs = store.step_statistics(reused)["rows"]
    found = scores_in_range(store, path, int(produced_pairs or 0), trained=trained)
    return record_outcomes(store, path, found)


def resolver_check_results(
    context: dg.AssetExecutionContext,
    store: MatchboxDBAdapter,
    path: StepPath,
    reused: StepPath | None,
    *,
    sources: Sequence[str],
    models: Sequence[str],
    checks: ResolverChecksSpec,
    batch_size: int,
) -> list[dg.AssetCheckResult]:
    """A resolver's checks: carried over for a reused step when all still hold, else computed."""
    names = resolver_check_names(checks)
    inputs = resolver_check_inputs(store, path.collection, checks, names)
    if reused is not None:
        wanted = [n for n in names if n != CHURN]
        carried = carry_over(context, store, reused, {n: {CHECK_INPUTS: inputs[n]} for n in wanted})
        if len(carried) == len(wanted):
            context.log.info(
                "Checks of %s carried over from %s (same data and inputs)", path, reused
            )
            found = [carried[n] for n in wanted]
            if CHURN in names:
                keys = _plain(carried[RESOLVER_QUALITY].metadata.get("keys"))
                found.append(no_churn(reused, store, keys))
            return record_outcomes(store, path, found)
    computed = resolver_checks(
        store, path, sources=sources, models=models, checks=checks, batch_size=batch_size
    )
    results = [
        with_inputs(r, inputs[r.check_name]) if r.check_name in inputs else r for r in computed
    ]
    return record_outcomes(store, path, results)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
