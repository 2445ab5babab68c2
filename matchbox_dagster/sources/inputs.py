"""Reading a model's input back from the store: ids joined to the source records they stand for.

The store keeps keys and row hashes, not field values; a source's values stay where the source
is, and are re-read from the location stored in its step's :class:`SourceConfig`. A model input
(:class:`QueryConfig`) is therefore: ``query()`` of each source (through the input's resolver,
if any) giving ``id`` per key, joined on the key to the source's fields, with optional cleaning
expressions (polars SQL, e.g. ``{"surname": "lower(trim(surname))"}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from matchbox_dagster.common.dtos import QueryConfig, SourceConfig, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.common.settings import DEFAULT_BATCH_SIZE
from matchbox_dagster.sources.locations import extract
from matchbox_dagster.store.base import MatchboxDBAdapter


class _KeyIndex:
    """Each stored key's id, looked up by a 64-bit hash of the key (binary search).

    Holds two integer arrays instead of the key strings, so a batch of records finds its ids
    without a string join and without holding the whole source. ``exact`` is False when two
    stored keys share a hash; the caller then joins on the key text instead. A record whose key
    is not stored (the source changed since it was indexed) is dropped unless its key's hash
    equals a stored key's: at 10M stored keys a chance of about one in 2·10^12 per unstored record.
    """

    def __init__(self, ids: pa.Table) -> None:
        hashes = pl.Series(ids.column("key")).hash().to_numpy()
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.ids = ids.column("id").to_numpy()[order]
        self.exact = not _shared_hashes(self.hashes)

    def attach(self, batch: pl.DataFrame) -> pl.DataFrame:
        """``batch`` with an ``id`` column first, keeping only rows whose key is stored."""
        if not len(self.hashes):
            return batch.head(0).select(pl.lit(0, dtype=pl.Int64).alias("id"), pl.all())
        wanted = batch.get_column("key").hash().to_numpy()
        position = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
        found = self.hashes[position] == wanted
        return batch.filter(pl.Series(found)).select(
            pl.Series("id", self.ids[position[found]], dtype=pl.Int64), pl.all()
        )


def _shared_hashes(ordered: np.ndarray) -> bool:
    """Whether two entries of the sorted hashes ``ordered`` are equal."""
    return bool((np.diff(ordered) == 0).any())


def source_records(
    store: MatchboxDBAdapter,
    source: StepPath,
    resolver: StepPath | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fields: Sequence[str] | None = None,
    with_key: bool = True,
) -> pl.DataFrame:
    """``id`` (entity through ``resolver``, else leaf), ``key`` and the source's index fields.

    The source is read in batches of ``batch_size`` rows; each batch keeps only ``fields``
    (default: every index field) and, unless ``with_key`` is False, the key, so memory holds
    what the caller asked for and one batch more. Records whose key the store does not hold
    (the source changed since it was indexed) are left out.
    """
    step = store.get_step(source)
    config = step.config
    if not isinstance(config, SourceConfig):
        raise MatchboxInvalidData(f"Step {source} is a {step.step_type}, not a source.")
    key = config.key_field.name
    keep = [f.name for f in config.index_fields if fields is None or f.name in fields]
    ids = store.query(source, resolver)
    index = _KeyIndex(ids)
    if not index.exact:  # two keys share a 64-bit hash: join on the text (never seen)
        batches = [b.select(key, *keep) for b in extract(config, batch_size=batch_size)]
        data = pl.concat(batches, how="vertical_relaxed") if batches else None
        frame = pl.DataFrame(pl.from_arrow(ids))
        if data is None:
            return frame.head(0)
        frame = frame.join(data.rename({key: "key"}) if key != "key" else data, on="key")
        return frame if with_key else frame.drop("key")
    del ids
    parts = []
    for batch in extract(config, batch_size=batch_size):
        batch = batch.select(pl.col(key).alias("key"), *keep)
        part = index.attach(batch)
        parts.append(part if with_key else part.drop("key"))
    if not parts:
        empty = pl.DataFrame(schema={"id": pl.Int64, "key": pl.String})
        return empty if with_key else empty.drop("key")
    return pl.concat(parts, how="vertical_relaxed", rechunk=False)


def query_frame(
    store: MatchboxDBAdapter,
    collection: str,
    run: int,
    query: QueryConfig,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fields: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The records a model input gives its methodology: ``id`` plus fields, one row per record.

    Several records may share an ``id`` (identical rows share a leaf; a resolver's cluster holds
    several records). Every record is kept, so frequency-based methodologies (Splink's term
    frequencies, its parameter estimates) see the data as it is. With ``fields``, only those
    index fields are read (ignored when the query has cleaning expressions, which may read any).
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
            fields=None if query.cleaning else fields,
            with_key=False,
        )
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
    return pl.concat(frames, how="diagonal_relaxed", rechunk=False)
