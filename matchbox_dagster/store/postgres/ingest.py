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
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc

from matchbox_dagster.common.arrow import (
    SCHEMA_CLUSTERS,
    SCHEMA_MODEL_EDGES,
    SCHEMA_SOURCE_ROWS,
    ModelResults,
    ResolverClusters,
    SourceHashes,
    conform,
)
from matchbox_dagster.common.dtos import (
    ModelConfig,
    ModelStepPath,
    PermissionType,
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
    MatchboxDataNotFound,
    MatchboxFingerprintMismatch,
    MatchboxLockError,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxStepExistingData,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
)
from matchbox_dagster.store.postgres import step_rows
from matchbox_dagster.store.postgres.core import (
    BULK_TABLES,
    STEP_SELECT,
    SYSTEM,
    PostgresCore,
    StepRow,
    logger,
    partition_name,
    step_from_row,
)
from matchbox_dagster.store.postgres.db import compose, quote_ident, sqlstate

BULK_READ_SETTINGS = (
    "SET LOCAL enable_nestloop = off",
    "SET LOCAL enable_mergejoin = off",
    "SET LOCAL jit = off",
)
"""Planner settings for statements that join whole partitions: the planner's join estimates on
fresh partitions are far off, and a nested loop over a million index probes is 5× slower than a
hash join; JIT compilation does not pay off for statements this short."""

_PAYLOADS: dict[StepType, type] = {
    StepType.SOURCE: SourceHashes,
    StepType.MODEL: ModelResults,
    StepType.RESOLVER: ResolverClusters,
}
"""The payload each step type takes."""

_LEAF_IDS = pa.schema([("leaf_id", pa.int64())])
_ROOTS = pa.schema([("leaf_id", pa.int64()), ("root_id", pa.int64())])


def _rows(cur: adbc.Cursor) -> list[dict[str, Any]]:
    table = cur.fetch_arrow_table()
    return table.to_pylist()


