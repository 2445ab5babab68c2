"""Incremental runs (issue 17 item 3): a full run, unchanged re-runs, a re-run with 1% changed.

One collection (bench/pipeline.py's: two sources of synthetic people → a deduper each → a linker
→ a resolver with its checks) is materialised again and again through Dagster
(``execute_in_process`` of the graph job, one Dagster instance and one throwaway store schema
for the whole scenario), each run a new run partition, promoted by the collection's promotion
sensor after it (the default run is what the next run may reuse):

1. a full run on an empty store;
2. ``--runs - 1`` re-runs with nothing changed;
3. a re-run after 1% of source ``a``'s records (every 100th row) had one field changed in place.

The scenarios: ``--rows`` source rows with deterministic models, and ``--splink-rows`` with a
Splink linker (full run, one unchanged re-run, the 1% re-run). Each runs in its own
subprocess. What is measured, after each run, outside its timing:

* **seconds**: wall time of ``execute_in_process`` (every step with its checks); per step, step
  start → success from the run's event log;
* **new rows**: exact ``count(*)`` of the store's bulk tables (``source_rows``, ``model_edges``,
  ``resolver_leaves``: partitioned tables, so every partition is counted once, and data shared
  between steps is not counted twice) after the run minus before it;
* **store bytes**: ``pg_total_relation_size`` (table + indexes + TOAST) summed over every table
  of the store schema, catalogue and bulk tables alike;
* **what each step did**: its materialisation's ``matchbox/action`` (``stored``/``replaced``:
  new data; ``shared``/``unchanged``: none), and whether its methodology ran (the asset's
  ``matchbox/computed``, ``model_seconds`` or ``resolve_seconds`` metadata) — compared with
  the descendants of ``a`` in the Dagster asset graph. Sources always re-extract and re-hash;
  one is ``reused`` when it stored nothing new.

The goals print PASS or FAIL; the script exits 0 either way (it reports, it is not a test).

    .venv/bin/python bench/incremental.py                       # 1M rules, 200k Splink
    .venv/bin/python bench/incremental.py --quick               # small smoke sizes
    .venv/bin/python bench/incremental.py --only rules --rows 100000

Uses ``MATCHBOX_POSTGRES_URI`` or ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from pipeline import URI, make_data, spec, step_windows  # bench/pipeline.py
from psycopg import sql

BULK = ("source_rows", "model_edges", "resolver_leaves")
NEW_DATA = {"stored", "replaced"}
NO_NEW_DATA = {"shared", "unchanged"}
METHOD_SECONDS = ("model_seconds", "resolve_seconds")
CHANGED_SOURCE = "a"
CHANGED_FIELD = "given_name"


# --- the store, measured from outside ---------------------------------------------------------


def bulk_rows(schema: str) -> dict[str, int]:
    """Exact row count of each bulk table (each partition once)."""
    with psycopg.connect(URI) as conn:
        return {
            table: int(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                ).fetchone()[0]
            )
            for table in BULK
        }


def store_bytes(schema: str) -> int:
    """Bytes of every table of the schema with its indexes and TOAST."""
    with psycopg.connect(URI) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
            (schema,),
        ).fetchone()
    return int(row[0])


def drop_schema(schema: str) -> None:
    """Drop the throwaway store schema."""
    with psycopg.connect(URI, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --- the data ---------------------------------------------------------------------------------


def change_one_percent(path: Path) -> int:
    """Change ``CHANGED_FIELD`` of every 100th record of a source file in place (keys kept).

    Returns how many records now differ from before.
    """
    before = pl.read_parquet(path)
    picked = pl.int_range(pl.len()) % 100 == 0
    after = before.with_columns(
        pl.when(picked)
        .then(pl.col(CHANGED_FIELD).fill_null("") + "x")
        .otherwise(pl.col(CHANGED_FIELD))
        .alias(CHANGED_FIELD)
    )
    after.write_parquet(path, row_group_size=100_000)
    differs = before.select(pl.col(CHANGED_FIELD).ne_missing(after[CHANGED_FIELD]).sum()).item()
    return int(differs)


# --- one scenario -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def step_outcomes(instance: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Each materialised step's metadata (plain values), by step name."""
    import dagster as dg

    found: dict[str, dict[str, Any]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialisation = entry.asset_materialization
        if materialisation is None:
            continue
        metadata = {k: _plain(v) for k, v in materialisation.metadata.items()}
        found[str(metadata.get("matchbox/step") or materialisation.asset_key.path[-1])] = {
            k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool)) or v is None
        }
    return found


