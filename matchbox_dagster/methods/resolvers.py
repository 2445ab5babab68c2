"""Resolvers: from scored pairs to clusters (entities).

:class:`ConnectedComponents` keeps each model's edges scoring at least that model's threshold and
returns the connected components of the resulting graph, computed with ``scipy.sparse.csgraph``
(vectorised; 10M edges in a few seconds). Node ids are whatever the models scored — leaf ids, or
clusters of an earlier resolver, which the store nests. Components are labelled locally
(0, 1, …); the store gives each its content-addressed id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from matchbox_dagster.common.arrow import SCHEMA_CLUSTERS, ModelResults, ResolverClusters
from matchbox_dagster.common.errors import MatchboxInvalidData


def check_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """``thresholds`` as a dict, each in [0, 1] (else :class:`MatchboxInvalidData` naming it).

    The one check of resolver thresholds: :class:`ConnectedComponents` and the resolver spec
    both validate with it.
    """
    for name, value in thresholds.items():
        if not 0 <= value <= 1:
            raise MatchboxInvalidData(f"Threshold for {name!r} must lie in [0, 1]; got {value}.")
    return dict(thresholds)


def check_inputs(thresholds: Mapping[str, float], edges: Mapping[str, Any]) -> None:
    """Refuse thresholds naming a model that is not among a resolver's inputs ``edges``."""
    unknown = set(thresholds) - set(edges)
    if unknown:
        raise MatchboxInvalidData(
            f"Thresholds name model(s) {sorted(unknown)} that are not inputs "
            f"{sorted(edges)} of the resolver."
        )


class ConnectedComponents(BaseModel):
    """Connected components over edges at or above per-model thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolver_class: str = Field(default="Components", exclude=True)
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Minimum score per model step name; a model not listed uses 0 (every edge).",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        return check_thresholds(value)

    def settings(self) -> dict[str, Any]:
        """JSON settings stored with the step (``ResolverConfig.resolver_settings``)."""
        return {"thresholds": dict(self.thresholds)}

    def resolve(self, edges: Mapping[str, ModelResults | pa.Table]) -> ResolverClusters:
        """Cluster the edges of each named model (``{model step name: results}``)."""
        check_inputs(self.thresholds, edges)
        kept: list[pl.DataFrame] = []
        for name, results in edges.items():
            table = results.table if isinstance(results, ModelResults) else results
            frame = pl.DataFrame(pl.from_arrow(table.select(["left_id", "right_id", "score"])))
            kept.append(
                frame.filter(pl.col("score") >= self.thresholds.get(name, 0.0)).select(
                    pl.col("left_id", "right_id").cast(pl.Int64)  # tables may use other widths
                )
            )
        return components(pl.concat(kept) if kept else pl.DataFrame())


def components(pairs: pl.DataFrame) -> ResolverClusters:
    """Connected components of an edge list (``left_id``, ``right_id``) as (label, node)."""
    if pairs.height == 0:
        return ResolverClusters(SCHEMA_CLUSTERS.empty_table())
    left = pairs.get_column("left_id").to_numpy()
    right = pairs.get_column("right_id").to_numpy()
    nodes, index = np.unique(np.concatenate([left, right]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix(
        (np.ones(len(left), dtype=np.int8), (index[: len(left)], index[len(left) :])), (n, n)
    )
    _, labels = connected_components(graph, directed=False)
    return ResolverClusters(
        pa.table(
            {"parent_id": labels.astype(np.int64), "child_id": nodes.astype(np.int64)},
            schema=SCHEMA_CLUSTERS,
        )
    )