class DataMixin(PostgresCore):
    """Inserting and reading step data."""

    # --- shared transaction scaffold --------------------------------------------------------

    def _adbc_step(
        self, cur: adbc.Cursor, path: StepPath, expected: StepType, *, lock: bool
    ) -> StepRow:
        query = STEP_SELECT + (" FOR UPDATE OF s NOWAIT" if lock else "")
        try:
            cur.execute(query, parameters=(path.collection, path.run, path.name))
        except adbc.Error as exc:
            if sqlstate(exc) == "55P03":
                raise MatchboxLockError(
                    f"Step {path} is being written by another upload; only one upload of a step "
                    "can run at a time. Retry when it has finished."
                ) from None
            raise
        rows = _rows(cur)
        if not rows:
            raise MatchboxStepNotFoundError(path)
        step = step_from_row(rows[0])
        if step.step_type != expected:
            raise MatchboxStepTypeError(path, step.step_type, expected)
        return step

    def _insert(
        self,
        path: StepPath,
        expected: StepType,
        fingerprint: bytes,
        load: Callable[[adbc.Cursor, StepRow, str], int],
    ) -> None:
        self._authorise(PermissionType.WRITE, path.collection)
        started = time.perf_counter()
        with self.db.adbc() as conn, conn.cursor() as cur:
            step = self._adbc_step(cur, path, expected, lock=True)
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

    def _load_step(
        self, cur: adbc.Cursor, step: StepRow, load: Callable[[adbc.Cursor, StepRow, str], int]
    ) -> int:
        """Load a step's partition, attach it and mark the step COMPLETE; return the rows."""
        table = partition_name(step.step_type, step.step_id)
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
        self, path: StepPath, step: Step, payload: SourceHashes | ModelResults | ResolverClusters
    ) -> WriteOutcome:
        """Write a step and its data in one transaction: see :meth:`MatchboxDBAdapter.write_step`.

        Order inside the transaction: a per-path advisory lock (waiting at most
        ``settings.step_lock_timeout_seconds``), the run (shared row lock: it cannot become
        immutable meanwhile) and the step; then nothing (UNCHANGED), a new step (STORED), or the
        step and its descendants deleted and written anew (REPLACED); then READY → PROCESSING,
        the load, the partition attached, COMPLETE and one commit.
        """
        validate_name(path.collection)
        validate_name(path.name)
        step_rows.storable(step)
        expected = _PAYLOADS[step.step_type]
        if not isinstance(payload, expected):
            raise MatchboxStepInvalidData(
                f"Step {path} is a {step.step_type} step, so its payload must be "
                f"{expected.__name__}, not {type(payload).__name__}. Nothing was written."
            )
        if payload.fingerprint != step.fingerprint:
            raise MatchboxFingerprintMismatch(path, step.fingerprint, payload.fingerprint)
        self._authorise(PermissionType.WRITE, path.collection)
        load = self._loader(payload)
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
                    step_rows.delete_steps(cur, self.db.schema, doomed)
                step_rows.insert_step(cur, step, path)
            written = self._adbc_step(cur, path, step.step_type, lock=False)
            step_rows.set_stage(cur, written.step_id, UploadStage.PROCESSING)
            rows = self._load_step(cur, written, load)
            conn.commit()
        outcome = WriteOutcome.STORED if current is None or same else WriteOutcome.REPLACED
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
        timeout = self.settings.step_lock_timeout_seconds
        cur.execute("SELECT current_setting('lock_timeout') AS previous")
        previous = _rows(cur)[0]["previous"]
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
            found = _rows(cur)
        except adbc.Error as exc:
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

    def _loader(
        self, payload: SourceHashes | ModelResults | ResolverClusters
    ) -> Callable[[adbc.Cursor, StepRow, str], int]:
        """The partition load of a payload (prepared in memory before any transaction)."""
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
            data.schema, data.to_batches(max_chunksize=self.settings.batch_size)
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

    def _source_loader(self, hashes: SourceHashes) -> Callable[[adbc.Cursor, StepRow, str], int]:
        rows = source_rows(hashes)

        def load(cur: adbc.Cursor, step: StepRow, table: str) -> int:
            self._create_step_table(
                cur,
                table,
                step.step_id,
                "leaf_id bigint NOT NULL, hash bytea NOT NULL, key text NOT NULL",
            )
            self._ingest(cur, table, rows)
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

    def _model_loader(self, edges: ModelResults) -> Callable[[adbc.Cursor, StepRow, str], int]:

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

    def _input_step_ids(self, cur: adbc.Cursor, run_id: int, names: list[str]) -> dict[str, int]:
        cur.execute(
            "SELECT name, step_id FROM steps "
            "WHERE run_id = $1 AND name = ANY(string_to_array($2, chr(31)))",
            parameters=(run_id, "\x1f".join(names)),
        )
        return {r["name"]: int(r["step_id"]) for r in _rows(cur)}

    def _source_leaves(self, cur: adbc.Cursor, step_ids: list[int]) -> pl.Series:
        """The leaf id of every key of the given source steps (repeats included)."""
        reads = [
            self._read_partition(
                cur, (StepType.SOURCE, sid), "SELECT leaf_id FROM {part}", _LEAF_IDS
            ).column("leaf_id")
            for sid in step_ids
        ]
        chunks = [chunk for read in reads for chunk in read.chunks]
        return pl.Series("leaf_id", pa.chunked_array(chunks, type=pa.int64()))

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
        ids = self._input_step_ids(cur, step.run_id, names)
        valid = self._source_leaves(cur, [ids[name] for name in query.sources if name in ids])
        if query.resolver is not None:
            roots = pl.from_arrow(
                self._read_partition(
                    cur,
                    (StepType.RESOLVER, ids.get(query.resolver, -1)),
                    "SELECT leaf_id, root_id FROM {part}",
                    _ROOTS,
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
        cur.execute(
            "SELECT l.parent_id, s.step_type, l.level FROM step_lineage l "
            "JOIN steps s ON s.step_id = l.parent_id WHERE l.child_id = $1",
            parameters=(sid,),
        )
        lineage = _rows(cur)
        sources = sorted(int(r["parent_id"]) for r in lineage if r["step_type"] == "source")
        ancestors = sorted(int(r["parent_id"]) for r in lineage if r["step_type"] == "resolver")
        leaves = self._source_leaves(cur, sources).unique()
        assigned = pl.from_arrow(clusters.table)
        assert isinstance(assigned, pl.DataFrame)
        expanded = self._expand(cur, assigned, leaves, ancestors)
        if expanded is None:  # every child is a lineage leaf, listed once: nothing to check
            expanded = assigned.rename({"child_id": "leaf_id"})
        else:
            self._check_expanded(step, expanded, leaves)
        rows, parents = content_address(expanded)
        self._check_cluster_ids(cur, step, parents, leaves)
        self._create_step_table(
            cur,
            table,
            sid,
            "leaf_id bigint NOT NULL, root_id bigint NOT NULL, own boolean NOT NULL",
        )
        # In leaf order, so the unique index on leaf_id is built from presorted rows.
        own = rows.select("leaf_id", "root_id", pl.lit(True).alias("own")).sort("leaf_id")
        self._ingest(cur, table, own.to_arrow())
        if ancestors:
            # Inherit the nearest ancestor resolver's cluster for leaves this one leaves alone.
            for setting in BULK_READ_SETTINGS:
                cur.execute(setting)
            cur.execute(
                compose(
                    "INSERT INTO {table} (leaf_id, root_id, own) "
                    "SELECT DISTINCT ON (r.leaf_id) r.leaf_id, r.root_id, false "
                    "FROM resolver_leaves r JOIN step_lineage l ON l.parent_id = r.step_id "
                    "WHERE l.child_id = $1 AND NOT EXISTS "
                    "(SELECT 1 FROM {table} o WHERE o.leaf_id = r.leaf_id) "
                    "ORDER BY r.leaf_id, l.level, r.step_id",
                    table=table,
                ),
                parameters=(sid,),
            )
        cur.execute(compose("CREATE UNIQUE INDEX ON {table} (leaf_id)", table=table))
        cur.execute(compose("CREATE INDEX ON {table} (root_id)", table=table))
        # Statistics now, so match()'s index lookups on this fresh partition get sound plans
        # (whole-partition reads force hash joins and need none).
        cur.execute(compose("ANALYZE {table}", table=table))
        return rows.height

    @staticmethod
    def _check_cluster_ids(
        cur: adbc.Cursor, step: StepRow, parents: pa.Table, leaves: pl.Series
    ) -> None:
        """Refuse a cluster id that already names other content (a 63-bit id collision).

        Within the resolver, two parents' ids must differ and no parent's id may be a leaf id of
        its lineage (either would merge two clusters); across the store, an id must not be a
        judged cluster (``clusters``) with another hash. Clusters of other resolvers are not
        compared: each resolver's clusters are read only through its own partition.
        """
        ids = pl.Series("cluster_id", parents.column("cluster_id"))
        clashes = ids.filter(ids.is_duplicated() | ids.is_in(leaves.implode()))
        cur.execute("SELECT cluster_id, cluster_hash FROM clusters")
        judged = pl.from_arrow(cur.fetch_arrow_table())
        assert isinstance(judged, pl.DataFrame)
        if judged.height:
            ours = pl.from_arrow(parents.select(["cluster_id", "cluster_hash"]))
            assert isinstance(ours, pl.DataFrame)
            differs = ours.join(judged, on="cluster_id", suffix="_judged").filter(
                pl.col("cluster_hash").cast(pl.Binary)
                != pl.col("cluster_hash_judged").cast(pl.Binary)
            )
            clashes = pl.concat([clashes, differs.get_column("cluster_id")])
        if len(clashes):
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()}: {clashes.n_unique()} cluster id(s) collide "
                "with different content (a 63-bit id collision), e.g. "
                f"{clashes.unique().sort().head(5).to_list()}. Nothing was written; please "
                "report this."
            )

    @staticmethod
    def _expand(
        cur: adbc.Cursor, assigned: pl.DataFrame, leaves: pl.Series, ancestors: list[int]
    ) -> pl.DataFrame | None:
        """Distinct (``parent_id``, ``leaf_id``): a multi-leaf child expanded to its leaves.

        Children that are leaves of the lineage's sources stand for themselves; the others are
        looked up as clusters of the ancestor resolvers (index probes on each partition's
        ``root_id``) or as judged clusters (``contains``); what is none of these stays as it
        is, for :meth:`_check_expanded` to refuse. None if every child is a lineage leaf (the
        common case, where there is nothing to expand or check).
        """
        is_leaf = assigned.get_column("child_id").is_in(leaves.implode())
        if is_leaf.all():
            return None
        others = assigned.filter(~is_leaf)
        roots = "{" + ",".join(map(str, others.get_column("child_id").unique().to_list())) + "}"
        cur.execute(
            "SELECT root_id AS child_id, leaf_id FROM resolver_leaves "
            "WHERE step_id = ANY($2::bigint[]) AND root_id = ANY($1::bigint[]) "
            "UNION SELECT root, leaf FROM contains WHERE root = ANY($1::bigint[])",
            parameters=(roots, "{" + ",".join(map(str, ancestors)) + "}"),
        )
        contents = pl.from_arrow(cur.fetch_arrow_table())
        assert isinstance(contents, pl.DataFrame)
        rest = others.join(contents, on="child_id", how="left").select(
            "parent_id", pl.coalesce("leaf_id", "child_id").alias("leaf_id")
        )
        return pl.concat([assigned.filter(is_leaf).rename({"child_id": "leaf_id"}), rest]).unique()

    @staticmethod
    def _check_expanded(step: StepRow, expanded: pl.DataFrame, leaves: pl.Series) -> None:
        """Every expanded leaf is a lineage leaf, in one parent only."""
        unknown = expanded.filter(~pl.col("leaf_id").is_in(leaves.implode()))
        if unknown.height:
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()} use child id(s) "
                f"{unknown.get_column('leaf_id').unique().sort().head(5).to_list()} that are "
                "neither leaves of the sources nor clusters of the resolvers this resolver "
                "descends from."
            )
        overlapping = expanded.get_column("leaf_id").filter(
            expanded.get_column("leaf_id").is_duplicated()
        )
        if len(overlapping):
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()} overlap: leaf id(s) "
                f"{overlapping.unique().sort().head(5).to_list()} belong to more than one "
                "parent once children are expanded to leaves. Each leaf must end up in exactly "
                "one cluster."
            )

    # --- reads ------------------------------------------------------------------------------

    def _read_partition(
        self, cur: adbc.Cursor, step: StepRow | tuple[StepType, int], select: str, empty: pa.Schema
    ) -> pa.Table:
        """Rows of ``select`` over a step's own partition (``{part}`` in the SQL text).

        The partition is named from the step's integer id, so the statement needs no
        parameters: ADBC then streams the result with ``COPY … TO STDOUT (FORMAT binary)``,
        ~1.4× faster than its row-wise path for parameterised statements, and no row is
        filtered on ``step_id``. A step without a partition (no data yet) gives an empty table
        of schema ``empty``. ``step`` is a step row or a (step type, step id) pair.
        """
        step_type, step_id = step if isinstance(step, tuple) else (step.step_type, step.step_id)
        part = partition_name(step_type, step_id)
        cur.execute(
            "SELECT to_regclass($1) IS NOT NULL AS present",
            parameters=(quote_ident(self.db.schema) + "." + quote_ident(part),),
        )
        if not _rows(cur)[0]["present"]:
            return empty.empty_table()
        cur.execute(compose(select, part=part))
        return cur.fetch_arrow_table()

    def _read_step(
        self, path: StepPath, expected: StepType, select: str, empty: pa.Schema
    ) -> pa.Table:
        self._authorise(PermissionType.READ, path.collection)
        with self.db.adbc() as conn, conn.cursor() as cur:
            step = self._adbc_step(cur, path, expected, lock=False)
            return self._read_partition(cur, step, select, empty)

    def get_source_data(self, path: SourceStepPath) -> pa.Table:
        """A source step's rows: ``leaf_id``, ``hash``, ``key`` (``SCHEMA_SOURCE_ROWS``)."""
        table = self._read_step(
            path,
            StepType.SOURCE,
            "SELECT leaf_id, hash, key FROM {part}",
            SCHEMA_SOURCE_ROWS,
        )
        return conform(table, SCHEMA_SOURCE_ROWS, "source rows")

    def get_model_data(self, path: ModelStepPath) -> pa.Table:
        """A model step's scored pairs (``SCHEMA_MODEL_EDGES``)."""
        table = self._read_step(
            path,
            StepType.MODEL,
            "SELECT left_id, right_id, score FROM {part}",
            SCHEMA_MODEL_EDGES,
        )
        return conform(table, SCHEMA_MODEL_EDGES, "model edges")

    def get_resolver_data(self, path: ResolverStepPath) -> pa.Table:
        """A resolver's own clusters as (``parent_id`` = cluster id, ``child_id`` = leaf id)."""
        table = self._read_step(
            path,
            StepType.RESOLVER,
            "SELECT root_id AS parent_id, leaf_id AS child_id FROM {part} WHERE own",
            SCHEMA_CLUSTERS,
        )
        return conform(table, SCHEMA_CLUSTERS, "resolver clusters")

    def validate_ids(self, ids: list[int]) -> bool:
        """True if every id is a leaf of some source, a resolver's cluster or a judged cluster."""
        self._authorise(PermissionType.READ, SYSTEM)
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return True
        with self.db.connection() as conn:
            missing = [
                r[0]
                for r in conn.execute(
                    "SELECT i FROM unnest(%s::bigint[]) AS i WHERE NOT EXISTS "
                    "(SELECT 1 FROM clusters c WHERE c.cluster_id = i) AND NOT EXISTS "
                    "(SELECT 1 FROM resolver_leaves r WHERE r.root_id = i) AND NOT EXISTS "
                    "(SELECT 1 FROM source_rows s WHERE s.leaf_id = i)",
                    (wanted,),
                )
            ]
        if missing:
            raise MatchboxDataNotFound(
                f"{len(missing)} of {len(wanted)} cluster id(s) are not in the store, e.g. "
                f"{missing[:5]}."
            )
        return True