def root_cause(error: Any) -> str:
    """The innermost error's message of a Dagster step failure."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return str(getattr(error, "message", error)).strip()


def descendants(asset_graph: Any, key: Any) -> set[str]:
    """Names (last key part) of every asset downstream of ``key``."""
    seen: set[Any] = set()
    todo = [key]
    while todo:
        for child in asset_graph.get(todo.pop()).child_keys:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return {k.path[-1] for k in seen}


def splink_by_hand(store: Any, collection: str, run: int, collection_spec: Any) -> dict[str, Any]:
    """``link_ab``'s Splink methodology on the run's inputs, by hand: train + predict
    (``fit_predict``), then predict with those trained parameters (``with_parameters``)."""
    from matchbox_dagster.sources.inputs import query_frame
    from matchbox_dagster.specs import plan_collection

    plan = next(m for m in plan_collection(collection_spec).models if m.spec.name == "link_ab")
    method, config = plan.methodology, plan.config
    fields = method.input_fields
    left = query_frame(store, collection, run, config.left_query, fields=fields)
    right = query_frame(store, collection, run, config.right_query, fields=fields)
    if not hasattr(method, "fit_predict"):
        return {"error": "this SplinkModel has no fit_predict/with_parameters"}
    started = time.perf_counter()
    trained_results, parameters = method.fit_predict(left, right)
    train_predict = time.perf_counter() - started
    started = time.perf_counter()
    results = method.with_parameters(parameters).link(left, right)
    predict = time.perf_counter() - started
    return {
        "train_predict": train_predict,
        "predict": predict,
        "pairs": [trained_results.num_rows, results.num_rows],
    }


def dagster_floor(asset_graph: Any, instance: Any, quiet: dict[str, Any], rounds: int = 3) -> float:
    """Seconds Dagster itself takes for this graph: the same partitioned assets, dependencies
    and blocking checks, each doing nothing (best of ``rounds``, on the scenario's instance)."""
    import dagster as dg

    parts = dg.DynamicPartitionsDefinition(name=f"floor_{uuid.uuid4().hex[:6]}")

    def no_op(key: Any, parents: list[Any], names: list[str]) -> Any:
        @dg.asset(
            key=key,
            deps=parents,
            partitions_def=parts,
            check_specs=[dg.AssetCheckSpec(n, asset=key, blocking=True) for n in names],
            io_manager_key="floor_io",
        )
        def body():
            yield dg.Output(None, metadata={"n": 1})
            for name in names:
                yield dg.AssetCheckResult(check_name=name, passed=True, asset_key=key)

        return body

    assets = []
    for key in asset_graph.get_all_asset_keys():
        node = asset_graph.get(key)
        names = sorted(c.name for c in node.check_keys)
        assets.append(no_op(key, list(node.parent_keys), names))
    defs = dg.Definitions(
        assets=assets,
        jobs=[dg.define_asset_job("floor", selection="*")],
        resources={"floor_io": dg.mem_io_manager},
    )
    job = defs.resolve_job_def("floor")
    best = float("inf")
    for i in range(rounds):
        instance.add_dynamic_partitions(parts.name, [f"r{i}"])
        started = time.perf_counter()
        job.execute_in_process(instance=instance, partition_key=f"r{i}", run_config=quiet)
        best = min(best, time.perf_counter() - started)
    return best


@contextmanager
def dagster_instance(storage: str) -> Iterator[Any]:
    """A throwaway Dagster instance: SQLite files (as ``dagster dev``) or, with ``postgres``,
    dagster-postgres storage in a database of its own on the store's server (as a deployment)."""
    import dagster as dg

    if storage == "sqlite":
        with dg.instance_for_test() as instance:
            yield instance
        return
    database = f"mbinc_dagster_{uuid.uuid4().hex[:8]}"
    server = psycopg.conninfo.conninfo_to_dict(URI)
    # psycopg2 (not 3): dagster-postgres 0.29's event log binds NOTIFY's payload client-side.
    url = "postgresql+psycopg2://{user}{password}@{host}:{port}/{database}".format(
        user=server.get("user", "postgres"),
        password=f":{server['password']}" if server.get("password") else "",
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 5432),
        database=database,
    )
    with psycopg.connect(URI, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": url}}}
        ) as instance:
            yield instance
    finally:
        with psycopg.connect(URI, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(database)))


