"""Data big enough to kill a writer mid-load, the writer process itself, and store digests.

The writer runs in a process of its own (multiprocessing, spawn) so a test can SIGKILL it while
PostgreSQL is loading its data; it tags its connections with an ``application_name`` so the test
can see, in ``pg_stat_activity``, which statement its backend is running.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    ModelConfig,
    ModelType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
)
from tests.factories import source_config

# --- data -----------------------------------------------------------------------------------


def source_table(n: int, *, seed: int, prefix: str = "k") -> SourceHashes:
    """``n`` distinct random row hashes, one key each (``<prefix><i>``), validated."""
    raw = np.random.default_rng(seed).bytes(32 * n)
    hashes = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(raw)])
    numbers = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    keys = pc.binary_join_element_wise(prefix, numbers, "").cast(pa.large_string())
    offsets = pa.array(np.arange(n + 1, dtype=np.int64))
    return SourceHashes(
        pa.table(
            {
                "hash": hashes.cast(pa.large_binary()),
                "keys": pa.LargeListArray.from_arrays(offsets, keys),
            }
        )
    )


def leaf_ids(source: SourceHashes) -> np.ndarray:
    """The leaf ids the store gives the rows of ``source`` (content-addressed)."""
    return np.asarray(source.leaf_ids.to_numpy(zero_copy_only=False))


def edges_table(leaves: np.ndarray, *, distances: int, seed: int) -> ModelResults:
    """Pairs ``(leaf i, leaf i+d)`` for ``d`` in 1..``distances``, random scores."""
    left = np.concatenate([leaves[:-d] for d in range(1, distances + 1)])
    right = np.concatenate([leaves[d:] for d in range(1, distances + 1)])
    scores = np.random.default_rng(seed).random(len(left), dtype=np.float32)
    return ModelResults(
        pa.table(
            {
                "left_id": pa.array(left, type=pa.int64()),
                "right_id": pa.array(right, type=pa.int64()),
                "score": pa.array(scores, type=pa.float32()),
            }
        )
    )


def pairs_table(leaves: np.ndarray) -> ResolverClusters:
    """Resolver clusters of two consecutive leaves each."""
    n = len(leaves) - len(leaves) % 2
    return ResolverClusters(
        pa.table(
            {
                "parent_id": pa.array(np.arange(n, dtype=np.int64) // 2),
                "child_id": pa.array(leaves[:n], type=pa.int64()),
            }
        )
    )


def source_step(hashes: SourceHashes, name: str) -> Step:
    """The step declaring ``hashes`` as source ``name``."""
    return Step(
        step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=source_config(name)
    )


def deduper_step(edges: ModelResults, source: str) -> Step:
    """A deduper of ``source`` declaring ``edges``."""
    return Step(
        step_type=StepType.MODEL,
        fingerprint=edges.fingerprint,
        config=ModelConfig(
            type=ModelType.DEDUPER,
            model_class="FaultModel",
            model_settings={},
            left_query=QueryConfig(sources=(source,)),
        ),
    )


def resolver_step(clusters: ResolverClusters, model: str) -> Step:
    """A resolver over ``model`` declaring ``clusters``."""
    return Step(
        step_type=StepType.RESOLVER,
        fingerprint=clusters.fingerprint,
        config=ResolverConfig(inputs=(model,), resolver_settings={"thresholds": {model: 0.0}}),
    )


def save(table: pa.Table, path: str) -> None:
    """Write ``table`` as an Arrow IPC file (for the writer process)."""
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


# --- the writer process ---------------------------------------------------------------------


class Writer:
    """A writer process, started early because its imports take seconds.

    It waits for :meth:`load` (its payload is written), reads and validates the payload, reports
    :meth:`ready`, and on :meth:`go` locks its step (READY → PROCESSING) and inserts the data.
    Its connections carry ``application_name`` so ``pg_stat_activity`` shows its backend.
    """

    def __init__(self, uri: str, schema: str, kind: str, path: StepPath, file: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._load, self._ready, self._go = ctx.Event(), ctx.Event(), ctx.Event()
        events = (self._load, self._ready, self._go)
        self.process = ctx.Process(
            target=write_step,
            args=(uri, schema, kind, path.model_dump_json(), file, *events),
            daemon=True,
        )
        self.process.start()

    def load(self) -> None:
        self._load.set()

    def go(self, timeout: float = 120) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the writer was not ready after {timeout}s")
        self._go.set()

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


def write_step(
    uri: str,
    schema: str,
    kind: str,
    path_json: str,
    data_file: str,
    load: Any,
    ready: Any,
    go: Any,
) -> None:
    """Body of the writer process (see :class:`Writer`)."""
    from matchbox_dagster.common.settings import MatchboxSettings
    from matchbox_dagster.store.postgres import MatchboxPostgres

    payload_type = {"source": SourceHashes, "model": ModelResults, "resolver": ResolverClusters}
    load.wait()
    store = MatchboxPostgres(MatchboxSettings(postgres_uri=uri, postgres_schema=schema))
    with pa.memory_map(data_file) as source:
        payload = payload_type[kind](pa.ipc.open_file(source).read_all())
    path = StepPath.model_validate_json(path_json)
    ready.set()
    go.wait()
    store.lock_step_data(path)
    insert = {
        "source": store.insert_source_data,
        "model": store.insert_model_data,
        "resolver": store.insert_resolver_data,
    }[kind]
    insert(path, payload)


# --- digests --------------------------------------------------------------------------------


def digest(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    """A digest of every relation of the store's schema and of every table's rows.

    Order-independent (a sum of row hashes), so it is quick on millions of rows. The upload
    stage columns of ``steps`` are left out (a killed writer may legitimately leave its step in
    PROCESSING); tests look at stages separately.
    """
    relations = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 1",
        (schema,),
    ).fetchall()
    state = {"relations": ",".join(f"{name}:{kind}" for name, kind in relations)}
    for name, kind in relations:
        if kind != "r":
            continue
        row = (
            "(to_jsonb(t) - 'upload_stage' - 'stage_updated_at')::text"
            if name == "steps"
            else ("t::text")
        )
        count, total = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(hashtextextended(" + row + ", 0)), 0) FROM {} t"
            ).format(sql.Identifier(schema, name))
        ).fetchone()  # type: ignore[misc]
        state[name] = f"{count}:{total}"
    return state