def source_rows(hashes: SourceHashes) -> pa.Table:
    """One row per key (``leaf_id``, ``hash``, ``key``) from validated source hashes."""
    ids = hashes.leaf_ids
    # polars' n_unique: ~20× faster than pyarrow's count_distinct on a million int64.
    if len(ids) and pl.Series(ids).n_unique() != hashes.num_rows:
        raise MatchboxStepInvalidData(
            "Two different row hashes map to the same leaf id (a 63-bit id collision); "
            "nothing was written. Please report this."
        )
    # In leaf order, so the partition is stored in leaf order and query() can merge it with a
    # resolver's rows. Hash rows are ordered by leaf id and their keys taken in that order: one
    # copy of the keys (~60 ms a million), not a sort of the flattened rows (3 copies of them).
    order = pl.Series(ids).arg_sort().to_arrow()
    keys = hashes.table.column("keys").take(order)
    lengths = pc.list_value_length(keys).to_numpy(zero_copy_only=False)
    parent = pa.array(np.repeat(order.to_numpy(), lengths))
    return pa.table(
        {
            "leaf_id": ids.take(parent),
            "hash": hashes.table.column("hash").take(parent),
            "key": pc.list_flatten(keys),
        },
        schema=SCHEMA_SOURCE_ROWS,
    )


