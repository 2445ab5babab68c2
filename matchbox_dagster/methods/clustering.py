"""A resolver that does not chain: :class:`SplitConflicts`.

Connected components join two records whenever any path of kept edges links them, so one
shared postcode or one sister company chains unrelated firms into one entity. SplitConflicts
takes the same inputs and returns the same Arrow shape (:class:`ResolverClusters`), but

* **cuts weak links**: an edge scoring at least the model's ``threshold`` but below its
  ``strong`` score is kept only when it is *mutual best* — the best-scoring edge of both of its
  records;
* **never joins conflicting records**: a model marks two records that must never share an
  entity (two different company numbers, different distinguishing name tokens) with an edge
  scoring at most ``conflict_score`` (default 0, below any threshold). A component holding both
  ends of such an edge is rebuilt greedily: its edges are added from the highest score down
  (a union-find), skipping any edge that would join two groups with a conflict between them.

Vectorised (polars, numpy, ``scipy.sparse.csgraph``): the rebuild of conflicted components runs
in rounds that each merge every pair of groups whose best edge is each other's, which gives the
greedy's result; only a small remainder (long chains of rising scores) goes to a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from matchbox_dagster.common.arrow import SCHEMA_CLUSTERS, ModelResults, ResolverClusters
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.resolvers import (
    ConnectedComponents,
    check_inputs,
    check_thresholds,
)

L, R, S = "left_id", "right_id", "score"


class SplitConflicts(BaseModel):
    """Components without weak links or conflicting records (see the module doc).

    Example::

        SplitConflicts(thresholds={"orgs": 0.5}, strong={"orgs": 0.9})
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolver_class: str = Field(default="SplitConflicts", exclude=True)
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Minimum score per model step name; a model not listed keeps every edge "
        "above conflict_score.",
    )
    strong: dict[str, float] = Field(
        default_factory=dict,
        description="Per model: edges at or above this are kept; edges between the threshold "
        "and this only when mutual best. Default: the threshold (no weak band).",
    )
    conflict_score: float | None = Field(
        default=0.0,
        description="Edges scoring at most this mark records that must not share an entity; "
        "None: no conflicts.",
    )

    @field_validator("thresholds", "strong")
    @classmethod
    def _unit(cls, value: dict[str, float]) -> dict[str, float]:
        return check_thresholds(value)

    @model_validator(mode="after")
    def _consistent(self) -> SplitConflicts:
        stray = sorted(set(self.strong) - set(self.thresholds))
        if stray:
            raise ValueError(f"strong names model(s) {stray} without a threshold")
        for name, threshold in self.thresholds.items():
            if self.strong.get(name, threshold) < threshold:
                raise ValueError(f"strong score of {name!r} lies below its threshold")
            if self.conflict_score is not None and threshold <= self.conflict_score:
                raise ValueError(
                    f"threshold of {name!r} ({threshold}) must lie above conflict_score "
                    f"({self.conflict_score}), or conflicts would be kept as links"
                )
        return self

    def settings(self) -> dict[str, Any]:
        """JSON settings stored with the step (``ResolverConfig.resolver_settings``)."""
        return {
            "method": "split_conflicts",
            "thresholds": dict(self.thresholds),
            "strong": dict(self.strong),
            "conflict_score": self.conflict_score,
        }

    def resolve(self, edges: Mapping[str, ModelResults | pa.Table]) -> ResolverClusters:
        """Cluster the edges of each named model (``{model step name: results}``)."""
        check_inputs(self.thresholds, edges)
        links: list[pl.DataFrame] = []
        conflicts: list[pl.DataFrame] = []
        for name, results in edges.items():
            table = results.table if isinstance(results, ModelResults) else results
            frame = pl.DataFrame(pl.from_arrow(table.select([L, R, S]))).select(
                pl.col(L, R).cast(pl.Int64), pl.col(S).cast(pl.Float32)
            )
            floor = -1.0 if self.conflict_score is None else self.conflict_score
            threshold = self.thresholds.get(name, 0.0)
            # Compare in float32, as stored: a threshold of 0.9 keeps a stored 0.9.
            low = pl.lit(threshold, pl.Float32)
            kept = frame.filter((pl.col(S) >= low) & (pl.col(S) > pl.lit(floor, pl.Float32)))
            links.append(mutual_best(kept, self.strong.get(name, threshold)))
            if self.conflict_score is not None:
                conflicts.append(frame.filter(pl.col(S) <= pl.lit(floor, pl.Float32)).select(L, R))
            del frame
        if not links:
            return ResolverClusters(SCHEMA_CLUSTERS.empty_table())
        return split_components(
            pl.concat(links), pl.concat(conflicts) if conflicts else pl.DataFrame()
        )


