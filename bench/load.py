"""Concurrent readers while a new run of the same collection is written and promoted.

A bounded load test on one PostgreSQL server (loopback), in a throwaway schema dropped at the end:

1. set-up: a collection whose default run holds a source of N keys (default 1M), a model and a
   resolver — the data of ``bench/store.py`` (``make_data``, imported, not copied);
2. ``--clients`` (8) client processes (multiprocessing *spawn*; each builds its own
   ``MatchboxPostgres`` from the same settings) loop for ``--seconds`` (60): each iteration looks
   up the collection's default run (``get_collection``) and then calls, chosen at random by the
   ``--mix`` weights, ``query(source, resolver, limit=--limit)``, a full ``query(source,
   resolver)`` or ``match(key, source, [source], resolver)`` on a random key of that run. Every
   call's latency is recorded, and so is every exception and every wrong answer (a query with too
   few or too many rows, a match that does not find its own key, no default run, a default run
   going back to an older one) — all count as errors;
3. meanwhile (``--write-after`` seconds into the test, 5 by default) the main process writes a
   NEW run of the same collection — ``create_run``, ``create_step`` ×3, ``insert_source_data``,
   ``insert_model_data``, ``insert_resolver_data`` at N keys (other row hashes, so the resolver
   writes new clusters), ``set_run_mutable(False)``, ``set_run_default(True)`` — so readers switch
   to the new default mid-test.

It prints per operation: calls, errors, p50/p95/p99/max latency (ms) and calls/s; the same split
by phase (before the write, during it, after the switch); calls answered by each run; the
writer's timings; warnings the store logged (retries after transient errors); and "zero errors", or
the errors with the call that raised them (exit status 1). A thread samples
``pg_stat_activity`` for sessions waiting on a lock. ``--keys 500000`` halves the set-up.

Run: ``.venv/bin/python bench/load.py [--seconds 60] [--keys 1000000] [--clients 8]
[--mix limit=4,full=1,match=5] [--limit 1000]`` (uses MATCHBOX_POSTGRES_URI, else
postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    LocationConfig,
    ModelConfig,
    QueryConfig,
    ResolverConfig,
    SourceConfig,
    SourceField,
    Step,
    StepPath,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import store as bench_store  # noqa: E402  (bench/store.py: make_data, with_ids)

URI = os.environ.get("MATCHBOX_POSTGRES_URI") or "postgresql://postgres@127.0.0.1:5432/test"
COLLECTION = "load"
SOURCE, MODEL, RESOLVER = "people", "dedupe", "resolve"
OPERATIONS = ("get_collection", "query limit", "query full", "match")
MIX_NAMES = {"limit": "query limit", "full": "query full", "match": "match"}
PHASES = ("before write", "during write", "after switch")


# --- data and writes --------------------------------------------------------------------------


@dataclass
class Prepared:
    """One run's inputs, ready for the store: built before the clock starts."""

    source: pa.Table
    edges: pa.Table
    clusters: pa.Table
    steps: dict[str, Step]
    keys: int


def prepare(n: int, seed: int) -> Prepared:
    """``bench/store.py``'s data for N keys with store ids, and the three steps declaring it."""
    data = bench_store.make_data(n, seed=seed)
    hashes = SourceHashes(data.source)
    edges, clusters = bench_store.with_ids(data, hashes.leaf_ids.to_numpy())
    config = SourceConfig(
        location_config=LocationConfig(type="rdbms", name="bench"),
        key_field=SourceField(name="key"),
        index_fields=(SourceField(name="value"),),
    )
    model = ModelConfig(
        type="deduper", model_class="Bench", left_query=QueryConfig(sources=(SOURCE,))
    )
    steps = {
        SOURCE: Step(step_type="source", fingerprint=hashes.fingerprint, config=config),
        MODEL: Step(step_type="model", fingerprint=ModelResults(edges).fingerprint, config=model),
        RESOLVER: Step(
            step_type="resolver",
            fingerprint=ResolverClusters(clusters).fingerprint,
            config=ResolverConfig(inputs=(MODEL,)),
        ),
    }
    return Prepared(data.source, edges, clusters, steps, hashes.num_keys)


