"""Bulk writes and reads of step data: source rows, model edges, resolver clusters.

Every insert is ONE transaction on one ADBC connection:

1. lock the step row (``FOR UPDATE NOWAIT``: a concurrent upload fails at once) and check the
   run is mutable, the step holds no data and the data's fingerprint is the declared one;
2. create the step's own table (with a ``CHECK`` on its step id), stream the Arrow data into it
   with ``COPY … (FORMAT binary)`` (ADBC ingest) in batches of ``batch_size`` rows;
3. validate with set-based SQL (ids that must exist), build indexes after the load, attach the
   table as a partition of the shared table (no validation scan: the CHECK proves it) and set the
   stage to COMPLETE.

A failure at any point rolls everything back: the store is as it was before the call.
A source partition's lookup indexes for ``match`` are not built here but afterwards, in their
own transaction, by ``index_for_match`` (``source_index``): the insert stays a bulk load.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import polars as pl
import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    ModelConfig,
    ModelStepPath,
    QueryConfig,
    ResolverStepPath,
    SourceStepPath,
    Step,
    StepPath,
    StepType,
    UploadStage,
    WriteOutcome,
    validate_name,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxFingerprintMismatch,
    MatchboxLockError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepExistingData,
    MatchboxStepInvalidData,
)
from matchbox_dagster.common.reuse import ReusedStep
from matchbox_dagster.store.postgres import core, data_refs, reuse, step_rows
from matchbox_dagster.store.postgres.clusters import (
    check_cluster_ids,
    check_expanded,
    check_inputs_complete,
    content_address,
    expand,
    inherit,
    source_rows,
)
from matchbox_dagster.store.postgres.core import (
    BULK_TABLES,
    STEP_SELECT,
    StepRow,
    logger,
    partition_name,
    step_from_row,
)
from matchbox_dagster.store.postgres.db import adbc_dbapi, compose, sqlstate
from matchbox_dagster.store.postgres.partitions import (
    ROOTS,
    adbc_step,
    dict_rows,
    input_step_ids,
    read_partition,
    source_leaves,
)

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

PAYLOADS: dict[StepType, type] = {
    StepType.SOURCE: SourceHashes,
    StepType.MODEL: ModelResults,
    StepType.RESOLVER: ResolverClusters,
}
"""The payload each step type takes."""

Load: TypeAlias = "Callable[[adbc.Cursor, StepRow, str], int]"
"""Loads a step's partition (named by the last argument); returns the rows loaded."""


