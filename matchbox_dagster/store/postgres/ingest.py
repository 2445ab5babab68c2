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

import time
from collections.abc import Callable
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
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
    StepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxFingerprintMismatch,
    MatchboxLockError,
    MatchboxRunNotWriteable,
    MatchboxStepExistingData,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
    MatchboxStepTypeError,
)
from matchbox_dagster.store.postgres.core import (
    STEP_SELECT,
    SYSTEM,
    PostgresCore,
    StepRow,
    logger,
    partition_name,
    step_from_row,
)
from matchbox_dagster.store.postgres.db import compose, sqlstate

BULK_READ_SETTINGS = (
    "SET LOCAL enable_nestloop = off",
    "SET LOCAL enable_mergejoin = off",
    "SET LOCAL jit = off",
)
"""Planner settings for statements that join whole partitions: the planner's join estimates on
fresh partitions are far off, and a nested loop over a million index probes is 5× slower than a
hash join; JIT compilation does not pay off for statements this short."""

INPUT_IDS_OF_SOURCES = "SELECT leaf_id AS id FROM source_rows WHERE step_id = ANY($1::bigint[])"
"""The ids a model input made of sources gives its records: their leaves."""

INPUT_IDS_OF_RESOLVER = """
SELECT coalesce(r.root_id, s.leaf_id) AS id FROM source_rows s
LEFT JOIN resolver_leaves r ON r.step_id = $2 AND r.leaf_id = s.leaf_id
WHERE s.step_id = ANY($1::bigint[])
"""
"""The ids a model input resolved by a resolver gives its records."""

CREATE_PARENTS = """
CREATE TEMP TABLE mb_parents ON COMMIT DROP AS
SELECT parent_id, size, cluster_hash,
       CASE WHEN size = 1 THEN min_leaf
            ELSE (('x' || encode(substr(cluster_hash, 1, 8), 'hex'))::bit(64)::bigint
                  & 9223372036854775807)
       END AS cluster_id
FROM (
    SELECT parent_id, count(*)::int AS size, min(leaf_id) AS min_leaf,
           sha256(string_agg(int8send(leaf_id), ''::bytea ORDER BY leaf_id)) AS cluster_hash
    FROM mb_expanded GROUP BY parent_id
) g
"""
"""Content-addressed ids per parent: the first 63 bits of SHA-256 over the sorted leaf ids
(8-byte big-endian), or the leaf itself for a parent of one leaf (mirrors ``cluster_id``)."""

