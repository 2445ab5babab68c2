"""Data transfer objects: the typed vocabulary shared by the store, methodologies and Dagster.

Names and fields follow the matchbox backend contract. Everything here is a small pydantic model,
validated at construction, so bad input fails early with a message naming the field.
"""

from __future__ import annotations

import base64
import json
import textwrap
from enum import StrEnum
from itertools import chain
from typing import Annotated, Any, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    field_serializer,
    field_validator,
    model_validator,
)

from matchbox_dagster.common.errors import (
    MatchboxCredentialInLocation,
)
from matchbox_dagster.common.names import MAX_USER_NAME_LENGTH as MAX_USER_NAME_LENGTH
from matchbox_dagster.common.names import NAME_PATTERN as NAME_PATTERN
from matchbox_dagster.common.names import is_valid_name as is_valid_name
from matchbox_dagster.common.names import validate_name as validate_name
from matchbox_dagster.common.names import validate_text as validate_text
from matchbox_dagster.common.names import validate_user_name as validate_user_name
from matchbox_dagster.common.redaction import literal_password, redact


def _text(value: str | None) -> str | None:
    return None if value is None else validate_text(value, "The text")


MatchboxName: TypeAlias = Annotated[str, AfterValidator(validate_name)]
CollectionName: TypeAlias = MatchboxName
GroupName: TypeAlias = MatchboxName
StepName: TypeAlias = MatchboxName
SourceStepName: TypeAlias = MatchboxName
ModelStepName: TypeAlias = MatchboxName
ResolverStepName: TypeAlias = MatchboxName
RunID: TypeAlias = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
JsonObject: TypeAlias = dict[str, JsonValue]


def _bytes_to_b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _b64_to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value.encode("ascii"), validate=True)
    raise ValueError("fingerprint must be bytes or a base64 string")


Fingerprint: TypeAlias = Annotated[
    bytes,
    PlainValidator(_b64_to_bytes),
    PlainSerializer(_bytes_to_b64, return_type=str),
]


# --- enums ----------------------------------------------------------------------------------


class StepType(StrEnum):
    """Kinds of step in a run's graph."""

    SOURCE = "source"
    MODEL = "model"
    RESOLVER = "resolver"


class UploadStage(StrEnum):
    """Upload stage of a step's data: ``READY → PROCESSING → COMPLETE``."""

    READY = "ready"
    PROCESSING = "processing"
    COMPLETE = "complete"


class WriteOutcome(StrEnum):
    """What one ``write_step`` call did."""

    STORED = "stored"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"
    SHARED = "shared"  # the step points at another step's identical stored data


class PermissionType(StrEnum):
    """Permission levels, ``READ ⊂ WRITE ⊂ ADMIN``."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


class BackendResourceType(StrEnum):
    """Resource types named in errors and permissions."""

    COLLECTION = "collection"
    RUN = "run"
    STEP = "step"
    CLUSTER = "cluster"
    USER = "user"
    GROUP = "group"
    JUDGEMENT = "judgement"
    SYSTEM = "system"


class DefaultUser(StrEnum):
    """Users present in every store."""

    PUBLIC = "_public"


class DefaultGroup(StrEnum):
    """Groups present in every store."""

    PUBLIC = "public"
    ADMINS = "admins"


class LocationType(StrEnum):
    """Where a source's data lives."""

    RDBMS = "rdbms"
    PARQUET = "parquet"
    CSV = "csv"
    S3 = "s3"
    ARROW = "arrow"


class DataTypes(StrEnum):
    """Field types a source can index (polars type names)."""

    STRING = "String"
    INT64 = "Int64"
    INT32 = "Int32"
    FLOAT64 = "Float64"
    FLOAT32 = "Float32"
    BOOLEAN = "Boolean"
    DATE = "Date"
    DATETIME = "Datetime"
    BINARY = "Binary"


class ModelType(StrEnum):
    """Dedupers take one input, linkers two."""

    DEDUPER = "deduper"
    LINKER = "linker"


# --- paths ----------------------------------------------------------------------------------


class StepPath(BaseModel):
    """Address of a step: collection, run id and step name."""

    model_config = ConfigDict(frozen=True)

    collection: CollectionName
    run: RunID
    name: StepName

    def __str__(self) -> str:
        return f"{self.collection}/{self.run}/{self.name}"