def scenario(rows: int, model: str, runs: int, storage: str = "sqlite") -> dict[str, Any]:
    """Full run, ``runs - 1`` unchanged re-runs, a 1%-change re-run; figures per run."""
    import dagster as dg

    from matchbox_dagster.common.runs import Promotion
    from matchbox_dagster.dagster.collection import build_collection_defs
    from matchbox_dagster.dagster.partitions import add_run_partition, next_run_label
    from matchbox_dagster.dagster.resources import MatchboxResource
    from matchbox_dagster.dagster.sensors import promote_run

    schema = f"mbinc_{uuid.uuid4().hex[:8]}"
    figures: list[dict[str, Any]] = []
    by_hand = None
    floor = float("nan")
    with tempfile.TemporaryDirectory(prefix="mb-incremental-") as tmp:
        a, b = make_data(rows, Path(tmp))
        collection_spec = spec("incremental", a, b, model)
        collection = collection_spec.collection
        res = MatchboxResource(postgres_uri=URI, postgres_schema=schema)
        defs = build_collection_defs(collection_spec, resource=res)
        job = defs.resolve_job_def(f"{collection}_graph")
        sensor = defs.resolve_sensor_def(f"{collection}_promotion")
        graph = defs.resolve_asset_graph()
        source_key = next(k for k in graph.get_all_asset_keys() if k.path[-1] == CHANGED_SOURCE)
        expected_new = {CHANGED_SOURCE} | descendants(graph, source_key)
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        cursor = None
        try:
            with dagster_instance(storage) as instance:
                store = res.get_store()
                plan = ["full"] + ["unchanged"] * (runs - 1) + ["1% of a changed"]
                for i, change in enumerate(plan):
                    changed_records = change_one_percent(a) if change.startswith("1%") else 0
                    label, run = add_run_partition(
                        instance, store, collection, next_run_label(store, collection)
                    )
                    rows_before, bytes_before = bulk_rows(schema), store_bytes(schema)
                    started = time.perf_counter()
                    result = job.execute_in_process(
                        instance=instance,
                        partition_key=label,
                        run_config=quiet,
                        raise_on_error=False,
                    )
                    seconds = time.perf_counter() - started
                    windows = step_windows(instance, result.run_id)
                    evaluations = [
                        e.event_specific_data
                        for e in result.all_events
                        if e.event_type_value == "ASSET_CHECK_EVALUATION"
                    ]
                    checks = {
                        f"{c.asset_key.path[-1]}.{c.check_name}": c.passed for c in evaluations
                    }
                    carried = sorted(
                        f"{c.asset_key.path[-1]}.{c.check_name}"
                        for c in evaluations
                        if "matchbox/carried_over_from" in (c.metadata or {})
                    )
                    with dg.build_sensor_context(
                        instance=instance, cursor=cursor, resources={"matchbox": res}
                    ) as ctx:
                        outcome = sensor(ctx)
                        cursor = ctx.cursor
                    failures = {
                        e.step_key.split("__")[-1]: root_cause(e.event_specific_data.error)
                        for e in result.all_events
                        if e.event_type_value == "STEP_FAILURE"
                    }
                    promoted = "by the sensor"
                    if failures:
                        promoted = "no (the run failed)"
                    elif not store.get_run(collection, run.run_id).is_default:
                        promote_run(
                            store,
                            collection,
                            run.run_id,
                            Promotion(
                                promoted_by="bench/incremental.py",
                                reason="benchmark: the next run reuses the default run",
                                forced=True,
                            ),
                        )
                        why = getattr(outcome, "skip_message", outcome)
                        promoted = f"by hand, forced (the sensor: {why})"
                    rows_after, bytes_after = bulk_rows(schema), store_bytes(schema)
                    figures.append(
                        {
                            "run": i + 1,
                            "label": label,
                            "change": change,
                            "changed_records": changed_records,
                            "seconds": seconds,
                            "success": result.success,
                            "failures": failures,
                            "checks_passed": all(checks.values()),
                            "checks_run": len(checks),
                            "checks_carried": carried,
                            "promoted": promoted,
                            "steps": {n: w["end"] - w["start"] for n, w in windows.items()},
                            "checks": {
                                n: w["end"] - w["stored"]
                                for n, w in windows.items()
                                if "stored" in w
                            },
                            "outcomes": step_outcomes(instance, result.run_id),
                            "new_rows": {t: rows_after[t] - rows_before[t] for t in BULK},
                            "bulk_rows": rows_after,
                            "bytes_before": bytes_before,
                            "bytes_after": bytes_after,
                        }
                    )
                    print(
                        f"  {model} {rows:,}: run {i + 1} ({change}) {seconds:.1f} s",
                        file=sys.stderr,
                    )
                floor = dagster_floor(graph, instance, quiet)
                if model == "splink":
                    try:
                        by_hand = splink_by_hand(store, collection, run.run_id, collection_spec)
                    except Exception as exc:  # reported as a FAIL, not a crash
                        by_hand = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            drop_schema(schema)
    return {
        "rows": rows,
        "model": model,
        "runs": figures,
        "splink_by_hand": by_hand,
        "dagster_floor": floor,
        "dagster_storage": storage,
        "expected_new": sorted(expected_new),
        "all_steps": sorted(k.path[-1] for k in graph.get_all_asset_keys()),
    }


