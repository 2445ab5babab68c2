"""``MatchboxIOManager``: persists sources, models and resolvers as steps of the partition's run.

It only maps an asset to a step and writes metadata: the asset's metadata says which step it is
(collection, name, type, config), the partition key says which run (a run label, see
:mod:`matchbox_dagster.dagster.partitions`, whose :func:`step_path` computes the path), the
payload type says what is stored — :class:`SourceHashes`, :class:`ModelResults` or
:class:`ResolverClusters`. Writing is ONE store call, ``write_step``: one transaction that
locks the step, checks the run's mutability and the fingerprint, replaces the step and its
descendants where allowed, inserts and completes the upload. Its outcome is the output's
``matchbox/action`` metadata:

* ``stored`` — a new step (or one declared without data) now holds the payload;
* ``unchanged`` — same fingerprint and config, data complete: nothing written (re-materialising
  is a no-op, and of two identical materialisations at once the second reports this);
* ``replaced`` — different data or config on a mutable run: the step and its descendants were
  deleted and the step written anew (the descendants' assets must be re-materialised, which a
  whole-graph run does).

A ``stored`` or ``replaced`` source then gets ``match``'s key lookups (``index_for_match``, its
own short transaction; ``matchbox/match_index_seconds``).

On an immutable run different data fails with :class:`MatchboxRunNotWriteable`, whose message
says to start a new run. All SQL lives in the store.

* ``shared`` — the step points at another step's identical stored data: the asset reused the
  default run's step (a :class:`ReusedStep` payload, nothing computed), or the store found an
  identical complete step (content addressing). ``matchbox/reused_from`` names that step's run
  (``run 12 (run-0003)``: its id and label).

Reading: a model input (``AssetIn`` metadata ``matchbox/query``) comes back as a polars frame of
``id`` + fields (:func:`matchbox_dagster.sources.inputs.query_frame`); a model step as
:class:`ModelResults`; other steps as the store's Arrow table. An input whose ``AssetIn``
metadata holds ``matchbox/lazy`` (every matchbox model and resolver input) comes back as a
:class:`LazyInput` instead: nothing is read until the asset calls :meth:`LazyInput.load`, so
an asset that reuses the default run's step reads none of its inputs.
"""

import json
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    ModelConfig,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    Step,
    StepType,
    WriteOutcome,
)
from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxRunNotWriteable
from matchbox_dagster.common.reuse import ReusedStep
from matchbox_dagster.dagster.partitions import dagster_run_id, step_path
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.evaluation.entity_tables import entity_tables
from matchbox_dagster.sources.inputs import query_frame

META_COLLECTION = "matchbox/collection"
META_STEP = "matchbox/step"
META_STEP_TYPE = "matchbox/step_type"
META_CONFIG = "matchbox/config"
META_QUERY = "matchbox/query"
META_FIELDS = "matchbox/fields"
META_LAZY = "matchbox/lazy"
META_REUSED_FROM = "matchbox/reused_from"
META_FINGERPRINT = "matchbox/fingerprint"

_PAYLOADS: dict[StepType, type] = {
    StepType.SOURCE: SourceHashes,
    StepType.MODEL: ModelResults,
    StepType.RESOLVER: ResolverClusters,
}
_CONFIGS: dict[StepType, type] = {
    StepType.SOURCE: SourceConfig,
    StepType.MODEL: ModelConfig,
    StepType.RESOLVER: ResolverConfig,
}


def step_metadata(
    collection: str, name: str, step_type: StepType, config: Any, description: str | None = None
) -> dict[str, Any]:
    """The asset metadata that tells the IO manager which step an asset is."""
    return {
        META_COLLECTION: collection,
        META_STEP: name,
        META_STEP_TYPE: step_type.value,
        META_CONFIG: json.dumps(config.model_dump(mode="json"), sort_keys=True),
        **({"matchbox/description": description} if description else {}),
    }


def step_of(metadata: dict[str, Any], what: str) -> tuple[str, str, StepType, Any]:
    """Collection, step name, type and config from asset metadata (a clear error if absent)."""
    missing = [
        k for k in (META_COLLECTION, META_STEP, META_STEP_TYPE, META_CONFIG) if k not in metadata
    ]
    if missing:
        raise MatchboxInvalidData(
            f"{what} has no matchbox step metadata {missing}; build matchbox assets with the "
            "build_* factories (matchbox_dagster.dagster.assets) so the IO manager knows their "
            "step."
        )
    step_type = StepType(_plain(metadata[META_STEP_TYPE]))
    config = _CONFIGS[step_type].model_validate_json(_plain(metadata[META_CONFIG]))
    return _plain(metadata[META_COLLECTION]), _plain(metadata[META_STEP]), step_type, config


def _plain(value: Any) -> Any:
    """Metadata values may come back wrapped (``TextMetadataValue``); unwrap them."""
    return getattr(value, "value", value)