SourceStepPath: TypeAlias = StepPath
ModelStepPath: TypeAlias = StepPath
ResolverStepPath: TypeAlias = StepPath


# --- step configs ---------------------------------------------------------------------------


class LocationConfig(BaseModel):
    """Where a source is read from: a type and a name (URI, path or bucket/key).

    A name never holds a password (it is stored and shown): reference an environment variable
    instead, ``postgresql://user:${PG_PASSWORD}@host/db``, read at connect time.
    """

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    type: LocationType
    name: str

    @model_validator(mode="after")
    def _no_password(self) -> Self:
        if literal_password(self.name):
            raise MatchboxCredentialInLocation(
                f"The {self.type} location {redact(self.name)} holds a password; a location is "
                "stored and shown, so it must not. Put the password in an environment variable "
                "and reference it: postgresql://user:${PG_PASSWORD}@host/db (or "
                "?password=${PG_PASSWORD}), resolved only when the source is read."
            )
        return self


class SourceField(BaseModel):
    """A field of a source after extract/transform."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=200)
    type: DataTypes = DataTypes.STRING


class SourceConfig(BaseModel):
    """How a source is read and indexed: exactly one key field and one or more index fields."""

    model_config = ConfigDict(frozen=True)

    location_config: LocationConfig
    extract_transform: str = Field(
        default="", description="Location-dependent extract/transform logic (e.g. SQL)."
    )
    key_field: SourceField = Field(
        description=textwrap.dedent(
            """The source's own key (always a string), such as a primary key. Always
            correct and owned by the source."""
        )
    )
    index_fields: tuple[SourceField, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        if self.key_field.type != DataTypes.STRING:
            raise ValueError("the key field must have type String")
        names = [f.name for f in self.index_fields]
        if self.key_field.name in names:
            raise ValueError(f"key field {self.key_field.name!r} must not be an index field")
        if len(names) != len(set(names)):
            raise ValueError(f"index fields repeat a name: {names}")
        return self

    @property
    def parents(self) -> list[StepName]:
        """Sources have no parents."""
        return []


class QueryConfig(BaseModel):
    """A model input: one or more sources, resolved through an optional resolver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[SourceStepName, ...] = Field(min_length=1)
    resolver: ResolverStepName | None = None
    cleaning: dict[str, str] | None = None
    # The contract's field: sources' records are concatenated, one row per record. Only
    # "concat" is honoured, so it is not stored (it round-trips as the default).
    combine_type: str = Field(default="concat", exclude=True)

    @field_validator("combine_type")
    @classmethod
    def _combine(cls, value: str) -> str:
        if value != "concat":
            raise ValueError(
                f"combine_type {value!r} is not supported: model inputs concatenate their "
                "sources' records, one row per record ('concat')"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.sources) > 1 and self.resolver is None:
            raise ValueError("a resolver is needed to query more than one source")
        return self

    @property
    def resolves_from(self) -> StepName:
        """The step this input's cluster ids come from."""
        return self.resolver or self.sources[0]

    @property
    def dependencies(self) -> list[StepName]:
        """Every step this input reads."""
        return [*self.sources, *([self.resolver] if self.resolver else [])]


class ModelConfig(BaseModel):
    """A deduper (one input) or linker (two inputs) and its methodology settings."""

    model_config = ConfigDict(frozen=True)

    type: ModelType
    model_class: str
    model_settings: JsonObject = Field(default_factory=dict)
    left_query: QueryConfig
    right_query: QueryConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == ModelType.DEDUPER and self.right_query is not None:
            raise ValueError("a deduper takes no right_query")
        if self.type == ModelType.LINKER and self.right_query is None:
            raise ValueError("a linker needs a right_query")
        return self

    @property
    def parents(self) -> list[StepName]:
        """Steps whose cluster ids this model scores."""
        parents = [self.left_query.resolves_from]
        if self.right_query is not None:
            parents.append(self.right_query.resolves_from)
        return parents

    @property
    def dependencies(self) -> list[StepName]:
        """Every step the model reads."""
        deps = list(self.left_query.dependencies)
        if self.right_query is not None:
            deps += self.right_query.dependencies
        return list(dict.fromkeys(deps))


