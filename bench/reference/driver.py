"""Drive the reference implementation's PostgreSQL adapter (matchbox-db 0.10.8) on bench data.

Runs inside the reference's own virtualenv (see ``bench/reference/setup.py``), never in the
project's. ``bench/store.py`` writes the data as Parquet into a directory and calls::

    .ref-venv/bin/python bench/reference/driver.py --dir DIR --host 127.0.0.1 --port 5432 \
        --user postgres --database mbref_bench [--repeat 3] [--match-keys 20]

(the password, if any, in the environment variable ``MBREF_PASSWORD``).

``DIR`` holds ``source.parquet`` (``hash``, ``keys``), ``edges.parquet`` (``left``, ``right``:
row positions into the source table, ``score``) and ``clusters.parquet`` (``parent_id``,
``child``: a row position). Positions are mapped to the reference's own cluster ids (it assigns
sequential ids to hashes) after the source insert, outside the timings. The adapter is called
directly, as its upload worker does: ``create_step`` then ``insert_*_data`` with tables of its
transfer schemas. Prints one JSON object: seconds per operation and row counts.

The database must exist and be empty; the adapter migrates it (its Alembic version table lives
in ``public``, hence a database of its own rather than a schema).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def configure(args: argparse.Namespace) -> None:
    """The reference reads its settings from ``MB__SERVER__*`` at import: set them first."""
    env = {
        "MB__SERVER__BACKEND_TYPE": "postgres",
        "MB__SERVER__TASK_RUNNER": "api",
        "MB__SERVER__REDIS_URI": "",
        "MB__SERVER__UPLOADS_EXPIRY_MINUTES": "60",
        "MB__SERVER__AUTHORISATION": "false",
        "MB__SERVER__LOG_LEVEL": "WARNING",
        "MB__SERVER__DATASTORE__CACHE_BUCKET_NAME": "unused",
        "MB__SERVER__POSTGRES__HOST": args.host,
        "MB__SERVER__POSTGRES__PORT": str(args.port),
        "MB__SERVER__POSTGRES__USER": args.user,
        "MB__SERVER__POSTGRES__PASSWORD": os.environ.get("MBREF_PASSWORD", ""),
        "MB__SERVER__POSTGRES__DATABASE": args.database,
        "MB__SERVER__POSTGRES__DB_SCHEMA": "mb",
    }
    os.environ.update(env)


def best(action, repeat: int) -> tuple[float, object]:
    """Least seconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--database", required=True)
    parser.add_argument("--repeat", type=int, default=3, help="reads: best of this many")
    parser.add_argument("--match-keys", type=int, default=20)
    args = parser.parse_args()
    configure(args)

    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq
    from matchbox.common.arrow import SCHEMA_CLUSTERS, SCHEMA_INDEX, SCHEMA_MODEL_EDGES
    from matchbox.common.datatypes import DataTypes
    from matchbox.common.dtos import (
        LocationConfig,
        ModelConfig,
        ModelType,
        QueryConfig,
        ResolverConfig,
        SourceConfig,
        SourceField,
        Step,
        StepPath,
        StepType,
    )
    from matchbox.common.hash import hash_arrow_table, hash_clusters, hash_model_results
    from matchbox.server.postgresql import MatchboxPostgres, MatchboxPostgresSettings
    from matchbox.server.postgresql.db import MBDB

    source = pq.read_table(args.dir / "source.parquet").cast(SCHEMA_INDEX)
    edges_pos = pl.read_parquet(args.dir / "edges.parquet")
    clusters_pos = pl.read_parquet(args.dir / "clusters.parquet")

    adapter = MatchboxPostgres(MatchboxPostgresSettings())
    out: dict[str, dict[str, float | int]] = {}

    adapter.create_collection("bench", [])
    run = adapter.create_run("bench").run_id
    src = StepPath(collection="bench", run=run, name="people")
    config = SourceConfig(
        location_config=LocationConfig(type="rdbms", name="bench"),
        extract_transform="SELECT key, value FROM people",
        key_field=SourceField(name="key", type=DataTypes.STRING),
        index_fields=(SourceField(name="value", type=DataTypes.STRING),),
    )
    adapter.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=hash_arrow_table(source), config=config), src
    )
    seconds, _ = best(lambda: adapter.insert_source_data(src, source), 1)
    keys = len(pa.compute.list_flatten(source.column("keys")))
    out["insert_source_data"] = {"seconds": seconds, "rows": keys}

    # Map row positions to the reference's cluster ids, by hash (not timed).
    with MBDB.get_adbc_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT cluster_id, cluster_hash FROM mb.clusters")
        ids = pl.from_arrow(cur.fetch_arrow_table())
    position = pl.DataFrame(
        {"hash": pl.Series(source.column("hash")).cast(pl.Binary)}
    ).with_row_index("pos")
    lookup = position.join(
        ids.with_columns(pl.col("cluster_hash").cast(pl.Binary)),
        left_on="hash",
        right_on="cluster_hash",
    ).select("pos", "cluster_id")

    def ids_of(frame: pl.DataFrame, column: str, name: str) -> pl.DataFrame:
        return (
            frame.join(lookup, left_on=column, right_on="pos", how="left")
            .rename({"cluster_id": name})
            .drop(column)
        )

    edges = ids_of(ids_of(edges_pos, "left", "left_id"), "right", "right_id")
    edges = edges.select("left_id", "right_id", "score").to_arrow().cast(SCHEMA_MODEL_EDGES)
    clusters = ids_of(clusters_pos, "child", "child_id").select("parent_id", "child_id")
    clusters = clusters.to_arrow().cast(SCHEMA_CLUSTERS)

    dedupe = StepPath(collection="bench", run=run, name="dedupe")
    model = ModelConfig(
        type=ModelType.DEDUPER,
        model_class="Bench",
        model_settings={},
        left_query=QueryConfig(sources=("people",)),
    )
    adapter.create_step(
        Step(step_type=StepType.MODEL, fingerprint=hash_model_results(edges), config=model),
        dedupe,
    )
    seconds, _ = best(lambda: adapter.insert_model_data(dedupe, edges), 1)
    out["insert_model_data"] = {"seconds": seconds, "rows": edges.num_rows}

    resolve = StepPath(collection="bench", run=run, name="resolve")
    resolver = ResolverConfig(resolver_class="Components", resolver_settings={}, inputs=("dedupe",))
    adapter.create_step(
        Step(step_type=StepType.RESOLVER, fingerprint=hash_clusters(clusters), config=resolver),
        resolve,
    )
    seconds, _ = best(lambda: adapter.insert_resolver_data(resolve, clusters), 1)
    out["insert_resolver_data"] = {"seconds": seconds, "rows": clusters.num_rows}

    seconds, table = best(lambda: adapter.query(src, resolve), args.repeat)
    out["query (resolver)"] = {"seconds": seconds, "rows": table.num_rows}
    seconds, table = best(lambda: adapter.query(src), args.repeat)
    out["query (no resolver)"] = {"seconds": seconds, "rows": table.num_rows}

    sample = json.loads((args.dir / "match_keys.json").read_text())[: args.match_keys]
    started = time.perf_counter()
    found = 0
    for key in sample:
        found += len(adapter.match(key, src, [src], resolve)[0].target_id)
    out["match"] = {"seconds": (time.perf_counter() - started) / len(sample), "rows": found}

    seconds, table = best(lambda: adapter.get_model_data(dedupe), args.repeat)
    out["get_model_data"] = {"seconds": seconds, "rows": table.num_rows}
    seconds, table = best(lambda: adapter.get_resolver_data(resolve), args.repeat)
    out["get_resolver_data"] = {"seconds": seconds, "rows": table.num_rows}

    MBDB._disconnect()
    MBDB._disconnect_adbc()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
