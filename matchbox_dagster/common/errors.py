"""The exception hierarchy of matchbox-dagster.

Every error raised on purpose by the library derives from :class:`MatchboxError`, so callers can
catch one type. Messages say what was asked, what was found and what to do about it. Names follow
the matchbox backend contract.

Hierarchy::

    MatchboxError
    ├── MatchboxNotFoundError
    │   ├── MatchboxCollectionNotFoundError
    │   ├── MatchboxRunNotFoundError
    │   ├── MatchboxStepNotFoundError
    │   │   ├── MatchboxStepCollectionNotFound (also MatchboxCollectionNotFoundError)
    │   │   ├── MatchboxStepRunNotFound (also MatchboxRunNotFoundError)
    │   │   └── MatchboxStepDeletedWhileReading
    │   ├── MatchboxUserNotFoundError
    │   ├── MatchboxGroupNotFoundError
    │   └── MatchboxDataNotFound
    ├── MatchboxAlreadyExistsError
    │   ├── MatchboxCollectionAlreadyExists
    │   ├── MatchboxStepAlreadyExists
    │   └── MatchboxGroupAlreadyExistsError
    ├── MatchboxInvalidData (ValueError)
    │   ├── MatchboxArrowSchemaMismatch
    │   ├── MatchboxNameError
    │   ├── MatchboxStepInvalidData
    │   │   └── MatchboxFingerprintMismatch
    │   ├── MatchboxSnapshotError
    │   ├── MatchboxSourceChanged
    │   └── MatchboxLocationNotAllowed
    ├── MatchboxCredentialInLocation
    ├── MatchboxRunNotWriteable
    │   └── MatchboxRunStateError (ValueError)
    ├── MatchboxStepExistingData
    ├── MatchboxStepUpdateError
    ├── MatchboxStepNotQueriable
    │   └── MatchboxInputNotComplete
    ├── MatchboxStepTypeError
    ├── MatchboxLockError
    ├── MatchboxDeletionNotConfirmed
    ├── MatchboxPermissionDenied
    ├── MatchboxSystemGroupError
    ├── MatchboxTooManySamplesRequested
    ├── MatchboxNoJudgements
    ├── MatchboxConnectionError
    ├── MatchboxDatabaseWriteError
    └── MatchboxDatastoreError
"""

from __future__ import annotations


class MatchboxError(Exception):
    """Root of every error raised on purpose by matchbox-dagster."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut short when long.

    Messages quote what was asked for, and what was asked for may be a megabyte of text.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return repr(value)


# --- not found ------------------------------------------------------------------------------


class MatchboxNotFoundError(MatchboxError, LookupError):
    """Something that was asked for does not exist."""


class MatchboxCollectionNotFoundError(MatchboxNotFoundError):
    """The collection does not exist."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"Collection {shown(name)} does not exist. Create it with create_collection(), or "
            "check the name with list_collections()."
        )


class MatchboxRunNotFoundError(MatchboxNotFoundError):
    """The run does not exist in the collection."""

    def __init__(self, collection: str, run_id: int) -> None:
        self.collection = collection
        self.run_id = run_id
        super().__init__(
            f"Run {run_id} does not exist in collection {collection!r}. "
            f"See get_collection({collection!r}).runs for the runs it has."
        )


class MatchboxRunLabelNotFound(MatchboxNotFoundError):
    """No run of the collection carries the label (e.g. a Dagster partition key)."""

    def __init__(self, collection: str, label: str) -> None:
        self.collection = collection
        self.label = label
        super().__init__(
            f"Collection {shown(collection)} has no run labelled {shown(label)}. Materialise the "
            "partition (which creates its run) or list labelled runs with run_labels()."
        )


class MatchboxStepNotFoundError(MatchboxNotFoundError):
    """The step does not exist in the run."""

    def __init__(self, path: object, detail: str = "") -> None:
        self.path = path
        text = str(path) if len(str(path)) <= 500 else str(path)[:500] + "…"
        Exception.__init__(
            self,
            f"Step {text} does not exist{': ' + detail if detail else ''}. "
            "Create it with create_step() first, or check the collection, run and name.",
        )


