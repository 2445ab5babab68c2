"""Reading a model's input back from the store: ids joined to the source records they stand for.

The store keeps keys and row hashes, not field values; a source's values stay where the source
is, and are re-read from the location stored in its step's :class:`SourceConfig`. A model input
(:class:`QueryConfig`) is therefore: ``query()`` of each source (through the input's resolver,
if any) giving ``id`` per key, joined on the key to the source's fields, with optional cleaning
expressions (polars SQL, e.g. ``{"surname": "lower(trim(surname))"}``).

A location may change after its source step indexed it. Each re-read record is therefore
verified against its stored row (same key set, same row hash), and any difference raises
:class:`~matchbox_dagster.common.errors.MatchboxSourceChanged`: scoring new values under the ids
of old ones would be a silent wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np
import polars as pl
import pyarrow as pa

from matchbox_dagster.common.dtos import QueryConfig, SourceConfig, StepPath
from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxSourceChanged
from matchbox_dagster.common.fingerprint import leaf_ids
from matchbox_dagster.common.settings import DEFAULT_BATCH_SIZE
from matchbox_dagster.methods.hashing import row_hashes
from matchbox_dagster.methods.organisations import cleaning_expr
from matchbox_dagster.sources.locations import S3ClientFactory, extract
from matchbox_dagster.store.base import MatchboxDBAdapter


class _KeyIndex:
    """Each stored key's id and leaf, looked up by a 64-bit hash of the key (binary search).

    Holds integer arrays instead of the key strings, so a batch of records finds its ids
    without a string join and without holding the whole source. ``exact`` is False when two
    stored keys share a hash; the caller then joins on the key text instead. :meth:`attach`
    verifies every record against its stored row (see :class:`_Verifier`).
    """

    def __init__(self, ids: pa.Table) -> None:
        hashes = pl.Series(ids.column("key")).hash().to_numpy()
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.ids = ids.column("id").to_numpy()[order]
        self.leaves = ids.column("leaf_id").to_numpy()[order]
        self.seen = np.zeros(len(order), dtype=bool)
        self.exact = not _shared_hashes(self.hashes)

    def attach(self, batch: pl.DataFrame, verify: _Verifier) -> pl.DataFrame:
        """``batch`` with an ``id`` column first; a record the store does not hold as read fails."""
        if not batch.height:
            return batch.select(pl.lit(0, dtype=pl.Int64).alias("id"), pl.all())
        wanted = batch.get_column("key").hash().to_numpy()
        if not len(self.hashes):
            verify.added(batch.get_column("key"))
        position = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
        found = self.hashes[position] == wanted
        if not found.all():
            verify.added(batch.get_column("key").filter(pl.Series(~found)))
        if self.seen[position].any() or len(np.unique(position)) != len(position):
            verify.repeated(batch.get_column("key"))
        self.seen[position] = True
        verify.rows(batch, self.leaves[position])
        return batch.select(pl.Series("id", self.ids[position], dtype=pl.Int64), pl.all())

    def finish(self, verify: _Verifier, stored_keys: Callable[[], pa.Array]) -> None:
        """Fail if a stored key was never read back (``stored_keys`` names one, on failure)."""
        if not self.seen.all():
            unseen = self.hashes[~self.seen]
            keys = pl.Series(stored_keys())
            example = keys.filter(pl.Series(np.isin(keys.hash().to_numpy(), unseen)))
            verify.missing(int((~self.seen).sum()), example[0] if example.len() else None)


class _Verifier:
    """Checks re-read records against the source step's stored rows.

    The store keeps each key's leaf id, the content address of the row's hash (63 bits of
    ``xxh3_64`` of it, see :mod:`~matchbox_dagster.common.fingerprint`). A re-read row is
    hashed with the source step's own function (:func:`~matchbox_dagster.methods.hashing.row_hashes`
    over every index field) and its leaf id compared with the stored one: a changed value, a
    key added, missing or repeated raises :class:`MatchboxSourceChanged`, so changed values are
    never scored under old ids.
    """

    def __init__(self, source: StepPath, fields: Sequence[str]) -> None:
        self.source = source
        self.fields = list(fields)

    def fail(self, detail: str) -> NoReturn:
        """Raise the typed error naming the source and its run."""
        raise MatchboxSourceChanged(
            self.source.collection, self.source.run, self.source.name, detail
        )

    def added(self, keys: pl.Series) -> NoReturn:
        """Records whose keys the store does not hold."""
        self.fail(f"{keys.len():,} record(s) with keys it did not hold, e.g. {keys[0]!r}")

    def repeated(self, keys: pl.Series) -> NoReturn:
        """A key read twice."""
        twice = keys.filter(keys.is_duplicated())
        example = f", e.g. {twice[0]!r}" if twice.len() else ""
        self.fail(f"a key is read more than once{example}")

    def missing(self, count: int, example: str | None = None) -> NoReturn:
        """Stored keys not read back."""
        shown = f", e.g. {example!r}" if example is not None else ""
        self.fail(f"{count:,} indexed key(s) are no longer in it{shown}")

    def rows(self, batch: pl.DataFrame, stored: np.ndarray) -> None:
        """Fail if a row's hash differs from the one stored for its key."""
        read = leaf_ids(row_hashes(batch, self.fields)).to_numpy(zero_copy_only=False)
        changed = read != stored
        if changed.any():
            keys = batch.get_column("key").filter(pl.Series(changed))
            self.fail(f"{keys.len():,} record(s) have other values, e.g. key {keys[0]!r}")


