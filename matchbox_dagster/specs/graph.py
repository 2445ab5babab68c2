"""The graph of a collection spec: validated as a whole, and planned once.

:func:`plan_collection` checks what single spec models cannot (unique step names, inputs that
exist, thresholds only on models, no cycles, resolver inputs reading sources upstream of them,
ground truth only for upstream sources, no model silently left out of a resolver) and builds
every step's store config and methodology — once: the Dagster layer builds assets from the plan
and never rebuilds a methodology. A problem raises :class:`SpecError` naming what to fix; the
Dagster layer turns it into ``DagsterInvalidDefinitionError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from matchbox_dagster.common.dtos import (
    ModelConfig,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
)
from matchbox_dagster.common.errors import MatchboxError, MatchboxInvalidData
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


class SpecError(MatchboxInvalidData):
    """A spec that cannot be built; ``argument`` names the part to fix (spec, model, …)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


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


def upstream_sources(spec: CollectionSpec) -> dict[str, list[str]]:
    """For each model and resolver, the sources upstream of it (in declaration order)."""
    source_names = [s.name for s in spec.sources]
    under: dict[str, list[str]] = {}
    models = {m.name: m for m in spec.models}
    resolvers = {r.name: r for r in spec.resolvers}

    def of(step: str, trail: tuple[str, ...]) -> list[str]:
        if step in trail:
            raise SpecError("spec", f"cycle through {' → '.join([*trail, step])}")
        if step in source_names:
            return [step]
        if step in under:
            return under[step]
        if step in models:
            m = models[step]
            found = []
            for i in [m.left, *([m.right] if m.right else [])]:
                reachable = of(i.step, (*trail, step))
                if i.sources is not None:
                    if i.step in source_names:
                        raise SpecError(
                            "spec",
                            f"model {step!r} reads source {i.step!r}; 'sources' only applies to "
                            "a resolver input",
                        )
                    stray = sorted(set(i.sources) - set(reachable))
                    if stray or not i.sources:
                        raise SpecError(
                            "spec",
                            f"model {step!r} reads sources {stray or '[]'} through resolver "
                            f"{i.step!r}, which resolves only {reachable}",
                        )
                found += i.sources or reachable
        elif step in resolvers:
            found = [s for model in resolvers[step].thresholds for s in of(model, (*trail, step))]
        else:
            raise SpecError(
                "spec", f"step {step!r} (read by {trail[-1] if trail else '?'}) is not defined"
            )
        under[step] = [s for s in source_names if s in set(found)]
        return under[step]

    for name in [*models, *resolvers]:
        of(name, ())
    return under


def validate_spec(spec: CollectionSpec) -> dict[str, list[str]]:
    """Check the graph's shape; return :func:`upstream_sources` (:class:`SpecError` if bad)."""
    names = (
        [s.name for s in spec.sources]
        + [m.name for m in spec.models]
        + [r.name for r in spec.resolvers]
    )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError("spec", f"step names must be unique; repeated: {repeated}")
    models = {m.name for m in spec.models}
    resolvers = {r.name for r in spec.resolvers}
    sources = {s.name for s in spec.sources}
    for m in spec.models:
        for side in [m.left, *([m.right] if m.right else [])]:
            if side.step not in sources | resolvers:
                raise SpecError(
                    "spec",
                    f"model {m.name!r} reads {side.step!r}, which is neither a source nor a "
                    f"resolver of the collection (sources {sorted(sources)}, resolvers "
                    f"{sorted(resolvers)})",
                )
    for r in spec.resolvers:
        unknown = set(r.thresholds) - models
        if unknown:
            raise SpecError(
                "spec",
                f"resolver {r.name!r} has thresholds for {sorted(unknown)}, which are not models "
                f"({sorted(models)})",
            )
        stray = sorted(set(r.exclude) - models)
        if stray:
            raise SpecError("spec", f"resolver {r.name!r} excludes {stray}, which are not models")
    if spec.final_resolver is not None and spec.final_resolver not in resolvers:
        raise SpecError("spec", f"final_resolver {spec.final_resolver!r} is not a resolver")
    under = upstream_sources(spec)
    for r in spec.resolvers:
        omitted = omitted_models(spec, r, under)
        if omitted:
            listed = ", ".join(f"{m}: {r.thresholds[m]}" for m in r.thresholds)
            missing = ", ".join(f"{m}: 1.0" for m in omitted)
            raise SpecError(
                "spec",
                f"resolver {r.name!r} resolves sources {under[r.name]} but its thresholds "
                f"omit model(s) {omitted}, which score those sources: their edges would be "
                f"dropped. Give each a threshold (thresholds: {{{listed}, {missing}}}; 0 keeps "
                f"every edge) or leave them out on purpose with exclude: {omitted}.",
            )
    return under


def _models_upstream(spec: CollectionSpec, resolver: ResolverSpec) -> set[str]:
    """The models a resolver reads, directly or through the resolvers its models read."""
    models = {m.name: m for m in spec.models}
    resolvers = {r.name: r for r in spec.resolvers}
    seen: set[str] = set()
    stack = list(resolver.thresholds)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        if name in models:
            seen.add(name)
            m = models[name]
            stack += [i.step for i in [m.left, *([m.right] if m.right else [])]]
        elif name in resolvers:
            seen.add(name)
            stack += list(resolvers[name].thresholds)
    return seen & set(models)


def omitted_models(
    spec: CollectionSpec, resolver: ResolverSpec, under: Mapping[str, Sequence[str]]
) -> list[str]:
    """Models scoring only this resolver's sources that it neither reads nor excludes."""
    upstream = _models_upstream(spec, resolver)
    mine = set(under[resolver.name])
    return [
        m.name
        for m in spec.models
        if m.name not in upstream and m.name not in resolver.exclude and set(under[m.name]) <= mine
    ]


def plan_collection(spec: CollectionSpec) -> CollectionPlan:
    """Validate the whole graph, then build every step's config and methodology once."""
    under = validate_spec(spec)
    resolver_names = {r.name for r in spec.resolvers}
    read_through = {k: v for k, v in under.items() if k in resolver_names}
    return CollectionPlan(
        spec=spec,
        sources={s.name: plan_source(s) for s in spec.sources},
        models=[plan_model(m, read_through) for m in spec.models],
        resolvers=[plan_resolver(r, under[r.name]) for r in spec.resolvers],
    )


def final_resolver(spec: CollectionSpec) -> str | None:
    """The resolver whose checks gate promotion (``final_resolver``, else the last)."""
    if spec.final_resolver:
        return spec.final_resolver
    return spec.resolvers[-1].name if spec.resolvers else None
