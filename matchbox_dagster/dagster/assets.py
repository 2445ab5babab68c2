"""Asset factories: sources, dedupers, linkers and resolvers as run-partitioned Dagster assets.

Each ``build_*`` function is keyword-only, validates its arguments eagerly (raising
``DagsterInvalidDefinitionError`` that names the argument) and returns an ``AssetsDefinition``
whose checks run in the same step, right after the IO manager stored the output. Asset keys,
groups and descriptions come from a :class:`MatchboxTranslator`, the one customisation seam.

:func:`build_collection_assets` turns a whole :class:`~matchbox_dagster.specs.CollectionSpec`
into assets, computing what each resolver input reads.
"""

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.common.dtos import StepType
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.dagster.checks import (
    SCORES_IN_RANGE,
    SOURCE_QUALITY,
    check_specs,
    resolver_check_names,
    resolver_checks,
    scores_in_range,
    source_quality,
)
from matchbox_dagster.dagster.io_manager import (
    META_FIELDS,
    META_QUERY,
    run_path,
    step_metadata,
)
from matchbox_dagster.dagster.partitions import dagster_name, run_partitions
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.methods.models import build_model
from matchbox_dagster.methods.resolvers import ConnectedComponents
from matchbox_dagster.sources.locations import index_source
from matchbox_dagster.specs import (
    CollectionSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
    model_config,
)

IO_MANAGER_KEY = "matchbox_io_manager"
"""Resource key under which :class:`MatchboxIOManager` must be bound."""


class MatchboxTranslator:
    """How steps become assets: override ``get_*`` to customise keys, groups, descriptions."""

    def get_asset_key(self, collection: str, step: str) -> dg.AssetKey:
        """Asset key of a step (default ``[collection, step]``)."""
        return dg.AssetKey([collection, step])

    def get_group_name(self, collection: str, step: str) -> str:
        """Asset group of a step (default: the collection)."""
        return dagster_name(collection)

    def get_description(self, collection: str, step: str, kind: str, given: str | None) -> str:
        """Description shown in the UI."""
        return given or f"matchbox {kind} {step!r} of collection {collection!r}."

    def get_tags(self, collection: str, step: str, kind: str) -> dict[str, str]:
        """Asset tags."""
        return {"matchbox/collection": collection, "matchbox/step_type": kind}


class _PrefixTranslator(MatchboxTranslator):
    def __init__(self, prefix: Sequence[str], group: str | None) -> None:
        self.prefix = list(prefix)
        self.group = group

    def get_asset_key(self, collection: str, step: str) -> dg.AssetKey:
        return dg.AssetKey([*self.prefix, step])

    def get_group_name(self, collection: str, step: str) -> str:
        return self.group or super().get_group_name(collection, step)


def _fail(argument: str, message: str) -> dg.DagsterInvalidDefinitionError:
    return dg.DagsterInvalidDefinitionError(f"Argument {argument!r}: {message}")


def _common(
    collection: str,
    name: str,
    kind: StepType,
    description: str | None,
    translator: MatchboxTranslator,
    retry_policy: dg.RetryPolicy | None = None,
) -> dict[str, Any]:
    return {
        "retry_policy": retry_policy,
        "key": translator.get_asset_key(collection, name),
        "group_name": translator.get_group_name(collection, name),
        "description": translator.get_description(collection, name, kind.value, description),
        "partitions_def": run_partitions(collection),
        "io_manager_key": IO_MANAGER_KEY,
        "kinds": {"matchbox", "postgres"},
        "tags": translator.get_tags(collection, name, kind.value),
    }


