"""Property: query() equals a small pure-Python resolution of the same random graph.

Graph: sources A and B (rows drawn from a small alphabet, so identical rows recur within and
across sources) → a deduper on A → resolver R1 → a linker from R1's entities to B's leaves →
resolver R2, whose clusters nest R1's. Each resolver's clusters are connected components of
its model's edges, computed here by a plain union-find and given to the store with R1's
clusters as children (nesting), not expanded to leaves.
"""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matchbox_dagster.common.dtos import QueryConfig
from matchbox_dagster.common.fingerprint import cluster_id, leaf_id
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_resolver, add_source, ids_of, row_hash


def components(nodes: set[int], edges: list[tuple[int, int]]) -> list[set[int]]:
    """Connected components with at least two nodes (reference union-find)."""
    parent = {n: n for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    groups: dict[int, set[int]] = {}
    for n in nodes:
        groups.setdefault(find(n), set()).add(n)
    return [g for g in groups.values() if len(g) > 1]


rows_strategy = st.dictionaries(
    keys=st.text(alphabet="xyz", min_size=1, max_size=3),
    values=st.lists(st.integers(0, 10_000), min_size=1, max_size=3, unique=True),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows_a=rows_strategy,
    rows_b=rows_strategy,
    dedupe_pairs=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=8),
    link_pairs=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=8),
)
def test_query_matches_reference(
    store: MatchboxPostgres,
    rows_a: dict[str, list[int]],
    rows_b: dict[str, list[int]],
    dedupe_pairs: list[tuple[int, int]],
    link_pairs: list[tuple[int, int]],
) -> None:
    collection = f"prop_{uuid.uuid4().hex[:8]}"
    store.create_collection(collection)
    run = store.create_run(collection).run_id
    # Keys must be unique within a source.
    a = {content: [f"a{k}-{content}" for k in keys] for content, keys in rows_a.items()}
    b = {content: [f"b{k}-{content}" for k in keys] for content, keys in rows_b.items()}
    src_a = add_source(store, collection, run, "a", a)
    src_b = add_source(store, collection, run, "b", b)
    leaves_a = sorted({leaf_id(row_hash(c)) for c in a})
    leaves_b = sorted({leaf_id(row_hash(c)) for c in b})

    # Deduper on A and resolver R1.
    dedupe = {
        tuple(sorted((leaves_a[i % len(leaves_a)], leaves_a[j % len(leaves_a)])))
        for i, j in dedupe_pairs
    }
    dedupe = {p for p in dedupe if p[0] != p[1]}
    add_model(
        store,
        collection,
        run,
        "dedupe",
        [(x, y, 0.9) for x, y in sorted(dedupe)],
        QueryConfig(sources=("a",)),
    )
    r1_clusters = components(set(leaves_a), sorted(dedupe))
    r1 = add_resolver(store, collection, run, "r1", [sorted(c) for c in r1_clusters], ("dedupe",))
    r1_of = {leaf: cluster_id(c) for c in r1_clusters for leaf in c}
    entities_a = sorted({r1_of.get(leaf, leaf) for leaf in leaves_a})

    # Linker from R1's entities to B's leaves, and resolver R2 nesting R1's clusters.
    link = {(entities_a[i % len(entities_a)], leaves_b[j % len(leaves_b)]) for i, j in link_pairs}
    link = {p for p in link if p[0] != p[1]}
    add_model(
        store,
        collection,
        run,
        "link",
        [(x, y, 0.8) for x, y in sorted(link)],
        QueryConfig(sources=("a",), resolver="r1"),
        QueryConfig(sources=("b",)),
    )
    # R2's components are unions of whole expansions (an R1 cluster never splits); children are
    # R1 clusters (nested, by id) and loose leaves.
    members = {cluster_id(c): set(c) for c in r1_clusters}
    expand = {n: members.get(n, {n}) for p in link for n in p}
    leaf_edges = [(x, y) for p in link for x in expand[p[0]] for y in expand[p[1]]]
    leaf_edges += [(min(m), leaf) for m in members.values() for leaf in m]
    touched = set().union(*expand.values()) if expand else set()
    r2_clusters = [
        c for c in components(set().union(touched, *members.values()), leaf_edges) if c & touched
    ]
    children = []
    for leaves in r2_clusters:
        nested = [cid for cid, m in members.items() if m <= leaves]
        loose = leaves - set().union(*(members[cid] for cid in nested)) if nested else leaves
        children.append(sorted(nested) + sorted(loose))
    r2 = add_resolver(store, collection, run, "r2", children, ("link",))
    r2_of = {leaf: cluster_id(c) for c in r2_clusters for leaf in c}

    def expected(rows: dict[str, list[str]], nearest: list[dict[int, int]]) -> dict[str, int]:
        out = {}
        for content, keys in rows.items():
            leaf = leaf_id(row_hash(content))
            entity = next((m[leaf] for m in nearest if leaf in m), leaf)
            out.update({k: entity for k in keys})
        return out

    assert ids_of(store, src_a, None) == expected(a, [])
    assert ids_of(store, src_a, r1) == expected(a, [r1_of])
    assert ids_of(store, src_a, r2) == expected(a, [r2_of, r1_of])
    assert ids_of(store, src_b, r2) == expected(b, [r2_of, r1_of])
    store.delete_collection(collection, certain=True)