class ResolverConfig(BaseModel):
    """A resolver: which models it reads and how (e.g. thresholds per model)."""

    model_config = ConfigDict(frozen=True)

    resolver_class: str = "Components"
    resolver_settings: JsonObject = Field(default_factory=dict)
    inputs: tuple[ModelStepName, ...] = Field(min_length=1)

    @property
    def parents(self) -> list[StepName]:
        """The model steps this resolver reads."""
        return list(self.inputs)


StepConfig: TypeAlias = SourceConfig | ModelConfig | ResolverConfig


class Step(BaseModel):
    """A node of a run: its type, config, description and data fingerprint."""

    description: str | None = None
    fingerprint: Fingerprint
    step_type: StepType
    config: StepConfig

    @field_validator("description")
    @classmethod
    def _description(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a description, when given, must not be blank")
        return None if value is None else validate_text(value, "A step description")

    @model_validator(mode="after")
    def _config_matches_type(self) -> Self:
        expected = {
            StepType.SOURCE: SourceConfig,
            StepType.MODEL: ModelConfig,
            StepType.RESOLVER: ResolverConfig,
        }[self.step_type]
        if not isinstance(self.config, expected):
            raise ValueError(f"a {self.step_type} step needs a {expected.__name__}")
        return self

    @property
    def parents(self) -> list[StepName]:
        """Direct parents of this step in the run's graph."""
        return self.config.parents


class Run(BaseModel):
    """One version of a collection's graph."""

    run_id: RunID
    collection: CollectionName | None = None
    is_default: bool = False
    is_mutable: bool = True
    steps: dict[StepName, Step] = Field(default_factory=dict)


class Collection(BaseModel):
    """A named resolution project and its runs."""

    name: CollectionName | None = None
    default_run: RunID | None = None
    runs: list[RunID] = Field(default_factory=list)


# --- users, groups, permissions -------------------------------------------------------------


class User(BaseModel):
    """A user identity."""

    user_name: Annotated[str, AfterValidator(validate_user_name)]
    email: Annotated[str | None, AfterValidator(_text)] = None


class LoginResponse(BaseModel):
    """Result of ``login``: the user, and whether they became an admin as the first user."""

    user: User
    setup_mode_admin: bool = False


class Group(BaseModel):
    """A group of users that permissions are granted to."""

    name: GroupName
    description: Annotated[str | None, AfterValidator(_text)] = None
    is_system: bool = False
    members: list[User] = Field(default_factory=list)


class PermissionGrant(BaseModel):
    """A permission held by a group."""

    model_config = ConfigDict(frozen=True)

    group_name: GroupName
    permission: PermissionType


# --- query results and evaluation -----------------------------------------------------------


class Match(BaseModel):
    """Keys in a target source that share an entity with a key in a source."""

    cluster: int | None
    source: SourceStepPath
    source_id: set[str] = Field(default_factory=set)
    target: SourceStepPath
    target_id: set[str] = Field(default_factory=set)

    @field_serializer("source_id", "target_id")
    def _sorted(self, ids: set[str]) -> list[str]:
        return sorted(ids)


def _tag(value: str | None) -> str | None:
    if value is None:
        return None
    return validate_text(value, "A judgement tag", max_length=MAX_USER_NAME_LENGTH)


class Judgement(BaseModel):
    """A person's verdict on a sample: which of the shown leaf clusters belong together."""

    tag: Annotated[str | None, AfterValidator(_tag)] = None
    shown: list[int] = Field(min_length=1)
    endorsed: list[list[int]] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(self.shown) != len(set(self.shown)):
            raise ValueError("shown repeats a cluster id")
        flat = list(chain.from_iterable(self.endorsed))
        if len(flat) != len(set(flat)):
            raise ValueError("endorsed repeats a cluster id")
        if any(not group for group in self.endorsed):
            raise ValueError("endorsed contains an empty group")
        if set(flat) != set(self.shown):
            raise ValueError("endorsed groups must partition exactly the shown cluster ids")
        return self


class MatchboxBackends(StrEnum):
    """Backends a snapshot can come from."""

    POSTGRES = "postgres"


class MatchboxSnapshot(BaseModel):
    """A JSON-serialisable copy of a whole store."""

    backend_type: MatchboxBackends
    data: dict[str, Any]

    @field_validator("data")
    @classmethod
    def _serialisable(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"snapshot data is not JSON-serialisable: {exc}") from exc
        return value
