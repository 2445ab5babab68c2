"""Reading step data and entities.

``get_*_data``, ``validate_ids``, ``query`` (every key's entity id), ``match`` (one key's
entity) and ``step_statistics`` (one aggregate over the step's partition, so a check costs a
scan in PostgreSQL, not a transfer of the whole step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from matchbox_dagster.common.arrow import (
    SCHEMA_CLUSTERS,
    SCHEMA_MODEL_EDGES,
    SCHEMA_QUERY,
    SCHEMA_QUERY_WITH_LEAVES,
    SCHEMA_SOURCE_ROWS,
    conform,
)
from matchbox_dagster.common.dtos import (
    Match,
    ModelStepPath,
    ResolverStepPath,
    SourceStepPath,
    StepPath,
    StepType,
    UploadStage,
    validate_text,
)
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxInvalidData,
    MatchboxStepDeletedWhileReading,
    MatchboxStepInvalidData,
    MatchboxStepNotQueriable,
)
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import StepRow, partition_name
from matchbox_dagster.store.postgres.db import compose
from matchbox_dagster.store.postgres.partitions import (
    ROOTS,
    adbc_step,
    lock_partitions,
    read_partition,
)
from matchbox_dagster.store.postgres.source_index import key_leaf, leaf_keys

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

_KEYS = pa.schema([("leaf_id", pa.int64()), ("key", pa.large_string())])

_QUERIES = {
    StepType.SOURCE: sql.SQL(
        "SELECT count(*) AS rows, count(DISTINCT key) AS distinct_keys, "
        "count(*) FILTER (WHERE key IS NULL) AS null_keys, count(DISTINCT leaf_id) AS leaves "
        "FROM {}"
    ),
    StepType.MODEL: sql.SQL(
        "SELECT count(*) AS rows, min(score) AS min_score, max(score) AS max_score, "
        "count(*) FILTER (WHERE score < 0 OR score > 1 OR score = 'NaN') AS out_of_range "
        "FROM {}"
    ),
    StepType.RESOLVER: sql.SQL(
        "SELECT count(*) AS rows, count(DISTINCT root_id) AS clusters FROM {}"
    ),
}
"""Constant statements; only the (quoted) partition name is spliced in."""

_ROOT_OF_LEAF = "SELECT root_id FROM {schema}.{part} WHERE leaf_id = %(leaf)s"
_LEAVES_OF_ROOT = "SELECT leaf_id FROM {schema}.{part} WHERE root_id = %(root)s"
"""``match``'s probes of a resolver partition (unique index on leaf_id, index on root_id)."""
_PROBES_ONLY = (
    "SET LOCAL enable_seqscan = off; SET LOCAL jit = off; "
    "SET LOCAL max_parallel_workers_per_gather = 0"
)
"""``match``'s planner settings, for its transaction only."""


def _same_run(source: StepRow, resolver: StepRow) -> None:
    """Refuse a source read through a resolver of another run (``query`` and ``match``)."""
    if source.run_id != resolver.run_id:
        raise MatchboxStepInvalidData(
            f"Resolver {resolver.path()} belongs to another run than source {source.path()}; "
            "query a source through a resolver of the same run."
        )


def _outside_lineage(source: StepRow, resolver: StepRow) -> MatchboxStepInvalidData:
    """The error for a source the resolver does not descend from."""
    return MatchboxStepInvalidData(
        f"Resolver {resolver.path()} does not descend from source {source.path()}, so it "
        "cannot resolve its keys. Pick a resolver whose inputs read this source."
    )


