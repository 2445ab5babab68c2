"""The whole Dagster graph on synthetic people: time per asset, peak RSS, overhead vs by hand.

Two sources (the synthetic records split in two Parquet files) → a deduper each → a linker →
a resolver with its checks (quality, precision/recall against the generator's truth, churn) →
the promotion sensor, materialised with ``execute_in_process`` on a temporary Dagster instance
and a throwaway store schema. Then the same work by hand, without Dagster, in the same process
and on the same store: the same store calls (``create_step``/``insert_*``/``query``) and
methodologies, so the ratio isolates what Dagster and the IO manager add. By hand runs before and
after Dagster and the faster of each step is kept, so warm caches never flatter Dagster. Each size
runs in its own subprocess so peak RSS (``ru_maxrss``) belongs to that size alone.

    .venv/bin/python bench/pipeline.py                 # 100k and 1M source rows
    .venv/bin/python bench/pipeline.py --sizes 10000000
    .venv/bin/python bench/pipeline.py --model splink  # a Splink linker instead of rules

Uses ``MATCHBOX_POSTGRES_URI`` or ``postgresql://postgres@127.0.0.1:5432/test``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import psutil
import psycopg

URI = os.environ.get("MATCHBOX_POSTGRES_URI") or "postgresql://postgres@127.0.0.1:5432/test"
MULTI = os.environ.get("MB_BENCH_MULTIPROCESS") in ("1", "only")
ONLY_MULTI = os.environ.get("MB_BENCH_MULTIPROCESS") == "only"
FIELDS = ["given_name", "surname", "date_of_birth", "postcode", "town"]
RULES = {
    "rules": [
        {"fields": ["given_name", "surname", "date_of_birth"], "score": 1.0},
        {"fields": ["surname", "date_of_birth", "postcode"], "score": 0.9},
        {"fields": ["given_name", "date_of_birth", "postcode"], "score": 0.85},
    ]
}


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples this process's current RSS (``/proc/self/statm``) every ``interval`` seconds; with
    ``children``, the largest RSS among its descendant processes instead (step processes of the
    multiprocess executor run one at a time, so that is the running step's)."""

    def __init__(self, interval: float = 0.2, *, children: bool = False) -> None:
        self.interval = interval
        self.children = children
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            if self.children:
                sizes = []
                for child in me.children(recursive=True):
                    try:
                        sizes.append(child.memory_info().rss / 2**20)
                    except psutil.Error:  # ended between listing and reading
                        pass
                mb = max(sizes, default=0.0)
            else:
                with open("/proc/self/statm") as statm:
                    mb = int(statm.read().split()[1]) * self._page_mb
            self.samples.append((time.time(), mb))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> float:
        """Highest sampled RSS (MB) in the wall-clock window [start, end]."""
        values = [mb for t, mb in self.samples if start <= t <= end]
        return max(values) if values else float("nan")


def make_data(rows: int, folder: Path) -> tuple[Path, Path]:
    """Synthetic people split into two Parquet files; keys carry the true entity."""
    from matchbox_dagster.methods.synthetic import generate_people

    records, truth = generate_people(int(rows / 1.5), duplicates_rate=0.5, seed=7)
    records = records.join(truth, on="key").select(
        (pl.col("entity").cast(pl.String) + "-" + pl.col("key")).alias("key"), *FIELDS
    )
    half = records.with_columns(side=pl.int_range(pl.len()) % 2)
    paths = []
    for side in (0, 1):
        path = folder / f"people_{side}.parquet"
        half.filter(pl.col("side") == side).drop("side").write_parquet(path, row_group_size=100_000)
        paths.append(path)
    return paths[0], paths[1]


def spec(collection: str, a: Path, b: Path, model: str) -> Any:
    """The benchmark collection."""
    from matchbox_dagster.specs import (
        CollectionSpec,
        InputSpec,
        ModelSpec,
        ResolverChecksSpec,
        ResolverSpec,
        SourceSpec,
    )

    def source(name: str, path: Path) -> SourceSpec:
        return SourceSpec(
            name=name,
            location={"type": "parquet", "name": str(path)},
            key_field="key",
            index_fields=FIELDS,
        )

    truth = r"regexp_replace(key, '-.*$', '')"
    if model == "splink":
        from accuracy import synthetic_splink  # bench/accuracy.py: the tuned synthetic settings

        splink_settings, training = synthetic_splink()
        link = ModelSpec(
            name="link_ab",
            left=InputSpec(step="a"),
            right=InputSpec(step="b"),
            model_class="Splink",
            settings={"splink_settings": splink_settings, "training": training, "threshold": 0.5},
        )
        link_threshold = 0.9
    else:
        link = ModelSpec(
            name="link_ab",
            left=InputSpec(step="a"),
            right=InputSpec(step="b"),
            model_class="DeterministicRules",
            settings=RULES,
        )
        link_threshold = 0.85
    return CollectionSpec(
        collection=collection,
        sources=[source("a", a), source("b", b)],
        models=[
            ModelSpec(name="dedupe_a", left="a", model_class="DeterministicRules", settings=RULES),
            ModelSpec(name="dedupe_b", left="b", model_class="DeterministicRules", settings=RULES),
            link,
        ],
        resolvers=[
            ResolverSpec(
                name="people",
                thresholds={"dedupe_a": 0.85, "dedupe_b": 0.85, "link_ab": link_threshold},
                checks=ResolverChecksSpec(
                    max_cluster_size=50,
                    min_precision=0.5,
                    min_recall=0.5,
                    truth={"a": truth, "b": truth},
                    max_churn=1.0,
                ),
            )
        ],
    )