def content_address(expanded: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
    """Each leaf's cluster (``leaf_id``, ``root_id``) and the multi-leaf clusters.

    A parent of one leaf is that leaf; a parent of several has the id of the first 63 bits of
    ``sha256`` over its sorted leaf ids as 8-byte big-endian integers (``cluster_id`` in
    :mod:`matchbox_dagster.common.fingerprint`), computed for all parents at once: the sorted
    leaves of each parent are one slice of a single big-endian buffer, hashed by polars-hash.
    Returns the rows (``leaf_id``, ``root_id``, ``multi``: whether the cluster has several
    leaves) and an Arrow table (``cluster_id``, ``cluster_hash``, ``size``) of the clusters of two
    or more leaves.
    """
    ordered = expanded.sort("parent_id", "leaf_id")
    sizes = ordered.group_by("parent_id", maintain_order=True).len()
    size = sizes.get_column("len").to_numpy().astype(np.int64)
    buffer = ordered.get_column("leaf_id").to_numpy().astype(">i8").tobytes()
    offsets = np.concatenate([[0], np.cumsum(size) * 8]).astype(np.int64)
    packed = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(size), [None, pa.py_buffer(offsets), pa.py_buffer(buffer)]
    )
    hexes = (
        pl.DataFrame({"packed": pl.Series("packed", packed)})
        .select(plh.col("packed").chash.sha2_256())
        .to_series()
        .to_arrow()
    )
    digest = _unhex(hexes, 32)  # (parents, 32) uint8
    first = np.ascontiguousarray(digest[:, :8]).view(">u8").ravel()
    cluster = (first & np.uint64(0x7FFF_FFFF_FFFF_FFFF)).astype(np.int64)
    digests = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), len(digest), [None, pa.py_buffer(digest.tobytes())]
    )
    starts = offsets[:-1] // 8
    cluster = np.where(size == 1, ordered.get_column("leaf_id").to_numpy()[starts], cluster)
    multi = size > 1
    rows = ordered.select("leaf_id").with_columns(
        pl.Series("root_id", np.repeat(cluster, size)),
        pl.Series("multi", np.repeat(multi, size)),
    )
    parents = pa.table(
        {
            "cluster_id": pa.array(cluster[multi]),
            "cluster_hash": digests.filter(pa.array(multi)).cast(pa.large_binary()),
            "size": pa.array(size[multi].astype(np.int32)),
        }
    )
    return rows, parents


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _unhex(hexes: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """Hex strings of ``2 * width`` characters each as a (rows, width) ``uint8`` array."""
    flat = pa.chunked_array([hexes]) if isinstance(hexes, pa.Array) else hexes
    flat = flat.cast(pa.large_string()).combine_chunks()
    if len(flat) == 0:
        return np.empty((0, width), dtype=np.uint8)
    offsets = np.frombuffer(flat.buffers()[1], dtype=np.int64)[flat.offset : flat.offset + 2]
    chars = np.frombuffer(flat.buffers()[2], dtype=np.uint8)
    nibbles = _HEX[chars[offsets[0] : offsets[0] + len(flat) * 2 * width]]
    if len(nibbles) != len(flat) * 2 * width or (nibbles == 255).any():
        raise ValueError("not hex digests of the expected width")
    pairs = nibbles.reshape(len(flat), width, 2)
    return (pairs[:, :, 0] << 4) | pairs[:, :, 1]