class Reads:
    """Reading step data and entities."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def _read_step(
        self, path: StepPath, expected: StepType, select: str, empty: pa.Schema
    ) -> pa.Table:
        with self.db.adbc() as conn, conn.cursor() as cur:
            step = adbc_step(cur, path, expected, lock=False)
            return read_partition(cur, self.db.schema, step, select, empty)

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

    def query(
        self,
        source: SourceStepPath,
        resolver: ResolverStepPath | None = None,
        return_leaf_id: bool = False,
        limit: int | None = None,
    ) -> pa.Table:
        """Entity id of every key of ``source`` (``SCHEMA_QUERY``, + ``leaf_id`` if asked).

        Without a resolver, a key's id is its leaf cluster. With one, it is the cluster of the
        nearest resolver in the lineage that claims the key's leaf, or the leaf itself. With a
        ``limit``, rows are ordered by (id, key) so the first ``limit`` are deterministic.
        """
        if limit is not None and limit < 0:
            raise MatchboxInvalidData(f"limit must be zero or positive, not {limit}.")
        with self.db.adbc() as conn, conn.cursor() as cur:
            # One snapshot for every read below, even if a step is deleted meanwhile.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            src = adbc_step(cur, source, StepType.SOURCE, lock=False)
            self._queriable(src)
            res = None
            if resolver is not None:
                res = adbc_step(cur, resolver, StepType.RESOLVER, lock=False)
                self._queriable(res)
                self._resolves(cur, src, res)
            table = self._resolve_all(cur, src, res)
        if limit is not None:
            # The first ``limit`` rows by (id, key), sliced from the in-memory join: a SQL
            # ORDER BY … LIMIT over the two partitions was planned as a nested loop of index
            # probes (1.7–3.3 s at 1M keys, against ~0.5 s for the whole join).
            table = pl.DataFrame(pl.from_arrow(table)).sort("id", "key").head(limit).to_arrow()
        if not return_leaf_id:
            table = table.select(["id", "key"])
        schema = SCHEMA_QUERY_WITH_LEAVES if return_leaf_id else SCHEMA_QUERY
        return conform(table, schema, "query result")

    def _resolve_all(self, cur: adbc.Cursor, source: StepRow, resolver: StepRow | None) -> pa.Table:
        """Every key of a source with its id: two plain partition scans joined in memory.

        Each step's rows are read straight from its partition, named from its integer id: a
        statement without parameters streams through ``COPY … TO STDOUT (FORMAT binary)``,
        about 1.4× faster than ADBC's row-wise path for a parameterised statement, and there is
        no per-row ``step_id`` filter. The resolver's (leaf, cluster) rows are joined to the
        keys with polars (faster than PostgreSQL's hash join, whose result it then has to
        serialise row by row); the key strings stay in Arrow.
        """
        schema = self.db.schema
        keys = read_partition(cur, schema, source, "SELECT leaf_id, key FROM {part}", _KEYS)
        leaf = keys.column("leaf_id")
        if resolver is None:
            return pa.table({"id": leaf, "key": keys.column("key"), "leaf_id": leaf})
        roots = pl.from_arrow(
            read_partition(cur, schema, resolver, "SELECT leaf_id, root_id FROM {part}", ROOTS)
        )
        assert isinstance(roots, pl.DataFrame)
        leaves = pl.DataFrame({"leaf_id": pl.Series("leaf_id", leaf)})
        # Partitions are written in leaf order (source rows, a resolver's own rows), so a plain
        # scan usually returns them sorted; checked here (a scan may start mid-table when
        # another scan of it is running, or inherited rows follow the own ones), and where
        # both are sorted polars merges them (~7 ms a million rows against ~45 ms hashing).
        if leaves.get_column("leaf_id").is_sorted() and roots.get_column("leaf_id").is_sorted():
            leaves = leaves.with_columns(pl.col("leaf_id").set_sorted())
            roots = roots.with_columns(pl.col("leaf_id").set_sorted())
        ids = leaves.join(roots, on="leaf_id", how="left", maintain_order="left").select(
            pl.coalesce("root_id", "leaf_id")
        )
        return pa.table(
            {"id": ids.to_series().to_arrow(), "key": keys.column("key"), "leaf_id": leaf}
        )

    def match(
        self,
        key: str,
        source: SourceStepPath,
        targets: list[SourceStepPath],
        resolver: ResolverStepPath,
    ) -> list[Match]:
        """For each target, the keys sharing ``key``'s entity under ``resolver``.

        The source and every target must be of the resolver's run and in its lineage, as for
        :meth:`query`.
        """
        validate_text(key, "A key")
        with self.db.connection() as conn:
            src = core.step_row(conn, source, expected=StepType.SOURCE)
            res = core.step_row(conn, resolver, expected=StepType.RESOLVER)
            tgts = [core.step_row(conn, t, expected=StepType.SOURCE) for t in targets]
            for step in (src, res, *tgts):
                self._queriable(step)
            for step in (src, *tgts):
                _same_run(step, res)
            resolved = {
                int(r[0])
                for r in conn.execute(
                    "SELECT parent_id FROM step_lineage WHERE child_id = %s", (res.step_id,)
                )
            }
            for step in (src, *tgts):
                if step.step_id not in resolved:
                    raise _outside_lineage(step, res)
            lock_partitions(conn, self.db.schema, [src, res, *tgts])
            # Index probes only (source_index): the key's leaf by its key hash, the leaf's
            # cluster and that cluster's leaves in the resolver's partition, their keys in
            # each source by leaf_id. A partition loaded moments ago has no statistics yet;
            # without them the planner expects 4% of it back for a few leaves, so it might
            # scan, or gather workers and JIT-compile (~30 ms at 10M keys) for a few rows.
            conn.execute(_PROBES_ONLY)
            schema = self.db.schema
            leaf = key_leaf(conn, schema, src.data_id, key)
            if leaf is None:
                return [Match(cluster=None, source=source, target=t) for t in targets]
            rpart = partition_name(StepType.RESOLVER, res.data_id)
            row = conn.execute(
                compose(_ROOT_OF_LEAF, schema=schema, part=rpart), {"leaf": leaf}
            ).fetchone()
            cluster = leaf if row is None else int(row[0])
            if row is None:
                leaves = [leaf]
            else:
                leaves = [
                    int(r[0])
                    for r in conn.execute(
                        compose(_LEAVES_OF_ROOT, schema=schema, part=rpart), {"root": cluster}
                    )
                ]
            found = leaf_keys(conn, schema, [src.data_id, *(t.data_id for t in tgts)], leaves)
        return [
            Match(
                cluster=cluster,
                source=source,
                source_id=found[src.data_id],
                target=target,
                target_id=found[tgt.data_id],
            )
            for target, tgt in zip(targets, tgts, strict=True)
        ]

    @staticmethod
    def _queriable(step: StepRow) -> None:
        if step.stage != UploadStage.COMPLETE:
            raise MatchboxStepNotQueriable(step.path(), step.stage)

    def _resolves(self, cur: adbc.Cursor, source: StepRow, resolver: StepRow) -> None:
        _same_run(source, resolver)
        cur.execute(
            "SELECT 1 FROM step_lineage WHERE parent_id = $1 AND child_id = $2",
            parameters=(source.step_id, resolver.step_id),
        )
        if not cur.fetchall():
            raise _outside_lineage(source, resolver)

    def step_statistics(self, path: StepPath) -> dict[str, Any]:
        """Upload stage and aggregates of a step's stored rows.

        Sources: ``rows`` (keys), ``distinct_keys``, ``null_keys``, ``leaves``; models: ``rows``,
        ``min_score``, ``max_score``, ``out_of_range``; resolvers: ``rows`` (leaf assignments),
        ``clusters``. A step without data has ``rows`` 0.
        """
        with self.db.connection() as conn:
            step = core.step_row(conn, path)
            stats: dict[str, Any] = {"stage": step.stage, "step_type": step.step_type}
            if step.stage != UploadStage.COMPLETE:
                return {**stats, "rows": 0}
            table = sql.Identifier(self.db.schema, partition_name(step.step_type, step.data_id))
            try:
                cursor = conn.execute(_QUERIES[step.step_type].format(table))
            except psycopg.errors.UndefinedTable:  # dropped since the step was looked up
                raise MatchboxStepDeletedWhileReading(path) from None
            names = [d.name for d in cursor.description or []]
            row = cursor.fetchone() or ()
        values = dict(zip(names, row, strict=True))
        return {
            **stats,
            **{
                k: (float(v) if k.endswith("score") and v is not None else v)
                for k, v in values.items()
            },
        }
