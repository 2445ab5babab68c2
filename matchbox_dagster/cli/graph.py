"""``demo``, ``check`` and ``query``: run a collection's graph, gate on its checks, read it."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import dagster as dg
import polars as pl

from matchbox_dagster.cli.base import EXIT_FAILED, Graph, instance, run_id_of
from matchbox_dagster.cli.project import preflight_defs
from matchbox_dagster.common.dtos import StepPath, StepType
from matchbox_dagster.dagster.lifecycle import error_cause
from matchbox_dagster.dagster.partitions import add_run_partition, next_run_label
from matchbox_dagster.dagster.resources import PREFLIGHT_TAG


def _materialise(
    graph: Graph, inst: dg.DagsterInstance, label: str, verbose: bool, preflighted: bool
) -> tuple[str, Any, Any, float]:
    label, run = add_run_partition(inst, graph.store, graph.collection, label)
    print(f"run {run.run_id} of {graph.collection!r} as partition {label!r}")
    started = time.perf_counter()
    # Dagster's console log prints each failure's traceback: only with --verbose.
    level = "WARNING" if verbose else "CRITICAL"
    quiet = {"loggers": {"console": {"config": {"log_level": level}}}}
    # The preflight just passed: the run's steps need not run it again (its tag says so).
    tags = {PREFLIGHT_TAG: "passed"} if preflighted else None
    result = graph.job.execute_in_process(
        instance=inst, partition_key=label, raise_on_error=False, run_config=quiet, tags=tags
    )
    return label, run, result, time.perf_counter() - started


def _report(result: Any) -> list[str]:
    """Print materialisations and check results; return the failures, each with its cause."""
    failed = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            meta = mat.metadata
            rows = meta.get("dagster/row_count")
            action = meta.get("matchbox/action")
            print(
                f"  {mat.asset_key.to_user_string():28} {getattr(rows, 'value', rows)!s:>8} rows"
                f"  {getattr(action, 'value', action)}"
            )
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            mark = "pass" if data.passed else "FAIL"
            print(
                f"  check {data.asset_key.to_user_string()}:{data.check_name:17} {mark}  "
                f"{data.description or ''}"
            )
            if not data.passed:
                failed.append(
                    f"{data.asset_key.to_user_string()}:{data.check_name} "
                    f"({data.description or 'failed'})"
                )
        elif event.event_type_value == "STEP_FAILURE":
            cause = error_cause(event.event_specific_data.error) or "failed"
            step = (event.step_key or "?").split("__")[-1]
            print(f"  step {step} failed: {cause}")
            failed.append(f"step {step} failed: {cause}")
    return failed


def _promote_with_sensor(graph: Graph, inst: dg.DagsterInstance) -> None:
    for sensor in graph.sensors:
        with dg.build_sensor_context(
            instance=inst, resources={"matchbox": graph.resource}
        ) as context:
            outcome = sensor(context)
        message = getattr(outcome, "skip_message", None) or str(outcome)
        print(f"sensor {sensor.name}: {message}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Add a run, materialise, let the sensor promote, print a summary."""
    graph = Graph.load(args)
    preflighted = preflight_defs(graph.defs, graph.collection)  # before the run is created
    inst = instance()
    label = args.label or next_run_label(graph.store, graph.collection)
    _, run, result, elapsed = _materialise(graph, inst, label, args.verbose, preflighted)
    failed = _report(result)
    _promote_with_sensor(graph, inst)
    collection = graph.store.get_collection(graph.collection)
    print(
        f"materialised in {elapsed:.1f}s; default run of {graph.collection!r}: "
        f"{collection.default_run} (this run: {run.run_id}); store {graph.store!r}"
    )
    if failed or not result.success:
        print(f"FAILED ({elapsed:.1f}s): {'; '.join(failed) or 'run failed'}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Materialise a run with its checks; exit 1 when a blocking check or a step fails."""
    graph = Graph.load(args)
    preflighted = preflight_defs(graph.defs, graph.collection)  # before the run is created
    inst = instance()
    label = args.label or next_run_label(graph.store, graph.collection, "ci")
    label, run, result, elapsed = _materialise(graph, inst, label, args.verbose, preflighted)
    failed = _report(result)
    if failed or not result.success:
        print(f"FAILED ({elapsed:.1f}s): {'; '.join(failed) or 'run failed'}", file=sys.stderr)
        return EXIT_FAILED
    print(f"all blocking checks passed for run {run.run_id} ({label}) in {elapsed:.1f}s")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Entities of a source's keys through a resolver of a run (default run by default)."""
    graph = Graph.load(args)
    store = graph.store
    run_id = run_id_of(store, graph.collection, args)
    run = store.get_run(graph.collection, run_id)
    resolver = args.resolver
    if resolver is None:
        resolvers = [n for n, s in run.steps.items() if s.step_type == StepType.RESOLVER]
        resolver = resolvers[-1] if resolvers else None
    path = StepPath(collection=graph.collection, run=run_id, name=args.source)
    rpath = StepPath(collection=graph.collection, run=run_id, name=resolver) if resolver else None
    table = store.query(path, rpath, limit=args.limit)
    frame = pl.DataFrame(pl.from_arrow(table))
    if args.output:
        frame.write_parquet(args.output)
        print(f"wrote {frame.height:,} rows to {args.output}")
    else:
        with pl.Config(tbl_rows=20):
            print(frame)
    return 0
