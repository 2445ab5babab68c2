"""SplitConflicts: weak links cut, conflicting records never share an entity."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from matchbox_dagster.common.arrow import SCHEMA_CLUSTERS, SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.clustering import SplitConflicts
from matchbox_dagster.methods.resolvers import ConnectedComponents
from tests.factories import cluster_sets as groups


def edges(*rows: tuple[int, int, float]) -> ModelResults:
    left, right, score = zip(*rows, strict=True) if rows else ((), (), ())
    return ModelResults(
        pa.table(
            {"left_id": list(left), "right_id": list(right), "score": list(score)},
            schema=SCHEMA_MODEL_EDGES,
        )
    )


def test_same_shape_and_components_without_conflicts():
    data = edges((1, 2, 0.95), (2, 3, 0.97), (4, 5, 0.99))
    ours = SplitConflicts(thresholds={"m": 0.9}).resolve({"m": data})
    assert ours.table.schema == SCHEMA_CLUSTERS
    assert groups(ours) == groups(ConnectedComponents(thresholds={"m": 0.9}).resolve({"m": data}))
    assert groups(ours) == {frozenset({1, 2, 3}), frozenset({4, 5})}


def test_conflict_splits_a_chain_at_its_weakest_link():
    # 1-2 strong, 2-3 weak-ish, 3-4 strong; 1 and 4 conflict (two company numbers).
    data = edges((1, 2, 0.99), (2, 3, 0.92), (3, 4, 0.98), (1, 4, 0.0))
    chained = ConnectedComponents(thresholds={"m": 0.9}).resolve({"m": data})
    assert groups(chained) == {frozenset({1, 2, 3, 4})}
    split = SplitConflicts(thresholds={"m": 0.9}).resolve({"m": data})
    assert groups(split) == {frozenset({1, 2}), frozenset({3, 4})}


def test_conflicts_propagate_through_merges():
    # A star: 0 links to 1, 2, 3, which pairwise conflict; 0 joins the strongest only.
    data = edges((0, 1, 0.95), (0, 2, 0.99), (0, 3, 0.97), (1, 2, 0.0), (1, 3, 0.0), (2, 3, 0.0))
    split = SplitConflicts(thresholds={"m": 0.5}).resolve({"m": data})
    assert groups(split) == {frozenset({0, 2}), frozenset({1}), frozenset({3})}
    clusters = pl.DataFrame(pl.from_arrow(split.table))
    assert sorted(clusters.get_column("child_id").to_list()) == [0, 1, 2, 3]


def test_weak_edges_kept_only_when_mutual_best():
    # 2-3 (0.7) is the best edge of 3 but not of 2 (whose best is 1-2): cut; 4-5 is mutual best.
    data = edges((1, 2, 0.95), (2, 3, 0.7), (4, 5, 0.7))
    split = SplitConflicts(thresholds={"m": 0.6}, strong={"m": 0.9}).resolve({"m": data})
    # Node 3 keeps no edge: like connected components, it is left out (a singleton).
    assert groups(split) == {frozenset({1, 2}), frozenset({4, 5})}
    assert groups(ConnectedComponents(thresholds={"m": 0.6}).resolve({"m": data})) == {
        frozenset({1, 2, 3}),
        frozenset({4, 5}),
    }


def test_conflicts_ignored_when_switched_off_and_edges_of_several_models():
    data = edges((1, 2, 0.99), (2, 3, 0.92), (1, 3, 0.0))
    off = SplitConflicts(thresholds={"m": 0.9}, conflict_score=None).resolve({"m": data})
    assert groups(off) == {frozenset({1, 2, 3})}
    both = SplitConflicts(thresholds={"m": 0.9, "n": 0.5}).resolve(
        {"m": data, "n": edges((3, 4, 0.6))}
    )
    assert groups(both) == {frozenset({1, 2}), frozenset({3, 4})}


def test_settings_and_validation():
    resolver = SplitConflicts(thresholds={"m": 0.8}, strong={"m": 0.95})
    assert resolver.settings() == {
        "method": "split_conflicts",
        "thresholds": {"m": 0.8},
        "strong": {"m": 0.95},
        "conflict_score": 0.0,
    }
    with pytest.raises(ValueError, match="below its threshold"):
        SplitConflicts(thresholds={"m": 0.8}, strong={"m": 0.5})
    with pytest.raises(ValueError, match="above conflict_score"):
        SplitConflicts(thresholds={"m": 0.0})
    with pytest.raises(ValueError, match="without a threshold"):
        SplitConflicts(thresholds={"m": 0.8}, strong={"x": 0.9})
    with pytest.raises(MatchboxInvalidData, match="not inputs"):
        SplitConflicts(thresholds={"x": 0.8}).resolve({"m": edges((1, 2, 0.9))})
    empty = SplitConflicts(thresholds={"m": 0.8}).resolve({"m": edges()})
    assert empty.table.num_rows == 0


def test_a_resolver_spec_selects_the_method():
    from matchbox_dagster.specs import ResolverSpec
    from matchbox_dagster.specs.graph import SpecError, plan_resolver

    default = plan_resolver(ResolverSpec(name="r", thresholds={"m": 0.9}), ["s"])
    assert isinstance(default.resolver, ConnectedComponents)
    assert default.config.resolver_class == "Components"
    assert default.config.resolver_settings == {"thresholds": {"m": 0.9}}

    spec = ResolverSpec.model_validate(
        {
            "name": "r",
            "thresholds": {"m": 0.5},
            "method": "split_conflicts",
            "settings": {"strong": {"m": 0.9}},
        }
    )
    plan = plan_resolver(spec, ["s"])
    assert isinstance(plan.resolver, SplitConflicts)
    assert plan.resolver.strong == {"m": 0.9}
    assert plan.config.resolver_class == "SplitConflicts"
    assert plan.config.resolver_settings["strong"] == {"m": 0.9}

    for method, settings, reason in [
        ("nearest", {}, "Unknown resolver method"),
        ("components", {"strong": {"m": 1}}, "takes no settings"),
        ("split_conflicts", {"strong": {"m": 0.1}}, "below its threshold"),
        ("split_conflicts", {"nope": 1}, "nope"),
    ]:
        bad = ResolverSpec(name="r", thresholds={"m": 0.5}, method=method, settings=settings)
        with pytest.raises(SpecError, match=reason):
            plan_resolver(bad, ["s"])


def test_random_graphs_never_hold_a_conflict_and_split_only_conflicted_components():
    import numpy as np

    rng = np.random.default_rng(11)
    for _ in range(30):
        n, m = 40, 60
        pairs = {tuple(sorted(p)) for p in rng.integers(0, n, (m, 2)).tolist() if p[0] != p[1]}
        rows = [
            (a, b, 0.0 if rng.random() < 0.1 else float(rng.uniform(0.5, 1.0)))
            for a, b in sorted(pairs)
        ]
        data = edges(*rows)
        split = groups(SplitConflicts(thresholds={"m": 0.5}).resolve({"m": data}))
        components = groups(ConnectedComponents(thresholds={"m": 0.5}).resolve({"m": data}))
        conflicts = [(a, b) for a, b, s in rows if s == 0.0]
        for group in split:
            assert not any(a in group and b in group for a, b in conflicts)
        # Each component without a conflict inside comes out whole.
        for group in components:
            if not any(a in group and b in group for a, b in conflicts):
                assert group in split
        assert set().union(*split) == set().union(*components)


def _kruskal(n: int, rows: list[tuple[int, int, float]], conflicts: list[tuple[int, int]]):
    """The reference: edges by score (descending, then order), never joining conflicting sets."""
    sets = {i: {i} for i in range(n)}
    for a, b, _ in sorted(rows, key=lambda r: -r[2]):  # sorted is stable
        if sets[a] is sets[b]:
            continue
        if any(
            (x in sets[a] and y in sets[b]) or (y in sets[a] and x in sets[b]) for x, y in conflicts
        ):
            continue
        joined = sets[a] | sets[b]
        for node in joined:
            sets[node] = joined
    return {frozenset(s) for s in sets.values()}


@pytest.mark.parametrize("to_python", [0.0, 0.1, 2.0])
def test_rounds_give_the_sequential_greedy_result(monkeypatch, to_python):
    """Vectorised rounds (and their hand-over to the Python loop) equal Kruskal's greedy,
    also on chains of rising scores (one merge a round) and with tied scores."""
    import numpy as np

    from matchbox_dagster.methods import clustering

    monkeypatch.setattr(clustering, "MIN_MERGED", to_python)  # 0: rounds only; 2: Python only
    rng = np.random.default_rng(5)
    for trial in range(40):
        n = 30
        if trial % 4 == 0:  # a chain with rising scores
            rows = [(i, i + 1, 0.5 + 0.01 * i) for i in range(n - 1)]
        else:
            pairs = {tuple(sorted(p)) for p in rng.integers(0, n, (70, 2)).tolist() if p[0] != p[1]}
            rows = [(a, b, float(rng.choice([0.6, 0.7, 0.8, 0.9]))) for a, b in sorted(pairs)]
        conflicts = [tuple(sorted(p)) for p in rng.integers(0, n, (4, 2)).tolist() if p[0] != p[1]]
        got = clustering._greedy(
            np.array([r[0] for r in rows]),
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows], dtype=np.float32),
            (
                np.array([c[0] for c in conflicts], dtype=np.int64),
                np.array([c[1] for c in conflicts], dtype=np.int64),
            ),
            n,
        )
        found = {}
        for node, label in enumerate(got.tolist()):
            found.setdefault(label, set()).add(node)
        assert {frozenset(s) for s in found.values()} == _kruskal(n, rows, conflicts), trial
