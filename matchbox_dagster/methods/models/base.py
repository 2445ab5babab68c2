"""The interface every methodology implements, and the helpers they share.

A model scores pairs of clusters. Its input is a polars frame with an ``id`` column (``Int64``:
a leaf id when the input is a source, a cluster id when it is a resolver) and the fields it
compares; several rows may share an ``id`` (a cluster of several records). A **deduper** scores
pairs within one frame, a **linker** pairs across two. Output is always
:class:`~matchbox_dagster.common.arrow.ModelResults`: ``left_id``, ``right_id``, ``score`` in
[0, 1], no self-pairs, one row per pair (the best score), and for dedupers each unordered pair
once with ``left_id < right_id``.

A methodology is one short class: a pydantic model of its settings (what is stored in the
step's ``ModelConfig.model_settings``) with :meth:`Model.dedupe` and :meth:`Model.link`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.common.errors import MatchboxInvalidData

ID = "id"

_REGISTRY: dict[str, type[Model]] = {}


class Model(BaseModel, ABC):
    """A methodology: settings as fields, scoring as methods."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_class: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.model_class:
            _REGISTRY[cls.model_class] = cls

    @abstractmethod
    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Score pairs of distinct ids within ``data``."""

    @abstractmethod
    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Score pairs (left id, right id) across two inputs."""

    def settings(self) -> dict[str, Any]:
        """JSON settings stored with the step (``ModelConfig.model_settings``)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Self:
        """Rebuild the methodology from its stored settings."""
        return cls.model_validate(settings)

    @property
    def fields(self) -> list[str]:
        """Input fields the methodology reads (besides ``id``)."""
        return []

    @property
    def input_fields(self) -> list[str] | None:
        """The only fields the methodology reads, so inputs may skip the rest (None: any).

        None is the default: a methodology may read columns it does not list (e.g. Splink's
        blocking rules).
        """
        return None


def model_class(name: str) -> type[Model]:
    """The methodology registered under ``name`` (e.g. ``"DeterministicRules"``)."""
    if name not in _REGISTRY:
        raise MatchboxInvalidData(
            f"Unknown model class {name!r}; known: {sorted(_REGISTRY)}. Import the module that "
            "defines it before building the model."
        )
    return _REGISTRY[name]


def build_model(name: str, settings: dict[str, Any]) -> Model:
    """Instantiate the methodology ``name`` from its stored settings."""
    return model_class(name).from_settings(settings)


def require_columns(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    """Raise :class:`MatchboxInvalidData` naming any missing column."""
    missing = [c for c in [ID, *columns] if c not in frame.columns]
    if missing:
        raise MatchboxInvalidData(
            f"{what} input lacks column(s) {missing}; it has {frame.columns}."
        )


def finish_pairs(pairs: pl.DataFrame | pl.LazyFrame, *, dedupe: bool) -> ModelResults:
    """Turn candidate ``(left_id, right_id, score)`` rows into valid :class:`ModelResults`.

    Drops self-pairs, orders deduper pairs as ``left_id < right_id``, keeps the best score of
    repeated pairs, and clips scores into [0, 1]. A lazy frame runs on polars' streaming
    engine, so the candidates of millions of records never sit in memory at once.
    """
    left, right = pl.col("left_id"), pl.col("right_id")
    frame = (
        pairs.lazy()
        .select(
            left.cast(pl.Int64), right.cast(pl.Int64), pl.col("score").cast(pl.Float32).clip(0, 1)
        )
        .filter(left != right)
    )
    if dedupe:
        frame = frame.select(
            pl.min_horizontal(left, right).alias("left_id"),
            pl.max_horizontal(left, right).alias("right_id"),
            "score",
        )
    result = (
        frame.group_by(["left_id", "right_id"])
        .agg(pl.col("score").max())
        .collect(engine="streaming")
    )
    if result.height == 0:
        return ModelResults(SCHEMA_MODEL_EDGES.empty_table())
    return ModelResults(result.to_arrow().cast(SCHEMA_MODEL_EDGES))


def empty_results() -> ModelResults:
    """No pairs."""
    return ModelResults(pa.Table.from_batches([], SCHEMA_MODEL_EDGES))