def mutual_best(edges: pl.DataFrame, strong: float) -> pl.DataFrame:
    """The edges scoring ≥ ``strong``, and weaker ones that are the best of both their records."""
    bar = pl.lit(strong, pl.Float32)
    weak = edges.filter(pl.col(S) < bar)
    if weak.height == 0:
        return edges
    best = (
        pl.concat([edges.select(pl.col(end).alias("node"), S) for end in (L, R)])
        .group_by("node")
        .agg(pl.col(S).max().alias("best"))
    )
    mutual = (
        weak.join(best, left_on=L, right_on="node")
        .join(best, left_on=R, right_on="node", suffix="_r")
        .filter((pl.col(S) >= pl.col("best")) & (pl.col(S) >= pl.col("best_r")))
        .select(L, R, S)
    )
    return pl.concat([edges.filter(pl.col(S) >= bar), mutual])


def _labels(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, each edge end's node index, and each node's component label."""
    nodes, index = np.unique(np.concatenate([left, right]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix(
        (np.ones(len(left), dtype=np.int8), (index[: len(left)], index[len(left) :])), (n, n)
    )
    _, labels = connected_components(graph, directed=False)
    return nodes, index, labels


def split_components(links: pl.DataFrame, conflicts: pl.DataFrame) -> ResolverClusters:
    """Components of ``links``, split where a ``conflicts`` pair would share one.

    ``links`` has ``left_id``, ``right_id`` and ``score``; ``conflicts`` ``left_id`` and
    ``right_id``.
    """
    if links.height == 0:
        return ResolverClusters(SCHEMA_CLUSTERS.empty_table())
    left = links.get_column(L).to_numpy()
    right = links.get_column(R).to_numpy()
    nodes, index, labels = _labels(left, right)
    labels = labels.astype(np.int64)
    if conflicts.height:
        node_label = pl.DataFrame({"node": nodes, "label": labels})
        inside = (
            conflicts.join(node_label, left_on=L, right_on="node")
            .join(node_label, left_on=R, right_on="node", suffix="_r")
            .filter(pl.col("label") == pl.col("label_r"))
        )
        if inside.height:
            bad = inside.get_column("label").unique().to_numpy()
            edge_label = labels[index[: len(left)]]
            mask = np.isin(edge_label, bad)
            groups = _greedy(
                index[: len(left)][mask],
                index[len(left) :][mask],
                links.get_column(S).to_numpy()[mask],
                _pairs_to_index(inside, nodes),
                len(nodes),
            )
            conflicted = np.isin(labels, bad)
            # New labels after the untouched ones: a root's index is unique among nodes.
            labels = np.where(conflicted, labels.max() + 1 + groups, labels)
    _, dense = np.unique(labels, return_inverse=True)
    return ResolverClusters(
        pa.table(
            {"parent_id": dense.astype(np.int64), "child_id": nodes.astype(np.int64)},
            schema=SCHEMA_CLUSTERS,
        )
    )


def _pairs_to_index(pairs: pl.DataFrame, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.searchsorted(nodes, pairs.get_column(L).to_numpy()),
        np.searchsorted(nodes, pairs.get_column(R).to_numpy()),
    )


def _greedy(
    a: np.ndarray,
    b: np.ndarray,
    score: np.ndarray,
    conflicts: tuple[np.ndarray, np.ndarray],
    n: int,
) -> np.ndarray:
    """Union-find over edges from the highest score down, never joining conflicting groups.

    Returns each node's group label (only meaningful for nodes of the edges given). The result
    is that of the sequential greedy (Kruskal's order: score descending, then edge order),
    computed in vectorised rounds: each round drops edges inside a group or between groups
    with a conflict between them (the greedy would skip them: conflicts only grow), keeps the
    best edge between each pair of groups, and merges every pair of groups whose best edge is
    each other's (such an edge is the next the greedy would take at both its ends). Once a
    round merges few (:data:`MIN_MERGED`), the contracted rest goes to :func:`_sequential`.
    """
    rank = np.empty(len(score), dtype=np.int64)
    rank[np.argsort(-score, kind="stable")] = np.arange(len(score))
    group = np.arange(n, dtype=np.int64)
    ga, gb = a.astype(np.int64), b.astype(np.int64)
    ca, cb = conflicts[0].astype(np.int64), conflicts[1].astype(np.int64)
    while len(ga):
        edges = _between_groups(ga, gb, rank, ca, cb)
        ga, gb, rank = (edges.get_column(c).to_numpy() for c in ("a", "b", "rank"))
        if not len(ga):
            break
        best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, ga, rank)
        np.minimum.at(best, gb, rank)
        mutual = (best[ga] == rank) & (best[gb] == rank)
        if mutual.sum() < MIN_MERGED * len(ga):
            _sequential(ga, gb, rank, (ca, cb), group)
            break
        into = np.arange(n, dtype=np.int64)
        into[gb[mutual]] = ga[mutual]  # a matching: each group joins at most one other
        group = into[group]
        ga, gb, ca, cb = into[ga], into[gb], into[ca], into[cb]
    return group


MIN_MERGED = 0.1
"""A round merging fewer pairs than this share of the edges left hands them to the sequential
union-find: rounds shrink the graph fast at first, then slowly (a growing group joins one other
a round), and the remaining, contracted graph is small."""


def _between_groups(
    ga: np.ndarray, gb: np.ndarray, rank: np.ndarray, ca: np.ndarray, cb: np.ndarray
) -> pl.DataFrame:
    """The best edge (lowest rank) per pair of distinct, non-conflicting groups (``a < b``)."""
    edges = pl.DataFrame({"a": np.minimum(ga, gb), "b": np.maximum(ga, gb), "rank": rank})
    edges = edges.filter(pl.col("a") != pl.col("b")).group_by("a", "b").agg(pl.col("rank").min())
    if len(ca):
        clash = pl.DataFrame({"a": np.minimum(ca, cb), "b": np.maximum(ca, cb)}).unique()
        edges = edges.join(clash, on=["a", "b"], how="anti")
    return edges


def _sequential(
    a: np.ndarray,
    b: np.ndarray,
    rank: np.ndarray,
    conflicts: tuple[np.ndarray, np.ndarray],
    group: np.ndarray,
) -> None:
    """The greedy union-find itself over group ids, edges by ``rank``; relabels ``group``."""
    ids = np.unique(np.concatenate([a, b, *conflicts]))
    n = len(ids)
    parent = list(range(n))
    blocked: dict[int, set[int]] = {}
    xs, ys = np.searchsorted(ids, conflicts[0]), np.searchsorted(ids, conflicts[1])
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        blocked.setdefault(x, set()).add(y)
        blocked.setdefault(y, set()).add(x)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    order = np.argsort(rank, kind="stable")
    ia, ib = np.searchsorted(ids, a[order]), np.searchsorted(ids, b[order])
    for x, y in zip(ia.tolist(), ib.tolist(), strict=True):
        _union(x, y, find, parent, blocked)
    roots = ids[np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)]
    into = np.arange(len(group), dtype=np.int64)
    into[ids] = roots
    group[:] = into[group]


def _union(x: int, y: int, find: Any, parent: list[int], blocked: dict[int, set[int]]) -> None:
    """Join the groups of ``x`` and ``y`` unless a conflict lies between them."""
    rx, ry = find(x), find(y)
    if rx == ry:
        return
    bx, by = blocked.get(rx), blocked.get(ry)
    if bx is not None and ry in bx:
        return
    if by is not None and len(by) > len(bx or ()):
        rx, ry, bx, by = ry, rx, by, bx  # merge the smaller conflict set into the larger
    parent[ry] = rx
    if by:
        for other in by:
            partners = blocked[other]
            partners.discard(ry)
            partners.add(rx)
        if bx is None:
            blocked[rx] = by
        else:
            bx |= by
        del blocked[ry]


RESOLVER_METHODS = ("components", "split_conflicts")
"""Values of a resolver spec's ``method``."""


def build_resolver(
    method: str, thresholds: Mapping[str, float], settings: Mapping[str, Any] | None = None
) -> ConnectedComponents | SplitConflicts:
    """The resolver ``method`` names: ``"components"`` (default) or ``"split_conflicts"``.

    ``settings`` are the method's own beyond the thresholds (for split_conflicts ``strong`` and
    ``conflict_score``; connected components take none).
    """
    settings = dict(settings or {})
    if method == "components":
        if settings:
            raise MatchboxInvalidData(
                f"Resolver method 'components' takes no settings; got {sorted(settings)}."
            )
        return ConnectedComponents(thresholds=dict(thresholds))
    if method == "split_conflicts":
        return SplitConflicts(thresholds=dict(thresholds), **settings)
    raise MatchboxInvalidData(f"Unknown resolver method {method!r}; known: {RESOLVER_METHODS}.")