# --- the report -------------------------------------------------------------------------------


def step_did(outcome: dict[str, Any] | None) -> str:
    """``new`` (new data), ``reused`` (no new data, methodology not run), ``recomputed``
    (no new data but the methodology ran), ``absent`` (not materialised)."""
    if outcome is None:
        return "absent"
    action = outcome.get("matchbox/action")
    if action in NEW_DATA:
        return "new"
    ran = bool(outcome.get("matchbox/computed")) or any(
        outcome.get(k) is not None for k in METHOD_SECONDS
    )
    return "recomputed" if ran or action not in NO_NEW_DATA else "reused"


def report(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Print a scenario's table; return its goals as (goal, passed, figures)."""
    rows, model, runs = result["rows"], result["model"], result["runs"]
    steps = result["all_steps"]
    print(f"\n== {model} at {rows:,} source rows")
    print(
        f"{'run':>3} {'change':16} {'seconds':>8} {'new rows src/edges/leaves':>28} "
        f"{'store MB':>9}  " + "  ".join(f"{s}" for s in steps)
    )
    for r in runs:
        new = "/".join(f"{r['new_rows'][t]:,}" for t in BULK)
        cells = "  ".join(
            f"{step_did(r['outcomes'].get(s))} "
            + (f"{r['steps'][s]:.1f}s" if s in r["steps"] else "-")
            for s in steps
        )
        print(
            f"{r['run']:>3} {r['change']:16} {r['seconds']:>8.2f} {new:>28} "
            f"{r['bytes_after'] / 2**20:>9.1f}  {cells}"
        )
        notes = [f"checks passed: {r['checks_passed']}", f"promoted: {r['promoted']}"]
        notes += [f"FAILED {step}: {error[:300]}" for step, error in r["failures"].items()]
        if r.get("checks_carried"):
            notes.append(
                f"{len(r['checks_carried'])} of {r['checks_run']} check results carried over"
            )
        slow = {s: c for s, c in r.get("checks", {}).items() if c >= 0.5}
        if slow:
            notes.append(
                "checks (after the output was stored): "
                + ", ".join(f"{s} {c:.1f}s" for s, c in sorted(slow.items()))
            )
        if r["changed_records"]:
            notes.append(f"{r['changed_records']:,} records of {CHANGED_SOURCE} changed")
        reused = [
            f"{s} ← {o['matchbox/reused_from']}"
            for s, o in sorted(r["outcomes"].items())
            if o.get("matchbox/reused_from")
        ]
        if reused:
            notes.append("reused from: " + ", ".join(reused))
        trained = {
            s: {k: v for k, v in o.items() if k.startswith("train")}
            for s, o in r["outcomes"].items()
        }
        notes += [f"{s}: {t}" for s, t in sorted(trained.items()) if t]
        print("      " + "; ".join(notes))

    full, again, changed = runs[0], runs[1], runs[-1]
    goals: list[tuple[str, bool, str]] = []
    label = f"{model} {rows:,}"

    def succeeded(*used: dict[str, Any]) -> bool:
        return all(r["success"] for r in used)

    def failed(*used: dict[str, Any]) -> str:
        bad = [f"run {r['run']} failed ({', '.join(r['failures'])})" for r in used]
        bad = [b for b, r in zip(bad, used, strict=True) if not r["success"]]
        return f" — {'; '.join(bad)}" if bad else ""

    stored_by_full = sum(full["new_rows"].values())
    new_again = sum(again["new_rows"].values())
    time_ratio = again["seconds"] / full["seconds"]
    row_ratio = new_again / stored_by_full if stored_by_full else float("nan")
    goals.append(
        (
            f"{label}: no-change re-run ≤ 10% of the full run's time",
            time_ratio <= 0.10 and succeeded(full, again),
            f"{again['seconds']:.2f} s / {full['seconds']:.2f} s = {time_ratio:.1%} (every "
            "unchanged re-run: "
            + ", ".join(f"{r['seconds']:.1f} s" for r in runs if r["change"] == "unchanged")
            + "); Dagster alone, the same graph doing nothing: "
            + f"{result['dagster_floor']:.2f} s = {result['dagster_floor'] / full['seconds']:.1%}"
            + failed(full, again),
        )
    )
    goals.append(
        (
            f"{label}: no-change re-run stores < 1% new rows",
            row_ratio < 0.01 and succeeded(full, again),
            f"{new_again:,} new bulk rows / {stored_by_full:,} stored by the full run "
            f"= {row_ratio:.2%}" + failed(full, again),
        )
    )

    expected = set(result["expected_new"])
    did = {s: step_did(changed["outcomes"].get(s)) for s in steps}
    new = {s for s, d in did.items() if d == "new"}
    wanted = {s: "new" if s in expected else "reused" for s in steps}
    goals.append(
        (
            f"{label}: 1%-change re-run recomputes only {CHANGED_SOURCE}'s descendants",
            did == wanted and succeeded(changed),
            f"new data: {sorted(new)}; expected {sorted(expected)}; every step: {did}"
            + failed(changed),
        )
    )

    if model == "splink":
        first = full["outcomes"].get("link_ab", {}).get("model_seconds")
        later = changed["outcomes"].get("link_ab", {}).get("model_seconds")
        if first and later is not None:
            ratio = later / first
            goals.append(
                (
                    f"{label}: Splink predicting with a stored model ≤ 40% of train + predict",
                    ratio <= 0.40 and succeeded(full, changed),
                    f"link_ab model_seconds in the 1%-change run {later:.2f} s / in the full run "
                    f"{first:.2f} s = {ratio:.1%}",
                )
            )
        else:
            goals.append(
                (
                    f"{label}: Splink predicting with a stored model ≤ 40% of train + predict",
                    False,
                    f"link_ab did not run its model in both runs (model_seconds {first} and "
                    f"{later})",
                )
            )

    by_hand = result.get("splink_by_hand")
    if by_hand and "predict" in by_hand:
        ratio = by_hand["predict"] / by_hand["train_predict"]
        goals.append(
            (
                f"{label}: Splink predicting with stored parameters ≤ 40% of train + predict, "
                "by hand",
                ratio <= 0.40,
                f"link_ab's methodology on the last run's inputs: with_parameters().link "
                f"{by_hand['predict']:.2f} s / fit_predict {by_hand['train_predict']:.2f} s = "
                f"{ratio:.1%} (pairs {by_hand['pairs'][0]:,} and {by_hand['pairs'][1]:,})",
            )
        )
    elif by_hand:
        goals.append((f"{label}: Splink predicting by hand", False, by_hand["error"]))

    unchanged = [r for r in runs if r["change"] in ("full", "unchanged")]
    if len(unchanged) >= 2:
        first_bytes = unchanged[0]["bytes_after"] - unchanged[0]["bytes_before"]
        growth = unchanged[-1]["bytes_after"] - unchanged[0]["bytes_after"]
        sizes = ", ".join(f"{r['bytes_after'] / 2**20:.1f}" for r in unchanged)
        goals.append(
            (
                f"{label}: {len(unchanged)} unchanged runs take about the storage of one "
                "(growth over the extra runs ≤ 5% of the first run's)",
                growth <= 0.05 * first_bytes and succeeded(*unchanged),
                f"first run {first_bytes / 2**20:.1f} MB; {len(unchanged) - 1} more runs "
                f"+{growth / 2**20:.1f} MB = {growth / first_bytes:.1%}; store MB after each: "
                f"{sizes}" + failed(*unchanged),
            )
        )
    return goals


def main() -> None:
    """Run each scenario in its own subprocess, print the tables and the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rules scenario size")
    parser.add_argument("--splink-rows", type=int, default=200_000, help="Splink scenario size")
    parser.add_argument("--runs", type=int, default=5, help="unchanged runs (first one full)")
    parser.add_argument("--splink-runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 20k rules, 10k Splink")
    parser.add_argument("--only", choices=["rules", "splink"])
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--dagster-storage",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the Dagster instance's storage: SQLite files (default, as `dagster dev`) or "
        "dagster-postgres (as a deployment)",
    )
    parser.add_argument("--scenario", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        model, rows, runs = args.scenario
        print(json.dumps(scenario(int(rows), model, int(runs), args.dagster_storage)))
        return
    if args.quick:
        args.rows, args.splink_rows, args.runs = 20_000, 10_000, 3
    todo = [("rules", args.rows, args.runs), ("splink", args.splink_rows, args.splink_runs)]
    results = []
    for model, rows, runs in todo:
        if args.only and model != args.only:
            continue
        print(f"{model} at {rows:,} source rows, {runs} unchanged runs…", file=sys.stderr)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--scenario",
                model,
                str(rows),
                str(max(runs, 2)),
                "--dagster-storage",
                args.dagster_storage,
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    goals = [goal for result in results for goal in report(result)]
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(
        f"\n== goals (issue 17 item 3), commit {commit or '?'}, "
        f"Dagster storage {args.dagster_storage}"
    )
    for goal, passed, figures in goals:
        print(f"{'PASS' if passed else 'FAIL'}  {goal}: {figures}")


if __name__ == "__main__":
    main()
