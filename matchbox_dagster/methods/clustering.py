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

Everything but the rebuild of conflicted components is vectorised (polars, numpy,
``scipy.sparse.csgraph``); the rebuild visits only the edges of conflicted components.
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
CHUNK = 1_000_000
"""Edges of conflicted components turned into Python ints at a time (bounded memory)."""


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
        pl.concat(
            [
                edges.group_by(L).agg(pl.col(S).max()).rename({L: "node"}),
                edges.group_by(R).agg(pl.col(S).max()).rename({R: "node"}),
            ]
        )
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

    Returns each node's root index (only meaningful for nodes of the edges given).
    """
    parent = list(range(n))
    blocked: dict[int, set[int]] = {}
    for x, y in zip(conflicts[0].tolist(), conflicts[1].tolist(), strict=True):
        blocked.setdefault(x, set()).add(y)
        blocked.setdefault(y, set()).add(x)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    order = np.argsort(-score, kind="stable")
    for start in range(0, len(order), CHUNK):  # Python ints for a chunk of edges at a time
        part = order[start : start + CHUNK]
        for x, y in zip(a[part].tolist(), b[part].tolist(), strict=True):
            _union(x, y, find, parent, blocked)
    return np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)


def _union(
    x: int, y: int, find: Any, parent: list[int], blocked: dict[int, set[int]]
) -> None:
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
