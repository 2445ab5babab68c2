"""Collections, runs, steps and upload stages (the part of the store that declares steps)."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from matchbox_dagster.common.dtos import (
    Collection,
    CollectionName,
    PermissionGrant,
    Run,
    RunID,
    SourceConfig,
    Step,
    StepPath,
    UploadStage,
    is_valid_name,
    validate_name,
    validate_text,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxCollectionNotFoundError,
    MatchboxDeletionNotConfirmed,
    MatchboxInvalidData,
    MatchboxLockError,
    MatchboxNameError,
    MatchboxRunLabelNotFound,
    MatchboxRunNotFoundError,
    MatchboxRunNotWriteable,
    MatchboxRunStateError,
    MatchboxStepExistingData,
    MatchboxStepNotFoundError,
    MatchboxStepUpdateError,
    shown,
)
from matchbox_dagster.store.postgres import auth, core, data_refs, step_rows
from matchbox_dagster.store.postgres.core import SYSTEM, StepRow, logger


def _known(collection: object) -> None:
    """Refuse a collection name no collection can have before it reaches SQL."""
    if not is_valid_name(collection):
        raise MatchboxCollectionNotFoundError(collection)  # type: ignore[arg-type]


def _known_path(path: StepPath) -> None:
    """Refuse a path (e.g. built with ``model_construct``) no step can have."""
    if not is_valid_name(path.collection):
        raise core.step_not_found(path)
    if not is_valid_name(path.name):
        raise MatchboxStepNotFoundError(path, "no step can have that name")


def _writable_path(conn: psycopg.Connection, path: StepPath, action: str) -> None:
    """Lock a step's mutable run; a missing collection or run is the step-not-found error."""
    try:
        core.writable_run(conn, path.collection, path.run, action)
    except (MatchboxCollectionNotFoundError, MatchboxRunNotFoundError):
        raise core.step_not_found(
            path, {"has_collection": core.has_collection(conn, path.collection), "has_run": False}
        ) from None


