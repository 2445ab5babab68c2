"""Resolver clusters and source rows computed in memory: expansion, checks, content addresses.

Pure functions over Arrow and polars (plus the ADBC reads the checks need, inside the caller's
transaction); :mod:`matchbox_dagster.store.postgres.writes` loads their results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc

from matchbox_dagster.common.arrow import SCHEMA_SOURCE_ROWS, SourceHashes
from matchbox_dagster.common.dtos import StepType, UploadStage
from matchbox_dagster.common.errors import MatchboxInputNotComplete, MatchboxStepInvalidData
from matchbox_dagster.store.postgres.core import StepRow
from matchbox_dagster.store.postgres.partitions import ROOTS, dict_rows, read_partition

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc


def check_inputs_complete(cur: adbc.Cursor, step: StepRow) -> None:
    """Refuse data for a step any of whose ancestors holds no complete data.

    A model's or resolver's ids are fixed from its inputs (and the resolvers it reads
    through) when its data is written; an input still READY (or PROCESSING) would leave them
    fixed without that input's data for good. The ancestors are locked ``FOR KEY SHARE``, so
    none can be deleted until this write commits.
    """
    cur.execute(
        "SELECT s.name, s.upload_stage FROM step_lineage l JOIN steps s "
        "ON s.step_id = l.parent_id WHERE l.child_id = $1 "
        "ORDER BY l.level, s.name FOR KEY SHARE OF s",
        parameters=(step.step_id,),
    )
    for row in dict_rows(cur):
        if row["upload_stage"] != UploadStage.COMPLETE.value:
            raise MatchboxInputNotComplete(
                step.path(), row["name"], UploadStage(row["upload_stage"])
            )


def inherit(
    cur: adbc.Cursor, schema: str, own: pl.DataFrame, ancestors: list[tuple[int, int]]
) -> tuple[pl.DataFrame, pa.Table]:
    """A resolver's whole partition: its own rows and those it inherits, content-addressed.

    ``own`` holds the resolver's (``leaf_id``, ``root_id``); ``ancestors`` the (data id,
    level) of the resolvers it descends from, nearest first (ties: in step order). A leaf
    the resolver leaves alone keeps the cluster of the nearest ancestor claiming it; but
    where the resolver took some of that cluster's leaves, the rest no longer make up the
    cluster its id addresses, so they get
    the id of their own content (a single leaf: the leaf). Every id of the partition is thus
    the content address of exactly the leaves it groups. Returns the rows (``leaf_id``,
    ``root_id``, ``own``) in leaf order and the re-addressed clusters of several leaves (as
    :func:`content_address` returns them, for the collision checks).
    """
    frames = []
    for order, (step_id, level) in enumerate(ancestors):
        part = pl.from_arrow(
            read_partition(
                cur,
                schema,
                (StepType.RESOLVER, step_id),
                "SELECT leaf_id, root_id FROM {part}",
                ROOTS,
                complete=True,
            )
        )
        assert isinstance(part, pl.DataFrame)
        frames.append(
            part.with_columns(
                pl.len().over("root_id").alias("size"),
                pl.lit(level, pl.Int64).alias("level"),
                pl.lit(order, pl.Int64).alias("step"),
            )
        )
    rows = own.select("leaf_id", "root_id", pl.lit(True).alias("own"))
    empty = content_address(pl.DataFrame(schema={"parent_id": pl.Int64, "leaf_id": pl.Int64}))[1]
    if not frames:
        return rows.sort("leaf_id"), empty
    nearest = (
        pl.concat(frames)
        .sort("level", "step")
        .unique("leaf_id", keep="first", maintain_order=True)
        .join(own.select("leaf_id"), on="leaf_id", how="anti")
    )
    # Content addresses are consistent across resolvers, so a group is whole exactly when it
    # keeps as many leaves as its cluster had where it came from.
    broken = (
        nearest.group_by("root_id")
        .agg(pl.len().alias("kept"), pl.col("size").max())
        .filter(pl.col("kept") != pl.col("size"))
        .get_column("root_id")
    )
    partial = nearest.get_column("root_id").is_in(broken.implode())
    readdressed, parents = content_address(
        nearest.filter(partial).select(pl.col("root_id").alias("parent_id"), "leaf_id")
    )
    inherited = pl.concat(
        [
            nearest.filter(~partial).select("leaf_id", "root_id"),
            readdressed.select("leaf_id", "root_id"),
        ]
    ).with_columns(pl.lit(False).alias("own"))
    return pl.concat([rows, inherited]).sort("leaf_id"), parents


def check_cluster_ids(
    cur: adbc.Cursor, step: StepRow, parents: pa.Table, leaves: pl.Series
) -> None:
    """Refuse a cluster id that already names other content (a 63-bit id collision).

    Within the resolver, two parents' ids must differ and no parent's id may be a leaf id of
    its lineage (either would merge two clusters); across the store, an id must not be a
    judged cluster (``clusters``) with another hash. Clusters of other resolvers are not
    compared: each resolver's clusters are read only through its own partition.
    """
    ids = pl.Series("cluster_id", parents.column("cluster_id"))
    clashes = ids.filter(ids.is_duplicated() | ids.is_in(leaves.implode()))
    cur.execute("SELECT cluster_id, cluster_hash FROM clusters")
    judged = pl.from_arrow(cur.fetch_arrow_table())
    assert isinstance(judged, pl.DataFrame)
    if judged.height:
        ours = pl.from_arrow(parents.select(["cluster_id", "cluster_hash"]))
        assert isinstance(ours, pl.DataFrame)
        differs = ours.join(judged, on="cluster_id", suffix="_judged").filter(
            pl.col("cluster_hash").cast(pl.Binary) != pl.col("cluster_hash_judged").cast(pl.Binary)
        )
        clashes = pl.concat([clashes, differs.get_column("cluster_id")])
    if len(clashes):
        raise MatchboxStepInvalidData(
            f"Resolver clusters for {step.path()}: {clashes.n_unique()} cluster id(s) collide "
            "with different content (a 63-bit id collision), e.g. "
            f"{clashes.unique().sort().head(5).to_list()}. Nothing was written; please "
            "report this."
        )


def expand(
    cur: adbc.Cursor, assigned: pl.DataFrame, leaves: pl.Series, ancestors: list[int]
) -> pl.DataFrame | None:
    """Distinct (``parent_id``, ``leaf_id``): a multi-leaf child expanded to its leaves.

    Children that are leaves of the lineage's sources stand for themselves; the others are
    looked up as clusters of the ancestor resolvers (index probes on each partition's
    ``root_id``) or as judged clusters (``contains``); what is none of these stays as it
    is, for :func:`check_expanded` to refuse. None if every child is a lineage leaf (the
    common case, where there is nothing to expand or check).
    """
    is_leaf = assigned.get_column("child_id").is_in(leaves.implode())
    if is_leaf.all():
        return None
    others = assigned.filter(~is_leaf)
    roots = "{" + ",".join(map(str, others.get_column("child_id").unique().to_list())) + "}"
    cur.execute(
        "SELECT root_id AS child_id, leaf_id FROM resolver_leaves "
        "WHERE step_id = ANY($2::bigint[]) AND root_id = ANY($1::bigint[]) "
        "UNION SELECT root, leaf FROM contains WHERE root = ANY($1::bigint[])",
        parameters=(roots, "{" + ",".join(map(str, ancestors)) + "}"),
    )
    contents = pl.from_arrow(cur.fetch_arrow_table())
    assert isinstance(contents, pl.DataFrame)
    rest = others.join(contents, on="child_id", how="left").select(
        "parent_id", pl.coalesce("leaf_id", "child_id").alias("leaf_id")
    )
    return pl.concat([assigned.filter(is_leaf).rename({"child_id": "leaf_id"}), rest]).unique()


def check_expanded(step: StepRow, expanded: pl.DataFrame, leaves: pl.Series) -> None:
    """Every expanded leaf is a lineage leaf, in one parent only."""
    unknown = expanded.filter(~pl.col("leaf_id").is_in(leaves.implode()))
    if unknown.height:
        raise MatchboxStepInvalidData(
            f"Resolver clusters for {step.path()} use child id(s) "
            f"{unknown.get_column('leaf_id').unique().sort().head(5).to_list()} that are "
            "neither leaves of the sources nor clusters of the resolvers this resolver "
            "descends from."
        )
    overlapping = expanded.get_column("leaf_id").filter(
        expanded.get_column("leaf_id").is_duplicated()
    )
    if len(overlapping):
        raise MatchboxStepInvalidData(
            f"Resolver clusters for {step.path()} overlap: leaf id(s) "
            f"{overlapping.unique().sort().head(5).to_list()} belong to more than one "
            "parent once children are expanded to leaves. Each leaf must end up in exactly "
            "one cluster."
        )


def source_rows(hashes: SourceHashes) -> pa.Table:
    """One row per key (``leaf_id``, ``hash``, ``key``) from validated source hashes."""
    ids = hashes.leaf_ids
    # polars' n_unique: ~20× faster than pyarrow's count_distinct on a million int64.
    if len(ids) and pl.Series(ids).n_unique() != hashes.num_rows:
        raise MatchboxStepInvalidData(
            "Two different row hashes map to the same leaf id (a 63-bit id collision); "
            "nothing was written. Please report this."
        )
    # In leaf order, so the partition is stored in leaf order and query() can merge it with a
    # resolver's rows. Hash rows are ordered by leaf id and their keys taken in that order: one
    # copy of the keys (~60 ms a million), not a sort of the flattened rows (3 copies of them).
    order = pl.Series(ids).arg_sort().to_arrow()
    keys = hashes.table.column("keys").take(order)
    lengths = pc.list_value_length(keys).to_numpy(zero_copy_only=False)
    parent = pa.array(np.repeat(order.to_numpy(), lengths))
    return pa.table(
        {
            "leaf_id": ids.take(parent),
            "hash": hashes.table.column("hash").take(parent),
            "key": pc.list_flatten(keys),
        },
        schema=SCHEMA_SOURCE_ROWS,
    )


def content_address(expanded: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
    """Each leaf's cluster (``leaf_id``, ``root_id``) and the multi-leaf clusters.

    A parent of one leaf is that leaf; a parent of several has the id of the first 63 bits of
    ``sha256`` over its sorted leaf ids as 8-byte big-endian integers (``cluster_id`` in
    :mod:`matchbox_dagster.common.fingerprint`), computed for all parents at once: the sorted
    leaves of each parent are one slice of a single big-endian buffer, hashed by polars-hash.
    Returns the rows (``leaf_id``, ``root_id``, ``multi``: whether the cluster has several
    leaves) and an Arrow table (``cluster_id``, ``cluster_hash``, ``size``) of the clusters of two
    or more leaves.
    """
    ordered = expanded.sort("parent_id", "leaf_id")
    sizes = ordered.group_by("parent_id", maintain_order=True).len()
    size = sizes.get_column("len").to_numpy().astype(np.int64)
    buffer = ordered.get_column("leaf_id").to_numpy().astype(">i8").tobytes()
    offsets = np.concatenate([[0], np.cumsum(size) * 8]).astype(np.int64)
    packed = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(size), [None, pa.py_buffer(offsets), pa.py_buffer(buffer)]
    )
    hexes = (
        pl.DataFrame({"packed": pl.Series("packed", packed)})
        .select(plh.col("packed").chash.sha2_256())
        .to_series()
        .to_arrow()
    )
    digest = _unhex(hexes, 32)  # (parents, 32) uint8
    first = np.ascontiguousarray(digest[:, :8]).view(">u8").ravel()
    cluster = (first & np.uint64(0x7FFF_FFFF_FFFF_FFFF)).astype(np.int64)
    digests = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), len(digest), [None, pa.py_buffer(digest.tobytes())]
    )
    starts = offsets[:-1] // 8
    cluster = np.where(size == 1, ordered.get_column("leaf_id").to_numpy()[starts], cluster)
    multi = size > 1
    rows = ordered.select("leaf_id").with_columns(
        pl.Series("root_id", np.repeat(cluster, size)),
        pl.Series("multi", np.repeat(multi, size)),
    )
    parents = pa.table(
        {
            "cluster_id": pa.array(cluster[multi]),
            "cluster_hash": digests.filter(pa.array(multi)).cast(pa.large_binary()),
            "size": pa.array(size[multi].astype(np.int32)),
        }
    )
    return rows, parents


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _unhex(hexes: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """Hex strings of ``2 * width`` characters each as a (rows, width) ``uint8`` array."""
    flat = pa.chunked_array([hexes]) if isinstance(hexes, pa.Array) else hexes
    flat = flat.cast(pa.large_string()).combine_chunks()
    if len(flat) == 0:
        return np.empty((0, width), dtype=np.uint8)
    offsets = np.frombuffer(flat.buffers()[1], dtype=np.int64)[flat.offset : flat.offset + 2]
    chars = np.frombuffer(flat.buffers()[2], dtype=np.uint8)
    nibbles = _HEX[chars[offsets[0] : offsets[0] + len(flat) * 2 * width]]
    if len(nibbles) != len(flat) * 2 * width or (nibbles == 255).any():
        raise ValueError("not hex digests of the expected width")
    pairs = nibbles.reshape(len(flat), width, 2)
    return (pairs[:, :, 0] << 4) | pairs[:, :, 1]
