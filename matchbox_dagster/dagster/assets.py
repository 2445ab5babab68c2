"""Asset factories: sources, dedupers, linkers and resolvers as run-partitioned Dagster assets.

Each ``build_*`` function is keyword-only, validates its arguments eagerly (raising
``DagsterInvalidDefinitionError`` that names the argument) and returns an ``AssetsDefinition``
whose checks run in the same step, right after the IO manager stored the output. Asset keys,
groups and descriptions come from a :class:`MatchboxTranslator`, the one customisation seam.

:func:`build_collection_assets` turns a whole :class:`~matchbox_dagster.specs.CollectionSpec`
into assets. The spec validates and plans itself (:func:`~matchbox_dagster.specs.plan_collection`:
every step's config and methodology, built once); this module only turns a
:class:`~matchbox_dagster.specs.SpecError` into ``DagsterInvalidDefinitionError`` and the plan
into assets.
"""

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.common.dtos import SourceConfig, StepPath, StepType
from matchbox_dagster.common.redaction import redact
from matchbox_dagster.common.reuse import ReusedStep
from matchbox_dagster.dagster import trained
from matchbox_dagster.dagster.carry import model_check, resolver_check_results, source_check
from matchbox_dagster.dagster.checks import (
    SCORES_IN_RANGE,
    SOURCE_QUALITY,
    check_specs,
    resolver_check_names,
)
from matchbox_dagster.dagster.io_manager import (
    META_FIELDS,
    META_FINGERPRINT,
    META_LAZY,
    META_QUERY,
    LazyInput,
    step_metadata,
)
from matchbox_dagster.dagster.lifecycle import note_attempt
from matchbox_dagster.dagster.partitions import (
    dagster_run_id,
    run_partitions,
    step_path,
)
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.reuse import (
    META_COMPUTED,
    META_INDEXED,
    META_INPUTS_LOADED,
    code_version,
    reusable_step,
    versioned_output,
)
from matchbox_dagster.dagster.translator import MatchboxTranslator, PrefixTranslator
from matchbox_dagster.sources.locations import digest_source
from matchbox_dagster.specs import (
    CollectionSpec,
    ModelPlan,
    ModelSpec,
    ResolverPlan,
    ResolverSpec,
    SourceSpec,
    SpecError,
    plan_collection,
    plan_model,
    plan_resolver,
    plan_source,
)
from matchbox_dagster.specs.preflight import RunPreflight

IO_MANAGER_KEY = "matchbox_io_manager"
"""Resource key under which :class:`MatchboxIOManager` must be bound."""


def _fail(argument: str, message: str) -> dg.DagsterInvalidDefinitionError:
    return dg.DagsterInvalidDefinitionError(f"Argument {argument!r}: {message}")


@contextmanager
def spec_errors() -> Iterator[None]:
    """Turn a :class:`SpecError` into ``DagsterInvalidDefinitionError`` naming what to fix."""
    try:
        yield
    except SpecError as exc:
        raise _fail(exc.argument, str(exc)) from exc


def _path(
    context: dg.AssetExecutionContext,
    matchbox: MatchboxResource,
    collection: str,
    name: str,
    *,
    create: bool = False,
) -> StepPath:
    """The step path of this asset's partition (``create``: its run too, when it has none)."""
    return step_path(
        matchbox.get_store(),
        collection,
        context.partition_key,
        name,
        create=create,
        dagster_run=dagster_run_id(context),
    )


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
    with spec_errors():
        config = plan_source(source)
    return _source_asset(collection, source, config, translator, retry_policy)


