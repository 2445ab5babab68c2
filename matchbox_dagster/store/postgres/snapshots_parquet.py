"""Streamed snapshots: ``dump_to`` / ``restore_from`` a directory or ``s3://bucket/prefix``.

One Parquet file per table, streamed in batches through one consistent read, and a
``manifest.json`` giving each file's row count, size and SHA-256, written last. A restore
checks every file against the manifest before it writes anything, then loads in one
transaction (:mod:`~matchbox_dagster.store.postgres.snapshot_load`).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from matchbox_dagster.common.dtos import MatchboxBackends
from matchbox_dagster.common.errors import MatchboxSnapshotError
from matchbox_dagster.store.postgres import core
from matchbox_dagster.store.postgres.core import logger
from matchbox_dagster.store.postgres.db import compose, quote_ident
from matchbox_dagster.store.postgres.s3 import (
    Location,
    datastore,
    is_missing,
    s3_exists,
    sha256_file,
    snapshot_client,
)
from matchbox_dagster.store.postgres.snapshot_layout import (
    ARROW_NATIVE,
    MANIFEST,
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    PartitionSpec,
    SnapshotManifest,
    Table,
    TableFile,
    adbc_cursor,
    cast_type,
    catalog,
    check_header,
    check_layout,
    check_steps,
    list_partitions,
    revision,
)
from matchbox_dagster.store.postgres.snapshot_load import load

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc


class ParquetSnapshots:
    """``dump_to`` and ``restore_from``."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def dump_to(self, location: str | os.PathLike[str]) -> SnapshotManifest:
        """Write the store as Parquet files plus ``manifest.json`` to a directory or S3.

        ``location`` is a local directory (created if needed; it must not hold a snapshot) or
        ``s3://bucket/prefix`` (the datastore settings give the S3 client). Tables stream in
        batches through one consistent read; the manifest is written last.
        """
        target = Location.parse(location)
        with datastore(target, "write a snapshot to"):
            return self._dump_to(target)

    def _dump_to(self, target: Location) -> SnapshotManifest:
        client = snapshot_client(self.ctx) if target.bucket else None
        if target.local is not None:
            target.local.mkdir(parents=True, exist_ok=True)
            if (target.local / MANIFEST).exists():
                raise MatchboxSnapshotError(
                    f"{target} already holds a snapshot; write to an empty location."
                )
        elif s3_exists(client, target.bucket, target.key(MANIFEST)):
            raise MatchboxSnapshotError(
                f"{target} already holds a snapshot; write to an empty location."
            )
        taken_at = revision(self.db)
        files: list[TableFile] = []
        with tempfile.TemporaryDirectory(prefix="mb-dump-") as scratch:
            with adbc_cursor(self.db, read_only=True) as (_, cur):
                tables = catalog(cur, self.db.schema)
                partitions = list_partitions(cur, self.db.schema)
                for table in tables:
                    name = f"{table.name}.parquet"
                    out = (target.local or Path(scratch)) / name
                    rows = self._write_parquet(cur, table, out)
                    files.append(
                        TableFile(
                            table=table.name,
                            file=name,
                            columns=table.names,
                            rows=rows,
                            bytes=out.stat().st_size,
                            sha256=sha256_file(out),
                        )
                    )
                    if client is not None:
                        client.upload_file(str(out), target.bucket, target.key(name))
                        out.unlink()
            manifest = SnapshotManifest(
                format=SNAPSHOT_FORMAT,
                format_version=SNAPSHOT_VERSION,
                backend_type=MatchboxBackends.POSTGRES.value,
                schema_revision=taken_at,
                created_at=datetime.now(UTC),
                partitions=partitions,
                tables=files,
            )
            body = manifest.model_dump_json(indent=2).encode()
            if target.local is not None:
                (target.local / MANIFEST).write_bytes(body)
            else:
                client.put_object(Bucket=target.bucket, Key=target.key(MANIFEST), Body=body)
        logger.info(
            "Wrote a snapshot of %d table(s), %d row(s) to %s",
            len(files),
            sum(f.rows for f in files),
            target,
        )
        return manifest

    def _write_parquet(self, cur: adbc.Cursor, table: Table, out: Path) -> int:
        exprs = []
        for column in table.columns:
            kind = cast_type(table.name, column)
            template = "{c}" if kind in ARROW_NATIVE else "CAST({c} AS text) AS {c}"
            exprs.append(compose(template, c=column.name))
        cur.execute(compose("SELECT {{e}} FROM {t}", t=table.name).format(e=", ".join(exprs)))
        reader = cur.fetch_record_batch()
        rows = 0
        with pq.ParquetWriter(out, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows

    def restore_from(self, location: str | os.PathLike[str]) -> None:
        """Restore a snapshot written by :meth:`dump_to`, in one transaction.

        Every file is checked against the manifest (size, SHA-256, row count, columns) before
        anything is written; a damaged, truncated or tampered snapshot raises
        :class:`MatchboxSnapshotError` and leaves the store as it was. Other errors are as for
        :meth:`restore`.
        """
        source = Location.parse(location)
        with datastore(source, "read a snapshot from"):
            self._restore_from(source)

    def _restore_from(self, source: Location) -> None:
        client = snapshot_client(self.ctx) if source.bucket else None
        with tempfile.TemporaryDirectory(prefix="mb-restore-") as scratch:
            manifest = self._read_manifest(source, client)
            check_header(
                self.db,
                manifest.backend_type,
                manifest.format,
                manifest.format_version,
                manifest.schema_revision,
            )
            paths = self._fetch_files(source, client, manifest, Path(scratch))
            by_table = {f.table: f for f in manifest.tables}
            if len(by_table) != len(manifest.tables):
                raise MatchboxSnapshotError("The manifest lists a table twice.")
            with adbc_cursor(self.db) as (conn, cur):
                tables = catalog(cur, self.db.schema)
                specs = check_layout(
                    tables, {f.table: f.columns for f in manifest.tables}, manifest.partitions
                )
                self._check_parquet_steps(tables, specs, paths)

                def insert(table: Table) -> None:
                    self._insert_parquet(cur, table, paths[table.name])

                load(cur, self.db.schema, tables, specs, insert)
                conn.commit()
        logger.info("Restored a snapshot of %d table(s) from %s", len(manifest.tables), source)

    def _read_manifest(self, source: Location, client: Any) -> SnapshotManifest:
        try:
            if source.local is not None:
                body = (source.local / MANIFEST).read_bytes()
            else:
                body = client.get_object(Bucket=source.bucket, Key=source.key(MANIFEST))[
                    "Body"
                ].read()
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or is_missing(exc):
                raise MatchboxSnapshotError(
                    f"No snapshot at {source}: {MANIFEST} is missing."
                ) from None
            raise
        try:
            return SnapshotManifest.model_validate_json(body)
        except ValidationError as exc:
            raise MatchboxSnapshotError(
                f"The manifest at {source} is damaged: {exc.errors()[0]['msg']}"
            ) from None

    def _fetch_files(
        self, source: Location, client: Any, manifest: SnapshotManifest, scratch: Path
    ) -> dict[str, Path]:
        """Local paths of every table file, each checked against the manifest."""
        paths: dict[str, Path] = {}
        for entry in manifest.tables:
            if Path(entry.file).name != entry.file or not entry.file.endswith(".parquet"):
                raise MatchboxSnapshotError(f"The manifest names an unsafe file {entry.file!r}.")
            if source.local is not None:
                path = source.local / entry.file
                if not path.is_file():
                    raise MatchboxSnapshotError(f"Snapshot file {entry.file!r} is missing.")
            else:
                path = scratch / entry.file
                try:
                    client.download_file(source.bucket, source.key(entry.file), str(path))
                except Exception as exc:
                    if is_missing(exc):
                        raise MatchboxSnapshotError(
                            f"Snapshot file {entry.file!r} is missing from {source}."
                        ) from None
                    raise
            size = path.stat().st_size
            if size != entry.bytes or sha256_file(path) != entry.sha256:
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} does not match its manifest entry "
                    f"({size} bytes; expected {entry.bytes} bytes and SHA-256 "
                    f"{entry.sha256[:12]}…): it was truncated or altered."
                )
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} is not readable Parquet: {exc}"
                ) from None
            if (
                parquet.metadata.num_rows != entry.rows
                or parquet.schema_arrow.names != entry.columns
            ):
                raise MatchboxSnapshotError(
                    f"Snapshot file {entry.file!r} holds {parquet.metadata.num_rows} row(s) of "
                    f"{parquet.schema_arrow.names}; the manifest says {entry.rows} of "
                    f"{entry.columns}."
                )
            paths[entry.table] = path
        return paths

    def _check_parquet_steps(
        self, tables: list[Table], specs: list[PartitionSpec], paths: dict[str, Path]
    ) -> None:
        # Partitions are named by data ids (a step's own id, or the one it shares).
        steps = pq.read_table(paths["steps"], columns=["data_id", "step_type"])
        step_types = dict(
            zip(
                steps.column("data_id").to_pylist(),
                steps.column("step_type").to_pylist(),
                strict=True,
            )
        )
        bulk: dict[str, set[int]] = {}
        for table in tables:
            if not table.bulk:
                continue
            ids: set[int] = set()
            parquet = pq.ParquetFile(paths[table.name])
            if parquet.metadata.num_rows == 0:  # pyarrow 18 cannot iterate a file of no row group
                bulk[table.name] = ids
                continue
            for batch in parquet.iter_batches(
                batch_size=self.ctx.settings.batch_size, columns=["step_id"]
            ):
                ids.update(pc.unique(batch.column(0)).to_pylist())
            bulk[table.name] = ids
        check_steps(specs, step_types, bulk)

    def _insert_parquet(self, cur: adbc.Cursor, table: Table, path: Path) -> None:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            return
        staging = f"mb_restore_{table.name}"
        reader = pa.RecordBatchReader.from_batches(
            parquet.schema_arrow, parquet.iter_batches(batch_size=self.ctx.settings.batch_size)
        )
        cur.adbc_ingest(staging, reader, mode="create", temporary=True)
        exprs = ", ".join(
            compose("CAST({c} AS {{kind}})", c=c.name).format(kind=cast_type(table.name, c))
            for c in table.columns
        )
        cur.execute(
            compose(
                "INSERT INTO {t} ({{cols}}) OVERRIDING SYSTEM VALUE SELECT {{exprs}} FROM {s}",
                t=table.name,
                s=staging,
            ).format(cols=", ".join(quote_ident(n) for n in table.names), exprs=exprs)
        )
        cur.execute(compose("DROP TABLE {s}", s=staging))
