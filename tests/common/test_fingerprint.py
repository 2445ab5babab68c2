"""Stable ids and fingerprints: fixed digests, and the invariances they promise."""

from __future__ import annotations

import hashlib
import struct

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.fingerprint import cluster_id, leaf_id, leaf_ids


def test_leaf_id_is_xxh3_of_the_hash_with_sign_cleared() -> None:
    # XXH3_64("abc") = 0x78AF5F94892F3950 (reference vector of the XXH3 spec).
    assert leaf_id(b"abc") == 0x78AF5F94892F3950 & (2**63 - 1)
    ids = leaf_ids(pa.array([b"abc", b"abc", b"abd"], type=pa.large_binary())).to_pylist()
    assert ids[0] == ids[1] != ids[2]
    assert all(0 <= i < 2**63 for i in ids)


def test_cluster_id_is_sha256_of_sorted_leaves() -> None:
    leaves = [30, 10, 20]
    digest = hashlib.sha256(b"".join(struct.pack(">q", x) for x in sorted(leaves))).digest()
    assert cluster_id(leaves) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert cluster_id([7]) == 7
    assert cluster_id({10, 20, 30}) == cluster_id([30, 20, 10, 10])


def _source(rows: list[tuple[bytes, list[str]]]) -> pa.Table:
    return pa.table({"hash": [r[0] for r in rows], "keys": [r[1] for r in rows]})


def test_fixed_fingerprints() -> None:
    """Frozen digests: changing the algorithm must be a deliberate, versioned change."""
    source = SourceHashes(_source([(b"h1" * 8, ["a", "b"]), (b"h2" * 8, ["c"])]))
    model = ModelResults(pa.table({"left_id": [1, 3], "right_id": [2, 1], "score": [0.5, 1.0]}))
    resolver = ResolverClusters(pa.table({"parent_id": [9, 9, 4], "child_id": [1, 2, 3]}))
    assert source.fingerprint.hex() == FROZEN["source"]
    assert model.fingerprint.hex() == FROZEN["model"]
    assert resolver.fingerprint.hex() == FROZEN["resolver"]


FROZEN = {
    "source": "b159ad98baac036639483e63cd51e97d654c1622cdf7733dabf104d4c41b8375",
    "model": "0a40692e6ee346800d89a35e0d9db4f8ce77f33a9649cd669b0e29073c29a717",
    "resolver": "72f7d637d8823dc2b92719c33bb15f5fdcb3ad6a7e2ec44abb957571dbc16dda",
}


_KEY_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5
)  # what text can hold


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=16, max_size=16),
            st.lists(_KEY_TEXT, min_size=1, max_size=3, unique=True),
        ),
        min_size=1,
        max_size=20,
        unique_by=lambda r: r[0],
    ),
    st.randoms(),
)
def test_source_fingerprint_invariances(rows, rnd) -> None:
    # Keys unique across rows.
    seen: set[str] = set()
    rows = [(h, [k for k in ks if not (k in seen or seen.add(k))]) for h, ks in rows]
    rows = [r for r in rows if r[1]]
    if not rows:
        return
    base = SourceHashes(_source(rows)).fingerprint
    shuffled = [(h, rnd.sample(ks, len(ks))) for h, ks in rnd.sample(rows, len(rows))]
    assert SourceHashes(_source(shuffled).select(["keys", "hash"])).fingerprint == base
    changed = list(rows)
    changed[0] = (changed[0][0], [*changed[0][1], "a new key"])  # longer than drawn keys
    assert SourceHashes(_source(changed)).fingerprint != base


def test_model_and_resolver_invariances() -> None:
    a = pa.table({"left_id": [1, 3], "right_id": [2, 4], "score": [0.5, 0.25]})
    b = pa.table({"score": [0.25, 0.5], "right_id": [3, 1], "left_id": [4, 2]})
    assert ModelResults(a).fingerprint == ModelResults(b).fingerprint
    c = pa.table({"left_id": [1, 3], "right_id": [2, 4], "score": [0.5, 0.26]})
    assert ModelResults(a).fingerprint != ModelResults(c).fingerprint
    r1 = pa.table({"parent_id": [1, 1, 2, 2], "child_id": [10, 11, 12, 13]})
    r2 = pa.table({"parent_id": [7, 5, 5, 7], "child_id": [13, 11, 10, 12]})
    r3 = pa.table({"parent_id": [1, 1, 2, 2], "child_id": [10, 12, 11, 13]})
    assert ResolverClusters(r1).fingerprint == ResolverClusters(r2).fingerprint
    assert ResolverClusters(r1).fingerprint != ResolverClusters(r3).fingerprint
