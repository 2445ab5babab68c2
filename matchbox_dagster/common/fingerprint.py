"""Content-derived identifiers: cluster ids and data fingerprints.

Everything here is **stable**: the same bytes on every machine and in every release, because ids
and fingerprints are stored. Changing an algorithm means a new fingerprint version.

Cluster ids
    A *leaf* cluster is a distinct source row. Its id is ``xxh3_64(row_hash) & (2**63 - 1)``: the
    XXH3 64-bit digest of the row hash with the sign bit cleared, so identical rows share one leaf
    id in every source and run without any lookup. A cluster of several leaves (made by a resolver)
    has the id ``int.from_bytes(sha256(b"".join(sorted leaf ids as 8-byte big-endian))[:8]) &
    (2**63 - 1)``; a "cluster" of one leaf is that leaf. Ids are content addresses: the same set of
    leaves always gets the same id. Two different contents share an id with probability about
    ``n**2 / 2**64`` for ``n`` ids (5e-6 for 10 million); the store detects such a collision
    among resolver clusters and refuses the upload.

Fingerprints (version 1)
    A 32-byte SHA-256 over a summary of per-row 64-bit mixes (count, wrapping sum, xor), so they
    are invariant to row order and column order, and for model results to the order of a pair.
    Resolver fingerprints are also invariant to how parent clusters are labelled.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc

ID_MASK = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K = np.uint64(0x9E3779B97F4A7C15)
_VERSION = b"matchbox-dagster/fingerprint/v1"


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a ``uint64`` array (wrapping arithmetic, vectorised)."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def xxh3_64(values: pa.Array | pa.ChunkedArray | pl.Series) -> np.ndarray:
    """XXH3 64-bit digests of binary or string values (Arrow or polars), as ``uint64``."""
    series = values if isinstance(values, pl.Series) else pl.from_arrow(values)
    assert isinstance(series, pl.Series)
    hashed = pl.DataFrame({"v": series}).select(plh.col("v").nchash.xxh3_64())
    return hashed.get_column("v").to_numpy().astype(np.uint64, copy=False)


def leaf_ids(hashes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Leaf cluster ids (``int64``) of row hashes: ``xxh3_64(hash)`` with the sign bit cleared."""
    if len(hashes) == 0:
        return pa.array([], type=pa.int64())
    return pa.array((xxh3_64(hashes) & ID_MASK).view(np.int64))


def leaf_id(row_hash: bytes) -> int:
    """Leaf cluster id of a single row hash."""
    return int(leaf_ids(pa.array([row_hash], type=pa.large_binary()))[0].as_py())


def cluster_id(leaves: list[int] | set[int]) -> int:
    """Content-addressed id of a cluster of leaf ids (mirrors the store's SQL)."""
    ordered = sorted(set(leaves))
    if not ordered:
        raise ValueError("a cluster needs at least one leaf")
    if len(ordered) == 1:
        return ordered[0]
    digest = hashlib.sha256(b"".join(struct.pack(">q", leaf) for leaf in ordered)).digest()
    return int.from_bytes(digest[:8], "big") & int(ID_MASK)


def _summarise(kind: bytes, rows: np.ndarray) -> bytes:
    rows = rows.astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        total = int(rows.sum(dtype=np.uint64)) if len(rows) else 0
    xor = int(np.bitwise_xor.reduce(rows)) if len(rows) else 0
    summary = struct.pack(">QQQ", len(rows), total, xor)
    return hashlib.sha256(_VERSION + b"|" + kind + b"|" + summary).digest()


def fingerprint_source(table: pa.Table) -> bytes:
    """Fingerprint of source hashes (``hash``, ``keys``): one mix per (hash, key) pair."""
    keys = table.column("keys")
    lengths = pc.list_value_length(keys).to_numpy(zero_copy_only=False)
    if table.num_rows == 0:
        return _summarise(b"source", np.empty(0, dtype=np.uint64))
    row_digest = np.repeat(xxh3_64(table.column("hash")), lengths)
    return _source_summary(row_digest, xxh3_64(pc.list_flatten(keys)))


def fingerprint_source_pairs(
    hashes: pa.Array | pa.ChunkedArray, keys: pa.Array | pa.ChunkedArray | pl.Series
) -> bytes:
    """:func:`fingerprint_source` of rows not yet grouped: ``hashes[i]`` is ``keys[i]``'s row."""
    if len(hashes) == 0:
        return _summarise(b"source", np.empty(0, dtype=np.uint64))
    return _source_summary(xxh3_64(hashes), xxh3_64(keys))


def _source_summary(row_digest: np.ndarray, key_digest: np.ndarray) -> bytes:
    with np.errstate(over="ignore"):
        pair = mix64(row_digest * _K + key_digest)
    return _summarise(b"source", pair)


def fingerprint_model(table: pa.Table) -> bytes:
    """Fingerprint of model results, invariant to the order within each pair."""
    left = table.column("left_id").to_numpy().view(np.uint64)
    right = table.column("right_id").to_numpy().view(np.uint64)
    low, high = np.minimum(left, right), np.maximum(left, right)
    score = table.column("score").to_numpy().astype(np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        rows = mix64(mix64(mix64(low) + high) + score)
    return _summarise(b"model", rows)


def fingerprint_resolver(table: pa.Table) -> bytes:
    """Fingerprint of resolver assignments: a multiset of clusters, each a set of children."""
    if table.num_rows == 0:
        return _summarise(b"resolver", np.empty(0, dtype=np.uint64))
    frame = pl.DataFrame(
        {
            "parent": table.column("parent_id").to_numpy(),
            "child": mix64(table.column("child_id").to_numpy().view(np.uint64)),
        }
    )
    # Wrapping sum of child mixes per parent: order-free and label-free.
    per_cluster = frame.group_by("parent").agg(
        pl.col("child").sum().alias("s"), pl.len().alias("n")
    )
    sums = per_cluster.get_column("s").to_numpy().astype(np.uint64)
    counts = per_cluster.get_column("n").to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        clusters = mix64(sums ^ mix64(counts + _K))
    return _summarise(b"resolver", clusters)