def _source_asset(
    collection: str,
    source: SourceSpec,
    config: SourceConfig,
    translator: MatchboxTranslator | None,
    retry_policy: dg.RetryPolicy | None,
    preflight: RunPreflight | None = None,
) -> dg.AssetsDefinition:
    common = _common(
        collection,
        source.name,
        StepType.SOURCE,
        source.description,
        translator or MatchboxTranslator(),
        retry_policy,
    )

    @dg.asset(
        **common,
        metadata=step_metadata(
            collection, source.name, StepType.SOURCE, config, source.description
        ),
        check_specs=check_specs(common["key"], [SOURCE_QUALITY], common["partitions_def"]),
        code_version=code_version(config),
    )
    def _source(context: dg.AssetExecutionContext, matchbox: MatchboxResource) -> Iterator[Any]:
        store = _begin(context, matchbox, preflight, collection)
        started = time.perf_counter()
        digests = digest_source(
            config, batch_size=matchbox.batch_rows, s3_client_factory=matchbox.s3_client_factory
        )
        seconds = time.perf_counter() - started
        extracted = (digests.num_keys, digests.num_rows)
        context.log.info(
            "Extracted %s keys in %s distinct rows from %s in %.2fs",
            f"{extracted[0]:,}",
            f"{extracted[1]:,}",
            redact(config.location_config.name),
            seconds,
        )
        # A source may be the first step of its run: the run is created if need be.
        path = _path(context, matchbox, collection, source.name, create=True)
        fingerprint = digests.fingerprint
        reused = reusable_step(context, store, path, config, [], fingerprint=fingerprint)
        if reused is not None:
            del digests  # the default run holds these very rows: share them, index nothing
            meta = {"extract_seconds": round(seconds, 3), META_INDEXED: False}
            yield _reused_output(store, reused, meta, fingerprint)
        else:
            hashes = digests.index()  # takes the rows over
            del digests
            yield versioned_output(
                hashes,
                hashes.fingerprint,
                {"extract_seconds": round(seconds, 3), META_INDEXED: True},
            )
            del hashes  # stored by now: free it before the check
        yield source_check(context, store, path, *extracted)

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
    with spec_errors():
        plan = plan_model(model, sources_under)
    return _model_asset(collection, plan, translator, retry_policy)


