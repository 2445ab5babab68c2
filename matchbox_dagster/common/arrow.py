"""Arrow schemas of the data the store takes and gives, and the payload types that carry them.

Each payload type (:class:`SourceHashes`, :class:`ModelResults`, :class:`ResolverClusters`) checks
its table once, at construction: columns and types (compatible types are cast, e.g. ``uint64`` ids
or ``large_string`` keys), nulls, ranges and duplicates. A bad table raises a
:class:`~matchbox_dagster.common.errors.MatchboxInvalidData` subclass that names the column, so
nothing invalid ever reaches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from matchbox_dagster.common.errors import MatchboxArrowSchemaMismatch, MatchboxInvalidData

SCHEMA_INDEX: Final = pa.schema(
    [("hash", pa.large_binary()), ("keys", pa.large_list(pa.large_string()))]
)
"""Source data to index: one row per distinct row hash, with every key that has it."""

SCHEMA_MODEL_EDGES: Final = pa.schema(
    [("left_id", pa.int64()), ("right_id", pa.int64()), ("score", pa.float32())]
)
"""Model results: scored pairs of cluster ids, ``score`` in [0, 1]."""

SCHEMA_CLUSTERS: Final = pa.schema([("parent_id", pa.int64()), ("child_id", pa.int64())])
"""Resolver output: ``child_id`` (a leaf or an earlier resolver's cluster) belongs to
``parent_id`` (a label local to the upload; the store assigns content-addressed ids)."""

SCHEMA_QUERY: Final = pa.schema([("id", pa.int64()), ("key", pa.large_string())])
"""Query result: the entity id of every key of a source."""

SCHEMA_QUERY_WITH_LEAVES: Final = SCHEMA_QUERY.append(pa.field("leaf_id", pa.int64()))
"""Query result with each key's leaf cluster id."""

SCHEMA_SOURCE_ROWS: Final = pa.schema(
    [("leaf_id", pa.int64()), ("hash", pa.large_binary()), ("key", pa.large_string())]
)
"""A source's stored rows: one per key, with its leaf cluster id and row hash."""

SCHEMA_JUDGEMENTS: Final = pa.schema(
    [("user_name", pa.large_string()), ("endorsed", pa.int64()), ("shown", pa.int64())]
)
"""Judgements: for each judgement, every endorsed cluster and the shown cluster it came from."""

SCHEMA_CLUSTER_EXPANSION: Final = pa.schema(
    [("root", pa.int64()), ("leaves", pa.list_(pa.int64()))]
)
"""Cluster id → the leaf cluster ids it contains."""

SCHEMA_EVAL_SAMPLES: Final = pa.schema(
    [
        ("root", pa.int64()),
        ("leaf", pa.int64()),
        ("key", pa.large_string()),
        ("source", pa.large_string()),
    ]
)
"""Evaluation samples: clusters to judge, with their leaves and keys."""


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, cast safely to its types.

    Extra columns are dropped; a missing column or a type that cannot be cast without loss
    raises :class:`MatchboxArrowSchemaMismatch` naming the column.
    """
    if not isinstance(table, pa.Table):
        if isinstance(table, pl.DataFrame):
            table = table.to_arrow()
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        else:
            raise MatchboxArrowSchemaMismatch(
                f"{what} must be a pyarrow Table (or polars DataFrame), not {type(table).__name__}."
            )
    repeated = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if repeated:
        raise MatchboxArrowSchemaMismatch(
            f"{what} has more than one column named {repeated}: expected {_describe(schema)}."
        )
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise MatchboxArrowSchemaMismatch(
            f"{what} lacks column(s) {missing}: expected {_describe(schema)}, "
            f"got {_describe(table.schema)}."
        )
    columns = []
    for fld in schema:
        column = table.column(fld.name)
        if not column.type.equals(fld.type):
            if _family(column.type) != _family(fld.type):
                raise MatchboxArrowSchemaMismatch(
                    f"{what} column {fld.name!r} has type {column.type}, but {fld.type} is "
                    f"expected. Expected {_describe(schema)}."
                )
            try:
                column = column.cast(fld.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise MatchboxArrowSchemaMismatch(
                    f"{what} column {fld.name!r} has type {column.type}, which cannot be used as "
                    f"{fld.type}: {exc}. Expected {_describe(schema)}."
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _family(dtype: pa.DataType) -> str:
    """The kind of a type: values of the same kind may be cast into each other safely."""
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_string_view(dtype):
        return "string"
    if (
        pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_fixed_size_binary(dtype)
        or pa.types.is_binary_view(dtype)
    ):
        return "binary"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype):
        return "list<" + _family(dtype.value_type) + ">"
    return str(dtype)


def _describe(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def _well_formed(table: pa.Table, what: str) -> None:
    """Refuse malformed buffers, and string bytes that are not UTF-8 (PostgreSQL refuses them)."""
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise MatchboxInvalidData(f"{what} hold malformed Arrow data: {exc}") from None


def _no_nulls(table: pa.Table, what: str) -> None:
    for name in table.column_names:
        nulls = table.column(name).null_count
        if nulls:
            raise MatchboxInvalidData(f"{what} column {name!r} has {nulls} null value(s).")


def _no_nul(text: pa.Array | pa.ChunkedArray, what: str) -> None:
    """Refuse strings holding a NUL character (PostgreSQL text cannot): one scan of the bytes."""
    chunks = text.chunks if isinstance(text, pa.ChunkedArray) else [text]
    bad = 0
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string())
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        if chunk.buffers()[2] is None or offsets[-1] == offsets[0]:
            continue
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        zeros = np.flatnonzero(data == 0)
        if len(zeros):  # which strings: the offsets the NUL bytes fall under
            bad += len(np.unique(np.searchsorted(offsets, zeros + offsets[0], side="right")))
    if bad:
        raise MatchboxInvalidData(
            f"{what} holds {bad} key(s) with a NUL character, which text cannot hold; clean "
            "the key field of the source."
        )


@dataclass(frozen=True)
class SourceHashes:
    """Hashes of a source's rows and the keys of each: the data a source step indexes.

    Rules: no nulls anywhere; every hash non-empty and listed once; every row has at least one
    key; no key appears twice (under the same or another hash).
    """

    table: pa.Table

    def __post_init__(self) -> None:
        table = conform(self.table, SCHEMA_INDEX, "Source hashes")
        what = "Source hashes"
        _well_formed(table, what)
        _no_nulls(table, what)
        keys = table.column("keys")
        flat = pc.list_flatten(keys)
        if flat.null_count:
            raise MatchboxInvalidData(f"{what} column 'keys' holds {flat.null_count} null key(s).")
        _no_nul(flat, f"{what} column 'keys'")
        if table.num_rows:
            if pc.min(pc.list_value_length(keys)).as_py() == 0:
                raise MatchboxInvalidData(f"{what}: every hash needs at least one key.")
            if pc.min(pc.binary_length(table.column("hash"))).as_py() == 0:
                raise MatchboxInvalidData(f"{what} column 'hash' holds an empty hash.")
            from matchbox_dagster.common.fingerprint import leaf_ids, xxh3_64

            # Distinct counts on 64-bit digests are far cheaper than on bytes and strings;
            # only when digests repeat are the values themselves compared.
            ids = leaf_ids(table.column("hash"))
            object.__setattr__(self, "_leaf_ids", ids)
            if pl.Series(ids).n_unique() != table.num_rows:
                hashes = pl.Series(table.column("hash"))
                if hashes.n_unique() != len(hashes):
                    raise MatchboxInvalidData(
                        f"{what} list {hashes.is_duplicated().sum()} hash row(s) more than once; "
                        "aggregate the keys of identical rows under one hash."
                    )
            if pl.Series(xxh3_64(flat)).n_unique() != len(flat):
                key_series = pl.Series(flat)
                if key_series.n_unique() != len(key_series):
                    dups = key_series.filter(key_series.is_duplicated()).unique()
                    raise MatchboxInvalidData(
                        f"{what}: {len(dups)} key(s) appear more than once, e.g. "
                        f"{dups.head(3).to_list()}. Keys must identify one row of the source."
                    )
        object.__setattr__(self, "table", table)

    @property
    def num_rows(self) -> int:
        """Number of distinct row hashes."""
        return self.table.num_rows

    @property
    def leaf_ids(self) -> pa.Array:
        """The leaf cluster id of each row hash (see :func:`fingerprint.leaf_ids`)."""
        ids = getattr(self, "_leaf_ids", None)
        if ids is None:
            from matchbox_dagster.common.fingerprint import leaf_ids

            ids = leaf_ids(self.table.column("hash"))
            object.__setattr__(self, "_leaf_ids", ids)
        return ids

    @cached_property
    def num_keys(self) -> int:
        """Number of keys over all hashes."""
        return len(pc.list_flatten(self.table.column("keys")))

    @cached_property
    def fingerprint(self) -> bytes:
        """Order-invariant fingerprint (see :mod:`matchbox_dagster.common.fingerprint`)."""
        from matchbox_dagster.common.fingerprint import fingerprint_source

        return fingerprint_source(self.table)


@dataclass(frozen=True)
class ModelResults:
    """Scored pairs of cluster ids from a deduper or linker.

    Rules: no nulls; ``score`` in [0, 1] (no NaN); no self-pairs; each (left, right) pair once.
    A linker's ``left_id`` comes from its left input and ``right_id`` from its right one; as
    identical rows share a leaf across sources, (a, b) and (b, a) may both be real links, so
    only exact repeats are refused (methodologies drop symmetric duplicates of dedupers).
    """

    table: pa.Table

    def __post_init__(self) -> None:
        what = "Model results"
        table = conform(self.table, SCHEMA_MODEL_EDGES, what)
        _well_formed(table, what)
        _no_nulls(table, what)
        if table.num_rows:
            score = table.column("score")
            nan = pc.sum(pc.is_nan(score)).as_py() or 0
            if nan:
                raise MatchboxInvalidData(f"{what} column 'score' holds {nan} NaN value(s).")
            lo, hi = pc.min(score).as_py(), pc.max(score).as_py()
            if lo < 0 or hi > 1:
                raise MatchboxInvalidData(
                    f"{what} column 'score' must lie in [0, 1]; found values from {lo} to {hi}."
                )
            frame = pl.from_arrow(table.select(["left_id", "right_id"]))
            assert isinstance(frame, pl.DataFrame)
            selfs = frame.filter(pl.col("left_id") == pl.col("right_id")).height
            if selfs:
                raise MatchboxInvalidData(
                    f"{what} hold {selfs} self-pair(s) (left_id == right_id); a cluster cannot "
                    "be scored against itself."
                )
            if frame.n_unique() != frame.height:
                dup = frame.is_duplicated().sum()
                raise MatchboxInvalidData(
                    f"{what} score {dup} row(s) of a (left_id, right_id) pair more than once; "
                    "keep one score per pair."
                )
        object.__setattr__(self, "table", table)

    @property
    def num_rows(self) -> int:
        """Number of scored pairs."""
        return self.table.num_rows

    @cached_property
    def fingerprint(self) -> bytes:
        """Order-invariant fingerprint (pairs are unordered)."""
        from matchbox_dagster.common.fingerprint import fingerprint_model

        return fingerprint_model(self.table)


@dataclass(frozen=True)
class ResolverClusters:
    """Cluster assignments from a resolver: ``child_id`` belongs to ``parent_id``.

    Rules: no nulls; no repeated (parent, child) row; a child belongs to one parent only.
    """

    table: pa.Table

    def __post_init__(self) -> None:
        what = "Resolver clusters"
        table = conform(self.table, SCHEMA_CLUSTERS, what)
        _well_formed(table, what)
        _no_nulls(table, what)
        if table.num_rows:
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            dup_child = frame.get_column("child_id").is_duplicated().sum()
            if dup_child:
                raise MatchboxInvalidData(
                    f"{what}: {dup_child} row(s) put a child_id under more than one parent (or "
                    "twice under one); each child belongs to exactly one cluster."
                )
        object.__setattr__(self, "table", table)

    @property
    def num_rows(self) -> int:
        """Number of (parent, child) rows."""
        return self.table.num_rows

    @cached_property
    def num_clusters(self) -> int:
        """Number of distinct parents."""
        return len(pc.unique(self.table.column("parent_id")))

    @cached_property
    def fingerprint(self) -> bytes:
        """Fingerprint invariant to row order and to how parents are labelled."""
        from matchbox_dagster.common.fingerprint import fingerprint_resolver

        return fingerprint_resolver(self.table)
