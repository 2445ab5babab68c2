"""The spec models: a collection's sources, models, resolvers and their checks.

The same pydantic models serve Python (``CollectionSpec(...)``) and YAML (the
:class:`~matchbox_dagster.dagster.component.MatchboxCollectionComponent` reads them from
``defs.yaml``), so a data team can add a source or change a threshold without writing Python.
Each model validates its own fields; the graph as a whole (unknown steps, cycles, unknown model
classes, thresholds for models that are not inputs) is validated by :mod:`.graph`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matchbox_dagster.common.dtos import (
    DataTypes,
    LocationConfig,
    ModelType,
    SourceConfig,
    SourceField,
    validate_name,
)
from matchbox_dagster.methods.resolvers import check_thresholds


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("name", "collection", check_fields=False)
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_name(value)


class SourceSpec(_Spec):
    """A source: where its records are, its key field and the fields that identify a record.

    Example::

        SourceSpec(
            name="people",
            location=LocationConfig(type=LocationType.PARQUET, name="data/people.parquet"),
            key_field="person_id",
            index_fields=["name", "dob", "postcode"],
        )
    """

    name: str = Field(description="Step (and asset) name.")
    location: LocationConfig = Field(description="Location type and name (path, URI, callable).")
    key_field: str = Field(description="The source's own key column.")
    index_fields: list[str] = Field(description="Columns hashed to index rows (one or more).")
    extract_transform: str = Field(default="", description="SQL run at the location.")
    field_types: dict[str, DataTypes] = Field(
        default_factory=dict,
        description="Type of an index field (default: string), e.g. {'dob': 'date'}.",
    )
    description: str | None = None

    @field_validator("index_fields")
    @classmethod
    def _some_fields(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a source needs at least one index field")
        return value

    @model_validator(mode="after")
    def _typed_fields_are_index_fields(self) -> SourceSpec:
        stray = sorted(set(self.field_types) - set(self.index_fields))
        if stray:
            raise ValueError(f"field_types names {stray}, which are not index fields")
        return self

    def config(self) -> SourceConfig:
        """The store's step config (:class:`SourceConfig` validates the fields)."""
        return SourceConfig(
            location_config=self.location,
            extract_transform=self.extract_transform,
            key_field=SourceField(name=self.key_field),
            index_fields=tuple(
                SourceField(name=f, type=self.field_types.get(f, DataTypes.STRING))
                for f in self.index_fields
            ),
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
        # A bare step name works at load time; the component's schema (`dg check yaml`, which
        # `dg dev` runs first) knows only the mapping form `{step: name}`.
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
        description="Ground truth per source: a polars SQL expression over ``key`` and any "
        "column of the source (an index field or not) giving each record's true entity. "
        "Without it, precision and recall are measured against the store's judgements.",
    )
    max_churn: float | None = Field(
        default=None,
        description="Fail if more than this share of keys changed entity against the "
        "collection's default run.",
    )
    min_judgements: int | None = Field(
        default=None,
        description="Without ``truth``: fail until this many judgements of the resolver's "
        "records were made (``matchbox-dagster review``).",
    )

    @field_validator("min_precision", "min_recall", "max_churn")
    @classmethod
    def _unit(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"must lie in [0, 1], got {value}")
        return value

    @field_validator("max_cluster_size", "min_judgements")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be positive, got {value}")
        return value


class ResolverSpec(_Spec):
    """A resolver: connected components over its models' edges at per-model thresholds.

    Its inputs are exactly the models in ``thresholds``. Every other model whose records all
    come from this resolver's sources must be named in ``exclude`` (checked by
    :func:`~matchbox_dagster.specs.graph.validate_spec`), so no model is dropped silently.
    """

    name: str
    thresholds: dict[str, float] = Field(
        description="Model step name → minimum score (in [0, 1]) of an edge kept; one or more."
    )
    method: str = Field(
        default="components",
        description="'components' (connected components) or 'split_conflicts' (no weak links, "
        "no conflicting records in one entity; see matchbox_dagster.methods.clustering).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The method's settings: for split_conflicts 'strong' (model → score) and "
        "'conflict_score'.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Models scoring this resolver's sources that it leaves out on purpose (a "
        "model neither in thresholds nor here is refused, so none is dropped silently).",
    )
    checks: ResolverChecksSpec = Field(default_factory=ResolverChecksSpec)
    description: str | None = None

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("a resolver needs at least one model threshold")
        return check_thresholds(value)

    @model_validator(mode="after")
    def _listed_once(self) -> ResolverSpec:
        both = sorted(set(self.thresholds) & set(self.exclude))
        if both:
            raise ValueError(f"models {both} are both in thresholds and in exclude")
        return self


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
