"""The graph of a collection spec: validated as a whole, and planned once.

:func:`plan_collection` checks what single spec models cannot (unique step names, inputs that
exist, thresholds only on models, no cycles, resolver inputs reading sources upstream of them,
ground truth only for upstream sources, no model silently left out of a resolver) and builds
every step's store config and methodology — once: the Dagster layer builds assets from the plan
and never rebuilds a methodology. Problems raise one :class:`SpecError` listing every one of them
(:mod:`.shape` checks the graph's shape), with the ``defs.yaml`` file and line when given; the
Dagster layer turns it into ``DagsterInvalidDefinitionError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from matchbox_dagster.common.dtos import (
    ModelConfig,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
)
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.methods.clustering import SplitConflicts, build_resolver
from matchbox_dagster.methods.models import Model, build_model
from matchbox_dagster.methods.resolvers import ConnectedComponents
from matchbox_dagster.specs.models import (
    CollectionSpec,
    InputSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
)
from matchbox_dagster.specs.shape import (
    SpecError,
    SpecProblem,
    Where,
    graph_problems,
)
from matchbox_dagster.specs.shape import omitted_models as omitted_models
from matchbox_dagster.specs.shape import upstream_sources as upstream_sources


def _reason(exc: Exception) -> str:
    """A validation error's messages without pydantic's decoration."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: " * bool(e["loc"])
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
    return str(exc)


# --- single steps --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """A model ready to become an asset: its spec, store config and methodology."""

    spec: ModelSpec
    config: ModelConfig
    methodology: Model

    @property
    def queries(self) -> dict[str, QueryConfig]:
        """``left`` (and ``right`` for a linker) → the input's query."""
        found = {"left": self.config.left_query}
        if self.config.right_query is not None:
            found["right"] = self.config.right_query
        return found


@dataclass(frozen=True)
class ResolverPlan:
    """A resolver ready to become an asset: its spec, config, methodology and sources."""

    spec: ResolverSpec
    config: ResolverConfig
    resolver: ConnectedComponents | SplitConflicts
    sources: list[str]

    @property
    def models(self) -> list[str]:
        """The models whose edges it resolves, in threshold order."""
        return list(self.spec.thresholds)

    @property
    def checks(self) -> ResolverChecksSpec:
        """Its checks' settings."""
        return self.spec.checks


def plan_source(spec: SourceSpec) -> SourceConfig:
    """The store's config of a source (:class:`SpecError` if its fields do not validate)."""
    try:
        return spec.config()
    except ValueError as exc:
        raise SpecError("source", _reason(exc)) from exc


def query_config(spec: InputSpec, sources_under: Mapping[str, Sequence[str]]) -> QueryConfig:
    """The store's :class:`QueryConfig` for an input (sources filled in for resolvers)."""
    if spec.step in sources_under:  # a resolver
        return QueryConfig(
            sources=tuple(spec.sources or sources_under[spec.step]),
            resolver=spec.step,
            cleaning=spec.cleaning,
        )
    return QueryConfig(sources=(spec.step,), cleaning=spec.cleaning)


def plan_model(
    spec: ModelSpec, sources_under: Mapping[str, Sequence[str]] | None = None
) -> ModelPlan:
    """Build a model's methodology and config once.

    ``sources_under`` maps each resolver the model reads to the sources upstream of it; an input
    naming a resolver reads those sources.
    """
    under = sources_under or {}
    try:
        methodology = build_model(spec.model_class, spec.settings)
        config = ModelConfig(
            type=spec.model_type,
            model_class=spec.model_class,
            model_settings=methodology.settings(),
            left_query=query_config(spec.left, under),
            right_query=query_config(spec.right, under) if spec.right else None,
        )
    except (ValueError, MatchboxError) as exc:
        raise SpecError("model", f"{spec.name!r}: {_reason(exc)}") from exc
    return ModelPlan(spec=spec, config=config, methodology=methodology)