def write_run(store: MatchboxPostgres, data: Prepared) -> tuple[int, list[tuple[str, float]]]:
    """Write a new run of the collection and make it the default; (run id, seconds per call)."""
    timings: list[tuple[str, float]] = []

    def timed(name: str, call: Any, *args: Any) -> Any:
        started = time.perf_counter()
        result = call(*args)
        timings.append((name, time.perf_counter() - started))
        return result

    run = timed("create_run", store.create_run, COLLECTION).run_id
    paths = {name: StepPath(collection=COLLECTION, run=run, name=name) for name in data.steps}
    for name, step in data.steps.items():
        timed(f"create_step ({name})", store.create_step, step, paths[name])
    timed("insert_source_data", store.insert_source_data, paths[SOURCE], data.source)
    timed("insert_model_data", store.insert_model_data, paths[MODEL], data.edges)
    timed("insert_resolver_data", store.insert_resolver_data, paths[RESOLVER], data.clusters)
    timed("set_run_mutable(False)", store.set_run_mutable, COLLECTION, run, False)
    timed("set_run_default(True)", store.set_run_default, COLLECTION, run, True)
    return run, timings


# --- clients ----------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    """Keeps the warnings the store logs, e.g. when it retries a call after a transient error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


@dataclass
class ClientResult:
    """What one client saw: (op, start offset s, latency s, run) per call, and its errors."""

    client: int
    calls: list[tuple[str, float, float, int]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)