def build_source_asset(
    *,
    collection: str,
    source: SourceSpec,
    translator: MatchboxTranslator | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """An asset that extracts a source in batches, hashes its rows and stores them."""
    if not isinstance(source, SourceSpec):
        raise _fail("source", f"expected a SourceSpec, got {type(source).__name__}")
    translator = translator or MatchboxTranslator()
    try:
        config = source.config()
    except ValueError as exc:
        raise _fail("source", str(exc)) from exc
    common = _common(
        collection, source.name, StepType.SOURCE, source.description, translator, retry_policy
    )
    key = common["key"]

    @dg.asset(
        **common,
        metadata=step_metadata(
            collection, source.name, StepType.SOURCE, config, source.description
        ),
        check_specs=check_specs(key, [SOURCE_QUALITY]),
    )
    def _source(context: dg.AssetExecutionContext, matchbox: MatchboxResource) -> Iterator[Any]:
        started = time.perf_counter()
        hashes = index_source(config, batch_size=matchbox.batch_rows)
        seconds = time.perf_counter() - started
        context.log.info(
            "Extracted %s keys in %s distinct rows from %s in %.2fs",
            f"{hashes.num_keys:,}",
            f"{hashes.num_rows:,}",
            config.location_config.name,
            seconds,
        )
        extracted = (hashes.num_keys, hashes.num_rows)
        yield dg.Output(hashes, metadata={"extract_seconds": round(seconds, 3)})
        del hashes  # stored by now: free it before the check
        store = matchbox.get_store()
        path = run_path(store, collection, context.partition_key, source.name, create=False)
        yield source_quality(store, path, *extracted)

    return _source


def build_model_asset(
    *,
    collection: str,
    model: ModelSpec,
    sources_under: Mapping[str, Sequence[str]] | None = None,
    translator: MatchboxTranslator | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """A deduper (``model.right`` unset) or linker asset: loads its inputs, scores pairs.

    ``sources_under`` maps each resolver a model reads to the sources upstream of it (filled in
    by :func:`build_collection_assets`); an input naming a resolver reads those sources.
    """
    if not isinstance(model, ModelSpec):
        raise _fail("model", f"expected a ModelSpec, got {type(model).__name__}")
    translator = translator or MatchboxTranslator()
    under = {k: list(v) for k, v in (sources_under or {}).items()}
    try:
        config = model_config(model, under)
        methodology = build_model(model.model_class, model.settings)
    except (ValueError, MatchboxError) as exc:
        raise _fail("model", f"{model.name!r}: {exc}") from exc
    queries = {"left": config.left_query}
    if config.right_query is not None:
        queries["right"] = config.right_query
    ins = {
        side: dg.AssetIn(
            key=translator.get_asset_key(collection, query.resolves_from),
            metadata={
                META_QUERY: query.model_dump_json(),
                # Methodologies that read only known fields spare their inputs the rest.
                **(
                    {META_FIELDS: json.dumps(methodology.input_fields)}
                    if methodology.input_fields is not None
                    else {}
                ),
            },
        )
        for side, query in queries.items()
    }
    read = {name for q in queries.values() for name in q.dependencies}
    deps = [
        translator.get_asset_key(collection, name)
        for name in sorted(read - {q.resolves_from for q in queries.values()})
    ]
    common = _common(
        collection, model.name, StepType.MODEL, model.description, translator, retry_policy
    )
    key = common["key"]

    @dg.asset(
        **common,
        ins=ins,
        deps=deps,
        metadata=step_metadata(collection, model.name, StepType.MODEL, config, model.description),
        check_specs=check_specs(key, [SCORES_IN_RANGE]),
    )
    def _model(
        context: dg.AssetExecutionContext, matchbox: MatchboxResource, **inputs: Any
    ) -> Iterator[Any]:
        started = time.perf_counter()
        if "right" in inputs:
            results = methodology.link(inputs["left"], inputs["right"])
        else:
            results = methodology.dedupe(inputs["left"])
        seconds = time.perf_counter() - started
        rows = {side: frame.height for side, frame in inputs.items()}
        context.log.info(
            "%s scored %s pairs from %s records in %.2fs",
            model.model_class,
            f"{results.num_rows:,}",
            rows,
            seconds,
        )
        produced = results.num_rows
        yield dg.Output(
            results,
            metadata={
                "model_seconds": round(seconds, 3),
                **{f"{k}_records": v for k, v in rows.items()},
            },
        )
        del results, inputs  # stored by now: free them before the check
        store = matchbox.get_store()
        path = run_path(store, collection, context.partition_key, model.name, create=False)
        yield scores_in_range(store, path, produced)

    return _model


def build_resolver_asset(
    *,
    collection: str,
    resolver: ResolverSpec,
    sources: Sequence[str],
    translator: MatchboxTranslator | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """A resolver asset: connected components over its models' edges, then its checks.

    ``sources`` are the sources upstream of the resolver (their keys are what the checks count
    and evaluate).
    """
    if not isinstance(resolver, ResolverSpec):
        raise _fail("resolver", f"expected a ResolverSpec, got {type(resolver).__name__}")
    if not sources:
        raise _fail("sources", f"resolver {resolver.name!r} needs the sources upstream of it")
    translator = translator or MatchboxTranslator()
    checks: ResolverChecksSpec = resolver.checks
    unknown_truth = set(checks.truth or {}) - set(sources)
    if unknown_truth:
        raise _fail(
            "resolver",
            f"{resolver.name!r}: checks.truth names {sorted(unknown_truth)}, which are not "
            f"sources upstream of it ({sorted(sources)})",
        )
    try:
        components = ConnectedComponents(thresholds=resolver.thresholds)
        for name, value in resolver.thresholds.items():
            if not 0 <= value <= 1:
                raise ValueError(f"threshold of {name!r} must lie in [0, 1], got {value}")
    except ValueError as exc:
        raise _fail("resolver", f"{resolver.name!r}: {exc}") from exc
    models = list(resolver.thresholds)
    ins = {
        f"model_{i}": dg.AssetIn(key=translator.get_asset_key(collection, m))
        for i, m in enumerate(models)
    }
    config = resolver.config()
    common = _common(
        collection, resolver.name, StepType.RESOLVER, resolver.description, translator, retry_policy
    )
    key = common["key"]

    @dg.asset(
        **common,
        ins=ins,
        metadata=step_metadata(
            collection, resolver.name, StepType.RESOLVER, config, resolver.description
        ),
        check_specs=check_specs(key, resolver_check_names(checks)),
    )
    def _resolver(
        context: dg.AssetExecutionContext, matchbox: MatchboxResource, **inputs: ModelResults
    ) -> Iterator[Any]:
        started = time.perf_counter()
        edges = {models[int(k.removeprefix("model_"))]: v for k, v in inputs.items()}
        clusters = components.resolve(edges)
        seconds = time.perf_counter() - started
        context.log.info(
            "Resolved %s edges into %s clusters in %.2fs",
            f"{sum(e.num_rows for e in edges.values()):,}",
            f"{clusters.num_clusters:,}",
            seconds,
        )
        yield dg.Output(clusters, metadata={"resolve_seconds": round(seconds, 3)})
        # Stored by now; the checks read the store, so free the payloads first (at 10M keys
        # they are gigabytes the checks would otherwise sit on).
        del clusters, edges, inputs
        pa.default_memory_pool().release_unused()
        store = matchbox.get_store()
        path = run_path(store, collection, context.partition_key, resolver.name, create=False)
        yield from resolver_checks(
            store,
            path,
            sources=sources,
            models=models,
            checks=checks,
            batch_size=matchbox.batch_rows,
        )

    return _resolver


def upstream_sources(spec: CollectionSpec) -> dict[str, list[str]]:
    """For each model and resolver, the sources upstream of it (in declaration order)."""
    source_names = [s.name for s in spec.sources]
    under: dict[str, list[str]] = {}
    models = {m.name: m for m in spec.models}
    resolvers = {r.name: r for r in spec.resolvers}

    def of(step: str, trail: tuple[str, ...]) -> list[str]:
        if step in trail:
            raise _fail("spec", f"cycle through {' → '.join([*trail, step])}")
        if step in source_names:
            return [step]
        if step in under:
            return under[step]
        if step in models:
            m = models[step]
            inputs = [m.left, *([m.right] if m.right else [])]
            found = []
            for i in inputs:
                reachable = of(i.step, (*trail, step))
                if i.sources is not None:
                    if i.step in source_names:
                        raise _fail(
                            "spec",
                            f"model {step!r} reads source {i.step!r}; 'sources' only applies to "
                            "a resolver input",
                        )
                    stray = sorted(set(i.sources) - set(reachable))
                    if stray or not i.sources:
                        raise _fail(
                            "spec",
                            f"model {step!r} reads sources {stray or '[]'} through resolver "
                            f"{i.step!r}, which resolves only {reachable}",
                        )
                found += i.sources or reachable
        elif step in resolvers:
            found = [s for model in resolvers[step].thresholds for s in of(model, (*trail, step))]
        else:
            raise _fail(
                "spec", f"step {step!r} (read by {trail[-1] if trail else '?'}) is not defined"
            )
        under[step] = [s for s in source_names if s in set(found)]
        return under[step]

    for name in [*models, *resolvers]:
        of(name, ())
    return under


def validate_spec(spec: CollectionSpec) -> None:
    """Check a collection's graph: unique names, known steps, thresholds on models only."""
    names = (
        [s.name for s in spec.sources]
        + [m.name for m in spec.models]
        + [r.name for r in spec.resolvers]
    )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _fail("spec", f"step names must be unique; repeated: {repeated}")
    models = {m.name for m in spec.models}
    resolvers = {r.name for r in spec.resolvers}
    sources = {s.name for s in spec.sources}
    for m in spec.models:
        for side in [m.left, *([m.right] if m.right else [])]:
            if side.step not in sources | resolvers:
                raise _fail(
                    "spec",
                    f"model {m.name!r} reads {side.step!r}, which is neither a source nor a "
                    f"resolver of the collection (sources {sorted(sources)}, resolvers "
                    f"{sorted(resolvers)})",
                )
    for r in spec.resolvers:
        unknown = set(r.thresholds) - models
        if unknown:
            raise _fail(
                "spec",
                f"resolver {r.name!r} has thresholds for {sorted(unknown)}, which are not models "
                f"({sorted(models)})",
            )
    if spec.final_resolver is not None and spec.final_resolver not in resolvers:
        raise _fail("spec", f"final_resolver {spec.final_resolver!r} is not a resolver")
    upstream_sources(spec)


def build_collection_assets(
    spec: CollectionSpec, *, translator: MatchboxTranslator | None = None
) -> list[dg.AssetsDefinition]:
    """Every asset of a collection's graph, validated as a whole first."""
    validate_spec(spec)
    if translator is None:
        translator = (
            _PrefixTranslator(spec.key_prefix, spec.group_name)
            if spec.key_prefix is not None or spec.group_name
            else MatchboxTranslator()
        )
    under = upstream_sources(spec)
    resolver_names = {r.name for r in spec.resolvers}
    retry = (
        dg.RetryPolicy(
            max_retries=spec.retries,
            delay=2,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        )
        if spec.retries
        else None
    )
    assets = [
        build_source_asset(
            collection=spec.collection, source=s, translator=translator, retry_policy=retry
        )
        for s in spec.sources
    ]
    assets += [
        build_model_asset(
            collection=spec.collection,
            model=m,
            sources_under={k: v for k, v in under.items() if k in resolver_names},
            translator=translator,
            retry_policy=retry,
        )
        for m in spec.models
    ]
    assets += [
        build_resolver_asset(
            collection=spec.collection,
            resolver=r,
            sources=under[r.name],
            translator=translator,
            retry_policy=retry,
        )
        for r in spec.resolvers
    ]
    return assets


def final_resolver(spec: CollectionSpec) -> str | None:
    """The resolver whose checks gate promotion."""
    if spec.final_resolver:
        return spec.final_resolver
    return spec.resolvers[-1].name if spec.resolvers else None