class MatchboxStepCollectionNotFound(MatchboxStepNotFoundError, MatchboxCollectionNotFoundError):
    """A step path names a collection that does not exist (both errors, for either caller)."""

    def __init__(self, path: object, collection: str) -> None:
        self.name = collection
        super().__init__(
            path, f"collection {shown(collection)} does not exist (see list_collections())"
        )


class MatchboxStepRunNotFound(MatchboxStepNotFoundError, MatchboxRunNotFoundError):
    """A step path names a run its collection does not have (both errors, for either caller)."""

    def __init__(self, path: object, collection: str, run_id: int) -> None:
        self.collection = collection
        self.run_id = run_id
        super().__init__(
            path,
            f"run {run_id} does not exist in collection {shown(collection)} (see "
            "get_collection().runs)",
        )


class MatchboxStepDeletedWhileReading(MatchboxStepNotFoundError):
    """The step was deleted (or replaced) while a read of its data was under way."""

    def __init__(self, path: object) -> None:
        super().__init__(
            path,
            "it was deleted or replaced while it was being read, so its data is gone; read "
            "again (a step written anew is read whole)",
        )


class MatchboxUserNotFoundError(MatchboxNotFoundError):
    """The user does not exist."""

    def __init__(self, user_name: str) -> None:
        self.user_name = user_name
        super().__init__(f"User {shown(user_name)} does not exist. Users are created by login().")


class MatchboxGroupNotFoundError(MatchboxNotFoundError):
    """The group does not exist."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Group {shown(name)} does not exist. See list_groups() for the groups.")


class MatchboxDataNotFound(MatchboxNotFoundError):
    """Data (cluster ids, keys, judgements) asked for is not in the store."""


# --- already exists -------------------------------------------------------------------------


class MatchboxAlreadyExistsError(MatchboxError):
    """Something to be created exists already."""


class MatchboxCollectionAlreadyExists(MatchboxAlreadyExistsError):
    """A collection of that name exists already."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"Collection {name!r} already exists. Use get_collection({name!r}) or pick another "
            "name."
        )


class MatchboxStepAlreadyExists(MatchboxAlreadyExistsError):
    """A step of that name exists already in the run."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(
            f"Step {path} already exists. Use update_step() to change its description or "
            "config, or delete_step() to replace it."
        )


class MatchboxGroupAlreadyExistsError(MatchboxAlreadyExistsError):
    """A group of that name exists already."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Group {name!r} already exists.")


# --- invalid input --------------------------------------------------------------------------


class MatchboxInvalidData(MatchboxError, ValueError):
    """Input data has the wrong shape or content; nothing was written."""


class MatchboxArrowSchemaMismatch(MatchboxInvalidData):
    """An Arrow table does not have the expected columns and types."""


class MatchboxNameError(MatchboxInvalidData):
    """A name (collection, step, group…) is not allowed."""


class MatchboxStepInvalidData(MatchboxInvalidData):
    """Data offered to a step is not valid for it."""


class MatchboxFingerprintMismatch(MatchboxStepInvalidData):
    """The data's fingerprint differs from the one declared when the step was created."""

    def __init__(self, path: object, expected: bytes, actual: bytes) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"The data offered to step {path} has fingerprint {actual.hex()[:16]}…, but the step "
            f"was created with {expected.hex()[:16]}…. The data changed since the step was "
            "declared: create a new run, or delete the step and create it again with the new "
            "fingerprint (matchbox_dagster.common.fingerprint)."
        )


class MatchboxSnapshotError(MatchboxInvalidData):
    """A snapshot is damaged, tampered with or incompatible."""


class MatchboxSourceChanged(MatchboxInvalidData):
    """A source's records differ from what its source step indexed: its ids no longer hold."""

    def __init__(self, collection: str, run: int, source: str, detail: str) -> None:
        self.collection = collection
        self.run = run
        self.source = source
        super().__init__(
            f"Source {source!r} of collection {collection!r}, run {run}, changed since it was "
            f"indexed: {detail}. Its stored ids stand for the old values; start a new run."
        )


class MatchboxCredentialInLocation(MatchboxError):
    """A source location carries a literal password; credentials come from the environment.

    Not a ``ValueError``, so pydantic passes it through as is (a validation error would show
    the input, password included).
    """


