"""The entities of a resolver: one lean row per key under it, for every resolver figure."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from matchbox_dagster.common.dtos import SourceConfig, SourceField, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.sources.locations import extract
from matchbox_dagster.store.base import MatchboxDBAdapter


def resolver_entities(
    store: MatchboxDBAdapter,
    path: StepPath,
    sources: Sequence[str],
    batch_size: int,
    truth: dict[str, str] | None = None,
    *,
    ids_only: bool = False,
) -> pl.DataFrame:
    """One row per key under the resolver at ``path``, lean enough for tens of millions of keys.

    Columns: ``key`` (a 64-bit hash of the key, seeded with the source's position in
    ``sources``, so equal keys of two sources differ), ``id`` (entity), ``leaf_id`` and
    ``entity`` (a 64-bit hash of the true entity from ``truth``, a polars SQL expression per
    source; null for a source without one); with ``ids_only``, just ``key`` and ``id``. Strings
    are dropped source by source, so memory holds at most four integers a key.
    """
    frames = []
    for position, name in enumerate(sources):
        source = StepPath(collection=path.collection, run=path.run, name=name)
        table = store.query(source, path, return_leaf_id=True)
        keys = pl.DataFrame(pl.from_arrow(table))
        del table
        entity = pl.lit(None, dtype=pl.UInt64)
        if truth and name in truth:
            expression = pl.sql_expr(truth[name]).cast(pl.String)
            if not set(expression.meta.root_names()) <= {"key"}:
                # It reads other columns (any column of the source, index field or not):
                # re-read the source for them, joined on the key.
                labelled = _truth(store, source, expression, batch_size)
                keys = keys.join(labelled, on="key", how="left")
                expression = pl.col("entity")
            entity = pl.when(expression.is_not_null()).then(expression.hash())
        columns = [pl.col("key").hash(seed=position), pl.col("id").cast(pl.Int64)]
        if not ids_only:
            columns += [pl.col("leaf_id").cast(pl.Int64), entity.alias("entity")]
        frames.append(keys.select(columns))
        del keys
    return pl.concat(frames, how="vertical")


def _truth(
    store: MatchboxDBAdapter, source: StepPath, expression: pl.Expr, batch_size: int
) -> pl.DataFrame:
    """``key``, ``entity``: the truth expression over any of the source's columns, by key."""
    config = store.get_step(source).config
    if not isinstance(config, SourceConfig):
        raise MatchboxInvalidData(f"Step {source} is not a source.")
    key = config.key_field.name
    read = sorted(set(expression.meta.root_names()) - {"key", key})
    fields = tuple(SourceField(name=c) for c in read) or config.index_fields[:1]
    config = config.model_copy(update={"index_fields": fields})
    parts = [
        batch.with_columns(pl.col(key).alias("key")).select("key", expression.alias("entity"))
        for batch in extract(config, batch_size=batch_size)
    ]
    if not parts:
        return pl.DataFrame(schema={"key": pl.String, "entity": pl.String})
    return pl.concat(parts).unique(subset="key")