class LazyInput:
    """An asset input not read yet: :meth:`load` reads it (each call reads it anew).

    The handle holds only what to read, so an asset that does not need its inputs (it reuses
    the default run's step) reads nothing; one that does holds each input only from its
    ``load()`` on, as it held the loaded value before. ``loaded`` says whether it was read.
    """

    def __init__(self, what: str, read: Callable[[], Any]) -> None:
        self.what = what
        self._read = read
        self.loaded = False
        self.seconds = 0.0

    def load(self) -> Any:
        """The input's value, read from the store (and the source locations) now."""
        started = time.perf_counter()
        value = self._read()
        self.loaded = True
        self.seconds += time.perf_counter() - started
        return value

    def __repr__(self) -> str:
        return f"LazyInput({self.what}, loaded={self.loaded})"


def reused_from_text(store: Any, collection: str, run_id: int) -> str:
    """``run 12 (run-0003)``: a run's id and, when it has one, its label."""
    label = store.run_labels(collection).get(run_id)
    return f"run {run_id}" + (f" ({label})" if label else "")


class MatchboxIOManager(dg.ConfigurableIOManager):
    """Stores each matchbox asset as a step of its partition's run in the matchbox store."""

    matchbox: dg.ResourceDependency[MatchboxResource]

    # --- writing ----------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Write the payload as the asset's step (one ``write_step`` call) and report it."""
        collection, name, step_type, config = step_of(
            dict(context.definition_metadata or {}), f"Asset {context.asset_key.to_user_string()}"
        )
        expected = _PAYLOADS[step_type]
        if not isinstance(obj, expected | ReusedStep):
            raise MatchboxInvalidData(
                f"Asset {context.asset_key.to_user_string()} is a {step_type} step and must return "
                f"{expected.__name__}; it returned {type(obj).__name__}."
            )
        if not context.has_partition_key:
            raise MatchboxInvalidData(
                f"Asset {context.asset_key.to_user_string()} was materialised without a partition; "
                "matchbox assets are partitioned by run: pick or add a run partition."
            )
        store = self.matchbox.get_store()
        path = step_path(
            store,
            collection,
            context.partition_key,
            name,
            create=True,
            dagster_run=dagster_run_id(context),
        )
        description = _plain((context.definition_metadata or {}).get("matchbox/description"))
        reused = obj if isinstance(obj, ReusedStep) else None
        fingerprint = _reused_fingerprint(context, store, reused) if reused else obj.fingerprint
        step = Step(
            step_type=step_type, fingerprint=fingerprint, config=config, description=description
        )
        started = time.perf_counter()
        try:
            action = store.write_step(path, step, obj).value
        except MatchboxRunNotWriteable as exc:
            # The store decided; say what to do in Dagster terms (a run is a partition here).
            raise MatchboxRunNotWriteable(
                path.collection,
                path.run,
                f"replace step {path.name!r} with different data or config (the run is "
                "immutable, e.g. promoted); start a new run partition instead",
            ) from exc
        metadata = {
            "matchbox/step_path": str(path),
            "matchbox/run": dg.MetadataValue.text(str(path.run)),  # an id: shown, not plotted
            META_FINGERPRINT: fingerprint.hex(),
            "matchbox/action": action,
            "matchbox/store_seconds": round(time.perf_counter() - started, 3),
        }
        origin_metadata = _origin_metadata(context, store, reused.from_path) if reused else None
        if reused:
            metadata.update(_copied_statistics(origin_metadata) or _stored_statistics(store, path))
        else:
            metadata.update(_statistics(obj, context))
        if step_type == StepType.SOURCE and action in (WriteOutcome.STORED, WriteOutcome.REPLACED):
            # match's key lookups, after the write's commit (shared data has them already).
            started = time.perf_counter()
            try:
                store.index_for_match(path)
                metadata["matchbox/match_index_seconds"] = round(time.perf_counter() - started, 3)
            except Exception as exc:  # the data is stored; match is correct, only slower
                context.log.warning("Could not build %s's lookup indexes for match: %s", path, exc)
        origin = None
        if action == WriteOutcome.SHARED:
            origin = reused.from_path if reused else store.step_data_origin(path)
            if origin is not None:
                metadata[META_REUSED_FROM] = reused_from_text(store, collection, origin.run)
                metadata["matchbox/reused_from_step"] = str(origin)
        if step_type == StepType.RESOLVER:
            try:  # what merged, in the Dagster UI (issue 16); metadata must never fail a run
                if origin is not None and origin_metadata is None:
                    origin_metadata = _origin_metadata(context, store, origin)
                shared = (origin_metadata or {}).get("entities")
                metadata["entities"] = shared or dg.MetadataValue.md(entity_tables(store, path))
            except Exception as exc:
                context.log.warning("Could not tabulate entities for the UI: %s", exc)
        context.add_output_metadata(metadata)
        rows = _plain(metadata.get("dagster/row_count", "?"))
        if origin is not None:  # one line says it all (nothing was computed or copied)
            context.log.info(
                "Shared %s step %s with %s: config and inputs unchanged (%s rows)",
                step_type,
                path,
                metadata[META_REUSED_FROM],
                rows,
            )
        else:
            context.log.info("%s %s step %s (%s rows)", action.capitalize(), step_type, path, rows)

    # --- reading ----------------------------------------------------------------------------

    def load_input(self, context: dg.InputContext) -> Any:
        """A model input's records, a model's results, or a step's stored table."""
        upstream = context.upstream_output
        if upstream is None:
            raise MatchboxInvalidData("matchbox inputs must come from matchbox assets.")
        collection, name, step_type, _ = step_of(
            dict(upstream.definition_metadata or {}),
            f"Upstream asset {context.asset_key.to_user_string()}",
        )
        store = self.matchbox.get_store()
        path = step_path(
            store,
            collection,
            context.asset_partition_key,
            name,
            create=False,
            dagster_run=dagster_run_id(context),
        )
        metadata = context.definition_metadata or {}
        read = self._reader(store, path, step_type, metadata)
        if metadata.get(META_LAZY) is not None:
            return LazyInput(str(path), read)
        return read()

    def _reader(
        self, store: Any, path: Any, step_type: StepType, metadata: dict[str, Any]
    ) -> Callable[[], Any]:
        """What reading the input means (called now, or later through a :class:`LazyInput`)."""
        query = metadata.get(META_QUERY)
        if query is not None:
            config = QueryConfig.model_validate_json(_plain(query))
            fields = metadata.get(META_FIELDS)
            return lambda: query_frame(
                store,
                path.collection,
                path.run,
                config,
                batch_size=self.matchbox.batch_rows,
                fields=None if fields is None else json.loads(_plain(fields)),
            )
        if step_type == StepType.MODEL:
            return lambda: ModelResults(store.get_model_data(path))
        if step_type == StepType.SOURCE:
            return lambda: store.get_source_data(path)
        return lambda: store.get_resolver_data(path)