def _shared_hashes(ordered: np.ndarray) -> bool:
    """Whether two entries of the sorted hashes ``ordered`` are equal."""
    return bool((np.diff(ordered) == 0).any())


def _s3_factory(store: MatchboxDBAdapter) -> S3ClientFactory | None:
    """The store's S3 client factory (under Dagster, the ``S3Resource``'s), if it has one."""
    return getattr(store, "s3_client_factory", None)


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
    what the caller asked for and one batch more. Every record is verified against the row its
    source step stored: if the source changed since it was indexed (a value, a key added or
    gone) :class:`MatchboxSourceChanged` is raised naming the source and run. An S3 source is
    re-read with the store's S3 client factory (:func:`_s3_factory`).
    """
    step = store.get_step(source)
    config = step.config
    if not isinstance(config, SourceConfig):
        raise MatchboxInvalidData(f"Step {source} is a {step.step_type}, not a source.")
    key = config.key_field.name
    hashed = [f.name for f in config.index_fields]
    keep = [name for name in hashed if fields is None or name in fields]
    verify = _Verifier(source, hashed)
    ids = store.query(source, resolver, return_leaf_id=True)
    index = _KeyIndex(ids)
    if not index.exact:  # two keys share a 64-bit hash: join on the text (never seen)
        return _joined_on_text(config, ids, verify, keep, batch_size, with_key, _s3_factory(store))
    del ids  # the keys' text is not held while reading
    parts = []
    for batch in extract(config, batch_size=batch_size, s3_client_factory=_s3_factory(store)):
        batch = batch.select(pl.col(key).alias("key"), *hashed)
        part = index.attach(batch, verify).select("id", "key", *keep)
        parts.append(part if with_key else part.drop("key"))
    index.finish(verify, lambda: store.query(source, resolver).column("key").combine_chunks())
    if not parts:
        empty = pl.DataFrame(schema={"id": pl.Int64, "key": pl.String})
        return empty if with_key else empty.drop("key")
    return pl.concat(parts, how="vertical_relaxed", rechunk=False)


def _joined_on_text(
    config: SourceConfig,
    ids: pa.Table,
    verify: _Verifier,
    keep: Sequence[str],
    batch_size: int,
    with_key: bool,
    s3_client_factory: S3ClientFactory | None,
) -> pl.DataFrame:
    """:func:`source_records` joining on the key text, for stored keys sharing a 64-bit hash."""
    key = config.key_field.name
    stored = pl.DataFrame(pl.from_arrow(ids)).select("id", "key", "leaf_id")
    parts = []
    for batch in extract(config, batch_size=batch_size, s3_client_factory=s3_client_factory):
        batch = batch.select(pl.col(key).alias("key"), *verify.fields)
        part = batch.join(stored, on="key", how="left")
        if part.get_column("id").null_count():
            verify.added(part.filter(pl.col("id").is_null()).get_column("key"))
        verify.rows(part, part.get_column("leaf_id").to_numpy())
        parts.append(part.select("id", "key", *keep))
    frame = (
        pl.concat(parts, how="vertical_relaxed")
        if parts
        else pl.DataFrame(schema={"id": pl.Int64, "key": pl.String})
    )
    if frame.get_column("key").is_duplicated().any():
        verify.repeated(frame.get_column("key"))
    if frame.height != stored.height:
        gone = stored.join(frame, on="key", how="anti").get_column("key")
        verify.missing(stored.height - frame.height, gone[0] if gone.len() else None)
    return frame if with_key else frame.drop("key")


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
                    cleaning_expr(expr).alias(column) for column, expr in query.cleaning.items()
                )
            except Exception as exc:  # polars raises several types for bad SQL
                raise MatchboxInvalidData(
                    f"Cleaning expressions {query.cleaning} failed on source {name!r} "
                    f"(columns {records.columns}): {exc}"
                ) from exc
        frames.append(records)
    return pl.concat(frames, how="diagonal_relaxed", rechunk=False)