def _model_asset(
    collection: str,
    plan: ModelPlan,
    translator: MatchboxTranslator | None,
    retry_policy: dg.RetryPolicy | None,
    preflight: RunPreflight | None = None,
) -> dg.AssetsDefinition:
    translator = translator or MatchboxTranslator()
    model, methodology, queries = plan.spec, plan.methodology, plan.queries
    ins = {
        side: dg.AssetIn(
            key=translator.get_asset_key(collection, query.resolves_from),
            metadata={
                META_QUERY: query.model_dump_json(),
                META_LAZY: "true",  # read in the body, only when the model computes
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

    @dg.asset(
        **common,
        ins=ins,
        deps=deps,
        metadata=step_metadata(
            collection, model.name, StepType.MODEL, plan.config, model.description
        ),
        check_specs=check_specs(common["key"], [SCORES_IN_RANGE], common["partitions_def"]),
        code_version=code_version(plan.config),
    )
    def _model(
        context: dg.AssetExecutionContext, matchbox: MatchboxResource, **inputs: LazyInput
    ) -> Iterator[Any]:
        store = _begin(context, matchbox, preflight, collection)
        path = _path(context, matchbox, collection, model.name)
        reused = reusable_step(context, store, path, plan.config, sorted(read))
        if reused is not None:  # nothing read, nothing computed
            yield _reused_output(store, reused)
            yield model_check(context, store, path, reused, None)
            return
        started = time.perf_counter()
        frames = {side: handle.load() for side, handle in inputs.items()}
        loaded = time.perf_counter()
        use = None
        if trained.needs_store(methodology):
            results, use = trained.score(
                store, path, plan.config, methodology, frames["left"], frames.get("right")
            )
        elif "right" in frames:
            results = methodology.link(frames["left"], frames["right"])
        else:
            results = methodology.dedupe(frames["left"])
        seconds = time.perf_counter() - loaded
        rows = {side: frame.height for side, frame in frames.items()}
        context.log.info(
            "%s scored %s pairs from %s records in %.2fs",
            model.model_class,
            f"{results.num_rows:,}",
            rows,
            seconds,
        )
        produced = results.num_rows
        yield _computed_output(
            results,
            inputs,
            {
                "model_seconds": round(seconds, 3),
                "load_seconds": round(loaded - started, 3),
                **{f"{k}_records": v for k, v in rows.items()},
                **(use.metadata() if use else {}),
            },
        )
        del results, frames  # stored by now: free them before the check
        yield model_check(context, store, path, None, produced, trained=use)

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
    with spec_errors():
        plan = plan_resolver(resolver, sources)
    return _resolver_asset(collection, plan, translator, retry_policy)


def _resolver_asset(
    collection: str,
    plan: ResolverPlan,
    translator: MatchboxTranslator | None,
    retry_policy: dg.RetryPolicy | None,
    preflight: RunPreflight | None = None,
) -> dg.AssetsDefinition:
    translator = translator or MatchboxTranslator()
    resolver, components, models = plan.spec, plan.resolver, plan.models
    ins = {
        f"model_{i}": dg.AssetIn(
            key=translator.get_asset_key(collection, m), metadata={META_LAZY: "true"}
        )
        for i, m in enumerate(models)
    }
    common = _common(
        collection, resolver.name, StepType.RESOLVER, resolver.description, translator, retry_policy
    )

    @dg.asset(
        **common,
        ins=ins,
        metadata=step_metadata(
            collection, resolver.name, StepType.RESOLVER, plan.config, resolver.description
        ),
        check_specs=check_specs(
            common["key"], resolver_check_names(plan.checks), common["partitions_def"]
        ),
        code_version=code_version(plan.config),
    )
    def _resolver(
        context: dg.AssetExecutionContext, matchbox: MatchboxResource, **inputs: LazyInput
    ) -> Iterator[Any]:
        store = _begin(context, matchbox, preflight, collection)
        path = _path(context, matchbox, collection, resolver.name)
        reused = reusable_step(context, store, path, plan.config, [*models, *plan.sources])
        if reused is not None:  # nothing read, nothing computed
            yield _reused_output(store, reused)
        else:
            started = time.perf_counter()
            edges: dict[str, ModelResults] = {
                models[int(k.removeprefix("model_"))]: v.load() for k, v in inputs.items()
            }
            loaded = time.perf_counter()
            clusters = components.resolve(edges)
            seconds = time.perf_counter() - loaded
            context.log.info(
                "Resolved %s edges into %s clusters in %.2fs",
                f"{sum(e.num_rows for e in edges.values()):,}",
                f"{clusters.num_clusters:,}",
                seconds,
            )
            yield _computed_output(
                clusters,
                inputs,
                {"resolve_seconds": round(seconds, 3), "load_seconds": round(loaded - started, 3)},
            )
            # Stored by now; the checks read the store, so free the payloads first (at 10M
            # keys they are gigabytes the checks would otherwise sit on).
            del clusters, edges
            pa.default_memory_pool().release_unused()
        yield from resolver_check_results(
            context,
            store,
            path,
            reused,
            sources=plan.sources,
            models=models,
            checks=plan.checks,
            batch_size=matchbox.batch_rows,
        )

    return _resolver


def _begin(
    context: dg.AssetExecutionContext,
    matchbox: MatchboxResource,
    preflight: RunPreflight | None,
    collection: str,
) -> Any:
    """Start a step: run the preflight, note the Dagster run for ``runs``; return the store.

    The preflight runs once per Dagster run, before any write: a run it refuses leaves the
    store as it was (the Dagster UI shows why), so the note comes after it.
    """
    matchbox.run_preflight(preflight, context)
    store = matchbox.get_store()
    note_attempt(context, store, collection)
    return store


def _computed_output(
    payload: Any, inputs: Mapping[str, LazyInput], metadata: dict[str, Any]
) -> dg.Output:
    """The output of a step that computed ``payload`` from ``inputs``, with its timings."""
    return versioned_output(
        payload,
        payload.fingerprint,
        {
            **metadata,
            META_COMPUTED: True,
            META_INPUTS_LOADED: sum(h.loaded for h in inputs.values()),
        },
    )


def _reused_output(
    store: Any, reused: StepPath, metadata: dict[str, Any] | None = None, fingerprint: bytes = b""
) -> dg.Output:
    """The output of a step reusing ``reused`` (``fingerprint``: its data's, when known)."""
    fingerprint = fingerprint or store.get_step(reused).fingerprint
    # The fingerprint in the metadata: the IO manager need not read it again.
    flags = {META_COMPUTED: False, META_INPUTS_LOADED: 0, META_FINGERPRINT: fingerprint.hex()}
    return versioned_output(ReusedStep(from_path=reused), fingerprint, flags | (metadata or {}))


def build_collection_assets(
    spec: CollectionSpec,
    *,
    translator: MatchboxTranslator | None = None,
    preflight: RunPreflight | None = None,
) -> list[dg.AssetsDefinition]:
    """Every asset of a collection's graph, validated and planned as a whole first.

    ``preflight`` runs first in each asset body, once per Dagster run
    (:meth:`MatchboxResource.run_preflight`).
    """
    with spec_errors():
        plan = plan_collection(spec)
    if translator is None:
        translator = (
            PrefixTranslator(spec.key_prefix, spec.group_name)
            if spec.key_prefix is not None or spec.group_name
            else MatchboxTranslator()
        )
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
    return [
        *(
            _source_asset(spec.collection, s, plan.sources[s.name], translator, retry, preflight)
            for s in spec.sources
        ),
        *(_model_asset(spec.collection, m, translator, retry, preflight) for m in plan.models),
        *(
            _resolver_asset(spec.collection, r, translator, retry, preflight)
            for r in plan.resolvers
        ),
    ]
