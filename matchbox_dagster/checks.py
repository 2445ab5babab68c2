"""Asset checks of a run: data quality of each step and evaluation of resolvers.

Every check here reads what the store holds for the partition's run (after the IO manager wrote
it), so it verifies the stored step, not just the in-memory payload. Check functions return
:class:`dagster.AssetCheckResult` with metadata the UI shows; they are blocking ERROR checks, so
a failure stops downstream assets and keeps the run from being promoted.

Check names (the promotion sensor relies on them only through the asset's check specs):

``source_quality``     stage complete; stored keys = extracted keys; keys unique and non-null
``scores_in_range``    stage complete; stored pairs = produced pairs; every score in [0, 1]
``resolver_quality``   at least one entity; no entity holds more than ``max_cluster_size`` records
``evaluation``         pairwise precision/recall ≥ minimums, against ground truth or judgements
``churn``              share of keys whose entity changed against the default run ≤ ``max_churn``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import polars as pl

from matchbox_dagster.common.arrow import ModelResults, SourceHashes
from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.errors import MatchboxError, MatchboxNoJudgements
from matchbox_dagster.evaluation.metrics import (
    PairwiseScores,
    score_against_judgements,
    score_against_truth,
    threshold_curve,
    truth_labels,
)
from matchbox_dagster.inputs import source_records
from matchbox_dagster.specs import ResolverChecksSpec
from matchbox_dagster.store.base import MatchboxDBAdapter

SOURCE_QUALITY = "source_quality"
SCORES_IN_RANGE = "scores_in_range"
RESOLVER_QUALITY = "resolver_quality"
EVALUATION = "evaluation"
CHURN = "churn"

CURVE_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(11)]


def _result(name: str, passed: bool, description: str, **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"summary": description, **metadata},
    )


def resolver_check_names(checks: ResolverChecksSpec) -> list[str]:
    """The checks a resolver with these settings carries."""
    names = [RESOLVER_QUALITY]
    if checks.min_precision is not None or checks.min_recall is not None:
        names.append(EVALUATION)
    if checks.max_churn is not None:
        names.append(CHURN)
    return names


def check_specs(asset_key: dg.AssetKey, names: Sequence[str]) -> list[dg.AssetCheckSpec]:
    """Blocking check specs for ``asset_key``."""
    descriptions = {
        SOURCE_QUALITY: "Stored keys match the extract; keys unique and non-null.",
        SCORES_IN_RANGE: "Stored pairs match the model's output; scores within [0, 1].",
        RESOLVER_QUALITY: "At least one entity; no entity above the size bound.",
        EVALUATION: "Pairwise precision and recall at or above the configured minimums.",
        CHURN: "Share of keys changing entity against the default run within bound.",
    }
    return [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=descriptions[name])
        for name in names
    ]


# --- sources and models ------------------------------------------------------------------------


def source_quality(
    store: MatchboxDBAdapter, path: StepPath, payload: SourceHashes
) -> dg.AssetCheckResult:
    """The stored source holds exactly the extracted keys, each once."""
    stats = store.step_statistics(path)
    stored, distinct, nulls = (
        stats["rows"],
        stats.get("distinct_keys", 0),
        stats.get("null_keys", 0),
    )
    stage = stats["stage"]
    passed = (
        stage == UploadStage.COMPLETE
        and stored == payload.num_keys
        and distinct == stored
        and not nulls
        and stored > 0
    )
    return _result(
        SOURCE_QUALITY,
        passed,
        f"{stored:,} keys stored ({distinct:,} distinct, {nulls} null) of {payload.num_keys:,} "
        f"extracted; upload stage {stage}.",
        stored_keys=stored,
        extracted_keys=payload.num_keys,
        distinct_hashes=payload.num_rows,
        stored_leaves=stats.get("leaves", 0),
    )


def scores_in_range(
    store: MatchboxDBAdapter, path: StepPath, payload: ModelResults
) -> dg.AssetCheckResult:
    """The stored edges are the model's, with scores in [0, 1]."""
    stats = store.step_statistics(path)
    n, stage = stats["rows"], stats["stage"]
    lo, hi, bad = stats.get("min_score"), stats.get("max_score"), stats.get("out_of_range", 0)
    passed = stage == UploadStage.COMPLETE and n == payload.num_rows and not bad
    return _result(
        SCORES_IN_RANGE,
        passed,
        f"{n:,} pairs stored of {payload.num_rows:,} produced; scores from {lo} to {hi} "
        f"({bad} outside [0, 1]); upload stage {stage}.",
        stored_pairs=n,
        min_score=lo,
        max_score=hi,
    )


