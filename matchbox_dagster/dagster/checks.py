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
import numpy as np
import polars as pl

from matchbox_dagster.common.dtos import StepPath, UploadStage
from matchbox_dagster.common.errors import MatchboxError, MatchboxNoJudgements
from matchbox_dagster.evaluation.metrics import (
    PairwiseScores,
    score_against_judgements,
    score_against_truth,
    threshold_curve,
    truth_labels,
)
from matchbox_dagster.sources.inputs import source_records
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
    store: MatchboxDBAdapter, path: StepPath, extracted_keys: int, distinct_hashes: int
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
        and stored == extracted_keys
        and distinct == stored
        and not nulls
        and stored > 0
    )
    return _result(
        SOURCE_QUALITY,
        passed,
        f"{stored:,} keys stored ({distinct:,} distinct, {nulls} null) of {extracted_keys:,} "
        f"extracted; upload stage {stage}.",
        stored_keys=stored,
        extracted_keys=extracted_keys,
        distinct_hashes=distinct_hashes,
        stored_leaves=stats.get("leaves", 0),
    )


def scores_in_range(
    store: MatchboxDBAdapter, path: StepPath, produced_pairs: int
) -> dg.AssetCheckResult:
    """The stored edges are the ``produced_pairs`` pairs the model made, scores in [0, 1]."""
    stats = store.step_statistics(path)
    n, stage = stats["rows"], stats["stage"]
    lo, hi, bad = stats.get("min_score"), stats.get("max_score"), stats.get("out_of_range", 0)
    passed = stage == UploadStage.COMPLETE and n == produced_pairs and not bad
    return _result(
        SCORES_IN_RANGE,
        passed,
        f"{n:,} pairs stored of {produced_pairs:,} produced; scores from {lo} to {hi} "
        f"({bad} outside [0, 1]); upload stage {stage}.",
        stored_pairs=n,
        min_score=lo,
        max_score=hi,
    )


# --- resolvers ---------------------------------------------------------------------------------


def _entities(
    store: MatchboxDBAdapter,
    path: StepPath,
    sources: Sequence[str],
    batch_size: int,
    truth: dict[str, str] | None = None,
    *,
    ids_only: bool = False,
) -> pl.DataFrame:
    """One row per key under the resolver, lean enough for tens of millions of keys.

    Columns: ``key`` (a 64-bit hash of the key, seeded with the source's position in
    ``sources``, so equal keys of two sources differ), ``id`` (entity), ``leaf_id`` and
    ``entity`` (a 64-bit hash of the true entity from ``truth``; null for a source without
    one); with ``ids_only``, just ``key`` and ``id``. Strings are dropped source by source, so
    memory holds at most four integers a key.
    """
    frames = []
    for position, name in enumerate(sources):
        table = store.query(
            StepPath(collection=path.collection, run=path.run, name=name), path, return_leaf_id=True
        )
        keys = pl.DataFrame(pl.from_arrow(table))
        del table
        entity = pl.lit(None, dtype=pl.UInt64)
        if truth and name in truth:
            expression = pl.sql_expr(truth[name]).cast(pl.String)
            if not set(expression.meta.root_names()) <= {"key"}:
                # It reads index fields: re-read the source for them, joined on the key.
                labelled = (
                    source_records(
                        store,
                        StepPath(collection=path.collection, run=path.run, name=name),
                        batch_size=batch_size,
                    )
                    .select("key", expression.alias("entity"))
                    .unique(subset="key")
                )
                keys = keys.join(labelled, on="key", how="left")
                expression = pl.col("entity")
            entity = pl.when(expression.is_not_null()).then(expression.hash())
        columns = [pl.col("key").hash(seed=position), pl.col("id").cast(pl.Int64)]
        if not ids_only:
            columns += [pl.col("leaf_id").cast(pl.Int64), entity.alias("entity")]
        frames.append(keys.select(columns))
        del keys
    return pl.concat(frames, how="vertical")


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
    entities = _entities(store, path, sources, batch_size, truth)
    results = [_resolver_quality(entities, checks)]
    if EVALUATION in names:
        results.append(_evaluation(store, path, models, entities, checks))
    if CHURN in names:
        results.append(_churn(store, path, sources, entities, checks))
    return results


def _resolver_quality(entities: pl.DataFrame, checks: ResolverChecksSpec) -> dg.AssetCheckResult:
    # Runs of the sorted ids: a tenth of the memory of grouping 10M keys (+0.1 GB, not +1 GB).
    sizes = entities.select(pl.col("id").sort().rle().struct.field("len").alias("n"))
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


def _evaluation(
    store: MatchboxDBAdapter,
    path: StepPath,
    models: Sequence[str],
    entities: pl.DataFrame,
    checks: ResolverChecksSpec,
) -> dg.AssetCheckResult:
    curve_rows: list[dict[str, Any]] = []
    try:
        if checks.truth:
            scores: PairwiseScores = score_against_truth(entities, cluster="id", truth="entity")
            against = "ground truth"
            leaf_truth = entities.select(pl.col("leaf_id").alias("id"), "entity").drop_nulls()
            for model in models:
                edges = store.get_model_data(
                    StepPath(collection=path.collection, run=path.run, name=model)
                )
                labels = truth_labels(edges, leaf_truth)
                curve = threshold_curve(edges, labels, thresholds=CURVE_THRESHOLDS)
                del edges, labels
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


def _compare_ids(current: pl.DataFrame, previous: pl.DataFrame) -> tuple[int, int]:
    """Keys in both frames, and how many of them have another ``id`` in each.

    Binary search of the current key hashes in the sorted previous ones: a third of the memory
    of a hash join of ten million keys.
    """
    if current.is_empty() or previous.is_empty():
        return 0, 0
    order = previous.get_column("key").arg_sort().to_numpy()
    keys = previous.get_column("key").to_numpy()[order]
    ids = previous.get_column("id").to_numpy()[order]
    del order
    wanted = current.get_column("key").to_numpy()
    position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = keys[position] == wanted
    moved = ids[position[found]] != current.get_column("id").to_numpy()[found]
    return int(found.sum()), int(moved.sum())


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
            store,
            StepPath(collection=path.collection, run=default, name=path.name),
            sources,
            0,
            ids_only=True,
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
    common, moved = _compare_ids(entities, previous)
    share = moved / common if common else 0.0
    added = entities.height - common
    removed = previous.height - common
    return _result(
        CHURN,
        share <= (checks.max_churn or 0.0),
        f"{share:.2%} of {common:,} keys changed entity against default run {default} "
        f"(bound {checks.max_churn:.2%}); {added:,} keys new, {removed:,} gone.",
        churn=share,
        keys_compared=common,
        keys_added=added,
        keys_removed=removed,
        default_run=default,
    )
