"""The store's bulk operations against the hardware and the reference implementation.

For each size N (keys of one source; default 100k and 1M, ``--big`` adds 10M) this times, on the
same PostgreSQL server and the same data:

* ours: ``MatchboxPostgres`` (in this process, a throwaway schema);
* the baseline, the hardware limit, in the same run: a raw ``COPY … (FORMAT binary)`` (ADBC ingest)
  of the same rows into a bare table for inserts, a plain ``SELECT`` of the same rows into Arrow
  for reads, two index probes on a bare indexed (id, key) table for ``match``;
* the reference: PyPI ``matchbox-db==0.10.8``'s PostgreSQL adapter, installed by this script into
  ``bench/.ref-venv`` (dependencies pinned to its release's lock, ``bench/reference/
  constraints.txt``) and driven by ``bench/reference/driver.py`` in a subprocess, in a database of
  its own that is dropped afterwards.

Data: N keys over 0.9 N distinct 16-byte row hashes; ~N random scored pairs of leaves; a resolver
putting 80% of the leaves in clusters of 2–8. The machine is shared, so the whole comparison runs
``--rounds`` times, ours then the reference, each round on a fresh store and a fresh database, and
every figure keeps its best round; within a round, reads take the best of ``--repeat`` calls and
``match`` is the mean over ``--match-keys`` keys.

Goals (issue 7, DESIGN.md §7): every insert ≥ 10× faster than the reference at 1M rows and
≥ 0.5× raw COPY throughput (ours/baseline ≤ 2); query ≥ 2× faster than the reference and ≤ 2×
the plain SELECT. Issue 17 item 6: ``match`` ≤ 20 ms a call. ``--match-sizes N`` times it
alone at N keys (a source, a small model, a resolver over 80% of the leaves): the source insert
against raw COPY, then the median of ``--match-calls`` calls on random existing keys and of
calls on a missing key, each with PASS/FAIL. ``match``'s key lookups are built after the insert
has committed, by ``index_for_match`` (as the IO manager does): timed on their own and printed
beside the insert, with (insert + index) against raw COPY as information, not a goal.

Run: ``.venv/bin/python bench/store.py [--sizes 100000 1000000] [--big] [--no-reference]
[--match-sizes 10000000]``
(uses MATCHBOX_POSTGRES_URI, else postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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

URI = os.environ.get("MATCHBOX_POSTGRES_URI", "postgresql://postgres@127.0.0.1:5432/test")
BENCH = Path(__file__).resolve().parent
REF_VENV = BENCH / ".ref-venv"
REF_PACKAGE = "matchbox-db[server]==0.10.8"
REF_CONSTRAINTS = BENCH / "reference" / "constraints.txt"
REF_DRIVER = BENCH / "reference" / "driver.py"

OPERATIONS = (
    "insert_source_data",
    "insert_model_data",
    "insert_resolver_data",
    "query (resolver)",
    "query (no resolver)",
    "match",
    "get_model_data",
    "get_resolver_data",
)
INSERTS = OPERATIONS[:3]
QUERIES = OPERATIONS[3:5]


@dataclass
class Figure:
    """One operation at one size: seconds of ours, the baseline and the reference."""

    rows: int
    ours: float
    baseline: float
    reference: float | None = None


# --- data -------------------------------------------------------------------------------------


@dataclass
class Data:
    """Bench data in terms of row positions of ``source`` (each store maps them to its ids)."""

    source: pa.Table  # hash: large_binary, keys: large_list<large_string>
    edges: pa.Table  # left, right: positions; score: float32
    clusters: pa.Table  # parent_id: label; child: position
    match_keys: list[str]


def make_data(n: int, seed: int = 0) -> Data:
    """N keys over 0.9 N hashes, ~N scored pairs, 80% of the leaves in clusters of 2 to 8."""
    rng = np.random.default_rng(seed)
    hashes = int(n * 0.9)
    digests = rng.integers(0, 2**63, size=(hashes, 2), dtype=np.int64).tobytes()
    hash_arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), hashes, [None, pa.py_buffer(digests)]
    ).cast(pa.large_binary())
    lengths = np.ones(hashes, dtype=np.int64)
    lengths[: n - hashes] = 2
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    keys = pa.array(np.char.add("key-", np.arange(n).astype(str)), type=pa.large_string())
    source = pa.table({"hash": hash_arr, "keys": pa.LargeListArray.from_arrays(offsets, keys)})

    left = rng.integers(0, hashes, n)
    right = rng.integers(0, hashes, n)
    pairs = np.unique((left[left != right] << 32) | right[left != right])
    edges = pa.table(
        {
            "left": pairs >> 32,
            "right": pairs & 0xFFFFFFFF,
            "score": rng.random(len(pairs), dtype=np.float32),
        }
    )

    order = rng.permutation(hashes)[: int(hashes * 0.8)]
    sizes = rng.choice([2, 2, 2, 3, 3, 4, 5, 8], size=len(order) // 2 + 1)
    labels = np.repeat(np.arange(len(sizes)), sizes)[: len(order)]
    if len(labels) and np.sum(labels == labels[-1]) == 1:  # no cluster of one
        labels[-1] = labels[-2]
    clusters = pa.table({"parent_id": labels.astype(np.int64), "child": order.astype(np.int64)})
    picks = rng.choice(n, size=min(n, 200), replace=False)
    return Data(source, edges, clusters, [f"key-{i}" for i in picks])


def with_ids(data: Data, ids: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Model edges and resolver clusters with positions replaced by ``ids`` (one per hash)."""
    edges = pa.table(
        {
            "left_id": ids[data.edges.column("left").to_numpy()],
            "right_id": ids[data.edges.column("right").to_numpy()],
            "score": data.edges.column("score"),
        }
    )
    clusters = pa.table(
        {
            "parent_id": data.clusters.column("parent_id"),
            "child_id": ids[data.clusters.column("child").to_numpy()],
        }
    )
    return edges, clusters


