"""One call from a :class:`CollectionSpec` to Dagster ``Definitions``.

>>> defs = build_collection_defs(spec)  # doctest: +SKIP

gives the run-partitioned assets with their checks, the graph job, the promotion sensor (when
the spec has a resolver and ``promote``), the schedule (when ``schedule`` is set) and the
``matchbox`` resource and ``matchbox_io_manager``. Each asset first runs the collection's
preflight (:mod:`matchbox_dagster.specs.preflight`) once per Dagster run, so a run that would
fail on its data fails before anything is written; the spec (and its ``defs.yaml``) is kept in
the definitions' metadata (``project.preflight.spec_metadata``) for ``matchbox-dagster validate``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from matchbox_dagster.dagster.assets import (
    IO_MANAGER_KEY,
    MatchboxTranslator,
    build_collection_assets,
    spec_errors,
)
from matchbox_dagster.dagster.checks import resolver_check_names
from matchbox_dagster.dagster.io_manager import MatchboxIOManager
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.schedules import build_graph_job, build_run_schedule
from matchbox_dagster.dagster.sensors import build_promotion_sensor
from matchbox_dagster.specs import CollectionSpec, final_resolver, validate_spec
from matchbox_dagster.specs.preflight import RunPreflight, spec_metadata


def build_collection_defs(
    spec: CollectionSpec,
    *,
    resource: MatchboxResource | None = None,
    translator: MatchboxTranslator | None = None,
    defs_yaml: Path | None = None,
) -> dg.Definitions:
    """Everything Dagster needs to run a collection (see the module docstring).

    ``defs_yaml`` is the file the spec came from (preflight problems then name its lines).
    """
    with spec_errors():  # every graph problem at once, with defs.yaml file:line
        validate_spec(spec, yaml_path=defs_yaml)
    preflight = RunPreflight(spec, defs_yaml)
    assets = build_collection_assets(spec, translator=translator, preflight=preflight)
    keys = [key for asset in assets for key in asset.keys]
    job = build_graph_job(collection=spec.collection, asset_keys=keys)
    sensors = []
    final = final_resolver(spec)
    if spec.promote and final is not None:
        resolver = next(r for r in spec.resolvers if r.name == final)
        final_asset = next(
            a for a in assets if a.metadata_by_key[a.key].get("matchbox/step") == final
        )
        sensors.append(
            build_promotion_sensor(
                collection=spec.collection,
                resolver_key=final_asset.key,
                check_names=resolver_check_names(resolver.checks),
            )
        )
    schedules = (
        [build_run_schedule(collection=spec.collection, job=job, cron_schedule=spec.schedule)]
        if spec.schedule
        else []
    )
    matchbox = resource or MatchboxResource()
    return dg.Definitions(
        assets=assets,
        jobs=[job],
        sensors=sensors,
        schedules=schedules,
        resources={"matchbox": matchbox, IO_MANAGER_KEY: MatchboxIOManager(matchbox=matchbox)},
        metadata=spec_metadata(spec, defs_yaml),
    )
