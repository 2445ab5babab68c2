"""Reading a model's input back from the store: ids joined to the source records they stand for.

The store keeps keys and row hashes, not field values; a source's values stay where the source
is, and are re-read from the location stored in its step's :class:`SourceConfig`. A model input
(:class:`QueryConfig`) is therefore: ``query()`` of each source (through the input's resolver,
if any) giving ``id`` per key, joined on the key to the source's fields, with optional cleaning
expressions (polars SQL, e.g. ``{"surname": "lower(trim(surname))"}``).
"""

from __future__ import annotations

import polars as pl

from matchbox_dagster.common.dtos import QueryConfig, SourceConfig, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.sources import DEFAULT_BATCH_SIZE, extract
from matchbox_dagster.store.base import MatchboxDBAdapter


def source_records(
    store: MatchboxDBAdapter,
    source: StepPath,
    resolver: StepPath | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pl.DataFrame:
    """``id`` (entity through ``resolver``, else leaf), ``key`` and the source's index fields."""
    step = store.get_step(source)
    config = step.config
    if not isinstance(config, SourceConfig):
        raise MatchboxInvalidData(f"Step {source} is a {step.step_type}, not a source.")
    ids = pl.DataFrame(pl.from_arrow(store.query(source, resolver)))
    key = config.key_field.name
    batches = list(extract(config, batch_size=batch_size))
    if not batches:
        return ids.head(0)
    data = pl.concat(batches, how="vertical_relaxed")
    data = data.rename({key: "key"}) if key != "key" else data
    return ids.join(data, on="key", how="inner")


def query_frame(
    store: MatchboxDBAdapter,
    collection: str,
    run: int,
    query: QueryConfig,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pl.DataFrame:
    """The records a model input gives its methodology: ``id`` plus fields, one row per record.

    Several records may share an ``id`` (identical rows share a leaf; a resolver's cluster holds
    several records). Every record is kept, so frequency-based methodologies (Splink's term
    frequencies, its parameter estimates) see the data as it is.
    """
    resolver = (
        StepPath(collection=collection, run=run, name=query.resolver) if query.resolver else None
    )
    frames = []
    for name in query.sources:
        records = source_records(
            store,
            StepPath(collection=collection, run=run, name=name),
            resolver,
            batch_size=batch_size,
        ).drop("key")
        if query.cleaning:
            try:
                records = records.with_columns(
                    pl.sql_expr(expr).alias(column) for column, expr in query.cleaning.items()
                )
            except Exception as exc:  # polars raises several types for bad SQL
                raise MatchboxInvalidData(
                    f"Cleaning expressions {query.cleaning} failed on source {name!r} "
                    f"(columns {records.columns}): {exc}"
                ) from exc
        frames.append(records)
    return pl.concat(frames, how="diagonal_relaxed")