def client(
    index: int,
    uri: str,
    schema: str,
    config: dict[str, Any],
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """One client process: its own store; loop until the shared deadline; report back."""
    logging.getLogger("matchbox_dagster").setLevel(logging.WARNING)
    counter = _Warnings()
    logging.getLogger("matchbox_dagster").addHandler(counter)
    out = ClientResult(index)
    rng = random.Random(config["seed"] * 1000 + index)
    keys, limit = config["keys"], config["limit"]
    ops = [MIX_NAMES[name] for name in config["mix"]]
    weights = list(config["mix"].values())
    try:
        store = MatchboxPostgres(MatchboxSettings(postgres_uri=uri, postgres_schema=schema))
        store.get_collection(COLLECTION)  # warm the pools before the clock starts
    except Exception as exc:
        out.errors.append({"op": "MatchboxPostgres()", "at": None, "error": _describe(exc)})
        ready.put(index)
        results.put(out)
        return
    ready.put(index)
    began = start.get()  # the main process hands every client the same start time
    time.sleep(max(0.0, began - time.time()))
    deadline = began + config["seconds"]
    last_default = 0
    while time.time() < deadline:
        run = last_default
        op = "get_collection"
        t0 = time.time()
        try:
            started = time.perf_counter()
            default = store.get_collection(COLLECTION).default_run
            out.calls.append((op, t0 - began, time.perf_counter() - started, run))
            if default is None:
                raise AssertionError("the collection has no default run")
            if default < last_default:
                raise AssertionError(f"default run went back from {last_default} to {default}")
            last_default = run = default
            src = StepPath(collection=COLLECTION, run=run, name=SOURCE)
            res = StepPath(collection=COLLECTION, run=run, name=RESOLVER)
            op = rng.choices(ops, weights)[0]
            t0 = time.time()
            started = time.perf_counter()
            if op == "query limit":
                rows = store.query(src, res, limit=limit).num_rows
                elapsed = time.perf_counter() - started
                if rows != min(limit, keys):
                    raise AssertionError(f"{rows} rows, expected {min(limit, keys)}")
            elif op == "query full":
                rows = store.query(src, res).num_rows
                elapsed = time.perf_counter() - started
                if rows != keys:
                    raise AssertionError(f"{rows} rows, expected {keys}")
            else:
                key = f"key-{rng.randrange(keys)}"
                found = store.match(key, src, [src], res)
                elapsed = time.perf_counter() - started
                if len(found) != 1 or key not in found[0].source_id or found[0].cluster is None:
                    raise AssertionError(f"match({key!r}) did not find its own key: {found}")
            out.calls.append((op, t0 - began, elapsed, run))
        except Exception as exc:
            out.errors.append(
                {"op": op, "at": round(t0 - began, 3), "run": run, "error": _describe(exc)}
            )
    store.close()
    out.retries = counter.messages
    results.put(out)


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    cause = exc.__cause__
    if cause is not None:
        text += f" (cause: {type(cause).__name__}: {str(cause)[:300]})"
    return text[:1500]


# --- lock waits -------------------------------------------------------------------------------


class LockWatch(threading.Thread):
    """Samples ``pg_stat_activity`` every ``interval`` s for sessions waiting on a lock.

    The store's sessions cannot be told apart from other users of the same database (its schema
    lives in their ``search_path``), so every wait is recorded with its statement's first words.
    """

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples = 0
        self.waits: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(URI, autocommit=True) as conn:
            while not self.stop.wait(self.interval):
                self.samples += 1
                for event, text in conn.execute(
                    "SELECT wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
                    "FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                ):
                    name = f"{event}: {text}"
                    self.waits[name] = self.waits.get(name, 0) + 1


# --- report -----------------------------------------------------------------------------------


def _row(name: str, latencies: list[float], errors: int, seconds: float) -> str:
    if latencies:
        ms = np.array(latencies) * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        figures = f"{p50:>9.1f} {p95:>9.1f} {p99:>9.1f} {ms.max():>9.1f}"
    else:
        figures = f"{'–':>9} {'–':>9} {'–':>9} {'–':>9}"
    rate = len(latencies) / seconds if seconds > 0 else 0.0
    return f"{name:<16} {len(latencies):>7,} {errors:>6} {figures} {rate:>8.2f}"


HEADER = (
    f"{'operation':<16} {'calls':>7} {'errors':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
    f"{'max ms':>9} {'calls/s':>8}"
)


def report(
    results: list[ClientResult],
    seconds: float,
    write_window: tuple[float, float] | None,
    old_run: int,
    new_run: int | None,
) -> int:
    calls = [c for r in results for c in r.calls]
    errors = [e for r in results for e in r.errors]
    print(f"\n== {len(results)} clients, {seconds:.0f} s ==")
    print(HEADER)
    for op in OPERATIONS:
        latencies = [c[2] for c in calls if c[0] == op]
        failed = sum(1 for e in errors if e["op"] == op)
        print(_row(op, latencies, failed, seconds))
    other = sum(1 for e in errors if e["op"] not in OPERATIONS)
    if other:
        print(f"(and {other} errors outside the operations)")

    if write_window is not None:
        begin, end = write_window
        spans = {PHASES[0]: (0.0, begin), PHASES[1]: (begin, end), PHASES[2]: (end, seconds)}
        print("\nby phase (a call belongs to the phase in which it started):")
        for phase, (lo, hi) in spans.items():
            print(f"-- {phase}: {lo:.1f}–{min(hi, seconds):.1f} s")
            for op in OPERATIONS[1:]:
                latencies = [c[2] for c in calls if c[0] == op and lo <= c[1] < hi]
                failed = sum(1 for e in errors if e["op"] == op and lo <= (e["at"] or 0) < hi)
                print(_row(op, latencies, failed, max(min(hi, seconds) - lo, 1e-9)))

    served = {
        run: sum(1 for c in calls if c[3] == run and c[0] != "get_collection")
        for run in {old_run, *([new_run] if new_run else [])}
    }
    print(
        "\nreads answered by run: "
        + ", ".join(f"run {run}: {count:,}" for run, count in sorted(served.items()))
    )
    clients_switched = sum(
        1
        for r in results
        if new_run and any(c[3] == new_run and c[0] != "get_collection" for c in r.calls)
    )
    if new_run:
        print(f"clients that read the new default run {new_run}: {clients_switched}/{len(results)}")

    retries = [m for r in results for m in r.retries]
    print(f"warnings the store logged in clients (e.g. retries): {len(retries)}")
    for message in retries[:10]:
        print(f"  {message}")
    if errors:
        print(f"\n{len(errors)} ERRORS, by call and message:")
        kinds: dict[tuple[str, str], int] = {}
        for e in errors:
            kind = (e["op"], e["error"].splitlines()[0][:200])
            kinds[kind] = kinds.get(kind, 0) + 1
        for (op, message), count in sorted(kinds.items(), key=lambda item: -item[1]):
            print(f"  {count:>6} × {op}: {message}")
        print("first errors in full:")
        for e in errors[:20]:
            print(f"  at {e['at']} s, {e['op']} (run {e.get('run')}): {e['error']}")
        return 1
    print("\nzero errors")
    return 0


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in MIX_NAMES:
            raise argparse.ArgumentTypeError(f"unknown operation {name!r}: use {list(MIX_NAMES)}")
        mix[name.strip()] = float(weight or 1)
    if not any(w > 0 for w in mix.values()):
        raise argparse.ArgumentTypeError("the mix needs a positive weight")
    return mix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of the client phase")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys per source (N)")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default="limit=4,full=1,match=5",
        help="relative weights of 'query limit', 'query full' and 'match' calls",
    )
    parser.add_argument("--limit", type=int, default=1000, help="rows of a limited query")
    parser.add_argument(
        "--write-after", type=float, default=5, help="seconds into the test the writer starts"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every call and error here")
    args = parser.parse_args()
    logging.getLogger("matchbox_dagster").setLevel(logging.WARNING)
    writer_warnings = _Warnings()
    logging.getLogger("matchbox_dagster").addHandler(writer_warnings)
    started = time.perf_counter()

    schema = f"mbload_{uuid.uuid4().hex[:8]}"
    store = None
    procs: list[Any] = []
    try:
        t = time.perf_counter()
        first = prepare(args.keys, args.seed)
        second = prepare(args.keys, args.seed + 1)  # other row hashes: new leaves and clusters
        print(f"data for 2 runs of {args.keys:,} keys: {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        store = MatchboxPostgres(MatchboxSettings(postgres_uri=URI, postgres_schema=schema))
        store.create_collection(COLLECTION)
        old_run, setup = write_run(store, first)
        print(
            f"set-up run {old_run} (default): {time.perf_counter() - t:.1f} s — "
            + ", ".join(f"{name} {s:.2f}" for name, s in setup if s > 0.05)
        )

        ctx = mp.get_context("spawn")
        ready, start, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
        config = {
            "seconds": args.seconds,
            "keys": first.keys,
            "limit": args.limit,
            "mix": args.mix,
            "seed": args.seed,
        }
        t = time.perf_counter()
        for index in range(args.clients):
            proc = ctx.Process(
                target=client,
                args=(index, URI, schema, config, ready, start, results),
                name=f"load-client-{index}",
            )
            proc.start()
            procs.append(proc)
        for _ in procs:
            ready.get(timeout=300)
        print(f"{args.clients} clients started and connected: {time.perf_counter() - t:.1f} s")

        watch = LockWatch()
        watch.start()
        began = time.time() + 0.5
        for _ in procs:
            start.put(began)
        time.sleep(max(0.0, began + args.write_after - time.time()))
        write_begin = time.time() - began
        print(f"writer: run of {second.keys:,} keys from {write_begin:.1f} s", flush=True)
        new_run, timings = write_run(store, second)
        write_end = time.time() - began
        for name, seconds in timings:
            print(f"  {name:<24} {seconds:>8.3f} s")
        print(
            f"  total                    {write_end - write_begin:>8.3f} s; run {new_run} is "
            f"the default from {write_end:.1f} s into the test"
        )
        if write_end >= args.seconds:
            print("  NOTE: the switch came after the clients stopped; raise --seconds")

        collected: list[ClientResult] = []
        wait_until = time.time() + args.seconds + 600
        while len(collected) < len(procs) and time.time() < wait_until:
            try:
                collected.append(results.get(timeout=1))
            except queue.Empty:
                if not any(proc.is_alive() for proc in procs):
                    break
        for proc in procs:
            proc.join(timeout=60)
        watch.stop.set()
        watch.join(timeout=10)
        print(
            f"\nlock waits on the database ({watch.samples} samples of pg_stat_activity, every "
            f"{watch.interval} s): "
            + ("none" if not watch.waits else f"{sum(watch.waits.values())} waiting sessions")
        )
        for name, count in sorted(watch.waits.items(), key=lambda item: -item[1])[:10]:
            print(f"  {count:>5} × {name}")
        collected.sort(key=lambda r: r.client)
        status = report(collected, args.seconds, (write_begin, write_end), old_run, new_run)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "write": [write_begin, write_end, timings],
                        "clients": [vars(r) for r in collected],
                    }
                )
            )
        if len(collected) < len(procs):
            print(f"only {len(collected)} of {len(procs)} clients reported back")
            status = 1
        if writer_warnings.messages:
            print(f"warnings the store logged in the writer: {writer_warnings.messages[:10]}")
        if any(proc.exitcode != 0 for proc in procs):
            print(f"client exit codes: {[proc.exitcode for proc in procs]}")
            status = 1
        print(f"total runtime {time.perf_counter() - started:.0f} s")
        return status
    except queue.Empty:
        print("timed out waiting for the clients to connect", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        if store is not None:
            store.close()
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
