"""Asset checks of a run: data quality of each step and evaluation of resolvers.

Every check here reads what the store holds for the partition's run (after the IO manager wrote
it), so it verifies the stored step, not just the in-memory payload. Check functions return
:class:`dagster.AssetCheckResult` with metadata the UI shows; they are blocking ERROR checks, so
a failure stops downstream assets and keeps the run from being promoted.

Check names (the promotion sensor relies on them only through the asset's check specs):

``source_quality``     stage complete; stored keys = extracted keys; keys unique and non-null
``scores_in_range``    stage complete; stored pairs = produced pairs; every score in [0, 1]
``resolver_quality``   at least one entity; no entity holds more than ``max_cluster_size`` records
``evaluation``         pairwise precision/recall ≥ minimums, against ground truth or judgements;
                       per model, the threshold in use beside the one maximising F1 (metadata)
``churn``              share of keys whose entity changed against the default run ≤ ``max_churn``
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import dagster as dg
import polars as pl

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.evaluation.churn import churn_against_default
from matchbox_dagster.evaluation.entities import resolver_entities
from matchbox_dagster.evaluation.quality import entity_sizes, score_range
from matchbox_dagster.evaluation.quality import source_quality as judge_source
from matchbox_dagster.evaluation.resolver import evaluate_resolver
from matchbox_dagster.evaluation.sampling import judgement_count
from matchbox_dagster.evaluation.thresholds import ModelThreshold
from matchbox_dagster.specs import ResolverChecksSpec
from matchbox_dagster.store.base import MatchboxDBAdapter

if TYPE_CHECKING:
    from matchbox_dagster.dagster.trained import TrainedUse

SOURCE_QUALITY = "source_quality"
SCORES_IN_RANGE = "scores_in_range"
RESOLVER_QUALITY = "resolver_quality"
EVALUATION = "evaluation"
CHURN = "churn"

logger = logging.getLogger(__name__)
Results = TypeVar("Results", dg.AssetCheckResult, list[dg.AssetCheckResult])


def _result(name: str, passed: bool, description: str, **metadata: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"summary": description, **metadata},
    )


def record_outcomes(store: MatchboxDBAdapter, path: StepPath, results: Results) -> Results:
    """``results`` (one or a list), their outcomes also recorded in the store for ``path``.

    ``matchbox-dagster runs`` reads them there without asking Dagster
    (:meth:`~matchbox_dagster.store.base.MatchboxDBAdapter.record_check_outcomes`). Best
    effort: a store that cannot record them only makes ``runs`` ask Dagster for this run.
    """
    found = [results] if isinstance(results, dg.AssetCheckResult) else list(results)
    outcomes = {str(r.check_name): bool(r.passed) for r in found if r.check_name}
    try:
        store.record_check_outcomes(path, outcomes)
    except Exception as exc:  # the check's own result stands; Dagster holds it too
        logger.warning("Check outcomes of %s not recorded in the store: %s", path, exc)
    return results


def resolver_check_names(checks: ResolverChecksSpec) -> list[str]:
    """The checks a resolver with these settings carries."""
    names = [RESOLVER_QUALITY]
    if (checks.min_precision, checks.min_recall, checks.min_judgements) != (None, None, None):
        names.append(EVALUATION)
    if checks.max_churn is not None:
        names.append(CHURN)
    return names


def check_specs(
    asset_key: dg.AssetKey,
    names: Sequence[str],
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetCheckSpec]:
    """Blocking check specs for ``asset_key``, partitioned like the asset when given.

    Partitioned checks (a preview API in Dagster 1.13, its warning silenced here) record the run
    partition they checked, which the UI shows and the promotion sensor and ``runs`` read.
    """
    descriptions = {
        SOURCE_QUALITY: "Stored keys match the extract; keys unique and non-null.",
        SCORES_IN_RANGE: "Stored pairs match the model's output; scores within [0, 1].",
        RESOLVER_QUALITY: "At least one entity; no entity above the size bound.",
        EVALUATION: "Pairwise precision and recall at or above the configured minimums.",
        CHURN: "Share of keys changing entity against the default run within bound.",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset_key,
                blocking=True,
                description=descriptions[name],
                partitions_def=partitions_def,
            )
            for name in names
        ]


# --- sources and models ------------------------------------------------------------------------


def source_quality(
    store: MatchboxDBAdapter, path: StepPath, extracted_keys: int, distinct_hashes: int
) -> dg.AssetCheckResult:
    """The stored source holds exactly the extracted keys, each once."""
    found = judge_source(store.step_statistics(path), extracted_keys, distinct_hashes)
    return _result(
        SOURCE_QUALITY,
        found.passed,
        found.summary,
        stored_keys=found.stored_keys,
        extracted_keys=found.extracted_keys,
        distinct_hashes=found.distinct_hashes,
        stored_leaves=found.stored_leaves,
    )


def scores_in_range(
    store: MatchboxDBAdapter,
    path: StepPath,
    produced_pairs: int,
    trained: TrainedUse | None = None,
) -> dg.AssetCheckResult:
    """The stored edges are the ``produced_pairs`` pairs the model made, scores in [0, 1].

    With ``trained`` (a model that trains), the metadata says which trained version scored
    the pairs and whether it was reused or trained in this run.
    """
    found = score_range(store.step_statistics(path), produced_pairs)
    return _result(
        SCORES_IN_RANGE,
        found.passed,
        found.summary + (f" {trained.summary()}" if trained is not None else ""),
        stored_pairs=found.stored_pairs,
        min_score=found.min_score,
        max_score=found.max_score,
        **(trained.metadata() if trained is not None else {}),
    )


# --- resolvers ---------------------------------------------------------------------------------


def resolver_checks(
    store: MatchboxDBAdapter,
    path: StepPath,
    *,
    sources: Sequence[str],
    models: Sequence[str],
    checks: ResolverChecksSpec,
    batch_size: int,
) -> list[dg.AssetCheckResult]:
    """Every check configured for a resolver, in :func:`resolver_check_names` order."""
    names = resolver_check_names(checks)
    truth = checks.truth if EVALUATION in names else None
    entities = resolver_entities(store, path, sources, batch_size, truth)
    results = [resolver_quality(entities, checks)]
    if EVALUATION in names:
        results.append(_evaluation(store, path, models, sources, entities, checks))
    if CHURN in names:
        results.append(_churn(store, path, sources, entities, checks))
    return results


def resolver_quality(entities: pl.DataFrame, checks: ResolverChecksSpec) -> dg.AssetCheckResult:
    """At least one entity, none above ``checks.max_cluster_size`` records."""
    sizes = entity_sizes(entities, checks.max_cluster_size)
    table = "\n".join(f"| {n} | {e:,} |" for n, e in sizes.histogram)
    return _result(
        RESOLVER_QUALITY,
        sizes.passed,
        sizes.summary,
        keys=sizes.keys,
        entities=sizes.entities,
        largest_entity=sizes.largest,
        entity_sizes=dg.MetadataValue.md("| records | entities |\n|---|---|\n" + table),
    )


def curve_table(curve: Sequence[dict[str, object]]) -> str:
    """The per-model precision/recall table (Markdown) of a resolver's evaluation.

    Its recall is of pairs before clustering (a model's edges against every true pair it could
    propose), unlike the check's headline (the resolver's entities, after clustering). A
    threshold keeping no labelled edge shows "no edges", not a score.
    """

    def cell(value: object) -> str:
        return "no edges" if value is None else f"{value:.4f}"

    rows = "\n".join(
        f"| {r['model']} | {r['threshold']:.2f} | {r['edges']:,} | {cell(r['precision'])} | "
        f"{cell(r['recall'])} | {cell(r['f1'])} | {r.get('true_pairs', 0):,.0f} |"
        for r in curve
    )
    return (
        "Recall of pairs, before clustering: the share of all true pairs each model could "
        "propose that its edges at or above the threshold hold (the headline recall is of "
        "the resolver's entities, after clustering).\n\n"
        "| model | threshold | edges | precision | recall (pairs, before clustering) | F1 | "
        "true pairs |\n|---|---|---|---|---|---|---|\n" + rows
    )


def threshold_table(rows: Sequence[ModelThreshold]) -> str:
    """A Markdown table of each model's threshold in use beside the one suggested.

    Per model: the threshold in use and its F1, the threshold maximising F1 on the labelled
    pairs, that F1 and the threshold's 95% bootstrap interval.
    """

    def line(row: ModelThreshold) -> str:
        found = row.suggestion
        if found is None:
            best = "no labelled edges | | |"
        else:
            best = f"{found.threshold:.4f} | {found.f1:.4f} | {found.low:.4f} – {found.high:.4f} |"
        labelled = "0" if found is None else f"{found.labelled:,}"
        return f"| {row.model} | {row.in_use:.4f} | {row.f1_in_use:.4f} | {best} {labelled} |"

    return (
        "The threshold maximising F1 on the labelled pairs (of each model's edges, before "
        "clustering) beside the one in use; a wide interval says the labels do not yet pin "
        "it down.\n\n| model | threshold in use | F1 in use | suggested threshold | F1 there | "
        "95% interval | labelled pairs |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(line(r) for r in rows)
    )


def _evaluation(
    store: MatchboxDBAdapter,
    path: StepPath,
    models: Sequence[str],
    sources: Sequence[str],
    entities: pl.DataFrame,
    checks: ResolverChecksSpec,
) -> dg.AssetCheckResult:
    base = store.settings.review_url  # the review app links from the check (issue 16)
    link: dict[str, object] = {}
    if base:
        link["review"] = dg.MetadataValue.url(f"{base.rstrip('/')}/review/{path.collection}")
    judged, wanted = 0, checks.min_judgements if not checks.truth else None
    if wanted:
        judged = judgement_count(store, path.collection, entities.get_column("leaf_id"))
        link["judgements"] = judged
    short = bool(wanted) and judged < wanted  # type: ignore[operator]
    more = f" {wanted - judged} more judgement(s) needed (minimum {wanted})." if short else ""  # type: ignore[operator]
    try:
        found = evaluate_resolver(
            store, path, models, entities, truth=bool(checks.truth), sources=sources
        )
    except MatchboxError as exc:  # e.g. MatchboxNoJudgements
        return _result(EVALUATION, False, f"Could not evaluate: {exc}{more}", **link)
    scores = found.scores
    return _result(
        EVALUATION,
        found.passes(checks.min_precision, checks.min_recall) and not more,
        f"Against {found.against}, after clustering (the resolver's entities): precision "
        f"{scores.precision:.4f} (minimum {checks.min_precision}), recall "
        f"{scores.recall:.4f} (minimum {checks.min_recall}), F1 {scores.f1:.4f} over "
        f"{scores.pairs:,} pairs.{more}",
        **link,
        precision=scores.precision,
        recall=scores.recall,
        f1=scores.f1,
        true_positives=scores.tp,
        false_positives=scores.fp,
        false_negatives=scores.fn,
        **(
            {"precision_recall_by_threshold": dg.MetadataValue.md(curve_table(found.curve))}
            if found.curve
            else {}
        ),
        **(
            {
                "suggested_thresholds": dg.MetadataValue.md(threshold_table(found.thresholds)),
                "thresholds": dg.MetadataValue.json([t.row() for t in found.thresholds]),
            }
            if found.thresholds
            else {}
        ),
    )


def _churn(
    store: MatchboxDBAdapter,
    path: StepPath,
    sources: Sequence[str],
    entities: pl.DataFrame,
    checks: ResolverChecksSpec,
) -> dg.AssetCheckResult:
    found = churn_against_default(store, path, sources, entities)
    if found.skipped is not None:
        return _result(CHURN, True, found.skipped, churn=0.0)
    return _result(
        CHURN,
        found.share <= (checks.max_churn or 0.0),
        f"{found.share:.2%} of {found.compared:,} keys changed entity against default run "
        f"{found.default_run} (bound {checks.max_churn:.2%}); {found.added:,} keys new, "
        f"{found.removed:,} gone.",
        churn=found.share,
        keys_compared=found.compared,
        keys_added=found.added,
        keys_removed=found.removed,
        default_run=dg.MetadataValue.text(str(found.default_run)),  # an id: shown, not plotted
    )
