"""The facade's snapshot and housekeeping operations, declared here and adopted by name.

Like :mod:`.facade_reuse`: ``adapter.py`` is at the module size budget, so these declarations
live in :class:`AdminOperations` and :class:`~.adapter.MatchboxPostgres` binds each one as its
own attribute (``dump = AdminOperations.dump``) — no inheritance, no mixin; each is one
``@operation(rule, retry=…)`` declaration delegating to one part of the facade (the JSON and
Parquet snapshots, ``Housekeeping``, ``Audit``). ``self`` is the facade.
"""

from __future__ import annotations

import os
from typing import Any

from matchbox_dagster.common.dtos import MatchboxSnapshot
from matchbox_dagster.store.postgres.audit import UploadAudit
from matchbox_dagster.store.postgres.operations import ADMIN, IDEMPOTENT, READ, operation
from matchbox_dagster.store.postgres.snapshot_layout import SnapshotManifest


class AdminOperations:
    """Declarations the facade adopts (never instantiated; ``self`` is a ``MatchboxPostgres``)."""

    _json: Any
    _parquet: Any
    _housekeeping: Any
    _audit: Any

    # --- snapshots ------------------------------------------------------------------------

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def dump(self) -> MatchboxSnapshot:
        """The whole store as a JSON-serialisable snapshot (one consistent read)."""
        return self._json.dump()

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def restore(self, snapshot: MatchboxSnapshot) -> None:
        """Load a snapshot into a fresh or cleared store, in one transaction."""
        self._json.restore(snapshot)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def dump_to(self, location: str | os.PathLike[str]) -> SnapshotManifest:
        """Write the store as Parquet files plus ``manifest.json`` to a directory or S3."""
        return self._parquet.dump_to(location)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def restore_from(self, location: str | os.PathLike[str]) -> None:
        """Restore a snapshot written by :meth:`dump_to`, in one transaction."""
        self._parquet.restore_from(location)

    # --- housekeeping ---------------------------------------------------------------------

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def clear(self, certain: bool) -> None:
        """Delete every row and partition, keep the tables, re-create the defaults."""
        self._housekeeping.clear(certain)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def drop(self, certain: bool) -> None:
        """Drop the store's schema, create it anew with the migrations and the defaults."""
        self._housekeeping.drop(certain)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def delete_orphans(self) -> int:
        """Delete multi-leaf clusters nothing refers to; return how many."""
        return self._housekeeping.delete_orphans()

    @operation(READ.on_system, retry=IDEMPOTENT)
    def audit_uploads(self, stale_run_days: int = 30) -> UploadAudit:
        """Report stuck, failed and abandoned uploads, empty immutable steps, stale runs."""
        return self._audit.audit_uploads(stale_run_days)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def reset_stuck_uploads(self) -> int:
        """Move steps stuck in PROCESSING past ``uploads_expiry_minutes`` back to READY."""
        return self._audit.reset_stuck_uploads()
