"""The ``entities`` table of a resolver's materialisation: what merged, for the Dagster UI.

Each source is read once (keys, leaves, entities); sizes and the edges nearest each threshold
(``bottom_k``, no sort of every edge) are found on integers, and only the shown keys get
fields, re-read from sources of at most ``max_keys`` keys.
"""

from __future__ import annotations

import polars as pl

from matchbox_dagster.common.dtos import StepPath
from matchbox_dagster.evaluation.sampling import TABLE_MAX_KEYS, input_ids, lineage
from matchbox_dagster.sources.inputs import source_records
from matchbox_dagster.store.base import MatchboxDBAdapter

_SHOWN_PER_ENTITY = 10
_SHOWN_PER_EDGE = 6


def _md(value: object) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _keys(store: MatchboxDBAdapter, path: StepPath, source: str) -> pl.DataFrame:
    """``key``, ``leaf``, ``entity`` of each key of ``source`` under the resolver at ``path``."""
    table = store.query(path.model_copy(update={"name": source}), path, return_leaf_id=True)
    return pl.DataFrame(pl.from_arrow(table)).select(
        pl.col("key").cast(pl.String),
        pl.col("leaf_id").cast(pl.Int64).alias("leaf"),
        pl.col("id").cast(pl.Int64).alias("entity"),
    )


def _shown_records(
    store: MatchboxDBAdapter,
    path: StepPath,
    keys: dict[str, pl.DataFrame],
    leaves: pl.Series,
    max_keys: int,
) -> pl.DataFrame:
    """``source``, ``key``, ``leaf``, ``entity``, ``fields`` of the keys of ``leaves``."""
    wanted = leaves.unique().implode()
    parts = []
    for name, frame in keys.items():
        part = frame.filter(pl.col("leaf").is_in(wanted)).with_columns(source=pl.lit(name))
        if frame.height <= max_keys and part.height:
            fields = source_records(store, path.model_copy(update={"name": name})).drop("id")
            text = fields.select(
                pl.col("key").cast(pl.String),
                pl.concat_str(
                    [pl.format(f"{c}={{}}", pl.col(c).cast(pl.String)) for c in fields.columns[1:]],
                    separator="; ",
                    ignore_nulls=True,
                ).alias("fields"),
            )
            part = part.join(text, on="key", how="left")
        parts.append(part)
    records = pl.concat(parts, how="diagonal") if parts else pl.DataFrame()
    if "fields" not in records.columns:
        records = records.with_columns(pl.lit(None, dtype=pl.String).alias("fields"))
    return records


def entity_tables(
    store: MatchboxDBAdapter, path: StepPath, n: int = 5, max_keys: int = TABLE_MAX_KEYS
) -> str:
    """Markdown: a resolver's ``n`` largest entities and ``n`` edges nearest each threshold.

    One row per record with its fields, re-read from sources of at most ``max_keys`` keys
    (larger sources show their keys only), for the resolver's materialisation metadata.
    """
    found = lineage(store, path)
    keys = {name: _keys(store, path, name) for name in found.sources}
    ints = pl.concat([frame.select("leaf", "entity") for frame in keys.values()])
    # Records per entity from the sorted ids' runs: at 10M keys a hash group-by held ~1 GB
    # more, the sort ~0.2 GB.
    runs = ints.get_column("entity").sort().rle().struct.unnest()
    sizes = runs.select(pl.col("value").alias("entity"), "len").filter(pl.col("len") > 1)
    largest = sizes.sort(["len", "entity"], descending=[True, False]).head(n)
    shown = [ints.filter(pl.col("entity").is_in(largest.get_column("entity").implode()))]
    near: list[tuple[str, float, pl.DataFrame, pl.DataFrame]] = []
    for model, threshold in found.thresholds.items():
        edges = pl.DataFrame(
            pl.from_arrow(store.get_model_data(path.model_copy(update={"name": model})))
        )
        if edges.is_empty():
            continue
        # The n nearest without sorting every edge.
        distance = (pl.col("score") - threshold).abs()
        edges = edges.with_columns(d=distance).bottom_k(n, by="d").sort("d", "left_id", "right_id")
        ids = pl.concat([edges.get_column("left_id"), edges.get_column("right_id")])
        behind = input_ids(store, path, model, ints.get_column("leaf"), ids.cast(pl.Int64))
        near.append((model, threshold, edges, behind))
        shown.append(ints.join(behind.select("leaf"), on="leaf", how="semi"))
    del ints
    records = _shown_records(store, path, keys, pl.concat(shown).get_column("leaf"), max_keys)
    del keys, shown

    lines = ["### Largest entities", "", "| entity | records | source | key | fields |"]
    lines.append("|---|---|---|---|---|")
    for entity, size in largest.iter_rows():
        rows = records.filter(pl.col("entity") == entity).sort("source", "key")
        for row in rows.head(_SHOWN_PER_ENTITY).iter_rows(named=True):
            lines.append(
                f"| {entity} | {size} | {_md(row['source'])} | {_md(row['key'])} | "
                f"{_md(row['fields'])} |"
            )
    lines += ["", "### Edges nearest each threshold", ""]
    lines += [
        "| model | score | threshold | kept | source | key | fields |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, threshold, edges, behind in near:
        for row in edges.iter_rows(named=True):
            kept = "yes" if row["score"] >= threshold else "no"
            ends = behind.filter(pl.col("id").is_in([row["left_id"], row["right_id"]]))
            rows = records.join(ends.select("leaf"), on="leaf").sort("source", "key")
            for rec in rows.head(_SHOWN_PER_EDGE).iter_rows(named=True):
                lines.append(
                    f"| {_md(model)} | {row['score']:.3f} | {threshold} | {kept} | "
                    f"{_md(rec['source'])} | {_md(rec['key'])} | {_md(rec['fields'])} |"
                )
    return "\n".join(lines)