# --- resolvers ---------------------------------------------------------------------------------


def _entities(
    store: MatchboxDBAdapter, path: StepPath, sources: Sequence[str], batch_size: int
) -> pl.DataFrame:
    """``source``, ``key``, ``id`` (entity), ``leaf_id`` of every key under the resolver."""
    frames = []
    for name in sources:
        table = store.query(
            StepPath(collection=path.collection, run=path.run, name=name), path, return_leaf_id=True
        )
        frames.append(pl.DataFrame(pl.from_arrow(table)).with_columns(source=pl.lit(name)))
    return pl.concat(frames, how="vertical_relaxed")


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
    entities = _entities(store, path, sources, batch_size)
    results = [_resolver_quality(entities, checks)]
    if EVALUATION in resolver_check_names(checks):
        results.append(_evaluation(store, path, sources, models, entities, checks, batch_size))
    if CHURN in resolver_check_names(checks):
        results.append(_churn(store, path, sources, entities, checks))
    return results


def _resolver_quality(entities: pl.DataFrame, checks: ResolverChecksSpec) -> dg.AssetCheckResult:
    sizes = entities.group_by("id").agg(pl.len().alias("n"))
    n_entities = sizes.height
    largest = int(sizes.get_column("n").max() or 0) if n_entities else 0  # type: ignore[arg-type]
    bound = checks.max_cluster_size
    too_big = bound is not None and largest > bound
    histogram = (
        sizes.group_by("n").agg(pl.len().alias("entities")).sort("n").head(20)
        if n_entities
        else pl.DataFrame({"n": [], "entities": []})
    )
    table = "\n".join(f"| {n} | {e:,} |" for n, e in histogram.iter_rows())
    return _result(
        RESOLVER_QUALITY,
        n_entities > 0 and not too_big,
        f"{entities.height:,} keys in {n_entities:,} entities; largest holds {largest:,} records"
        + (f" (bound {bound:,})" if bound is not None else "")
        + ("" if n_entities else "; the resolver produced no entity")
        + ".",
        keys=entities.height,
        entities=n_entities,
        largest_entity=largest,
        entity_sizes=dg.MetadataValue.md("| records | entities |\n|---|---|\n" + table),
    )


def _truth(
    store: MatchboxDBAdapter,
    path: StepPath,
    expressions: dict[str, str],
    entities: pl.DataFrame,
    batch_size: int,
) -> pl.DataFrame:
    """``source``, ``key``, ``leaf_id``, ``entity`` from the ground-truth expressions.

    An expression over ``key`` alone is evaluated on the keys already queried; one that reads
    index fields re-reads the source.
    """
    frames = []
    for name, expression in expressions.items():
        keys = entities.filter(pl.col("source") == name).select(
            "key", pl.col("leaf_id").alias("id")
        )
        try:
            frames.append(
                keys.select(
                    pl.lit(name).alias("source"),
                    "key",
                    pl.col("id").alias("leaf_id"),
                    pl.sql_expr(expression).cast(pl.String).alias("entity"),
                )
            )
            continue
        except pl.exceptions.ColumnNotFoundError:
            pass
        records = source_records(
            store,
            StepPath(collection=path.collection, run=path.run, name=name),
            batch_size=batch_size,
        )
        frames.append(
            records.select(
                pl.lit(name).alias("source"),
                "key",
                pl.col("id").alias("leaf_id"),
                pl.sql_expr(expression).cast(pl.String).alias("entity"),
            )
        )
    return pl.concat(frames)


