"""Shared vocabulary: data transfer objects, Arrow schemas and payloads, errors, settings."""

from matchbox_dagster.common.arrow import ModelResults as ModelResults
from matchbox_dagster.common.arrow import ResolverClusters as ResolverClusters
from matchbox_dagster.common.arrow import SourceHashes as SourceHashes
from matchbox_dagster.common.dtos import BackendResourceType as BackendResourceType
from matchbox_dagster.common.dtos import Collection as Collection
from matchbox_dagster.common.dtos import DataTypes as DataTypes
from matchbox_dagster.common.dtos import DefaultGroup as DefaultGroup
from matchbox_dagster.common.dtos import DefaultUser as DefaultUser
from matchbox_dagster.common.dtos import Group as Group
from matchbox_dagster.common.dtos import Judgement as Judgement
from matchbox_dagster.common.dtos import LocationConfig as LocationConfig
from matchbox_dagster.common.dtos import LocationType as LocationType
from matchbox_dagster.common.dtos import LoginResponse as LoginResponse
from matchbox_dagster.common.dtos import Match as Match
from matchbox_dagster.common.dtos import MatchboxSnapshot as MatchboxSnapshot
from matchbox_dagster.common.dtos import ModelConfig as ModelConfig
from matchbox_dagster.common.dtos import ModelType as ModelType
from matchbox_dagster.common.dtos import PermissionGrant as PermissionGrant
from matchbox_dagster.common.dtos import PermissionType as PermissionType
from matchbox_dagster.common.dtos import QueryConfig as QueryConfig
from matchbox_dagster.common.dtos import ResolverConfig as ResolverConfig
from matchbox_dagster.common.dtos import Run as Run
from matchbox_dagster.common.dtos import SourceConfig as SourceConfig
from matchbox_dagster.common.dtos import SourceField as SourceField
from matchbox_dagster.common.dtos import Step as Step
from matchbox_dagster.common.dtos import StepPath as StepPath
from matchbox_dagster.common.dtos import StepType as StepType
from matchbox_dagster.common.dtos import UploadStage as UploadStage
from matchbox_dagster.common.dtos import User as User
from matchbox_dagster.common.settings import MatchboxSettings as MatchboxSettings

__all__ = [
    "BackendResourceType",
    "Collection",
    "DataTypes",
    "DefaultGroup",
    "DefaultUser",
    "Group",
    "Judgement",
    "LocationConfig",
    "LocationType",
    "LoginResponse",
    "Match",
    "MatchboxSettings",
    "MatchboxSnapshot",
    "ModelConfig",
    "ModelResults",
    "ModelType",
    "PermissionGrant",
    "PermissionType",
    "QueryConfig",
    "ResolverClusters",
    "ResolverConfig",
    "Run",
    "SourceConfig",
    "SourceField",
    "SourceHashes",
    "Step",
    "StepPath",
    "StepType",
    "UploadStage",
    "User",
]
