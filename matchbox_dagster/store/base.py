"""The backend contract: what every matchbox store implements.

The Dagster layer talks to a store only through :class:`MatchboxDBAdapter`, so another backend
could slot in. Methods, arguments and errors follow the matchbox server contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal, Protocol, Self

import pyarrow as pa

from matchbox_dagster.common.arrow import ModelResults, ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    BackendResourceType,
    Collection,
    CollectionName,
    DefaultGroup,
    DefaultUser,
    Group,
    GroupName,
    Judgement,
    LoginResponse,
    Match,
    MatchboxSnapshot,
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
from matchbox_dagster.common.reuse import ReusedStep, TrainedModel
from matchbox_dagster.common.runs import Promotion, RunSummary
from matchbox_dagster.common.settings import MatchboxSettings

PERMISSION_GRANTS: dict[PermissionType, list[PermissionType]] = {
    PermissionType.READ: [PermissionType.READ, PermissionType.WRITE, PermissionType.ADMIN],
    PermissionType.WRITE: [PermissionType.WRITE, PermissionType.ADMIN],
    PermissionType.ADMIN: [PermissionType.ADMIN],
}
"""Which held permissions grant a permission: any grants READ, only ADMIN grants ADMIN."""

DEFAULT_GROUPS: list[Group] = [
    Group(
        name=DefaultGroup.PUBLIC,
        description="Unauthenticated users.",
        is_system=True,
        members=[User(user_name=DefaultUser.PUBLIC, email=None)],
    ),
    Group(name=DefaultGroup.ADMINS, description="System administrators.", is_system=True),
]
"""Groups (and users) present in every fresh or cleared store."""

DEFAULT_PERMISSIONS: list[tuple[PermissionGrant, BackendResourceType, str | None]] = [
    (
        PermissionGrant(group_name=DefaultGroup.ADMINS, permission=PermissionType.ADMIN),
        BackendResourceType.SYSTEM,
        None,
    )
]
"""Grants present in every fresh or cleared store: admins hold ADMIN on the system."""

Resource = Literal[BackendResourceType.SYSTEM] | CollectionName


class Countable(Protocol):
    """Something that can be counted."""

    def count(self) -> int:
        """Number of items."""
        ...


class Listable(Protocol):
    """Something that can be listed."""

    def list_all(self) -> list[str]:
        """Names of the items."""
        ...


class ListableAndCountable(Countable, Listable, Protocol):
    """Something that can be counted and listed."""


class MatchboxDBAdapter(ABC):
    """Abstract matchbox store.

    A fresh or cleared store holds :data:`DEFAULT_GROUPS` and :data:`DEFAULT_PERMISSIONS`.
    """

    settings: MatchboxSettings

    sources: ListableAndCountable
    models: Countable
    resolvers: Countable
    source_clusters: Countable
    model_clusters: Countable
    all_clusters: Countable
    creates: Countable
    merges: Countable
    proposes: Countable
    source_steps: Countable
    users: Countable

    @abstractmethod
    def as_user(self, user_name: str | None) -> Self:
        """A view of this store whose calls act on behalf of ``user_name`` (permission checks)."""

    # --- retrieval --------------------------------------------------------------------------

    @abstractmethod
    def run_for_label(self, collection: CollectionName, label: str, *, create: bool = True) -> Run:
        """Extension: the run labelled ``label`` (created when missing and ``create``)."""

    @abstractmethod
    def run_labels(self, collection: CollectionName) -> dict[RunID, str]:
        """Extension: labels of a collection's labelled runs, by run id."""

    @abstractmethod
    def step_statistics(self, path: StepPath) -> dict[str, Any]:
        """Extension: upload stage and aggregates (rows, distinct keys, score range…) of a step."""

    @abstractmethod
    def query(
        self,
        source: SourceStepPath,
        resolver: ResolverStepPath | None = None,
        return_leaf_id: bool = False,
        limit: int | None = None,
    ) -> pa.Table:
        """Entity id of every key of ``source``, as resolved by ``resolver``.

        Without a resolver, each key's id is its leaf cluster. With one, a key gets the cluster
        of the nearest resolver (this one, then its ancestors) that claims its leaf, falling back
        to the leaf. Returns ``SCHEMA_QUERY`` (plus ``leaf_id`` when asked).
        """

    @abstractmethod
    def match(
        self,
        key: str,
        source: SourceStepPath,
        targets: list[SourceStepPath],
        resolver: ResolverStepPath,
    ) -> list[Match]:
        """Keys in each target that share ``key``'s entity under ``resolver``."""

    # --- collections and runs ---------------------------------------------------------------

    @abstractmethod
    def create_collection(
        self, name: CollectionName, permissions: list[PermissionGrant] | None = None
    ) -> Collection:
        """Create a collection, granting ``permissions`` on it."""

    @abstractmethod
    def get_collection(self, name: CollectionName) -> Collection:
        """A collection's runs and default run."""

    @abstractmethod
    def list_collections(self) -> list[CollectionName]:
        """Names of all collections."""

    @abstractmethod
    def delete_collection(self, name: CollectionName, certain: bool) -> None:
        """Delete a collection, its runs and their data (``certain=True`` required)."""

    @abstractmethod
    def create_run(self, collection: CollectionName) -> Run:
        """Start a new run: mutable and not default."""

    @abstractmethod
    def set_run_mutable(self, collection: CollectionName, run_id: RunID, mutable: bool) -> Run:
        """Make a run mutable or immutable (a default run cannot become mutable)."""

    @abstractmethod
    def set_run_default(self, collection: CollectionName, run_id: RunID, default: bool) -> Run:
        """Make an immutable run the default (unsetting the previous default), or unset it."""

    @abstractmethod
    def promote_run(self, collection: CollectionName, run_id: RunID, by: Promotion) -> Run:
        """Extension: make a run immutable and default, recording who, when and why, at once."""

    @abstractmethod
    def run_summaries(self, collection: CollectionName) -> list[RunSummary]:
        """Extension: every run with its label, step stages and last promotion (one read)."""

    @abstractmethod
    def record_check_outcomes(self, path: StepPath, outcomes: dict[str, bool]) -> None:
        """Extension: record whether each named blocking check of a step passed (at once)."""

    @abstractmethod
    def note_dagster_attempt(
        self, collection: CollectionName, label: str, dagster_run: str
    ) -> bool:
        """Extension: note a Dagster run began materialising ``label`` (False: already noted)."""

    @abstractmethod
    def get_run(self, collection: CollectionName, run_id: RunID) -> Run:
        """A run's flags and steps."""

    @abstractmethod
    def delete_run(self, collection: CollectionName, run_id: RunID, certain: bool) -> None:
        """Delete a run and its steps' data (``certain=True`` required)."""

    # --- steps ------------------------------------------------------------------------------

    @abstractmethod
    def create_step(self, step: Step, path: StepPath) -> None:
        """Declare a step; its parents must exist in the same run."""

    @abstractmethod
    def get_step(self, path: StepPath) -> Step:
        """A step's config, description and fingerprint."""

    @abstractmethod
    def update_step(self, step: Step, path: StepPath) -> None:
        """Change a step's description or config; never its type or fingerprint."""

    @abstractmethod
    def delete_step(self, path: StepPath, certain: bool) -> None:
        """Delete a step and its descendants (``certain=True`` required)."""

    @abstractmethod
    def write_step(
        self,
        path: StepPath,
        step: Step,
        payload: SourceHashes | ModelResults | ResolverClusters | ReusedStep,
    ) -> WriteOutcome:
        """Extension: write a step and its data in ONE transaction, and say what was done.

        The payload must be the step type's (:class:`SourceHashes`, :class:`ModelResults`,
        :class:`ResolverClusters`) with the step's fingerprint, or a :class:`ReusedStep`
        naming a COMPLETE step of the same collection whose type, config, fingerprint and
        inputs' fingerprints are this step's (else :class:`MatchboxReuseMismatch`); it is
        checked before anything is written. Writes of one path are serialised by a lock, waited
        for at most ``settings.step_lock_timeout_seconds`` (then :class:`MatchboxLockError`).
        Then:

        - the step holds complete data with the same fingerprint and config → ``UNCHANGED``
          (nothing is written);
        - the step is missing, or declared without data with the same fingerprint and config
          → it is created if need be and its data inserted → ``STORED``;
        - a different fingerprint or config → on an immutable run
          :class:`MatchboxRunNotWriteable` (start a new run); on a mutable one the step and its
          descendants are deleted (as :meth:`delete_step`) and it is written anew →
          ``REPLACED``.

        Data is content addressed: when a COMPLETE step of the collection has the same type,
        fingerprint and config, and its inputs (lineage, by name) the same fingerprints, the
        step points at that step's stored data instead of storing a copy → ``SHARED`` (so
        does a :class:`ReusedStep`). Stored data is reference counted: deleting a step, run or
        collection removes data only when no remaining step uses it.

        The upload stage moves READY → PROCESSING → COMPLETE inside the transaction. A failure
        at any point leaves the store as it was; a repeat after a lost commit returns
        ``UNCHANGED``. Two identical concurrent writes: one ``STORED``, one ``UNCHANGED``.
        """

    @abstractmethod
    def step_data_origin(self, path: StepPath) -> StepPath | None:
        """Extension: the step that stored the data this step shares (None: its own data).

        That is the step that first stored it; if that step was deleted since, the earliest
        remaining step holding the data before this one (None when there is none).
        """

    @abstractmethod
    def find_reusable_step(
        self, path: StepPath, config: dict[str, Any], inputs: list[str]
    ) -> StepPath | None:
        """Extension: a default-run step whose results ``path`` may reuse, or None.

        The collection's default run's step named ``path.name``, COMPLETE, whose config equals
        ``config`` (a step config as JSON), and each of whose ``inputs`` (step names) has in the
        default run the fingerprint of the same-named step of ``path.run``, which must be
        COMPLETE. None when there is no default run or any condition fails.
        """

    @abstractmethod
    def lock_step_data(self, path: StepPath) -> None:
        """Move a step's upload stage to PROCESSING, or fail at once with a lock error."""

    @abstractmethod
    def unlock_step_data(self, path: StepPath, complete: bool) -> None:
        """Move a step's upload stage back to READY, or on to COMPLETE."""

    @abstractmethod
    def get_step_stage(self, path: StepPath) -> UploadStage:
        """A step's upload stage."""

    # --- trained models ---------------------------------------------------------------------

    @abstractmethod
    def put_trained_model(self, model: TrainedModel) -> int:
        """Extension: store a trained model's parameters as a new version; return the version.

        Versions count from 1 per (collection, model, config key). WRITE on the collection.
        """

    @abstractmethod
    def get_trained_model(
        self, collection: CollectionName, model: str, config_key: str
    ) -> TrainedModel | None:
        """Extension: the latest version not retired of a trained model (None: none)."""

    @abstractmethod
    def retire_trained_models(self, collection: CollectionName, model: str) -> int:
        """Extension: retire every version of a collection's model; return how many were live.

        Retired versions stay (a run's evaluation may name one) but are never returned by
        :meth:`get_trained_model`, so the next run trains anew.
        """

    # --- data -------------------------------------------------------------------------------

    @abstractmethod
    def insert_source_data(self, path: SourceStepPath, data_hashes: pa.Table) -> None:
        """Index a source's row hashes and keys (``SCHEMA_INDEX``), once, fingerprint-checked."""

    @abstractmethod
    def index_for_match(self, path: SourceStepPath) -> bool:
        """Build the key lookups of a source step's stored data unless present (idempotent).

        Inserts do not build them, so a bulk load stays a bulk load. :meth:`match` is correct
        without them (it scans the source's data, ~0.1 s a million keys) and a few ms with
        them. True when it built them, False when they were there (data shared with another
        step may have them). Raises for a missing step, one that is not a source, or one
        without complete data.
        """

    @abstractmethod
    def insert_model_data(self, path: ModelStepPath, results: pa.Table) -> None:
        """Store a model's scored pairs (``SCHEMA_MODEL_EDGES``), once, fingerprint-checked."""

    @abstractmethod
    def insert_resolver_data(self, path: ResolverStepPath, data: pa.Table) -> None:
        """Store a resolver's clusters (``SCHEMA_CLUSTERS``), once, fingerprint-checked."""

    @abstractmethod
    def get_source_data(self, path: SourceStepPath) -> pa.Table:
        """A source step's rows (``SCHEMA_SOURCE_ROWS``)."""

    @abstractmethod
    def get_model_data(self, path: ModelStepPath) -> pa.Table:
        """A model step's scored pairs (``SCHEMA_MODEL_EDGES``)."""

    @abstractmethod
    def get_resolver_data(self, path: ResolverStepPath) -> pa.Table:
        """A resolver's clusters as (cluster id, leaf id) rows (``SCHEMA_CLUSTERS``)."""

    @abstractmethod
    def validate_ids(self, ids: list[int]) -> bool:
        """True if every id is a cluster in the store, else ``MatchboxDataNotFound``."""

    # --- administration ---------------------------------------------------------------------

    @abstractmethod
    def dump(self) -> MatchboxSnapshot:
        """The whole store as a JSON-serialisable snapshot."""

    @abstractmethod
    def drop(self, certain: bool) -> None:
        """Drop every table and create the schema anew."""

    @abstractmethod
    def clear(self, certain: bool) -> None:
        """Delete every row, keeping tables, default groups and grants."""

    @abstractmethod
    def restore(self, snapshot: MatchboxSnapshot) -> None:
        """Load a snapshot into an empty store (``TypeError`` if incompatible)."""

    @abstractmethod
    def delete_orphans(self) -> int:
        """Delete clusters nothing refers to; return how many."""

    # --- users, groups, permissions ---------------------------------------------------------

    @abstractmethod
    def login(self, user: User) -> LoginResponse:
        """Upsert a user; the first user joins admins, every new user joins public."""

    @abstractmethod
    def get_user_groups(self, user_name: str) -> list[GroupName]:
        """Names of the groups a user belongs to."""

    @abstractmethod
    def list_groups(self) -> list[Group]:
        """All groups."""

    @abstractmethod
    def get_group(self, name: GroupName) -> Group:
        """A group and its members."""

    @abstractmethod
    def create_group(self, group: Group) -> None:
        """Create a group."""

    @abstractmethod
    def delete_group(self, name: GroupName, certain: bool = False) -> None:
        """Delete a non-system group (``certain=True`` required)."""

    @abstractmethod
    def add_user_to_group(self, user_name: str, group_name: GroupName) -> None:
        """Add a user (created if new) to a group."""

    @abstractmethod
    def remove_user_from_group(self, user_name: str, group_name: GroupName) -> None:
        """Remove a user from a group."""

    @abstractmethod
    def check_permission(
        self, user_name: str, permission: PermissionType, resource: Resource
    ) -> bool:
        """Whether a user holds ``permission`` (or a higher one) on a resource."""

    @abstractmethod
    def get_permissions(self, resource: Resource) -> list[PermissionGrant]:
        """Grants on a resource."""

    @abstractmethod
    def grant_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Grant a permission on a resource to a group."""

    @abstractmethod
    def revoke_permission(
        self, group_name: GroupName, permission: PermissionType, resource: Resource
    ) -> None:
        """Revoke a group's permission on a resource."""

    # --- evaluation -------------------------------------------------------------------------

    @abstractmethod
    def insert_judgement(self, user_name: str, judgement: Judgement) -> None:
        """Record a judgement."""

    @abstractmethod
    def get_judgements(self, tag: str | None = None) -> tuple[pa.Table, pa.Table]:
        """Judgements (``SCHEMA_JUDGEMENTS``) and their cluster expansion."""

    @abstractmethod
    def get_collection_judgements(
        self, collection: CollectionName, tag: str | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """As :meth:`get_judgements`, only by users who may read ``collection``.

        What an evaluation of the collection counts: a user without READ on it could not see
        the records they judged.
        """

    @abstractmethod
    def sample_for_eval(self, n: int, path: ResolverStepPath, user_name: str) -> pa.Table:
        """Up to ``n`` (≤ 100) clusters of a resolver to judge (``SCHEMA_EVAL_SAMPLES``)."""

    @abstractmethod
    def delete_last_judgement(self, user_name: str) -> int | None:
        """Extension: delete ``user_name``'s latest judgement, only when acting as that user.

        Returns its id, or None when they have none. Nobody deletes another user's judgement
        (:class:`MatchboxPermissionDenied`, admins included): an undo, not a moderation tool.
        """
