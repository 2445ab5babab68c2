"""``matchbox-dagster``: run, gate, inspect and promote runs from a shell or CI.

Commands (each accepts ``--definitions FILE`` naming a Python file with a ``defs`` attribute;
by default the FEBRL4 demo graph):

``demo``      add a run, materialise the graph with its checks, evaluate the promotion sensor and
              print a summary (embedded PostgreSQL unless ``MATCHBOX_POSTGRES_URI`` is set)
``check``     materialise a run's graph and checks; exit 1 if any blocking check fails (CI gate)
``runs``      list a collection's runs: label, id, mutable, default
``promote``   make a run immutable and the default (also rolls back to an older run)
``query``     print or save the entities of a source's keys (default run unless told)
``validate``  the preflight alone: each source's schema against the collection, nothing written
``init DIR``  a new project (pyproject ``[tool.dg]``, package, ``defs.yaml``, ``definitions.py``)

Dagster's instance is ``$DAGSTER_HOME`` when set, else ``.matchbox/dagster`` (persistent, so
``DAGSTER_HOME=.matchbox/dagster dagster dev -w workspace.yaml`` shows what the CLI ran).
"""

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from matchbox_dagster.common.dtos import StepPath, StepType
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.dagster.partitions import add_run_partition, new_run_label
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import promote_run, promotion_sensor_name
from matchbox_dagster.project.commands import cmd_init, preflight_defs, validate_loaded
from matchbox_dagster.store.base import MatchboxDBAdapter


