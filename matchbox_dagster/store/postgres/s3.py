"""Snapshot locations: a local directory or ``s3://bucket/prefix``, their client and failures.

The S3 client of a snapshot (:func:`snapshot_client`) is made by the store's client factory when
it was given one — under Dagster, ``MatchboxResource(s3=S3Resource(...))`` hands down
``S3Resource.get_client`` (the store never imports Dagster) — else by boto3 from the datastore
settings (``MATCHBOX_DATASTORE__*``) or the standard AWS variables.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from matchbox_dagster.common.errors import (
    MatchboxDatastoreError,
    MatchboxError,
    MatchboxInvalidData,
)
from matchbox_dagster.common.settings import MatchboxSettings

S3ClientFactory = Callable[[], Any]
"""Makes a boto3 S3 client (e.g. ``dagster_aws.s3.S3Resource.get_client``)."""


class HasS3(Protocol):
    """What :func:`snapshot_client` reads: the store's settings and its client factory."""

    settings: MatchboxSettings
    s3_client_factory: S3ClientFactory | None


def snapshot_client(ctx: HasS3) -> Any:
    """The S3 client for a snapshot: the factory's when the store has one, else the datastore's."""
    factory = getattr(ctx, "s3_client_factory", None)
    return factory() if factory is not None else ctx.settings.datastore.get_client()


@dataclass(frozen=True)
class Location:
    """A local directory, or a bucket and key prefix in S3."""

    local: Path | None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, location: str | os.PathLike[str]) -> Location:
        """A location from a directory path or ``s3://bucket/prefix``."""
        text = os.fspath(location)
        if text.startswith("s3://"):
            bucket, _, prefix = text[len("s3://") :].partition("/")
            if not bucket:
                raise MatchboxInvalidData(
                    f"S3 location {text!r} names no bucket (s3://bucket/prefix)."
                )
            return cls(local=None, bucket=bucket, prefix=prefix.strip("/"))
        return cls(local=Path(text))

    def key(self, name: str) -> str:
        """The S3 key of a file of the snapshot."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else f"s3://{self.bucket}/{self.prefix}"


@contextmanager
def datastore(location: Location, action: str) -> Iterator[None]:
    """Turn a failure of the snapshot location (S3 or the file system) into a typed error.

    The message keeps the service's own words (never credentials, which boto3 does not put in
    its errors) and drops the exception chain.
    """
    try:
        yield
    except MatchboxError:
        raise
    except Exception as exc:
        module = type(exc).__module__.split(".")[0]
        if module not in {"botocore", "boto3", "s3transfer"} and not isinstance(exc, OSError):
            raise
        text = str(exc).strip().splitlines()
        raise MatchboxDatastoreError(
            f"Could not {action} {location}: {text[0] if text else type(exc).__name__}"
        ) from None


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_missing(exc: BaseException) -> bool:
    """Whether a boto3 error means the object or bucket does not exist."""
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def s3_exists(client: Any, bucket: str | None, key: str) -> bool:
    """Whether an object exists in S3."""
    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_missing(exc):
            return False
        raise
    return True