def _reused_fingerprint(context: dg.OutputContext, store: Any, reused: ReusedStep) -> bytes:
    """The fingerprint of the data a reused step shares: from the output, else the store."""
    known = _plain((context.output_metadata or {}).get(META_FINGERPRINT))
    return bytes.fromhex(known) if known else store.get_step(reused.from_path).fingerprint


def _origin_metadata(context: dg.OutputContext, store: Any, origin: Any) -> dict[str, Any] | None:
    """The metadata of the materialisation of ``origin``, the step whose data this one shares.

    Same data, same sources (sharing requires their fingerprints equal): the same counts and
    ``entities`` table, read from the Dagster instance instead of computed again (seconds at
    millions of keys). None when the origin was not materialised in this instance.
    """
    try:  # metadata must never fail a run
        label = store.run_labels(origin.collection).get(origin.run)
        if label is None:
            return None
        records = context.step_context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[label]), limit=1
        ).records
    except Exception as exc:
        context.log.warning("Could not read the metadata of %s: %s", origin, exc)
        return None
    if not records or records[0].asset_materialization is None:
        return None
    return dict(records[0].asset_materialization.metadata)


_STATISTICS = (
    "dagster/row_count",
    "distinct_hashes",
    "clusters",
    "largest_cluster_children",
    "min_score",
    "max_score",
    "score_histogram",
)


def _copied_statistics(origin: dict[str, Any] | None) -> dict[str, Any]:
    """The counts :func:`_statistics` gave the origin step (empty when it has none)."""
    if not origin or "dagster/row_count" not in origin:
        return {}
    return {k: origin[k] for k in _STATISTICS if k in origin}


def _stored_statistics(store: Any, path: Any) -> dict[str, Any]:
    """Counts of a step whose data the store already holds (a reused step: nothing computed)."""
    try:
        stats = store.step_statistics(path)
    except Exception:  # metadata must never fail a run
        return {}
    shown = {k: stats[k] for k in ("clusters", "min_score", "max_score") if k in stats}
    return {"dagster/row_count": int(stats["rows"]), **shown}


def _statistics(obj: Any, context: dg.OutputContext) -> dict[str, Any]:
    """Counts and distributions for the UI; a failure here only logs a warning."""
    try:
        if isinstance(obj, SourceHashes):
            return {"dagster/row_count": obj.num_keys, "distinct_hashes": obj.num_rows}
        if isinstance(obj, ModelResults):
            scores = obj.table.column("score").to_numpy()
            counts, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
            table = "\n".join(
                f"| {lo:.1f}–{hi:.1f} | {n:,} |"
                for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
            )
            return {
                "dagster/row_count": obj.num_rows,
                "score_histogram": dg.MetadataValue.md("| score | pairs |\n|---|---|\n" + table),
                "min_score": float(scores.min()) if len(scores) else None,
                "max_score": float(scores.max()) if len(scores) else None,
            }
        if isinstance(obj, ResolverClusters):
            sizes = pc.value_counts(obj.table.column("parent_id")).field("counts")
            return {
                "dagster/row_count": obj.num_rows,
                "clusters": obj.num_clusters,
                "largest_cluster_children": int(pc.max(sizes).as_py() or 0),
            }
    except Exception as exc:  # metadata must never fail a run
        context.log.warning("Could not compute statistics for the UI: %s", exc)
    return {}