def step_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, float]]:
    """Wall-clock ``start``, ``stored`` (output handled) and ``end`` of each step of a run."""
    windows: dict[str, dict[str, float]] = {}
    marks = {"STEP_START": "start", "HANDLED_OUTPUT": "stored", "STEP_SUCCESS": "end"}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None or event.event_type_value not in marks:
            continue
        name = event.step_key.split("__")[-1]
        windows.setdefault(name, {})[marks[event.event_type_value]] = entry.timestamp
    return {name: w for name, w in windows.items() if "end" in w}


def run_dagster(collection_spec: Any, schema: str) -> dict[str, Any]:
    """Materialise the graph and evaluate the sensor; seconds per asset step."""
    from matchbox_dagster.dagster.collection import build_collection_defs
    from matchbox_dagster.dagster.partitions import add_run_partition
    from matchbox_dagster.dagster.resources import MatchboxResource

    res = MatchboxResource(postgres_uri=URI, postgres_schema=schema)
    defs = build_collection_defs(collection_spec, resource=res)
    job = defs.resolve_job_def(f"{collection_spec.collection}_graph")
    with dg.instance_for_test() as instance:
        label, _ = add_run_partition(instance, res.get_store(), collection_spec.collection, "bench")
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        started = time.perf_counter()
        with RssSampler() as sampler:
            result = job.execute_in_process(
                instance=instance, partition_key=label, run_config=quiet
            )
        total = time.perf_counter() - started
        windows = step_windows(instance, result.run_id)
        steps = {name: w["end"] - w["start"] for name, w in windows.items()}
        stored = {name: w["stored"] - w["start"] for name, w in windows.items() if "stored" in w}
        step_rss = {name: sampler.peak_between(w["start"], w["end"]) for name, w in windows.items()}
        checks = {
            e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }
        sensor = defs.resolve_sensor_def(f"{collection_spec.collection}_promotion")
        started = time.perf_counter()
        with dg.build_sensor_context(instance=instance, resources={"matchbox": res}) as ctx:
            outcome = sensor(ctx)
        promote = time.perf_counter() - started
    return {
        "total": total,
        "steps": steps,
        "stored": stored,
        "step_rss_mb": step_rss,
        "promotion": promote,
        "sensor": getattr(outcome, "skip_message", str(outcome)),
        "checks_passed": all(checks.values()),
    }


def bench_job() -> dg.JobDefinition:
    """The graph job from ``MB_BENCH_SPEC``/``MB_BENCH_SCHEMA`` (rebuilt in each step process)."""
    from matchbox_dagster.dagster.collection import build_collection_defs
    from matchbox_dagster.dagster.resources import MatchboxResource
    from matchbox_dagster.specs import CollectionSpec

    collection_spec = CollectionSpec.model_validate_json(os.environ["MB_BENCH_SPEC"])
    res = MatchboxResource(postgres_uri=URI, postgres_schema=os.environ["MB_BENCH_SCHEMA"])
    defs = build_collection_defs(collection_spec, resource=res)
    return defs.resolve_job_def(f"{collection_spec.collection}_graph")