class Steps:
    """Collections, runs, steps and upload stages."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    # --- collections ------------------------------------------------------------------------

    def create_collection(
        self, name: CollectionName, permissions: list[PermissionGrant] | None = None
    ) -> Collection:
        """Create a collection, granting ``permissions`` on it to their groups."""
        validate_name(name)
        if name == SYSTEM:
            raise MatchboxNameError(
                f"{SYSTEM!r} names the whole store in permissions; pick another collection name."
            )
        with self.db.connection() as conn:
            try:
                conn.execute("INSERT INTO collections (name) VALUES (%s)", (name,))
            except psycopg.errors.UniqueViolation:
                raise MatchboxCollectionAlreadyExists(name) from None
            for grant in permissions or []:
                auth.grant(conn, grant.group_name, grant.permission, name)
        logger.info("Created collection %s", name)
        return Collection(name=name)

    def get_collection(self, name: CollectionName) -> Collection:
        """A collection's runs (ascending) and default run."""
        _known(name)
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, name)
            rows = conn.execute(
                "SELECT run_id, is_default FROM runs WHERE collection_id = %s ORDER BY run_id",
                (collection_id,),
            ).fetchall()
        default = next((int(r[0]) for r in rows if r[1]), None)
        return Collection(name=name, runs=[int(r[0]) for r in rows], default_run=default)

    def list_collections(self) -> list[CollectionName]:
        """Names of all collections, sorted."""
        with self.db.connection() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name")]

    def delete_collection(self, name: CollectionName, certain: bool) -> None:
        """Delete a collection with its runs, steps and data."""
        _known(name)
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, name, for_update=True)
            runs = [
                int(r[0])
                for r in conn.execute(
                    "SELECT run_id FROM runs WHERE collection_id = %s ORDER BY run_id",
                    (collection_id,),
                )
            ]
            if not certain:
                raise MatchboxDeletionNotConfirmed(
                    f"collection {name!r}", [f"run {r}" for r in runs]
                )
            held = conn.execute(
                "DELETE FROM steps s USING runs r WHERE s.run_id = r.run_id "
                "AND r.collection_id = %s RETURNING s.data_id, s.step_type",
                (collection_id,),
            ).fetchall()
            conn.execute("DELETE FROM collections WHERE collection_id = %s", (collection_id,))
            data_refs.release(
                psycopg.RawCursor(conn), self.db.schema, [(int(d), t) for d, t in held]
            )
        logger.info("Deleted collection %s (%d runs)", name, len(runs))

    # --- runs -------------------------------------------------------------------------------

    def create_run(self, collection: CollectionName) -> Run:
        """Start a new run of a collection: mutable, not default, no steps."""
        _known(collection)
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, collection)
            run_id = conn.execute(
                "INSERT INTO runs (collection_id) VALUES (%s) RETURNING run_id", (collection_id,)
            ).fetchone()[0]  # type: ignore[index]
        logger.info("Created run %s of collection %s", run_id, collection)
        return Run(run_id=int(run_id), collection=collection, is_mutable=True, is_default=False)

    def run_for_label(self, collection: CollectionName, label: str, *, create: bool = True) -> Run:
        """The run labelled ``label`` in ``collection`` (e.g. a Dagster partition key).

        With ``create`` a missing label gets a new run in the same transaction; concurrent
        callers with the same label get the same run. Without it, a missing label raises
        ``MatchboxRunLabelNotFound``.
        """
        _known(collection)
        validate_text(label, "A run label")
        if not 1 <= len(label) <= 200:
            raise MatchboxInvalidData(f"A run label has 1 to 200 characters; got {shown(label)}.")
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, collection)
            if create:
                # Serialise creators of the same label; the loser then finds the winner's row.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
                    (label, collection_id),
                )
            row = conn.execute(
                "SELECT run_id FROM run_labels WHERE collection_id = %s AND label = %s",
                (collection_id, label),
            ).fetchone()
            if row is None:
                if not create:
                    raise MatchboxRunLabelNotFound(collection, label)
                run_id = conn.execute(
                    "INSERT INTO runs (collection_id) VALUES (%s) RETURNING run_id",
                    (collection_id,),
                ).fetchone()[0]  # type: ignore[index]
                conn.execute(
                    "INSERT INTO run_labels (collection_id, label, run_id) VALUES (%s, %s, %s)",
                    (collection_id, label, run_id),
                )
                logger.info("Created run %s of %s for label %r", run_id, collection, label)
            else:
                run_id = row[0]
        return self.get_run(collection, int(run_id))

    def run_labels(self, collection: CollectionName) -> dict[RunID, str]:
        """Labels of a collection's labelled runs, by run id."""
        _known(collection)
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, collection)
            rows = conn.execute(
                "SELECT run_id, label FROM run_labels WHERE collection_id = %s ORDER BY run_id",
                (collection_id,),
            ).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    def set_run_mutable(self, collection: CollectionName, run_id: RunID, mutable: bool) -> Run:
        """Make a run mutable or immutable. The default run cannot be made mutable."""
        _known(collection)
        with self.db.connection() as conn:
            run = core.run_row(conn, collection, run_id, for_update=True)
            if mutable and run["is_default"]:
                raise MatchboxRunStateError(
                    collection,
                    run_id,
                    "it is the collection's default run, and a default run cannot be mutable. "
                    "Make another run the default first (set_run_default), or start a new run "
                    "with create_run().",
                )
            conn.execute(
                "UPDATE runs SET is_mutable = %s, updated_at = now() WHERE run_id = %s",
                (mutable, run_id),
            )
        return self.get_run(collection, run_id)

    def set_run_default(self, collection: CollectionName, run_id: RunID, default: bool) -> Run:
        """Make an immutable run the collection's default (the previous one is unset).

        Promotions are serialised on the collection's row, and a partial unique index
        guarantees at most one default run per collection.
        """
        _known(collection)
        with self.db.connection() as conn:
            collection_id = core.collection_id(conn, collection, for_update=True)
            run = core.run_row(conn, collection, run_id, for_update=True)
            if default:
                if run["is_mutable"]:
                    raise MatchboxRunStateError(
                        collection,
                        run_id,
                        "it is mutable, and only an immutable run can be the default. Make it "
                        "immutable first with set_run_mutable(..., mutable=False), then set it "
                        "as the default.",
                    )
                conn.execute(
                    "UPDATE runs SET is_default = false, updated_at = now() "
                    "WHERE collection_id = %s AND is_default AND run_id <> %s",
                    (collection_id, run_id),
                )
            conn.execute(
                "UPDATE runs SET is_default = %s, updated_at = now() WHERE run_id = %s",
                (default, run_id),
            )
        logger.info(
            "Run %s of %s is %s the default", run_id, collection, "now" if default else "no longer"
        )
        return self.get_run(collection, run_id)

    def get_run(self, collection: CollectionName, run_id: RunID) -> Run:
        """A run's flags and its steps by name."""
        _known(collection)
        with self.db.connection() as conn:
            run = core.run_row(conn, collection, run_id)
            rows = core.dict_cursor(conn).execute(
                "SELECT name, step_type, description, fingerprint, config FROM steps "
                "WHERE run_id = %s ORDER BY step_id",
                (run_id,),
            )
            steps = {
                r["name"]: Step.model_validate(
                    {
                        "description": r["description"],
                        "fingerprint": bytes(r["fingerprint"]),
                        "step_type": r["step_type"],
                        "config": r["config"],
                    }
                )
                for r in rows
            }
        return Run(
            run_id=run_id,
            collection=collection,
            is_mutable=run["is_mutable"],
            is_default=run["is_default"],
            steps=steps,
        )

    def delete_run(self, collection: CollectionName, run_id: RunID, certain: bool) -> None:
        """Delete a run, its steps and their data."""
        _known(collection)
        with self.db.connection() as conn:
            # The collection's row first, as set_run_default locks it: the default cannot move
            # between the check below and the delete.
            core.collection_id(conn, collection, for_update=True)
            run = core.run_row(conn, collection, run_id, for_update=True)
            if run["is_default"]:
                raise MatchboxRunStateError(
                    collection,
                    run_id,
                    "it is the collection's default run, which queries read by default, so it "
                    "cannot be deleted. Make another run the default first (set_run_default), "
                    "or unset it with set_run_default(..., default=False), then delete it.",
                )
            steps = conn.execute(
                "SELECT step_id, step_type, name FROM steps WHERE run_id = %s ORDER BY step_id",
                (run_id,),
            ).fetchall()
            if not certain:
                raise MatchboxDeletionNotConfirmed(
                    f"run {run_id} of collection {collection!r}", [s[2] for s in steps]
                )
            data_refs.delete_step_rows(
                psycopg.RawCursor(conn), self.db.schema, [int(s[0]) for s in steps]
            )
            conn.execute("DELETE FROM runs WHERE run_id = %s", (run_id,))
        logger.info("Deleted run %s of %s", run_id, collection)

    # --- steps ------------------------------------------------------------------------------

    def create_step(self, step: Step, path: StepPath) -> None:
        """Declare a step in a mutable run; its parents must exist in the same run."""
        validate_name(path.collection)
        validate_name(path.name)
        step_rows.storable(step)
        with self.db.connection() as conn:
            core.writable_run(conn, path.collection, path.run, f"add step {path.name!r}")
            step_rows.insert_step(psycopg.RawCursor(conn), step, path)
        logger.info("Created %s step %s", step.step_type, path)

    def get_step(self, path: StepPath) -> Step:
        """A step's type, config, description and fingerprint."""
        _known_path(path)
        with self.db.connection() as conn:
            return step_rows.step_dto(core.step_row(conn, path))

    def update_step(self, step: Step, path: StepPath) -> None:
        """Change a step's description or config (not its type, parents or fingerprint)."""
        _known_path(path)
        step_rows.storable(step)
        with self.db.connection() as conn:
            _writable_path(conn, path, f"update step {path.name!r}")
            current = core.step_row(conn, path, lock="FOR UPDATE OF s")
            old = step_rows.step_dto(current)
            if step.step_type != current.step_type:
                raise MatchboxStepUpdateError(
                    f"Step {path} is a {current.step_type} step; it cannot become a "
                    f"{step.step_type} step. Delete it and create a new one."
                )
            if step.fingerprint != current.fingerprint:
                raise MatchboxStepUpdateError(
                    f"Step {path}: the fingerprint is fixed when a step is created and cannot "
                    "be updated. Create a new run (or delete the step) for different data."
                )
            if step_rows.lineage_parents(step) != step_rows.lineage_parents(old):
                raise MatchboxStepUpdateError(
                    f"Step {path}: its inputs cannot change ({step_rows.lineage_parents(old)} → "
                    f"{step_rows.lineage_parents(step)}). Create a new step or a new run instead."
                )
            conn.execute(
                "UPDATE steps SET description = %s, config = %s WHERE step_id = %s",
                (step.description, Jsonb(step.config.model_dump(mode="json")), current.step_id),
            )
            if isinstance(step.config, SourceConfig):
                conn.execute("DELETE FROM source_configs WHERE step_id = %s", (current.step_id,))
                step_rows.write_source_config(psycopg.RawCursor(conn), current.step_id, step.config)

    def delete_step(self, path: StepPath, certain: bool) -> None:
        """Delete a step, its descendants and their data."""
        _known_path(path)
        with self.db.connection() as conn:
            _writable_path(conn, path, f"delete step {path.name!r}")
            step = core.step_row(conn, path, lock="FOR UPDATE OF s")
            cur = psycopg.RawCursor(conn)
            doomed = step_rows.step_tree(cur, step.step_id)
            if not certain:
                raise MatchboxDeletionNotConfirmed(
                    f"step {path}", [name for sid, _, name in doomed if sid != step.step_id]
                )
            data_refs.delete_step_rows(cur, self.db.schema, [sid for sid, _, _ in doomed])
        logger.info("Deleted step %s and %d descendant(s)", path, len(doomed) - 1)

    # --- upload stages ----------------------------------------------------------------------

    def lock_step_data(self, path: StepPath) -> None:
        """READY → PROCESSING; fails at once if another upload holds or held the step."""
        _known_path(path)
        with self.db.connection() as conn:
            step = self._locked_step(conn, path)
            if not step.is_mutable:
                raise MatchboxRunNotWriteable(path.collection, path.run, f"upload to {path.name!r}")
            if step.stage == UploadStage.PROCESSING:
                raise MatchboxLockError(
                    f"Step {path} is already being uploaded (stage PROCESSING). Wait for that "
                    "upload; if its writer crashed, reset the stage with "
                    "unlock_step_data(path, complete=False)."
                )
            if step.stage == UploadStage.COMPLETE:
                raise MatchboxStepExistingData(path)
            self._set_stage(conn, step.step_id, UploadStage.PROCESSING)

    def unlock_step_data(self, path: StepPath, complete: bool) -> None:
        """PROCESSING → READY (``complete=False``) or → COMPLETE."""
        _known_path(path)
        with self.db.connection() as conn:
            step = self._locked_step(conn, path)
            if step.stage == UploadStage.COMPLETE:
                if complete:
                    return
                raise MatchboxStepExistingData(path)
            self._set_stage(
                conn, step.step_id, UploadStage.COMPLETE if complete else UploadStage.READY
            )

    def get_step_stage(self, path: StepPath) -> UploadStage:
        """A step's upload stage."""
        _known_path(path)
        with self.db.connection() as conn:
            return core.step_row(conn, path).stage

    def _locked_step(self, conn: psycopg.Connection, path: StepPath) -> StepRow:
        try:
            return core.step_row(conn, path, lock="FOR UPDATE OF s NOWAIT")
        except psycopg.errors.LockNotAvailable:
            raise MatchboxLockError(
                f"Step {path} is locked by an upload in progress; try again when it finishes."
            ) from None

    @staticmethod
    def _set_stage(conn: psycopg.Connection, step_id: int, stage: UploadStage) -> None:
        conn.execute(
            "UPDATE steps SET upload_stage = %s, stage_updated_at = clock_timestamp() "
            "WHERE step_id = %s",
            (stage.value, step_id),
        )


__all__ = ["Steps"]
