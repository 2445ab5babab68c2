"""Ingest and query throughput of the store against raw PostgreSQL, measured in the same run.

For each size N (default 1M and 5M keys) in a throwaway schema:

* source ingest: ``insert_source_data`` of N keys (about 0.9 N distinct row hashes, 16-byte
  digests) vs a raw ``COPY … (FORMAT binary)`` (ADBC ingest) of the same N (hash, key) rows into
  a bare table;
* model edges: ``insert_model_data`` of ~N scored pairs vs a raw binary COPY of the same rows;
* query: ``query(source, resolver)`` of N keys through a resolver vs a plain ``SELECT`` of the
  same N (id, key) rows into Arrow.

Ratios above 1 mean the store is slower than the baseline for reads, and for writes the ratio is
store rows/s ÷ raw rows/s (goal ≥ 0.5). Run: ``python bench/ingest.py [--sizes 1000000 5000000]``
(uses MATCHBOX_POSTGRES_URI, else 127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import adbc_driver_postgresql.dbapi as adbc
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

URI = os.environ.get("MATCHBOX_POSTGRES_URI", "postgresql://postgres@127.0.0.1:5432/test")


def make_source(n: int, seed: int = 0) -> pa.Table:
    """N keys over ~0.9 N distinct 16-byte hashes (10% of hashes carry two keys)."""
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
    return pa.table({"hash": hash_arr, "keys": pa.LargeListArray.from_arrays(offsets, keys)})


def raw_copy(table: pa.Table, name: str) -> float:
    """Seconds to COPY BINARY ``table`` into a new bare table (ADBC ingest), committed."""
    with adbc.connect(URI) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS public."{name}"')
        conn.commit()
        started = time.perf_counter()
        cur.adbc_ingest(name, table, mode="create")
        conn.commit()
        return time.perf_counter() - started


def plain_select(name: str) -> tuple[float, int]:
    """Seconds to SELECT every row of a bare table into Arrow."""
    with adbc.connect(URI) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(f'SELECT * FROM public."{name}"')
        rows = cur.fetch_arrow_table().num_rows
        return time.perf_counter() - started, rows


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench(n: int) -> list[tuple[str, float, float, str]]:
    schema = f"mbbench_{uuid.uuid4().hex[:8]}"
    store = MatchboxPostgres(MatchboxSettings(postgres_uri=URI, postgres_schema=schema))
    results = []
    try:
        store.create_collection("bench")
        run = store.create_run("bench").run_id
        source = make_source(n)
        hashes = SourceHashes(source)
        config = SourceConfig(
            location_config=LocationConfig(type="rdbms", name="bench"),
            key_field=SourceField(name="key"),
            index_fields=(SourceField(name="value"),),
        )
        src = StepPath(collection="bench", run=run, name="people")
        store.create_step(
            Step(step_type="source", fingerprint=hashes.fingerprint, config=config), src
        )
        flat = store_rows = None
        ours = timed(lambda: store.insert_source_data(src, source))
        store_rows = store.get_source_data(src)
        flat = store_rows.select(["hash", "key"])
        raw = raw_copy(flat, f"bench_raw_source_{n}")
        results.append(("insert_source_data", n / ours, n / raw, "rows/s"))

        leaves = np.unique(store_rows.column("leaf_id").to_numpy())
        m = len(leaves) - 1
        edges = pa.table(
            {
                "left_id": pa.array(leaves[:-1]),
                "right_id": pa.array(leaves[1:]),
                "score": pa.array(np.random.default_rng(1).random(m, dtype=np.float32)),
            }
        )
        model = ModelResults(edges)
        mp = StepPath(collection="bench", run=run, name="dedupe")
        store.create_step(
            Step(
                step_type="model",
                fingerprint=model.fingerprint,
                config=ModelConfig(
                    type="deduper", model_class="Bench", left_query=QueryConfig(sources=("people",))
                ),
            ),
            mp,
        )
        ours = timed(lambda: store.insert_model_data(mp, edges))
        raw = raw_copy(edges, f"bench_raw_edges_{n}")
        results.append(("insert_model_data", m / ours, m / raw, "rows/s"))

        pairs = len(leaves) // 2
        clusters = pa.table(
            {
                "parent_id": pa.array(np.repeat(np.arange(pairs), 2)),
                "child_id": pa.array(leaves[: 2 * pairs]),
            }
        )
        rc = ResolverClusters(clusters)
        rp = StepPath(collection="bench", run=run, name="resolve")
        store.create_step(
            Step(
                step_type="resolver",
                fingerprint=rc.fingerprint,
                config=ResolverConfig(inputs=("dedupe",)),
            ),
            rp,
        )
        ours = timed(lambda: store.insert_resolver_data(rp, clusters))
        results.append(("insert_resolver_data", 2 * pairs / ours, float("nan"), "rows/s"))

        store.query(src, rp, limit=10)  # warm the catalogue
        ours = timed(lambda: store.query(src, rp))
        id_key = pa.table({"id": store_rows.column("leaf_id"), "key": store_rows.column("key")})
        raw_copy(id_key, f"bench_raw_query_{n}")
        plain, rows = plain_select(f"bench_raw_query_{n}")
        assert rows == n
        results.append(("query (via resolver)", ours, plain, "s"))
        ours = timed(lambda: store.query(src))
        results.append(("query (no resolver)", ours, plain, "s"))
    finally:
        store.close()
        with psycopg.connect(URI, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            for kind in ("source", "edges", "query"):
                conn.execute(f'DROP TABLE IF EXISTS public."bench_raw_{kind}_{n}"')
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    args = parser.parse_args()
    print(f"{'N':>10}  {'operation':<22} {'store':>14} {'baseline':>14}  ratio   (goal)")
    for n in args.sizes:
        for name, ours, base, unit in bench(n):
            if unit == "rows/s":
                ratio = ours / base if base == base else float("nan")
                goal = "≥ 0.5" if base == base else ""
                print(
                    f"{n:>10,}  {name:<22} {ours:>12,.0f}/s {base:>12,.0f}/s  {ratio:5.2f}   {goal}"
                )
            else:
                print(
                    f"{n:>10,}  {name:<22} {ours:>13.2f}s {base:>13.2f}s  "
                    f"{ours / base:5.2f}×  (≤ 2×)"
                )


if __name__ == "__main__":
    main()
