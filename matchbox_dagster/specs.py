"""Declarative specs of a collection's graph: sources, models, resolvers and their checks.

The same pydantic models serve Python (``CollectionSpec(...)``) and YAML (the
:class:`~matchbox_dagster.dagster.component.MatchboxCollectionComponent` reads them from
``defs.yaml``),
so a data team can add a source or change a threshold without writing Python. Building assets
from a spec validates the whole graph first (unknown steps, cycles, unknown model classes,
thresholds for models that are not inputs) and raises ``DagsterInvalidDefinitionError`` naming
what to fix.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from matchbox_dagster.common.dtos import (
    LocationConfig,
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    SourceField,
    validate_name,
)


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("name", "collection", check_fields=False)
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_name(value)


class SourceSpec(_Spec):
    """A source: where its records are, its key field and the fields that identify a record."""

    name: str = Field(description="Step (and asset) name.")
    location: LocationConfig = Field(description="Location type and name (path, URI, callable).")
    key_field: str = Field(description="The source's own key column.")
    index_fields: list[str] = Field(description="Columns hashed to index rows (one or more).")
    extract_transform: str = Field(default="", description="SQL run at the location.")
    description: str | None = None

    @field_validator("index_fields")
    @classmethod
    def _some_fields(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a source needs at least one index field")
        return value

    def config(self) -> SourceConfig:
        """The store's step config."""
        return SourceConfig(
            location_config=self.location,
            extract_transform=self.extract_transform,
            key_field=SourceField(name=self.key_field),
            index_fields=tuple(SourceField(name=f) for f in self.index_fields),
        )


class InputSpec(_Spec):
    """A model input: a source, or a resolver (its entities) read with some of its sources."""

    step: str = Field(description="A source or resolver of the same collection.")
    sources: list[str] | None = Field(
        default=None,
        description="For a resolver input: the sources whose records to read (default: every "
        "source upstream of the resolver).",
    )
    cleaning: dict[str, str] | None = Field(
        default=None, description="Column → polars SQL expression applied before scoring."
    )


class ModelSpec(_Spec):
    """A deduper (``left`` only) or linker (``left`` and ``right``) and its methodology."""

    name: str
    left: InputSpec
    right: InputSpec | None = None
    model_class: str = Field(description="A registered methodology, e.g. 'DeterministicRules'.")
    settings: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None

    @field_validator("left", "right", mode="before")
    @classmethod
    def _input_shorthand(cls, value: Any) -> Any:
        return {"step": value} if isinstance(value, str) else value

    @property
    def model_type(self) -> ModelType:
        """Deduper or linker."""
        return ModelType.DEDUPER if self.right is None else ModelType.LINKER


class ResolverChecksSpec(_Spec):
    """Blocking checks of a resolver (each ``None`` switches one off)."""

    max_cluster_size: int | None = Field(
        default=1000, description="Fail if any cluster holds more records (positive)."
    )
    min_precision: float | None = Field(default=None, description="Minimum in [0, 1].")
    min_recall: float | None = Field(default=None, description="Minimum in [0, 1].")
    truth: dict[str, str] | None = Field(
        default=None,
        description="Ground truth per source: a polars SQL expression over ``key`` and the "
        "index fields giving each record's true entity. Without it, precision and recall are "
        "measured against the store's judgements.",
    )
    max_churn: float | None = Field(
        default=None,
        description="Fail if more than this share of keys changed entity against the "
        "collection's default run.",
    )

    @field_validator("min_precision", "min_recall", "max_churn")
    @classmethod
    def _unit(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"must lie in [0, 1], got {value}")
        return value

    @field_validator("max_cluster_size")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be positive, got {value}")
        return value


class ResolverSpec(_Spec):
    """A resolver: connected components over its models' edges at per-model thresholds."""

    name: str
    thresholds: dict[str, float] = Field(
        description="Model step name → minimum score (in [0, 1]) of an edge kept; one or more."
    )
    checks: ResolverChecksSpec = Field(default_factory=ResolverChecksSpec)
    description: str | None = None

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("a resolver needs at least one model threshold")
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1]: {bad}")
        return value

    def config(self) -> ResolverConfig:
        """The store's step config."""
        return ResolverConfig(
            inputs=tuple(self.thresholds),
            resolver_settings={"thresholds": dict(self.thresholds)},
        )


class CollectionSpec(_Spec):
    """A whole collection: its graph, which resolver is final, and how runs start."""

    collection: str
    sources: list[SourceSpec] = Field(description="One or more sources.")
    models: list[ModelSpec] = Field(default_factory=list)
    resolvers: list[ResolverSpec] = Field(default_factory=list)
    final_resolver: str | None = Field(
        default=None, description="Resolver whose checks gate promotion (default: the last)."
    )
    group_name: str | None = Field(default=None, description="Asset group (default: collection).")
    key_prefix: list[str] | None = Field(
        default=None, description="Asset key prefix (default: [collection])."
    )
    schedule: str | None = Field(default=None, description="Cron schedule starting new runs.")
    promote: bool = Field(default=True, description="Add the promotion sensor.")
    retries: int = Field(
        default=0,
        description="Retries of a failed asset step (exponential backoff from 2 s, with jitter), "
        "e.g. for a worker lost mid-write; the store itself retries transient database errors.",
    )

    @field_validator("retries")
    @classmethod
    def _retries(cls, value: int) -> int:
        if not 0 <= value <= 10:
            raise ValueError(f"retries must lie in 0..10, got {value}")
        return value

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: list[SourceSpec]) -> list[SourceSpec]:
        if not value:
            raise ValueError("a collection needs at least one source")
        return value


def query_config(spec: InputSpec, sources_under: dict[str, list[str]]) -> QueryConfig:
    """The store's :class:`QueryConfig` for an input (sources filled in for resolvers)."""
    if spec.step in sources_under:  # a resolver
        return QueryConfig(
            sources=tuple(spec.sources or sources_under[spec.step]),
            resolver=spec.step,
            cleaning=spec.cleaning,
        )
    return QueryConfig(sources=(spec.step,), cleaning=spec.cleaning)


def model_config(spec: ModelSpec, sources_under: dict[str, list[str]]) -> ModelConfig:
    """The store's :class:`ModelConfig` for a model spec."""
    from matchbox_dagster.methods.models import build_model

    methodology = build_model(spec.model_class, spec.settings)
    return ModelConfig(
        type=spec.model_type,
        model_class=spec.model_class,
        model_settings=methodology.settings(),
        left_query=query_config(spec.left, sources_under),
        right_query=query_config(spec.right, sources_under) if spec.right else None,
    )