def run_dagster_multiprocess(collection_spec: Any, schema: str) -> dict[str, Any]:
    """The graph with the multiprocess executor (one process per step, one at a time), as a
    deployment runs it: seconds per step and the peak RSS of the largest step process."""
    from matchbox_dagster.dagster.partitions import add_run_partition
    from matchbox_dagster.dagster.resources import MatchboxResource

    os.environ["MB_BENCH_SPEC"] = collection_spec.model_dump_json()
    os.environ["MB_BENCH_SCHEMA"] = schema
    res = MatchboxResource(postgres_uri=URI, postgres_schema=schema)
    with dg.instance_for_test() as instance:
        label, _ = add_run_partition(
            instance, res.get_store(), collection_spec.collection, "bench-mp"
        )
        config = {
            "execution": {"config": {"multiprocess": {"max_concurrent": 1}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        }
        started = time.perf_counter()
        with (
            RssSampler(children=True) as sampler,
            dg.execute_job(
                dg.reconstructable(bench_job),
                instance=instance,
                tags={"dagster/partition": label},
                run_config=config,
            ) as result,
        ):
            success = result.success
            run_id = result.run_id
        total = time.perf_counter() - started
        windows = step_windows(instance, run_id)
        steps = {name: w["end"] - w["start"] for name, w in windows.items()}
        step_rss = {name: sampler.peak_between(w["start"], w["end"]) for name, w in windows.items()}
    return {
        "total": total,
        "steps": steps,
        "step_rss_mb": step_rss,
        "success": success,
        "largest_step_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def multiprocess_in_fresh_process(collection_spec: Any, schema: str) -> dict[str, Any]:
    """:func:`run_dagster_multiprocess` from a small fresh parent: step processes start by
    forking it, so a large parent would inflate their RSS figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--multi"],
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "MB_BENCH_SPEC": collection_spec.model_dump_json(),
            "MB_BENCH_SCHEMA": schema,
        },
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_by_hand(collection_spec: Any, schema: str, suffix: str) -> dict[str, Any]:
    """The same store calls and methodologies, without Dagster or the IO manager."""
    from matchbox_dagster.common.dtos import Step, StepPath, StepType
    from matchbox_dagster.common.settings import MatchboxSettings
    from matchbox_dagster.sources.inputs import query_frame
    from matchbox_dagster.sources.locations import index_source
    from matchbox_dagster.specs import plan_collection
    from matchbox_dagster.store.postgres import MatchboxPostgres

    store = MatchboxPostgres(MatchboxSettings(postgres_uri=URI, postgres_schema=schema))
    collection = collection_spec.collection + suffix
    store.create_collection(collection)
    run = store.create_run(collection).run_id
    times: dict[str, float] = {}
    methodology: dict[str, float] = {}
    plan = plan_collection(collection_spec)  # configs and methodologies, as the assets get them

    def path(name: str) -> StepPath:
        return StepPath(collection=collection, run=run, name=name)

    for name, config in plan.sources.items():
        started = time.perf_counter()
        hashes = index_source(config, batch_size=store.settings.batch_size)
        methodology[name] = time.perf_counter() - started
        step = Step(step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=config)
        store.write_step(path(name), step, hashes)
        times[name] = time.perf_counter() - started
    results = {}
    for model in plan.models:
        started = time.perf_counter()
        config, method = model.config, model.methodology
        fields = method.input_fields  # what the asset's IO manager reads too
        left = query_frame(store, collection, run, config.left_query, fields=fields)
        right = (
            query_frame(store, collection, run, config.right_query, fields=fields)
            if config.right_query
            else None
        )
        scored_at = time.perf_counter()
        edges = method.link(left, right) if right is not None else method.dedupe(left)
        methodology[model.spec.name] = time.perf_counter() - scored_at
        step = Step(step_type=StepType.MODEL, fingerprint=edges.fingerprint, config=config)
        store.write_step(path(model.spec.name), step, edges)
        results[model.spec.name] = edges
        times[model.spec.name] = time.perf_counter() - started
    for resolver in plan.resolvers:
        started = time.perf_counter()
        clusters = resolver.resolver.resolve({m: results[m] for m in resolver.models})
        methodology[resolver.spec.name] = time.perf_counter() - started
        step = Step(
            step_type=StepType.RESOLVER, fingerprint=clusters.fingerprint, config=resolver.config
        )
        store.write_step(path(resolver.spec.name), step, clusters)
        times[resolver.spec.name] = time.perf_counter() - started
    store.close()
    return {"steps": times, "methodology": methodology, "total": sum(times.values())}


def one(rows: int, model: str) -> dict[str, Any]:
    """Benchmark one size (in this process)."""
    schema = f"mbbench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mb-pipeline-") as tmp:
        started = time.perf_counter()
        a, b = make_data(rows, Path(tmp))
        generated = time.perf_counter() - started
        collection_spec = spec("bench", a, b, model)
        try:
            if ONLY_MULTI:
                return {
                    "rows": rows,
                    "generate": generated,
                    "multiprocess": multiprocess_in_fresh_process(collection_spec, schema),
                }
            # By hand before and after Dagster, keeping the faster of each step, so caches warmed
            # by one side never flatter the other.
            first = run_by_hand(collection_spec, schema, "_hand1")
            dagster_figures = run_dagster(collection_spec, schema)
            rss_dagster = rss_mb()
            second = run_by_hand(collection_spec, schema, "_hand2")
            multiprocess = multiprocess_in_fresh_process(collection_spec, schema) if MULTI else None
            hand = {
                part: {k: min(first[part][k], second[part][k]) for k in first[part]}
                for part in ("steps", "methodology")
            }
            hand["total"] = sum(hand["steps"].values())
        finally:
            with psycopg.connect(URI, autocommit=True) as conn:
                conn.execute(
                    psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        psycopg.sql.Identifier(schema)
                    )
                )
    return {
        "rows": rows,
        "generate": generated,
        "dagster": dagster_figures,
        "hand": hand,
        "peak_rss_mb": rss_dagster,
        "multiprocess": multiprocess,
    }


def report(figures: list[dict[str, Any]]) -> None:
    """Print the tables."""
    print(
        "\nasset = the whole Dagster step; stored = until the IO manager stored the output (the "
        "rest of the step is its checks); by hand = the same store calls and methodology without "
        "Dagster; method = the methodology alone (extract+hash, score, cluster)"
    )
    print(
        f"{'rows':>10} {'step':10} {'asset s':>8} {'stored s':>9} {'checks s':>9} "
        f"{'by hand s':>10} {'stored/hand':>12} {'method s':>9} {'peak MB':>8}"
    )
    for f in figures:
        if "dagster" not in f:  # --multiprocess-only
            continue
        for name, seconds in f["dagster"]["steps"].items():
            hand = f["hand"]["steps"].get(name) or float("nan")
            method = f["hand"]["methodology"].get(name) or float("nan")
            stored = f["dagster"].get("stored", {}).get(name, float("nan"))
            peak = f["dagster"].get("step_rss_mb", {}).get(name, float("nan"))
            print(
                f"{f['rows']:>10,} {name:10} {seconds:>8.2f} {stored:>9.2f} "
                f"{seconds - stored:>9.2f} {hand:>10.2f} {stored / hand:>12.2f} {method:>9.2f} "
                f"{peak:>8,.0f}"
            )
        d, h = f["dagster"]["total"], f["hand"]["total"]
        print(
            f"{f['rows']:>10,} {'TOTAL':10} {d:>8.2f} {'':>9} {'':>9} {h:>10.2f} {d / h:>12.2f}"
            f"   peak RSS {f['peak_rss_mb']:,.0f} MB; checks passed: "
            f"{f['dagster']['checks_passed']}; sensor: {f['dagster']['sensor']}; "
            f"{d / f['rows'] * 1e6:.1f} µs per source row"
        )
    for f in figures:
        multi = f.get("multiprocess")
        if multi:
            per_step = ", ".join(
                f"{k} {v:.1f} s {multi['step_rss_mb'].get(k, float('nan')):,.0f} MB"
                for k, v in multi["steps"].items()
            )
            print(
                f"{f['rows']:>10,} multiprocess executor (a process per step): total "
                f"{multi['total']:.1f} s ({per_step}); largest step process peak RSS "
                f"{multi['largest_step_rss_mb']:,.0f} MB; success {multi['success']}"
            )
    if len(figures) > 1 and all("dagster" in f for f in figures):
        small, big = figures[-2], figures[-1]
        growth = (big["dagster"]["total"] / big["rows"]) / (
            small["dagster"]["total"] / small["rows"]
        )
        print(f"per-row time at {big['rows']:,} / at {small['rows']:,}: {growth:.2f} (goal ≤ 1.5)")


def main() -> None:
    """Run each size in its own subprocess and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--model", choices=["rules", "splink"], default="rules")
    parser.add_argument(
        "--multiprocess",
        action="store_true",
        help="also run the graph with the multiprocess executor (peak RSS per step process)",
    )
    parser.add_argument(
        "--multiprocess-only",
        action="store_true",
        help="run only the multiprocess executor (no in-process run, nothing by hand)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--multi", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.multi:
        from matchbox_dagster.specs import CollectionSpec

        collection_spec = CollectionSpec.model_validate_json(os.environ["MB_BENCH_SPEC"])
        print(json.dumps(run_dagster_multiprocess(collection_spec, os.environ["MB_BENCH_SCHEMA"])))
        return
    if args.one:
        print(json.dumps(one(args.one, args.model)))
        return
    figures = []
    for rows in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(rows), "--model", args.model],
            check=True,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(Path(__file__).parent),
                "MB_BENCH_MULTIPROCESS": "only"
                if args.multiprocess_only
                else "1"
                if args.multiprocess
                else "0",
            },
        )
        figures.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{rows:,} rows done", file=sys.stderr)
    report(figures)


if __name__ == "__main__":
    main()