def plan_resolver(spec: ResolverSpec, sources: Sequence[str]) -> ResolverPlan:
    """Build a resolver's methodology and config once; ``sources`` are those upstream of it."""
    if not sources:
        raise SpecError("sources", f"resolver {spec.name!r} needs the sources upstream of it")
    unknown_truth = set(spec.checks.truth or {}) - set(sources)
    if unknown_truth:
        raise SpecError(
            "resolver",
            f"{spec.name!r}: checks.truth names {sorted(unknown_truth)}, which are not "
            f"sources upstream of it ({sorted(sources)})",
        )
    try:  # a spec built with model_copy skipped its validators: the methodology checks again
        resolver = build_resolver(spec.method, spec.thresholds, spec.settings)
    except (ValueError, MatchboxError) as exc:
        raise SpecError("resolver", f"{spec.name!r}: {_reason(exc)}") from exc
    config = ResolverConfig(
        resolver_class=resolver.resolver_class,
        inputs=tuple(spec.thresholds),
        resolver_settings=resolver.settings(),
    )
    return ResolverPlan(spec=spec, config=config, resolver=resolver, sources=list(sources))


# --- the whole graph ------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionPlan:
    """A validated collection: every step's config and methodology, built once."""

    spec: CollectionSpec
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    models: list[ModelPlan] = field(default_factory=list)
    resolvers: list[ResolverPlan] = field(default_factory=list)

    @property
    def final_resolver(self) -> str | None:
        """The resolver whose checks gate promotion."""
        return final_resolver(self.spec)


def validate_spec(spec: CollectionSpec, *, yaml_path: Path | None = None) -> dict[str, list[str]]:
    """Check the graph's shape; return :func:`upstream_sources`.

    :class:`SpecError` lists every problem at once, each with its file and line when the spec
    came from ``yaml_path`` (a component's ``defs.yaml``).
    """
    problems, under = graph_problems(spec)
    if problems:
        raise SpecError.of(problems, yaml_path)
    return under


def plan_collection(spec: CollectionSpec, *, yaml_path: Path | None = None) -> CollectionPlan:
    """Validate the whole graph, then build every step's config and methodology once.

    Every problem is reported at once (:class:`SpecError` listing ``problems``): the graph's
    shape first, then each step that cannot be planned (its place named in the spec).
    """
    under = validate_spec(spec, yaml_path=yaml_path)
    resolver_names = {r.name for r in spec.resolvers}
    read_through = {k: v for k, v in under.items() if k in resolver_names}
    problems: list[SpecProblem] = []
    sources: dict[str, SourceConfig] = {}
    models: list[ModelPlan] = []
    resolvers: list[ResolverPlan] = []

    def attempt(where: Where, build: Callable[[], None]) -> None:
        try:
            build()
        except SpecError as exc:
            problems.append(SpecProblem(where, str(exc)))

    for i, s in enumerate(spec.sources):
        attempt(("sources", i), lambda s=s: sources.__setitem__(s.name, plan_source(s)))
    for i, m in enumerate(spec.models):
        attempt(("models", i), lambda m=m: models.append(plan_model(m, read_through)))
    for i, r in enumerate(spec.resolvers):
        attempt(("resolvers", i), lambda r=r: resolvers.append(plan_resolver(r, under[r.name])))
    scoped = {m.spec.name for m in models if _linked_conflicts(m.methodology)}
    for i, r in enumerate(spec.resolvers):
        inputs = list(r.thresholds)
        narrow = sorted(scoped.intersection(inputs))
        if r.method == "split_conflicts" and len(inputs) > 1 and narrow:
            reason = (
                f"{r.name!r} splits conflicts across models {inputs}, but model(s) {narrow} find "
                "conflicts only between records their own pairs join: set conflict_scope: all "
                "in their settings, so records joined through another model's edges are kept "
                "apart too"
            )
            problems.append(SpecProblem(("resolvers", i), reason))
    if problems:
        raise SpecError.of(problems, yaml_path)
    return CollectionPlan(spec=spec, sources=sources, models=models, resolvers=resolvers)


def _linked_conflicts(model: Model) -> bool:
    """Whether a model marks conflicts only between records its own pairs join."""
    return bool(getattr(model, "conflicts", False)) and (
        getattr(model, "conflict_scope", None) == "linked"
    )


def final_resolver(spec: CollectionSpec) -> str | None:
    """The resolver whose checks gate promotion (``final_resolver``, else the last)."""
    if spec.final_resolver:
        return spec.final_resolver
    return spec.resolvers[-1].name if spec.resolvers else None
