"""Reading entities: ``query`` (every key's entity id) and ``match`` (one key's entity)."""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pyarrow as pa

from matchbox_dagster.common.arrow import SCHEMA_QUERY, SCHEMA_QUERY_WITH_LEAVES, conform
from matchbox_dagster.common.dtos import (
    Match,
    PermissionType,
    ResolverStepPath,
    SourceStepPath,
    StepType,
    UploadStage,
)
from matchbox_dagster.common.errors import (
    MatchboxInvalidData,
    MatchboxStepInvalidData,
    MatchboxStepNotQueriable,
)
from matchbox_dagster.store.postgres.core import StepRow
from matchbox_dagster.store.postgres.ingest import DataMixin

_KEYS = pa.schema([("leaf_id", pa.int64()), ("key", pa.large_string())])
_ROOTS = pa.schema([("leaf_id", pa.int64()), ("root_id", pa.int64())])


class QueryMixin(DataMixin):
    """query and match."""

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
        self._authorise(PermissionType.READ, source.collection)
        if limit is not None and limit < 0:
            raise MatchboxInvalidData(f"limit must be zero or positive, not {limit}.")
        with self.db.adbc() as conn, conn.cursor() as cur:
            # One snapshot for every read below, even if a step is deleted meanwhile.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            src = self._adbc_step(cur, source, StepType.SOURCE, lock=False)
            self._queriable(src)
            res = None
            if resolver is not None:
                res = self._adbc_step(cur, resolver, StepType.RESOLVER, lock=False)
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
        keys = self._read_partition(cur, source, "SELECT leaf_id, key FROM {part}", _KEYS)
        leaf = keys.column("leaf_id")
        if resolver is None:
            return pa.table({"id": leaf, "key": keys.column("key"), "leaf_id": leaf})
        roots = pl.from_arrow(
            self._read_partition(cur, resolver, "SELECT leaf_id, root_id FROM {part}", _ROOTS)
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
        """For each target, the keys sharing ``key``'s entity under ``resolver``."""
        # Leaves are shared across collections: every collection read needs READ on it.
        for collection in dict.fromkeys(
            [source.collection, resolver.collection, *(t.collection for t in targets)]
        ):
            self._authorise(PermissionType.READ, collection)
        with self.db.connection() as conn:
            src = self._step_row(conn, source, expected=StepType.SOURCE)
            res = self._step_row(conn, resolver, expected=StepType.RESOLVER)
            tgts = [self._step_row(conn, t, expected=StepType.SOURCE) for t in targets]
            for step in (src, res, *tgts):
                self._queriable(step)
            row = conn.execute(
                """
                SELECT coalesce(r.root_id, s.leaf_id), r.root_id IS NOT NULL
                FROM source_rows s LEFT JOIN resolver_leaves r
                  ON r.step_id = %(res)s AND r.leaf_id = s.leaf_id
                WHERE s.step_id = %(src)s AND s.key = %(key)s
                """,
                {"res": res.step_id, "src": src.step_id, "key": key},
            ).fetchone()
            if row is None:
                return [Match(cluster=None, source=source, target=t) for t in targets]
            cluster, resolved = int(row[0]), bool(row[1])
            if resolved:
                leaves = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT leaf_id FROM resolver_leaves WHERE step_id = %s AND root_id = %s",
                        (res.step_id, cluster),
                    )
                ]
            else:
                leaves = [cluster]
            wanted = list({src.step_id, *(t.step_id for t in tgts)})
            found: dict[int, set[str]] = {sid: set() for sid in wanted}
            for step_id, found_key in conn.execute(
                "SELECT step_id, key FROM source_rows WHERE step_id = ANY(%s) "
                "AND leaf_id = ANY(%s)",
                (wanted, leaves),
            ):
                found[int(step_id)].add(found_key)
        return [
            Match(
                cluster=cluster,
                source=source,
                source_id=found[src.step_id],
                target=target,
                target_id=found[tgt.step_id],
            )
            for target, tgt in zip(targets, tgts, strict=True)
        ]

    @staticmethod
    def _queriable(step: StepRow) -> None:
        if step.stage != UploadStage.COMPLETE:
            raise MatchboxStepNotQueriable(step.path(), step.stage)

    def _resolves(self, cur, source: StepRow, resolver: StepRow) -> None:
        if source.run_id != resolver.run_id:
            raise MatchboxStepInvalidData(
                f"Resolver {resolver.path()} belongs to another run than source {source.path()}; "
                "query a source through a resolver of the same run."
            )
        cur.execute(
            "SELECT 1 FROM step_lineage WHERE parent_id = $1 AND child_id = $2",
            parameters=(source.step_id, resolver.step_id),
        )
        if not cur.fetchall():
            raise MatchboxStepInvalidData(
                f"Resolver {resolver.path()} does not descend from source {source.path()}, so "
                "it cannot resolve its keys. Pick a resolver whose inputs read this source."
            )
