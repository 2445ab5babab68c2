"""``MatchboxPostgres``: the PostgreSQL store, a flat facade over small parts.

Each contract method is declared here with :func:`~.operations.operation` — the permission it
needs and how it is retried — and delegates to one part, a plain class holding one concern
(``Steps``, ``Writes``, ``Reads``, ``Auth``, ``Evaluation``, the snapshots, ``Housekeeping``,
``Audit``; the table of parts is in ``docs/store.md``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, Self

import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    Collection,
    CollectionName,
    DefaultUser,
    Group,
    GroupName,
    Judgement,
    LoginResponse,
    Match,
    ModelStepPath,
    PermissionGrant,
    PermissionType,
    ResolverStepPath,
    Run,
    RunID,
    SourceStepPath,
    Step,
    StepPath,
    UploadStage,
    User,
    WriteOutcome,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionAlreadyExists,
    MatchboxGroupAlreadyExistsError,
    MatchboxPermissionDenied,
    MatchboxStepAlreadyExists,
)
from matchbox_dagster.common.reuse import StepPayload
from matchbox_dagster.common.runs import Promotion, RunSummary
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.base import MatchboxDBAdapter, Resource
from matchbox_dagster.store.postgres import migrate
from matchbox_dagster.store.postgres.audit import Audit
from matchbox_dagster.store.postgres.auth import Auth
from matchbox_dagster.store.postgres.check_outcomes import CheckOutcomes
from matchbox_dagster.store.postgres.core import SYSTEM, Context
from matchbox_dagster.store.postgres.counts import attach_countables
from matchbox_dagster.store.postgres.db import Database
from matchbox_dagster.store.postgres.defaults import ensure_defaults
from matchbox_dagster.store.postgres.evaluation import Evaluation
from matchbox_dagster.store.postgres.facade_admin import AdminOperations
from matchbox_dagster.store.postgres.facade_reuse import ReuseOperations
from matchbox_dagster.store.postgres.housekeeping import Housekeeping
from matchbox_dagster.store.postgres.operations import (
    ADMIN,
    GONE_IF_DONE,
    IDEMPOTENT,
    LOCAL,
    NOT_REPEATABLE,
    READ,
    STORED_IF_DONE,
    WRITE,
    Retry,
    decided_in_body,
    operation,
    public,
)
from matchbox_dagster.store.postgres.promotions import Promotions
from matchbox_dagster.store.postgres.reads import Reads
from matchbox_dagster.store.postgres.snapshots_json import JsonSnapshots
from matchbox_dagster.store.postgres.snapshots_parquet import ParquetSnapshots
from matchbox_dagster.store.postgres.source_index import index_for_match
from matchbox_dagster.store.postgres.steps import Steps
from matchbox_dagster.store.postgres.writes import Writes


class MatchboxPostgres(MatchboxDBAdapter):
    """A matchbox store in PostgreSQL.

    Built from :class:`MatchboxSettings` (the environment by default). Creating it connects,
    starts the embedded server when no URI is set, and brings the schema up to date.
    ``s3_client_factory`` makes the S3 client of snapshots (under Dagster,
    ``S3Resource.get_client``, handed down by ``MatchboxResource``); default boto3 from the
    settings.

    >>> store = MatchboxPostgres()  # doctest: +SKIP
    >>> store.create_collection("companies")  # doctest: +SKIP
    """

    _acting_user: str | None = None

    def __init__(
        self,
        settings: MatchboxSettings | None = None,
        *,
        s3_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        settings = settings or MatchboxSettings()
        logging.getLogger("matchbox_dagster").setLevel(settings.log_level)
        self.db = Database(settings)
        self._ctx = Context(db=self.db, settings=settings, s3_client_factory=s3_client_factory)
        migrate.upgrade(self.db.engine, self.db.schema)
        ensure_defaults(self.db)
        self._steps = Steps(self._ctx)
        self._writes = Writes(self._ctx)
        self._reads = Reads(self._ctx)
        self._auth = Auth(self._ctx)
        self._evaluation = Evaluation(self._ctx)
        self._json = JsonSnapshots(self._ctx)
        self._parquet = ParquetSnapshots(self._ctx)
        self._housekeeping = Housekeeping(self._ctx)
        self._audit = Audit(self._ctx)
        attach_countables(self, self.db)

    @property
    def settings(self) -> MatchboxSettings:  # type: ignore[override]
        """The store's settings (shared with its ``as_user`` views)."""
        return self._ctx.settings

    @settings.setter
    def settings(self, value: MatchboxSettings) -> None:
        self._ctx.settings = value

    @property
    def s3_client_factory(self) -> Callable[[], Any] | None:
        """Makes the S3 client of snapshots and of S3 source re-reads (None: settings')."""
        return self._ctx.s3_client_factory

    def __repr__(self) -> str:
        return f"MatchboxPostgres({self.db!r})"

    # --- the permission check every declaration uses --------------------------------------

    def _authorise(self, permission: PermissionType, resource: str) -> None:
        """Raise :class:`MatchboxPermissionDenied` unless the acting user may do this."""
        if not self.settings.authorisation:
            return
        user = self._acting_user or DefaultUser.PUBLIC.value
        if not self._auth.check_permission(user, permission, resource):
            raise MatchboxPermissionDenied(user, permission, resource)

    def _acting_as(self, user_name: str) -> bool:
        """Whether the call acts for ``user_name`` themself (never the anonymous user)."""
        acting = self._acting_user or DefaultUser.PUBLIC.value
        return acting == user_name and acting != DefaultUser.PUBLIC.value

    # --- views and lifetime ---------------------------------------------------------------

    @operation(public("makes a view; each of its calls is checked"), retry=LOCAL)
    def as_user(self, user_name: str | None) -> Self:
        """A view of this store whose calls act on behalf of ``user_name``.

        With ``settings.authorisation`` on, each call checks that one of the user's groups holds
        the permission it needs; a call without an acting user acts as the public user. The
        view shares the store's parts, connections and settings.
        """
        view = copy.copy(self)
        view._acting_user = user_name
        return view

    @operation(public("releases this process's connections only"), retry=LOCAL)
    def close(self) -> None:
        """Release pooled connections."""
        self.db.dispose()

    # --- collections and runs -------------------------------------------------------------

    @operation(WRITE.on_system, retry=Retry.when_done(MatchboxCollectionAlreadyExists))
    def create_collection(
        self, name: CollectionName, permissions: list[PermissionGrant] | None = None
    ) -> Collection:
        """Create a collection, granting ``permissions`` on it to their groups."""
        return self._steps.create_collection(name, permissions)

    @operation(READ.on("name"), retry=IDEMPOTENT)
    def get_collection(self, name: CollectionName) -> Collection:
        """A collection's runs (ascending) and default run."""
        return self._steps.get_collection(name)

    @operation(READ.on_system, retry=IDEMPOTENT)
    def list_collections(self) -> list[CollectionName]:
        """Names of all collections, sorted."""
        return self._steps.list_collections()

    @operation(ADMIN.on("name"), retry=GONE_IF_DONE)
    def delete_collection(self, name: CollectionName, certain: bool) -> None:
        """Delete a collection with its runs, steps and data."""
        self._steps.delete_collection(name, certain)

    @operation(WRITE.on("collection"), retry=NOT_REPEATABLE)
    def create_run(self, collection: CollectionName) -> Run:
        """Start a new run of a collection: mutable, not default, no steps."""
        return self._steps.create_run(collection)

    @operation(WRITE.on("collection", read_unless="create"), retry=IDEMPOTENT)
    def run_for_label(self, collection: CollectionName, label: str, *, create: bool = True) -> Run:
        """The run labelled ``label`` (created when missing and ``create``)."""
        return self._steps.run_for_label(collection, label, create=create)

    @operation(READ.on("collection"), retry=IDEMPOTENT)
    def run_labels(self, collection: CollectionName) -> dict[RunID, str]:
        """Labels of a collection's labelled runs, by run id."""
        return self._steps.run_labels(collection)

    @operation(WRITE.on("collection"), retry=IDEMPOTENT)
    def set_run_mutable(self, collection: CollectionName, run_id: RunID, mutable: bool) -> Run:
        """Make a run mutable or immutable. The default run cannot be made mutable."""
        return self._steps.set_run_mutable(collection, run_id, mutable)

    @operation(WRITE.on("collection"), retry=IDEMPOTENT)
    def set_run_default(self, collection: CollectionName, run_id: RunID, default: bool) -> Run:
        """Make an immutable run the collection's default (the previous one is unset)."""
        return self._steps.set_run_default(collection, run_id, default)

    @operation(READ.on("collection"), retry=IDEMPOTENT)
    def get_run(self, collection: CollectionName, run_id: RunID) -> Run:
        """A run's flags and its steps by name."""
        return self._steps.get_run(collection, run_id)

    @operation(WRITE.on("collection"), retry=NOT_REPEATABLE)
    def promote_run(self, collection: CollectionName, run_id: RunID, by: Promotion) -> Run:
        """Make a run immutable and default, recording who, when and why (one transaction)."""
        return Promotions(self._ctx).promote_run(collection, run_id, by)

    @operation(READ.on("collection"), retry=IDEMPOTENT)
    def run_summaries(self, collection: CollectionName) -> list[RunSummary]:
        """Every run of a collection with its label, step stages and last promotion."""
        return Promotions(self._ctx).run_summaries(collection)

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def record_check_outcomes(self, path: StepPath, outcomes: dict[str, bool]) -> None:
        """Record each named blocking check's outcome for a step (one transaction)."""
        CheckOutcomes(self._ctx).record_check_outcomes(path, outcomes)

    @operation(WRITE.on("collection"), retry=IDEMPOTENT)
    def note_dagster_attempt(
        self, collection: CollectionName, label: str, dagster_run: str
    ) -> bool:
        """Note that a Dagster run began materialising ``label`` (False: already noted)."""
        return CheckOutcomes(self._ctx).note_dagster_attempt(collection, label, dagster_run)

    @operation(ADMIN.on("collection"), retry=GONE_IF_DONE)
    def delete_run(self, collection: CollectionName, run_id: RunID, certain: bool) -> None:
        """Delete a run, its steps and their data."""
        self._steps.delete_run(collection, run_id, certain)

    # --- steps ----------------------------------------------------------------------------

    @operation(WRITE.on_path("path"), retry=Retry.when_done(MatchboxStepAlreadyExists))
    def create_step(self, step: Step, path: StepPath) -> None:
        """Declare a step in a mutable run; its parents must exist in the same run."""
        self._steps.create_step(step, path)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def get_step(self, path: StepPath) -> Step:
        """A step's type, config, description and fingerprint."""
        return self._steps.get_step(path)

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def update_step(self, step: Step, path: StepPath) -> None:
        """Change a step's description or config (not its type, parents or fingerprint)."""
        self._steps.update_step(step, path)

    @operation(WRITE.on_path("path"), retry=GONE_IF_DONE)
    def delete_step(self, path: StepPath, certain: bool) -> None:
        """Delete a step, its descendants and their data."""
        self._steps.delete_step(path, certain)

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def lock_step_data(self, path: StepPath) -> None:
        """READY → PROCESSING; fails at once if another upload holds or held the step."""
        self._steps.lock_step_data(path)

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def unlock_step_data(self, path: StepPath, complete: bool) -> None:
        """PROCESSING → READY (``complete=False``) or → COMPLETE."""
        self._steps.unlock_step_data(path, complete)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def get_step_stage(self, path: StepPath) -> UploadStage:
        """A step's upload stage."""
        return self._steps.get_step_stage(path)

    # --- writing data ---------------------------------------------------------------------

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def write_step(self, path: StepPath, step: Step, payload: StepPayload) -> WriteOutcome:
        """Write a step and its data in one transaction (see the contract)."""
        return self._writes.write_step(path, step, payload)

    @operation(WRITE.on_path("path"), retry=STORED_IF_DONE)
    def insert_source_data(
        self, path: SourceStepPath, data_hashes: pa.Table | SourceHashes
    ) -> None:
        """Index a source's row hashes and keys."""
        self._writes.insert_source_data(path, data_hashes)

    @operation(WRITE.on_path("path"), retry=IDEMPOTENT)
    def index_for_match(self, path: SourceStepPath) -> bool:
        """Build a source's lookup indexes for ``match`` unless present; True when built."""
        return index_for_match(self.db, path)

    @operation(WRITE.on_path("path"), retry=STORED_IF_DONE)
    def insert_model_data(self, path: ModelStepPath, results: pa.Table | ModelResults) -> None:
        """Store a model's scored pairs."""
        self._writes.insert_model_data(path, results)

    @operation(WRITE.on_path("path"), retry=STORED_IF_DONE)
    def insert_resolver_data(
        self, path: ResolverStepPath, data: pa.Table | ResolverClusters
    ) -> None:
        """Store a resolver's clusters."""
        self._writes.insert_resolver_data(path, data)

    # --- shared step data, trained models: declared in facade_reuse (module size) --------
    step_data_origin = ReuseOperations.step_data_origin
    find_reusable_step = ReuseOperations.find_reusable_step
    put_trained_model = ReuseOperations.put_trained_model
    get_trained_model = ReuseOperations.get_trained_model
    retire_trained_models = ReuseOperations.retire_trained_models

    # --- reading --------------------------------------------------------------------------

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def get_source_data(self, path: SourceStepPath) -> pa.Table:
        """A source step's rows (``SCHEMA_SOURCE_ROWS``)."""
        return self._reads.get_source_data(path)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def get_model_data(self, path: ModelStepPath) -> pa.Table:
        """A model step's scored pairs (``SCHEMA_MODEL_EDGES``)."""
        return self._reads.get_model_data(path)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def get_resolver_data(self, path: ResolverStepPath) -> pa.Table:
        """A resolver's own clusters (``SCHEMA_CLUSTERS``)."""
        return self._reads.get_resolver_data(path)

    @operation(READ.on_system, retry=IDEMPOTENT)
    def validate_ids(self, ids: list[int]) -> bool:
        """True if every id is a cluster in the store, else ``MatchboxDataNotFound``."""
        return self._reads.validate_ids(ids)

    @operation(READ.on_path("source"), retry=IDEMPOTENT)
    def query(
        self,
        source: SourceStepPath,
        resolver: ResolverStepPath | None = None,
        return_leaf_id: bool = False,
        limit: int | None = None,
    ) -> pa.Table:
        """Entity id of every key of ``source`` (the resolver must be of the same run)."""
        return self._reads.query(source, resolver, return_leaf_id, limit)

    # Leaves are shared across collections: every collection read needs READ on it.
    @operation(READ.on_path("source", "resolver", "targets"), retry=IDEMPOTENT)
    def match(
        self,
        key: str,
        source: SourceStepPath,
        targets: list[SourceStepPath],
        resolver: ResolverStepPath,
    ) -> list[Match]:
        """For each target, the keys sharing ``key``'s entity under ``resolver``."""
        return self._reads.match(key, source, targets, resolver)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def step_statistics(self, path: StepPath) -> dict[str, Any]:
        """Upload stage and aggregates of a step's stored rows."""
        return self._reads.step_statistics(path)

    # --- users, groups, permissions -------------------------------------------------------

    @operation(public("a user signs in as themself; the first one bootstraps"), retry=IDEMPOTENT)
    def login(self, user: User) -> LoginResponse:
        """Upsert a user; the first user joins admins, every new user joins public."""
        return self._auth.login(user)

    @operation(decided_in_body("the user themself, or READ on the system"), retry=IDEMPOTENT)
    def get_user_groups(self, user_name: str) -> list[GroupName]:
        """Names of the groups a user belongs to, sorted."""
        if self._acting_user != user_name:
            self._authorise(PermissionType.READ, SYSTEM)
        return self._auth.get_user_groups(user_name)

    @operation(READ.on_system, retry=IDEMPOTENT)
    def list_groups(self) -> list[Group]:
        """Every group with its members, sorted by name."""
        return self._auth.list_groups()

    @operation(READ.on_system, retry=IDEMPOTENT)
    def get_group(self, name: GroupName) -> Group:
        """A group and its members."""
        return self._auth.get_group(name)

    @operation(ADMIN.on_system, retry=Retry.when_done(MatchboxGroupAlreadyExistsError))
    def create_group(self, group: Group) -> None:
        """Create a group, adding its ``members`` (users are created if new)."""
        self._auth.create_group(group)

    @operation(ADMIN.on_system, retry=GONE_IF_DONE)
    def delete_group(self, name: GroupName, certain: bool = False) -> None:
        """Delete a non-system group (``certain=True`` required)."""
        self._auth.delete_group(name, certain)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def add_user_to_group(self, user_name: str, group_name: GroupName) -> None:
        """Add a user (created if new) to a group."""
        self._auth.add_user_to_group(user_name, group_name)

    @operation(ADMIN.on_system, retry=IDEMPOTENT)
    def remove_user_from_group(self, user_name: str, group_name: GroupName) -> None:
        """Remove a user from a group (no-op if not a member)."""
        self._auth.remove_user_from_group(user_name, group_name)

    @operation(public("it is the permission check itself, and only answers yes or no"),
               retry=IDEMPOTENT)  # fmt: skip
    def check_permission(
        self, user_name: str, permission: PermissionType, resource: Resource
    ) -> bool:
        """Whether a user holds ``permission`` (or a higher one) on a resource."""
        return self._auth.check_permission(user_name, permission, resource)

    @operation(ADMIN.on("resource"), retry=IDEMPOTENT)
    def get_permissions(self, resource: Resource) -> list[PermissionGrant]:
        """Grants held on ``resource`` (the system or a collection), sorted."""
        return self._auth.get_permissions(resource)

    @operation(ADMIN.on("resource"), retry=IDEMPOTENT)
    def grant_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Grant a permission on the system or a collection to a group (idempotent)."""
        self._auth.grant_permission(group_name, permission, resource)

    @operation(ADMIN.on("resource"), retry=IDEMPOTENT)
    def revoke_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Revoke a group's permission on a resource (no-op if not granted)."""
        self._auth.revoke_permission(group_name, permission, resource)

    # --- evaluation -----------------------------------------------------------------------

    @operation(decided_in_body("the user themself, or ADMIN on the system"), retry=NOT_REPEATABLE)
    def insert_judgement(self, user_name: str, judgement: Judgement) -> None:
        """Record a user's judgement (users judge as themselves; admins for anyone)."""
        if not self._acting_as(user_name):
            self._authorise(PermissionType.ADMIN, SYSTEM)
        self._evaluation.insert_judgement(user_name, judgement)

    @operation(READ.on_system, retry=IDEMPOTENT)
    def get_judgements(self, tag: str | None = None) -> tuple[pa.Table, pa.Table]:
        """Judgements (``SCHEMA_JUDGEMENTS``) and their cluster expansion."""
        return self._evaluation.get_judgements(tag)

    @operation(READ.on("collection"), retry=IDEMPOTENT)
    def get_collection_judgements(
        self, collection: CollectionName, tag: str | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """Judgements by users who may read ``collection``, and their cluster expansion."""
        return self._evaluation.get_judgements(tag, collection)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def sample_for_eval(self, n: int, path: ResolverStepPath, user_name: str) -> pa.Table:
        """Up to ``n`` (≤ 100) clusters of a resolver to judge (``SCHEMA_EVAL_SAMPLES``)."""
        return self._evaluation.sample_for_eval(n, path, user_name)

    @operation(decided_in_body("the user themself only, never another's"), retry=NOT_REPEATABLE)
    def delete_last_judgement(self, user_name: str) -> int | None:
        """Extension: delete the acting user's own latest judgement; its id (None: none left)."""
        return self._evaluation.delete_last_judgement(user_name, self._acting_as(user_name))

    # --- snapshots and housekeeping: declared in facade_admin (module size) ----------------
    dump = AdminOperations.dump
    restore = AdminOperations.restore
    dump_to = AdminOperations.dump_to
    restore_from = AdminOperations.restore_from
    clear = AdminOperations.clear
    drop = AdminOperations.drop
    delete_orphans = AdminOperations.delete_orphans
    audit_uploads = AdminOperations.audit_uploads
    reset_stuck_uploads = AdminOperations.reset_stuck_uploads