INSERT_CLUSTERS = """
CREATE TEMP TABLE mb_new ON COMMIT DROP AS
WITH ins AS (
    INSERT INTO clusters (cluster_id, cluster_hash, size)
    SELECT cluster_id, cluster_hash, size FROM mb_parents WHERE size > 1 ORDER BY cluster_id
    ON CONFLICT (cluster_id) DO UPDATE SET size = excluded.size
    WHERE clusters.cluster_hash IS DISTINCT FROM excluded.cluster_hash
    RETURNING cluster_id, (xmax <> 0) AS collided
)
SELECT cluster_id, collided FROM ins
"""
"""Insert new multi-leaf clusters into ``mb_new``; an existing id with another hash is a
collision (the ``DO UPDATE … WHERE`` returns it with ``xmax <> 0``)."""


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
            table = partition_name(expected, step.step_id)
            rows = load(cur, step, table)
            parent = {
                StepType.SOURCE: "source_rows",
                StepType.MODEL: "model_edges",
                StepType.RESOLVER: "resolver_leaves",
            }[expected]
            cur.execute(
                compose(
                    "ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES IN ("
                    + str(int(step.step_id))
                    + ")",
                    parent=parent,
                    table=table,
                )
            )
            cur.execute(
                "UPDATE steps SET upload_stage = 'complete', stage_updated_at = now() "
                "WHERE step_id = $1",
                parameters=(step.step_id,),
            )
            conn.commit()
        logger.info(
            "Inserted %s rows into %s step %s in %.2fs",
            f"{rows:,}",
            expected,
            path,
            time.perf_counter() - started,
        )

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

        self._insert(path, StepType.SOURCE, hashes.fingerprint, load)

    # --- models -----------------------------------------------------------------------------

    def insert_model_data(self, path: ModelStepPath, results: pa.Table | ModelResults) -> None:
        """Store a model's scored pairs.

        ``left_id`` must be an id of the model's left input and ``right_id`` of its right input
        (of its only input for a deduper): a leaf of a source input, or an entity id a resolver
        input gives its sources' keys.
        """
        edges = results if isinstance(results, ModelResults) else ModelResults(results)

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

        self._insert(path, StepType.MODEL, edges.fingerprint, load)

    def _input_step_ids(self, cur: adbc.Cursor, run_id: int, names: list[str]) -> dict[str, int]:
        cur.execute(
            "SELECT name, step_id FROM steps "
            "WHERE run_id = $1 AND name = ANY(string_to_array($2, chr(31)))",
            parameters=(run_id, "\x1f".join(names)),
        )
        return {r["name"]: int(r["step_id"]) for r in _rows(cur)}

    def _check_input_ids(
        self,
        cur: adbc.Cursor,
        step: StepRow,
        edges: pa.Table,
        columns: tuple[str, ...],
        query: QueryConfig,
    ) -> None:
        """Raise unless every id in ``columns`` is an id the input ``query`` gives its keys.

        The input's ids are read once, as Arrow, inside the insert's transaction, and membership
        is tested with a hash set: cheaper than an anti-join over unindexed partitions.
        """
        names = [*query.sources, *([query.resolver] if query.resolver else [])]
        ids = self._input_step_ids(cur, step.run_id, names)
        sources = "{" + ",".join(str(ids[name]) for name in query.sources) + "}"
        for setting in BULK_READ_SETTINGS:
            cur.execute(setting)
        if query.resolver is None:
            cur.execute(INPUT_IDS_OF_SOURCES, parameters=(sources,))
        else:
            cur.execute(INPUT_IDS_OF_RESOLVER, parameters=(sources, ids[query.resolver]))
        valid = pl.Series(cur.fetch_arrow_table().column("id"))
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

        def load(cur: adbc.Cursor, step: StepRow, table: str) -> int:
            return self._load_resolver(cur, step, table, clusters)

        self._insert(path, StepType.RESOLVER, clusters.fingerprint, load)

    def _load_resolver(
        self, cur: adbc.Cursor, step: StepRow, table: str, clusters: ResolverClusters
    ) -> int:
        sid = int(step.step_id)
        cur.execute(
            "CREATE TEMP TABLE mb_incoming (parent_id bigint NOT NULL, child_id bigint NOT NULL) "
            "ON COMMIT DROP"
        )
        self._ingest(cur, "mb_incoming", clusters.table, temporary=True)
        # Expand children to leaves: a multi-leaf cluster through `contains`, a leaf to itself.
        cur.execute(
            "CREATE TEMP TABLE mb_expanded ON COMMIT DROP AS "
            "SELECT DISTINCT i.parent_id, coalesce(c.leaf, i.child_id) AS leaf_id "
            "FROM mb_incoming i LEFT JOIN contains c ON c.root = i.child_id"
        )
        cur.execute("ANALYZE mb_expanded")
        for setting in BULK_READ_SETTINGS:
            cur.execute(setting)
        cur.execute(
            "SELECT string_agg(l.parent_id::text, ',') AS ids FROM step_lineage l "
            "JOIN steps s ON s.step_id = l.parent_id WHERE l.child_id = $1 "
            "AND s.step_type = 'source'",
            parameters=(sid,),
        )
        lineage_sources = "{" + (_rows(cur)[0]["ids"] or "") + "}"
        # No LIMIT here: with one, the planner picks a nested loop over unindexed partitions.
        cur.execute(
            "SELECT (array_agg(e.leaf_id))[1:5] AS ids FROM mb_expanded e WHERE NOT EXISTS "
            "(SELECT 1 FROM source_rows s WHERE s.step_id = ANY($1::bigint[]) "
            "AND s.leaf_id = e.leaf_id)",
            parameters=(lineage_sources,),
        )
        unknown = _rows(cur)[0]["ids"] or []
        if unknown:
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()} use child id(s) {unknown} that are neither "
                "leaves of the sources nor clusters of the resolvers this resolver descends from."
            )
        cur.execute(
            "SELECT (array_agg(leaf_id))[1:5] AS ids FROM (SELECT leaf_id FROM mb_expanded "
            "GROUP BY leaf_id HAVING count(*) > 1) o"
        )
        overlapping = _rows(cur)[0]["ids"] or []
        if overlapping:
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()} overlap: leaf id(s) {overlapping} belong to "
                "more than one parent once children are expanded to leaves. Each leaf must end "
                "up in exactly one cluster."
            )
        cur.execute(CREATE_PARENTS)
        # New multi-leaf clusters; an id already held by other content is a collision.
        cur.execute(INSERT_CLUSTERS)
        cur.execute("SELECT count(*) FILTER (WHERE collided) AS collided FROM mb_new")
        counts = _rows(cur)[0]
        if counts["collided"]:
            raise MatchboxStepInvalidData(
                f"Resolver clusters for {step.path()}: {counts['collided']} cluster id(s) collide "
                "with different content already in the store (a 63-bit id collision). Nothing "
                "was written; please report this."
            )
        # Contents of clusters that existed before are already recorded (content addressing).
        cur.execute(
            "INSERT INTO contains (root, leaf) "
            "SELECT p.cluster_id, e.leaf_id FROM mb_expanded e JOIN mb_parents p USING (parent_id) "
            "JOIN mb_new n ON n.cluster_id = p.cluster_id ORDER BY 1, 2"
        )
        self._create_step_table(
            cur,
            table,
            sid,
            "leaf_id bigint NOT NULL, root_id bigint NOT NULL, own boolean NOT NULL",
        )
        cur.execute(
            compose(
                "INSERT INTO {table} (leaf_id, root_id, own) SELECT e.leaf_id, p.cluster_id, true "
                "FROM mb_expanded e JOIN mb_parents p USING (parent_id)",
                table=table,
            )
        )
        own = cur.rowcount
        # Inherit the nearest ancestor resolver's cluster for leaves this one leaves alone.
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
        return max(own, 0)

    # --- reads ------------------------------------------------------------------------------

    def _read_step(self, path: StepPath, expected: StepType, select: str) -> pa.Table:
        self._authorise(PermissionType.READ, path.collection)
        with self.db.adbc() as conn, conn.cursor() as cur:
            step = self._adbc_step(cur, path, expected, lock=False)
            cur.execute(select, parameters=(step.step_id,))
            return cur.fetch_arrow_table()

    def get_source_data(self, path: SourceStepPath) -> pa.Table:
        """A source step's rows: ``leaf_id``, ``hash``, ``key`` (``SCHEMA_SOURCE_ROWS``)."""
        table = self._read_step(
            path,
            StepType.SOURCE,
            "SELECT leaf_id, hash, key FROM source_rows WHERE step_id = $1",
        )
        return conform(table, SCHEMA_SOURCE_ROWS, "source rows")

    def get_model_data(self, path: ModelStepPath) -> pa.Table:
        """A model step's scored pairs (``SCHEMA_MODEL_EDGES``)."""
        table = self._read_step(
            path,
            StepType.MODEL,
            "SELECT left_id, right_id, score FROM model_edges WHERE step_id = $1",
        )
        return conform(table, SCHEMA_MODEL_EDGES, "model edges")

    def get_resolver_data(self, path: ResolverStepPath) -> pa.Table:
        """A resolver's own clusters as (``parent_id`` = cluster id, ``child_id`` = leaf id)."""
        table = self._read_step(
            path,
            StepType.RESOLVER,
            "SELECT root_id AS parent_id, leaf_id AS child_id FROM resolver_leaves "
            "WHERE step_id = $1 AND own",
        )
        return conform(table, SCHEMA_CLUSTERS, "resolver clusters")

    def validate_ids(self, ids: list[int]) -> bool:
        """True if every id is a leaf of some source or a multi-leaf cluster."""
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
    if len(ids) and pc.count_distinct(ids).as_py() != hashes.num_rows:
        raise MatchboxStepInvalidData(
            "Two different row hashes map to the same leaf id (a 63-bit id collision); "
            "nothing was written. Please report this."
        )
    frame = pl.from_arrow(hashes.table)
    assert isinstance(frame, pl.DataFrame)
    rows = frame.with_columns(pl.Series("leaf_id", ids)).explode("keys")
    return rows.select("leaf_id", "hash", pl.col("keys").alias("key")).to_arrow()