class MatchboxLocationNotAllowed(MatchboxInvalidData):
    """A file location resolves outside the allowed roots (``MATCHBOX_LOCATION_ROOTS``)."""


# --- state ----------------------------------------------------------------------------------


class MatchboxRunNotWriteable(MatchboxError):
    """The run is immutable: its steps and data cannot change."""

    def __init__(self, collection: str, run_id: int, action: str = "change it") -> None:
        self.collection = collection
        self.run_id = run_id
        super().__init__(
            f"Run {run_id} of collection {collection!r} is immutable, so you cannot {action}. "
            "Start a new run with create_run(), or make this one mutable with "
            "set_run_mutable(..., mutable=True) if it is not the default."
        )


class MatchboxRunStateError(MatchboxRunNotWriteable, ValueError):
    """A run's flags cannot change this way (a mutable default, deleting the default run)."""

    def __init__(self, collection: str, run_id: int, detail: str) -> None:
        self.collection = collection
        self.run_id = run_id
        MatchboxError.__init__(self, f"Run {run_id} of collection {collection!r}: {detail}")


class MatchboxStepExistingData(MatchboxError):
    """The step already holds data; data can only be set once."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(
            f"Step {path} already holds data, and data can be set only once. Delete the step "
            "(delete_step(..., certain=True)) and create it again to replace its data."
        )


class MatchboxStepUpdateError(MatchboxError):
    """A step update tried to change what cannot change."""


class MatchboxStepNotQueriable(MatchboxError):
    """The step has no complete data yet."""

    def __init__(self, path: object, stage: object) -> None:
        self.path = path
        super().__init__(
            f"Step {path} cannot be queried: its upload stage is {stage}, not complete. "
            "Insert its data first."
        )


class MatchboxInputNotComplete(MatchboxStepNotQueriable):
    """A step's input (or an ancestor it reads through) holds no complete data yet."""

    def __init__(self, path: object, step_input: object, stage: object) -> None:
        self.path = path
        self.input = step_input
        MatchboxError.__init__(
            self,
            f"Step {path} cannot take data yet: its input {step_input!r} is {stage}, not "
            "complete, and the step's ids would be fixed without it. Write that input first.",
        )


class MatchboxStepTypeError(MatchboxError, TypeError):
    """The step is of another type than the operation needs."""

    def __init__(self, path: object, actual: object, expected: object) -> None:
        self.path = path
        super().__init__(f"Step {path} is a {actual} step, but a {expected} step is needed here.")


class MatchboxLockError(MatchboxError):
    """Another upload holds the step's lock, or its stage forbids the upload."""


class MatchboxDeletionNotConfirmed(MatchboxError):
    """A deletion was asked for without ``certain=True``."""

    def __init__(self, what: str, children: list[str] | None = None) -> None:
        self.what = what
        self.children = children or []
        extra = f" It would also delete: {', '.join(self.children)}." if self.children else ""
        super().__init__(
            f"Deleting {what} needs confirmation.{extra} Call again with certain=True."
        )


class MatchboxPermissionDenied(MatchboxError, PermissionError):
    """The acting user lacks the permission the call needs."""

    def __init__(self, user_name: str | None, permission: object, resource: str) -> None:
        self.user_name = user_name
        self.permission = permission
        self.resource = resource
        super().__init__(
            f"User {shown(user_name)} needs {permission} permission on {shown(resource)} for this "
            "call. "
            "Ask an administrator to grant it to one of your groups."
        )


class MatchboxSystemGroupError(MatchboxError):
    """System groups cannot be deleted or changed this way."""


class MatchboxTooManySamplesRequested(MatchboxError):
    """More evaluation samples were asked for than allowed."""


class MatchboxNoJudgements(MatchboxError):
    """There are no judgements to evaluate against."""


class MatchboxConnectionError(MatchboxError, ConnectionError):
    """The database could not be reached (after retries)."""


class MatchboxDatabaseWriteError(MatchboxError):
    """The database refused a write; nothing was changed."""


class MatchboxDatastoreError(MatchboxError):
    """A snapshot location (a local directory or S3) refused or failed a read or write."""