# --- timing -----------------------------------------------------------------------------------


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def best(action: Callable[[], object], repeat: int) -> float:
    return min(timed(action) for _ in range(repeat))


# --- baseline: raw COPY and plain SELECT ------------------------------------------------------


class Raw:
    """Bare tables in a throwaway schema: the hardware limit for the same rows."""

    def __init__(self) -> None:
        self.schema = f"mbbench_raw_{uuid.uuid4().hex[:8]}"
        self.conn = adbc.connect(URI)
        with self.conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{self.schema}"')
        self.conn.commit()

    def copy(self, name: str, table: pa.Table) -> float:
        """Seconds to COPY BINARY ``table`` into a new bare table (ADBC ingest), committed."""
        with self.conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{self.schema}"."{name}"')
            self.conn.commit()
            started = time.perf_counter()
            cur.adbc_ingest(name, table, mode="create", db_schema_name=self.schema)
            self.conn.commit()
            return time.perf_counter() - started

    def select(self, name: str, repeat: int) -> float:
        """Best seconds to SELECT every row of a bare table into Arrow."""

        def read() -> None:
            with self.conn.cursor() as cur:
                cur.execute(f'SELECT * FROM "{self.schema}"."{name}"')
                cur.fetch_arrow_table()
            self.conn.commit()

        return best(read, repeat)

    def match(self, name: str, keys: list[str]) -> float:
        """Mean seconds to find the keys sharing a key's id: two index probes, psycopg."""
        table = f'"{self.schema}"."{name}"'
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f"CREATE INDEX ON {table} (key)")
            conn.execute(f"CREATE INDEX ON {table} (id)")
            conn.execute(f"ANALYZE {table}")
            sql = f"SELECT key FROM {table} WHERE id = (SELECT id FROM {table} WHERE key = %s)"
            started = time.perf_counter()
            for key in keys:
                conn.execute(sql, (key,)).fetchall()
            return (time.perf_counter() - started) / len(keys)

    def close(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.conn.commit()
        self.conn.close()


# --- ours -------------------------------------------------------------------------------------


def flat_keys(data: Data) -> pa.Table:
    """The source as one (hash, key) row a key: what raw COPY ingests."""
    keys = data.source.column("keys")
    return pa.table(
        {
            "hash": data.source.column("hash").take(pc.list_parent_indices(keys)),
            "key": pc.list_flatten(keys),
        }
    )


@contextlib.contextmanager
def fresh_store() -> Iterator[MatchboxPostgres]:
    """Our store in an empty throwaway schema (so content addressing finds no cluster of an
    earlier round), closed and dropped on exit."""
    schema = f"mbbench_{uuid.uuid4().hex[:8]}"
    store = None
    try:
        store = MatchboxPostgres(MatchboxSettings(postgres_uri=URI, postgres_schema=schema))
        yield store
    finally:
        if store is not None:
            store.close()
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def declare_steps(
    store: MatchboxPostgres, hashes: SourceHashes, edges: pa.Table, clusters: pa.Table
) -> tuple[StepPath, StepPath, StepPath]:
    """A new run of collection ``bench`` with its source, deduper and resolver steps declared
    (no data yet); returns their paths."""
    store.create_collection("bench")
    run = store.create_run("bench").run_id
    src = StepPath(collection="bench", run=run, name="people")
    mp = StepPath(collection="bench", run=run, name="dedupe")
    rp = StepPath(collection="bench", run=run, name="resolve")
    config = SourceConfig(
        location_config=LocationConfig(type="rdbms", name="bench"),
        key_field=SourceField(name="key"),
        index_fields=(SourceField(name="value"),),
    )
    model = ModelConfig(
        type="deduper", model_class="Bench", left_query=QueryConfig(sources=("people",))
    )
    store.create_step(Step(step_type="source", fingerprint=hashes.fingerprint, config=config), src)
    store.create_step(
        Step(step_type="model", fingerprint=ModelResults(edges).fingerprint, config=model), mp
    )
    store.create_step(
        Step(
            step_type="resolver",
            fingerprint=ResolverClusters(clusters).fingerprint,
            config=ResolverConfig(inputs=("dedupe",)),
        ),
        rp,
    )
    return src, mp, rp


def bench_ours(data: Data, repeat: int, match_keys: int) -> dict[str, Figure]:
    """Time our store on ``data`` in a fresh store, each operation next to its baseline, in the
    same run."""
    out: dict[str, Figure] = {}
    with contextlib.closing(Raw()) as raw, fresh_store() as store:
        hashes = SourceHashes(data.source)
        edges, clusters = with_ids(data, hashes.leaf_ids.to_numpy())
        src, mp, rp = declare_steps(store, hashes, edges, clusters)
        ours = timed(partial(store.insert_source_data, src, data.source))
        out["insert_source_data"] = Figure(
            hashes.num_keys, ours, raw.copy("source", flat_keys(data))
        )
        indexing = timed(partial(store.index_for_match, src))  # after the insert's commit
        out["index_for_match"] = Figure(
            hashes.num_keys, indexing, out["insert_source_data"].baseline
        )
        ours = timed(partial(store.insert_model_data, mp, edges))
        out["insert_model_data"] = Figure(edges.num_rows, ours, raw.copy("edges", edges))
        ours = timed(partial(store.insert_resolver_data, rp, clusters))
        out["insert_resolver_data"] = Figure(
            clusters.num_rows, ours, raw.copy("clusters", clusters)
        )

        result = store.query(src, rp)
        raw.copy("query", result)
        plain = raw.select("query", repeat)
        ours = best(lambda: store.query(src, rp), repeat)
        out["query (resolver)"] = Figure(result.num_rows, ours, plain)
        ours = best(lambda: store.query(src), repeat)
        out["query (no resolver)"] = Figure(result.num_rows, ours, plain)

        sample = data.match_keys[:match_keys]
        found = 0
        started = time.perf_counter()
        for key in sample:
            found += len(store.match(key, src, [src], rp)[0].target_id)
        ours = (time.perf_counter() - started) / len(sample)
        out["match"] = Figure(found, ours, raw.match("query", sample))

        ours = best(lambda: store.get_model_data(mp), repeat)
        out["get_model_data"] = Figure(edges.num_rows, ours, raw.select("edges", repeat))
        rows = store.get_resolver_data(rp).num_rows
        ours = best(lambda: store.get_resolver_data(rp), repeat)
        out["get_resolver_data"] = Figure(rows, ours, raw.select("clusters", repeat))
    return out


# --- match alone at scale -------------------------------------------------------------------

MATCH_GOAL = 0.020
"""Issue 17 item 6: seconds a ``match`` call may take."""


def load() -> str:
    """The machine's load averages (it is shared), to print beside each figure."""
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_match(n: int, calls: int, seed: int = 1) -> dict[str, float]:
    """``match`` at ``n`` keys in a fresh store: the source insert beside raw COPY, then the
    median and 95th percentile of ``calls`` calls on random existing keys and the median of
    ``calls // 5`` calls on a missing key (seconds). The model holds 10k pairs (only the
    resolver's lineage needs it); the resolver puts 80% of the leaves in clusters of 2–8."""
    data = make_data(n)
    out: dict[str, float] = {}
    with contextlib.closing(Raw()) as raw, fresh_store() as store:
        hashes = SourceHashes(data.source)
        edges, clusters = with_ids(data, hashes.leaf_ids.to_numpy())
        edges = edges.slice(0, 10_000)
        src, mp, rp = declare_steps(store, hashes, edges, clusters)
        out["insert_source_data"] = timed(partial(store.insert_source_data, src, data.source))
        out["index_for_match"] = timed(partial(store.index_for_match, src))
        out["raw COPY"] = raw.copy("source", flat_keys(data))
        store.insert_model_data(mp, edges)
        store.insert_resolver_data(rp, clusters)
        rng = np.random.default_rng(seed)
        keys = [f"key-{i}" for i in rng.choice(n, size=calls, replace=False)]
        store.match(keys[0], src, [src], rp)  # a warm connection, as a lookup service has
        seconds = []
        for key in keys:
            started = time.perf_counter()
            [found] = store.match(key, src, [src], rp)
            seconds.append(time.perf_counter() - started)
            assert key in found.target_id, key
        out["match"] = float(np.median(seconds))
        out["match p95"] = float(np.percentile(seconds, 95))
        missing = []
        for _ in range(max(5, calls // 5)):
            started = time.perf_counter()
            [found] = store.match("no-such-key", src, [src], rp)
            missing.append(time.perf_counter() - started)
            assert found.cluster is None
        out["match (missing key)"] = float(np.median(missing))
    return out


def report_match(n: int, rounds: list[dict[str, float]]) -> bool:
    """Print the best round's figures and the two goals; True if both are met."""
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    ratio = best["raw COPY"] / best["insert_source_data"]
    print(f"\n== match at {size_label(n)} keys ({n:,}), best of {len(rounds)} round(s) ==")
    print(
        f"  insert_source_data {best['insert_source_data']:.3f} s, raw COPY "
        f"{best['raw COPY']:.3f} s, then index_for_match {best['index_for_match']:.3f} s"
    )
    print(
        f"  match median {best['match'] * 1000:.2f} ms (p95 {best['match p95'] * 1000:.2f} ms), "
        f"missing key {best['match (missing key)'] * 1000:.2f} ms"
    )
    ok_match = max(best["match"], best["match (missing key)"]) <= MATCH_GOAL
    ok_insert = ratio >= 0.5
    print(f"  {'PASS' if ok_match else 'FAIL'}  match ≤ {MATCH_GOAL * 1000:.0f} ms a call")
    print(
        f"  {'PASS' if ok_insert else 'FAIL'}  insert_source_data ≥ 0.5× raw COPY throughput: "
        f"{ratio:.2f}×"
    )
    both = best["raw COPY"] / (best["insert_source_data"] + best["index_for_match"])
    print(f"  info  (insert_source_data + index_for_match) vs raw COPY throughput: {both:.2f}×")
    return ok_match and ok_insert


# --- the reference implementation -------------------------------------------------------------


def reference_python() -> Path:
    """The reference's interpreter, installing it into ``bench/.ref-venv`` on first use."""
    python = REF_VENV / "bin" / "python"
    marker = REF_VENV / ".installed"
    wanted = hashlib.sha256(REF_PACKAGE.encode() + REF_CONSTRAINTS.read_bytes()).hexdigest()
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"installing {REF_PACKAGE} into {REF_VENV} (a few minutes, once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(REF_VENV)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(REF_CONSTRAINTS), REF_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not install {REF_PACKAGE}:\n{done.stderr[-3000:]}")
    marker.write_text(wanted)
    return python


@contextlib.contextmanager
def reference_database() -> Iterator[str]:
    """A fresh database for the reference on the same server, dropped afterwards."""
    name = f"mbref_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(URI, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(URI)
    uri = urlunsplit(parts._replace(path="/" + name))
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            # What the reference's operator must provision before its migrations run.
            conn.execute("CREATE SCHEMA mb")
            conn.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        yield name
    finally:
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_reference(data: Data, repeat: int, match_keys: int, timeout: float) -> dict[str, float]:
    """Seconds per operation of the reference on ``data`` (its driver, in its own venv)."""
    python = reference_python()
    parts = urlsplit(URI)
    with tempfile.TemporaryDirectory(prefix="mbref_") as tmp, reference_database() as database:
        folder = Path(tmp)
        pq.write_table(data.source, folder / "source.parquet")
        pq.write_table(data.edges, folder / "edges.parquet")
        pq.write_table(data.clusters, folder / "clusters.parquet")
        (folder / "match_keys.json").write_text(json.dumps(data.match_keys))
        command = [
            str(python),
            str(REF_DRIVER),
            "--dir",
            tmp,
            "--host",
            parts.hostname or "127.0.0.1",
            "--port",
            str(parts.port or 5432),
            "--user",
            parts.username or "postgres",
            "--database",
            database,
            "--repeat",
            str(repeat),
            "--match-keys",
            str(match_keys),
        ]
        env = {**os.environ, "MBREF_PASSWORD": parts.password or ""}  # not on the command line
        done = subprocess.run(
            command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"reference driver failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: float(figure["seconds"]) for name, figure in result.items()}


# --- report -----------------------------------------------------------------------------------


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def print_table(figures: dict[str, Figure]) -> None:
    print(
        f"\n{'operation':<22} {'rows':>10} {'ours (s)':>9} {'baseline (s)':>12} "
        f"{'ours/baseline':>13} {'reference (s)':>13} {'reference/ours':>14}"
    )
    for name in OPERATIONS:
        f = figures[name]
        ref = "–" if f.reference is None else f"{f.reference:.3f}"
        ratio = "–" if f.reference is None else f"{f.reference / f.ours:.1f}"
        print(
            f"{name:<22} {f.rows:>10,} {f.ours:>9.3f} {f.baseline:>12.3f} "
            f"{f.ours / f.baseline:>13.2f} {ref:>13} {ratio:>14}"
        )


def goals(n: int, figures: dict[str, Figure]) -> list[tuple[str, bool | None, str]]:
    """(goal, passed or None if not measured, figures) for one size."""
    checks: list[tuple[str, bool | None, str]] = []
    for name in INSERTS:
        f = figures[name]
        checks.append(
            (
                f"{name} ≥ 0.5× raw COPY throughput",
                f.ours / f.baseline <= 2.0,
                f"{f.baseline / f.ours:.2f}×",
            )
        )
        if n >= 1_000_000:
            ok = None if f.reference is None else f.reference / f.ours >= 10.0
            got = "–" if f.reference is None else f"{f.reference / f.ours:.1f}×"
            checks.append((f"{name} ≥ 10× faster than the reference", ok, got))
    f = figures["match"]
    checks.append(
        (
            f"match ≤ {MATCH_GOAL * 1000:.0f} ms a call (mean)",
            f.ours <= MATCH_GOAL,
            f"{f.ours * 1000:.2f} ms",
        )
    )
    for name in QUERIES:
        f = figures[name]
        checks.append(
            (f"{name} ≤ 2× plain SELECT", f.ours / f.baseline <= 2.0, f"{f.ours / f.baseline:.2f}×")
        )
        ok = None if f.reference is None else f.reference / f.ours >= 2.0
        got = "–" if f.reference is None else f"{f.reference / f.ours:.1f}×"
        checks.append((f"{name} ≥ 2× faster than the reference", ok, got))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--big", action="store_true", help="also 10M keys (slow, memory-hungry)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference")
    parser.add_argument("--repeat", type=int, default=3, help="reads: best of this many calls")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of ours then the reference; best is kept"
    )
    parser.add_argument("--match-keys", type=int, default=20, help="match: mean over this many")
    parser.add_argument(
        "--match-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also time match alone at these sizes (e.g. 10000000), with its goals",
    )
    parser.add_argument(
        "--match-calls", type=int, default=100, help="--match-sizes: median over this many"
    )
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per reference run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.getLogger("matchbox_dagster").setLevel(logging.WARNING)
    sizes = [*args.sizes, *([10_000_000] if args.big else [])]
    if not args.no_reference:
        reference_python()

    report: dict[str, dict[str, dict[str, float | int | None]]] = {}
    failed = False
    for n in sizes:
        data = make_data(n)
        figures: dict[str, Figure] = {}
        for _ in range(args.rounds):
            for name, f in bench_ours(data, args.repeat, args.match_keys).items():
                if name in figures:
                    f.ours = min(f.ours, figures[name].ours)
                    f.baseline = min(f.baseline, figures[name].baseline)
                    f.reference = figures[name].reference
                figures[name] = f
            if not args.no_reference:
                for name, seconds in bench_reference(
                    data, args.repeat, args.match_keys, args.timeout
                ).items():
                    before = figures[name].reference
                    figures[name].reference = seconds if before is None else min(before, seconds)
        print(f"\n== {size_label(n)} keys ({n:,}) == ({load()})", end="")
        print_table(figures)
        print()
        for goal, ok, got in goals(n, figures):
            verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
            failed |= ok is False
            print(f"  {verdict}  {goal}: {got}")
        insert, index = figures["insert_source_data"], figures["index_for_match"]
        print(
            f"  info  index_for_match (after the insert's commit) {index.ours:.3f} s; "
            f"(insert_source_data + index_for_match) vs raw COPY throughput: "
            f"{insert.baseline / (insert.ours + index.ours):.2f}×"
        )
        report[size_label(n)] = {name: vars(f) for name, f in figures.items()}
        sys.stdout.flush()
    for n in args.match_sizes:
        print(f"\n(match at {size_label(n)}: starting, {load()})")
        rounds = [bench_match(n, args.match_calls) for _ in range(args.rounds)]
        failed |= not report_match(n, rounds)
        print(f"  ({load()})")
        report[f"match {size_label(n)}"] = {
            k: {"seconds": min(r[k] for r in rounds)} for k in rounds[0]
        }
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("\nall goals met" if not failed else "\nsome goals not met")


if __name__ == "__main__":
    main()