def _evaluation(
    store: MatchboxDBAdapter,
    path: StepPath,
    sources: Sequence[str],
    models: Sequence[str],
    entities: pl.DataFrame,
    checks: ResolverChecksSpec,
    batch_size: int,
) -> dg.AssetCheckResult:
    curve_rows: list[dict[str, Any]] = []
    try:
        if checks.truth:
            truth = _truth(store, path, checks.truth, entities, batch_size)
            joined = entities.join(truth, on=["source", "key"], how="inner")
            scores: PairwiseScores = score_against_truth(joined, cluster="id", truth="entity")
            against = "ground truth"
            leaf_truth = truth.select(pl.col("leaf_id").alias("id"), "entity")
            for model in models:
                edges = store.get_model_data(
                    StepPath(collection=path.collection, run=path.run, name=model)
                )
                labels = truth_labels(edges, leaf_truth)
                curve = threshold_curve(edges, labels, thresholds=CURVE_THRESHOLDS)
                curve_rows += [{"model": model, **row} for row in curve.iter_rows(named=True)]
        else:
            judgements, expansion = store.get_judgements()
            clusters = entities.select(
                pl.col("id").alias("root"), pl.col("leaf_id").alias("leaf")
            ).unique()
            scores = score_against_judgements(
                clusters, judgements, expansion, universe=clusters.get_column("leaf")
            )
            against = "judgements"
    except (MatchboxNoJudgements, MatchboxError) as exc:
        return _result(EVALUATION, False, f"Could not evaluate: {exc}")
    p_ok = checks.min_precision is None or scores.precision >= checks.min_precision
    r_ok = checks.min_recall is None or scores.recall >= checks.min_recall
    table = "\n".join(
        f"| {r['model']} | {r['threshold']:.2f} | {r['edges']:,} | {r['precision']:.4f} | "
        f"{r['recall']:.4f} | {r['f1']:.4f} |"
        for r in curve_rows
    )
    return _result(
        EVALUATION,
        p_ok and r_ok,
        f"Against {against}: precision {scores.precision:.4f} (minimum {checks.min_precision}), "
        f"recall {scores.recall:.4f} (minimum {checks.min_recall}), F1 {scores.f1:.4f} over "
        f"{scores.pairs:,} pairs.",
        precision=scores.precision,
        recall=scores.recall,
        f1=scores.f1,
        true_positives=scores.tp,
        false_positives=scores.fp,
        false_negatives=scores.fn,
        **(
            {
                "precision_recall_by_threshold": dg.MetadataValue.md(
                    "| model | threshold | edges | precision | recall | F1 |\n"
                    + "|---|---|---|---|---|---|\n"
                    + table
                )
            }
            if curve_rows
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
    default = store.get_collection(path.collection).default_run
    if default is None or default == path.run:
        return _result(CHURN, True, "No other default run to compare with.", churn=0.0)
    try:
        previous = _entities(
            store, StepPath(collection=path.collection, run=default, name=path.name), sources, 0
        )
    except MatchboxError as exc:
        return _result(
            CHURN,
            True,
            f"Default run {default} has no comparable resolver/sources ({exc}).",
            churn=0.0,
        )
    # Cluster ids are content addresses of their leaves: a key's id differs between the runs
    # exactly when the set of records it is grouped with differs.
    common = entities.join(previous, on=["source", "key"], how="inner", suffix="_prev")
    moved = common.filter(pl.col("id") != pl.col("id_prev"))
    share = moved.height / common.height if common.height else 0.0
    added = entities.height - common.height
    removed = previous.height - common.height
    return _result(
        CHURN,
        share <= (checks.max_churn or 0.0),
        f"{share:.2%} of {common.height:,} keys changed entity against default run {default} "
        f"(bound {checks.max_churn:.2%}); {added:,} keys new, {removed:,} gone.",
        churn=share,
        keys_compared=common.height,
        keys_added=added,
        keys_removed=removed,
        default_run=default,
    )