class Writes:
    """Inserting step data, and ``write_step``."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def _insert(
        self,
        path: StepPath,
        expected: StepType,
        fingerprint: bytes,
        load: Load,
    ) -> None:
        started = time.perf_counter()
        with self.db.adbc() as conn, conn.cursor() as cur:
            step = adbc_step(cur, path, expected, lock=True)
            if not step.is_mutable:
                raise MatchboxRunNotWriteable(
                    path.collection, path.run, f"insert data into {path.name!r}"
                )
            if step.stage == UploadStage.COMPLETE:
                raise MatchboxStepExistingData(path)
            if fingerprint != step.fingerprint:
                raise MatchboxFingerprintMismatch(path, step.fingerprint, fingerprint)
            rows = self._load_step(cur, step, load)
            conn.commit()
        logger.info(
            "Inserted %s rows into %s step %s in %.2fs",
            f"{rows:,}",
            expected,
            path,
            time.perf_counter() - started,
        )

    def _load_step(self, cur: adbc.Cursor, step: StepRow, load: Load) -> int:
        """Load a step's partition, attach it and mark the step COMPLETE; return the rows."""
        table = partition_name(step.step_type, step.step_id)
        if step.step_type != StepType.SOURCE:
            check_inputs_complete(cur, step)
        rows = load(cur, step, table)
        cur.execute(
            compose(
                "ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES IN ("
                + str(int(step.step_id))
                + ")",
                parent=BULK_TABLES[step.step_type],
                table=table,
            )
        )
        step_rows.set_stage(cur, step.step_id, UploadStage.COMPLETE)
        return rows

    # --- one call writes a step -------------------------------------------------------------

    def write_step(
        self,
        path: StepPath,
        step: Step,
        payload: SourceHashes | ModelResults | ResolverClusters | ReusedStep,
    ) -> WriteOutcome:
        """Write a step and its data in one transaction: see :meth:`MatchboxDBAdapter.write_step`.

        Order inside the transaction: a per-path advisory lock (waiting at most
        ``settings.step_lock_timeout_seconds``), the run (shared row lock: it cannot become
        immutable meanwhile) and the step; then nothing (UNCHANGED), a new step (STORED), or the
        step and its descendants deleted and written anew (REPLACED); then either the step
        points at identical stored data (SHARED: :mod:`.reuse`), or READY → PROCESSING, the
        load, the partition attached, COMPLETE; and one commit.
        """
        validate_name(path.collection)
        validate_name(path.name)
        step_rows.storable(step)
        expected = PAYLOADS[step.step_type]
        if not isinstance(payload, expected | ReusedStep):
            raise MatchboxStepInvalidData(
                f"Step {path} is a {step.step_type} step, so its payload must be "
                f"{expected.__name__} or ReusedStep, not {type(payload).__name__}. Nothing was "
                "written."
            )
        if not isinstance(payload, ReusedStep) and payload.fingerprint != step.fingerprint:
            raise MatchboxFingerprintMismatch(path, step.fingerprint, payload.fingerprint)
        started = time.perf_counter()
        with self.db.adbc() as conn, conn.cursor() as cur:
            mutable, current = self._lock_path(cur, path)
            if current is not None and step_rows.step_dto(current).config == step.config:
                same = current.fingerprint == step.fingerprint
            else:
                same = False
            if same and current is not None and current.stage == UploadStage.COMPLETE:
                return WriteOutcome.UNCHANGED
            if not mutable:
                raise MatchboxRunNotWriteable(
                    path.collection,
                    path.run,
                    f"write step {path.name!r} with new data or config (data of an immutable "
                    "run is fixed)",
                )
            if current is None or not same:
                if current is not None:
                    doomed = step_rows.step_tree(cur, current.step_id)
                    data_refs.delete_step_rows(cur, self.db.schema, [d[0] for d in doomed])
                step_rows.insert_step(cur, step, path)
            written = adbc_step(cur, path, step.step_type, lock=False)
            shared = reuse.data_to_share(cur, self.db.schema, written, payload)
            if shared is not None:
                reuse.share(cur, written, shared)
                rows = 0
            else:
                assert not isinstance(payload, ReusedStep)  # a ReusedStep shares or raises
                load = self._loader(payload)  # only now: unchanged or shared data needs none
                step_rows.set_stage(cur, written.step_id, UploadStage.PROCESSING)
                rows = self._load_step(cur, written, load)
            conn.commit()
        outcome = WriteOutcome.STORED if current is None or same else WriteOutcome.REPLACED
        outcome = WriteOutcome.SHARED if shared is not None else outcome
        logger.info(
            "Wrote %s step %s (%s, %s rows) in %.2fs",
            step.step_type,
            path,
            outcome,
            f"{rows:,}",
            time.perf_counter() - started,
        )
        return outcome

    def _lock_path(self, cur: adbc.Cursor, path: StepPath) -> tuple[bool, StepRow | None]:
        """Take the path's write lock (bounded wait); return the run's mutability and the step.

        The lock is transaction-level and keyed by the schema and the path, bound as one
        parameter; ``lock_timeout`` bounds the waits for it and for the run's and step's rows,
        then goes back to what it was, so the load itself is never cut short.
        """
        timeout = self.ctx.settings.step_lock_timeout_seconds
        cur.execute("SELECT current_setting('lock_timeout') AS previous")
        previous = dict_rows(cur)[0]["previous"]
        cur.execute(
            "SELECT set_config('lock_timeout', $1, true) AS t",
            parameters=(f"{max(1, round(timeout * 1000))}ms",),
        )
        cur.fetchall()
        key = json.dumps([self.db.schema, path.collection, path.run, path.name])
        try:
            cur.execute(
                "SELECT true AS locked FROM pg_advisory_xact_lock(hashtextextended($1, 0))",
                parameters=(key,),
            )
            cur.fetchall()
            cur.execute(
                "SELECT r.is_mutable FROM runs r JOIN collections c USING (collection_id) "
                "WHERE c.name = $1 AND r.run_id = $2 FOR SHARE OF r",
                parameters=(path.collection, path.run),
            )
            run = cur.fetchall()
            if not run:
                cur.execute(
                    "SELECT 1 AS found FROM collections WHERE name = $1",
                    parameters=(path.collection,),
                )
                if not cur.fetchall():
                    raise MatchboxCollectionNotFoundError(path.collection)
                raise MatchboxRunNotFoundError(path.collection, path.run)
            cur.execute(
                STEP_SELECT + " FOR NO KEY UPDATE OF s",
                parameters=(path.collection, path.run, path.name),
            )
            found = dict_rows(cur)
        except adbc_dbapi().Error as exc:
            if sqlstate(exc) == "55P03":
                raise MatchboxLockError(
                    f"Step {path} is being written by another call, and it was still being "
                    f"written after {timeout:g}s (MATCHBOX_STEP_LOCK_TIMEOUT_SECONDS). Nothing "
                    "was written. Retry when that write has finished, or raise the setting if "
                    "writes of this step take longer."
                ) from None
            raise
        cur.execute("SELECT set_config('lock_timeout', $1, true) AS t", parameters=(previous,))
        cur.fetchall()
        return bool(run[0][0]), step_from_row(found[0]) if found else None

    def _loader(self, payload: SourceHashes | ModelResults | ResolverClusters) -> Load:
        """The partition load of a payload (prepared in memory, once the write needs it)."""
        if isinstance(payload, SourceHashes):
            return self._source_loader(payload)
        if isinstance(payload, ModelResults):
            return self._model_loader(payload)
        return functools.partial(self._load_resolver, clusters=payload)

    def _create_step_table(self, cur: adbc.Cursor, table: str, step_id: int, columns: str) -> None:
        sid = str(int(step_id))
        cur.execute(
            compose(
                "CREATE TABLE {table} (step_id bigint NOT NULL DEFAULT "
                + sid
                + " CHECK (step_id = "
                + sid
                + "), "
                + columns
                + ")",
                table=table,
            )
        )

    def _ingest(
        self, cur: adbc.Cursor, table: str, data: pa.Table, *, temporary: bool = False
    ) -> None:
        reader = pa.RecordBatchReader.from_batches(
            data.schema, data.to_batches(max_chunksize=self.ctx.settings.batch_size)
        )
        if temporary:
            cur.adbc_ingest(table, reader, mode="append", temporary=True)
        else:
            cur.adbc_ingest(table, reader, mode="append", db_schema_name=self.db.schema)

    # --- sources ----------------------------------------------------------------------------

    def insert_source_data(
        self, path: SourceStepPath, data_hashes: pa.Table | SourceHashes
    ) -> None:
        """Index a source's row hashes and keys.

        Each distinct row hash becomes a leaf cluster whose id is derived from the hash (so
        identical rows share a leaf in every source and run); each key is stored once, under its
        row's leaf. Raises ``MatchboxInvalidData`` for a bad table, ``MatchboxFingerprintMismatch``
        if the data is not what the step declared, ``MatchboxStepExistingData`` if the step holds
        data, ``MatchboxRunNotWriteable`` on an immutable run.
        """
        hashes = data_hashes if isinstance(data_hashes, SourceHashes) else SourceHashes(data_hashes)
        load = self._source_loader(hashes)
        self._insert(path, StepType.SOURCE, hashes.fingerprint, load)

    def _source_loader(self, hashes: SourceHashes) -> Load:
        rows = source_rows(hashes)

        def load(cur: adbc.Cursor, step: StepRow, table: str) -> int:
            self._create_step_table(
                cur,
                table,
                step.step_id,
                "leaf_id bigint NOT NULL, hash bytea NOT NULL, key text NOT NULL",
            )
            self._ingest(cur, table, rows)  # match's indexes: later, index_for_match
            return rows.num_rows

        return load

    # --- models -----------------------------------------------------------------------------

    def insert_model_data(self, path: ModelStepPath, results: pa.Table | ModelResults) -> None:
        """Store a model's scored pairs.

        ``left_id`` must be an id of the model's left input and ``right_id`` of its right input
        (of its only input for a deduper): a leaf of a source input, or an entity id a resolver
        input gives its sources' keys.
        """
        edges = results if isinstance(results, ModelResults) else ModelResults(results)
        load = self._model_loader(edges)
        self._insert(path, StepType.MODEL, edges.fingerprint, load)

    def _model_loader(self, edges: ModelResults) -> Load:

        def load(cur: adbc.Cursor, step: StepRow, table: str) -> int:
            if edges.num_rows:
                config = ModelConfig.model_validate(step.config)
                if config.right_query is None:
                    checks = [(("left_id", "right_id"), config.left_query)]
                else:
                    checks = [
                        (("left_id",), config.left_query),
                        (("right_id",), config.right_query),
                    ]
                for columns, query in checks:
                    self._check_input_ids(cur, step, edges.table, columns, query)
            self._create_step_table(
                cur,
                table,
                step.step_id,
                "left_id bigint NOT NULL, right_id bigint NOT NULL, "
                "score real NOT NULL CONSTRAINT model_edges_score_check "
                "CHECK (score >= 0 AND score <= 1)",
            )
            self._ingest(cur, table, edges.table)
            return edges.num_rows

        return load

    def _check_input_ids(
        self,
        cur: adbc.Cursor,
        step: StepRow,
        edges: pa.Table,
        columns: tuple[str, ...],
        query: QueryConfig,
    ) -> None:
        """Raise unless every id in ``columns`` is an id the input ``query`` gives its keys.

        The input's ids are computed in memory from its partitions, read as Arrow inside the
        insert's transaction (the sources' leaves; through a resolver, its cluster where it
        claims a leaf), and membership is tested with a hash set: cheaper than an anti-join
        over unindexed partitions.
        """
        names = [*query.sources, *([query.resolver] if query.resolver else [])]
        ids = input_step_ids(cur, step.run_id, names)
        valid = source_leaves(
            cur, self.db.schema, [ids[name] for name in query.sources if name in ids]
        )
        if query.resolver is not None:
            roots = pl.from_arrow(
                read_partition(
                    cur,
                    self.db.schema,
                    (StepType.RESOLVER, ids.get(query.resolver, -1)),
                    "SELECT leaf_id, root_id FROM {part}",
                    ROOTS,
                )
            )
            assert isinstance(roots, pl.DataFrame)
            valid = (
                valid.unique()
                .to_frame()
                .join(roots, on="leaf_id", how="left")
                .select(pl.coalesce("root_id", "leaf_id"))
                .to_series()
            )
        used = pl.concat([pl.Series(edges.column(c)) for c in columns])
        unknown = used.filter(~used.is_in(valid.implode())).unique().sort()
        if len(unknown):
            where = query.resolver or ", ".join(query.sources)
            raise MatchboxStepInvalidData(
                f"Model results for {step.path()} use {' or '.join(columns)} value(s) "
                f"{unknown.head(5).to_list()} that are not ids of its input {where!r} in run "
                f"{step.run_id}. Score pairs of the ids that input gives its records (leaf "
                "ids of a source, query() ids of a resolver)."
            )

    # --- resolvers --------------------------------------------------------------------------

    def insert_resolver_data(
        self, path: ResolverStepPath, data: pa.Table | ResolverClusters
    ) -> None:
        """Store a resolver's clusters.

        Each ``child_id`` is a leaf of a source in the resolver's lineage or a cluster of an
        earlier resolver; children are expanded to leaves, and each parent becomes a
        content-addressed cluster of its leaves (a parent of one leaf is that leaf). A leaf may
        belong to one parent only. Leaves the resolver does not claim keep the cluster of the
        nearest ancestor resolver that does, so ``query`` needs one join.
        """
        clusters = data if isinstance(data, ResolverClusters) else ResolverClusters(data)

        load = functools.partial(self._load_resolver, clusters=clusters)
        self._insert(path, StepType.RESOLVER, clusters.fingerprint, load)

    def _load_resolver(
        self, cur: adbc.Cursor, step: StepRow, table: str, clusters: ResolverClusters
    ) -> int:
        """Expand, check and content-address the clusters in memory; COPY one partition.

        Reads (as Arrow, in the insert's transaction) the leaves of the lineage's sources and,
        for children that are not such leaves, their leaves from the ancestor resolvers (or a
        judged cluster); expands children to leaves, checks them, and computes every parent's
        cluster id with polars. The resolver's partition, one row per leaf, is then the only
        record of its clusters: nothing is written to the shared ``clusters``/``contains``
        tables (they hold the clusters judgements refer to), so the load is one ``COPY`` plus
        the indexes built after it.
        """
        sid = int(step.step_id)
        # Partitions are named by data ids; ancestors keep their (level, step id) order.
        cur.execute(
            "SELECT s.data_id, s.step_type, l.level FROM step_lineage l "
            "JOIN steps s ON s.step_id = l.parent_id WHERE l.child_id = $1 "
            "ORDER BY l.level, s.step_id",
            parameters=(sid,),
        )
        lineage = dict_rows(cur)
        sources = sorted(int(r["data_id"]) for r in lineage if r["step_type"] == "source")
        ancestors = [
            (int(r["data_id"]), int(r["level"])) for r in lineage if r["step_type"] == "resolver"
        ]
        leaves = source_leaves(cur, self.db.schema, sources).unique()
        assigned = pl.from_arrow(clusters.table)
        assert isinstance(assigned, pl.DataFrame)
        expanded = expand(cur, assigned, leaves, [a for a, _ in ancestors])
        if expanded is None:  # every child is a lineage leaf, listed once: nothing to check
            expanded = assigned.rename({"child_id": "leaf_id"})
        else:
            check_expanded(step, expanded, leaves)
        own, parents = content_address(expanded)
        # Leaves left alone keep their nearest ancestor's cluster, re-addressed where this
        # resolver took part of it (so every id is the content address of its leaves).
        rows, readdressed = inherit(cur, self.db.schema, own, ancestors)
        check_cluster_ids(cur, step, pa.concat_tables([parents, readdressed]), leaves)
        self._create_step_table(
            cur,
            table,
            sid,
            "leaf_id bigint NOT NULL, root_id bigint NOT NULL, own boolean NOT NULL",
        )
        # In leaf order, so the unique index on leaf_id is built from presorted rows.
        self._ingest(cur, table, rows.to_arrow())
        cur.execute(compose("CREATE UNIQUE INDEX ON {table} (leaf_id)", table=table))
        cur.execute(compose("CREATE INDEX ON {table} (root_id)", table=table))
        # Statistics now, so match()'s index lookups on this fresh partition get sound plans
        # (whole-partition reads force hash joins and need none).
        cur.execute(compose("ANALYZE {table}", table=table))
        return own.height