def _load_defs(path: str | None) -> dg.Definitions:
    if path is None:
        from matchbox_dagster.dagster.collection import build_collection_defs
        from matchbox_dagster.examples.febrl import febrl4_spec

        return build_collection_defs(febrl4_spec())
    root = next((p for p in Path(path).resolve().parents if (p / "pyproject.toml").exists()), None)
    root = root or Path(path).resolve().parent  # its project's folder, so its package imports
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("matchbox_user_definitions", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"Cannot load definitions from {path!r}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs = getattr(module, "defs", None)
    if not isinstance(defs, dg.Definitions):
        raise SystemExit(f"{path!r} has no `defs = Definitions(...)` attribute.")
    return defs


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(".matchbox/dagster").resolve()
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


class _Graph:
    """The parts of a collection's definitions the CLI needs."""

    def __init__(self, defs: dg.Definitions, collection: str | None) -> None:
        self.defs = defs
        repo = defs.get_repository_def()
        jobs = [j for j in repo.get_all_jobs() if j.name.endswith("_graph")]
        collections = {}
        for job in jobs:
            for key in job.asset_layer.executable_asset_keys:
                meta = repo.asset_graph.get(key).metadata
                if "matchbox/collection" in meta:
                    collections[str(meta["matchbox/collection"])] = job
        if not collections:
            raise SystemExit("The definitions hold no matchbox collection graph job.")
        if collection is None:
            if len(collections) > 1:
                raise SystemExit(f"Several collections {sorted(collections)}: pass --collection.")
            collection = next(iter(collections))
        if collection not in collections:
            raise SystemExit(f"No collection {collection!r}; found {sorted(collections)}.")
        self.collection = collection
        self.job = collections[collection]
        self.resource: MatchboxResource = defs.resources.get("matchbox") or MatchboxResource()
        self.sensors = [s for s in repo.sensor_defs if s.name == promotion_sensor_name(collection)]

    @property
    def store(self) -> MatchboxDBAdapter:
        return self.resource.get_store()


def _materialise(graph: _Graph, instance: dg.DagsterInstance, label: str | None) -> Any:
    label, run = add_run_partition(
        instance, graph.store, graph.collection, label or new_run_label()
    )
    print(f"run {run.run_id} of {graph.collection!r} as partition {label!r}")
    started = time.perf_counter()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = graph.job.execute_in_process(
        instance=instance, partition_key=label, raise_on_error=False, run_config=quiet
    )
    elapsed = time.perf_counter() - started
    return label, run, result, elapsed


def _report(result: Any) -> list[str]:
    """Print materialisations and check results; return the failed blocking checks."""
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
                failed.append(f"{data.asset_key.to_user_string()}:{data.check_name}")
        elif event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            print(f"  step {event.step_key} failed: {error.message.strip() if error else ''}")
            failed.append(f"step {event.step_key}")
    return failed


def _promote_with_sensor(graph: _Graph, instance: dg.DagsterInstance) -> None:
    for sensor in graph.sensors:
        with dg.build_sensor_context(
            instance=instance, resources={"matchbox": graph.resource}
        ) as context:
            outcome = sensor(context)
        message = getattr(outcome, "skip_message", None) or str(outcome)
        print(f"sensor {sensor.name}: {message}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Add a run, materialise, let the sensor promote, print a summary."""
    graph = _Graph(_load_defs(args.definitions), args.collection)
    preflight_defs(graph.defs, graph.collection)  # before the run is created
    instance = _instance()
    _, run, result, elapsed = _materialise(graph, instance, args.label)
    failed = _report(result)
    _promote_with_sensor(graph, instance)
    collection = graph.store.get_collection(graph.collection)
    print(
        f"materialised in {elapsed:.1f}s; default run of {graph.collection!r}: "
        f"{collection.default_run} (this run: {run.run_id}); store {graph.store!r}"
    )
    return 1 if failed or not result.success else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Materialise a run with its checks; non-zero exit when a blocking check fails."""
    graph = _Graph(_load_defs(args.definitions), args.collection)
    preflight_defs(graph.defs, graph.collection)  # before the run is created
    instance = _instance()
    label, run, result, elapsed = _materialise(graph, instance, args.label or new_run_label("ci"))
    failed = _report(result)
    if failed or not result.success:
        print(f"FAILED ({elapsed:.1f}s): {', '.join(failed) or 'run failed'}", file=sys.stderr)
        return 1
    print(f"all blocking checks passed for run {run.run_id} ({label}) in {elapsed:.1f}s")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs with their labels and flags."""
    graph = _Graph(_load_defs(args.definitions), args.collection)
    store = graph.store
    if graph.collection not in store.list_collections():
        print(f"collection {graph.collection!r} has no runs yet")
        return 0
    labels = store.run_labels(graph.collection)
    collection = store.get_collection(graph.collection)
    print(f"{'run':>5}  {'label':32} {'mutable':8} default")
    for run_id in collection.runs:
        run = store.get_run(graph.collection, run_id)
        default = "yes" if run.is_default else ""
        print(f"{run_id:>5}  {labels.get(run_id, ''):32} {run.is_mutable!s:8} {default}")
    return 0


def _run_id(store: MatchboxDBAdapter, collection: str, args: argparse.Namespace) -> int:
    if args.run is not None:
        return int(args.run)
    if args.label is not None:
        return store.run_for_label(collection, args.label, create=False).run_id
    default = store.get_collection(collection).default_run
    if default is None:
        raise SystemExit(f"Collection {collection!r} has no default run; pass --run or --label.")
    return default


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote (or roll back to) a run."""
    graph = _Graph(_load_defs(args.definitions), args.collection)
    if args.run is None and args.label is None:
        raise SystemExit("promote needs --run or --label.")
    run_id = _run_id(graph.store, graph.collection, args)
    run = promote_run(graph.store, graph.collection, run_id)
    print(f"run {run.run_id} of {graph.collection!r} is now the default (immutable)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Entities of a source's keys through a resolver of a run (default run by default)."""
    graph = _Graph(_load_defs(args.definitions), args.collection)
    store = graph.store
    run_id = _run_id(store, graph.collection, args)
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


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="matchbox-dagster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--definitions", help="Python file with `defs` (default: FEBRL4 demo)")
        p.add_argument("--collection", help="collection (when the definitions hold several)")
        return p

    demo = add("demo", "run the graph once, promote if checks pass, print a summary")
    demo.add_argument("--label", help="partition key of the new run (default run-<time>)")
    demo.set_defaults(func=cmd_demo)
    check = add("check", "materialise a run and its checks; exit 1 if a blocking check fails")
    check.add_argument("--label", help="partition key of the run (default ci-<time>)")
    check.set_defaults(func=cmd_check)
    add("runs", "list runs").set_defaults(func=cmd_runs)
    promote = add("promote", "make a run immutable and default (rollback too)")
    promote.add_argument("--run", type=int)
    promote.add_argument("--label")
    promote.set_defaults(func=cmd_promote)
    query = add("query", "entities of a source's keys")
    query.add_argument("--source", required=True)
    query.add_argument("--resolver", help="default: the run's last resolver")
    query.add_argument("--run", type=int, help="default: the collection's default run")
    query.add_argument("--label")
    query.add_argument("--limit", type=int)
    query.add_argument("--output", help="write Parquet here instead of printing")
    query.set_defaults(func=cmd_query)
    add("validate", "preflight only: check sources' schemas against the collection").set_defaults(
        func=lambda a: validate_loaded(*_loaded(a))
    )
    init = sub.add_parser("init", help="create a new project", description="create a new project")
    init.add_argument("directory", help="new or empty folder")
    init.set_defaults(func=cmd_init)
    return parser


def _loaded(args: argparse.Namespace) -> tuple[dg.Definitions, str]:
    graph = _Graph(_load_defs(args.definitions), args.collection)
    return graph.defs, graph.collection


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``matchbox-dagster``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MatchboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
