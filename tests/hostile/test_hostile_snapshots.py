"""Tampered, truncated and forged snapshots are refused on restore, leaving the store as it was.

JSON snapshots (``dump()``) carry a SHA-256 of their content; streamed snapshots (``dump_to``)
a manifest with each file's size, digest, row count and columns. A forger who also recomputes
the checksum gets past that, so structural damage is tested with a recomputed checksum too.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from matchbox_dagster.common.dtos import MatchboxSnapshot
from matchbox_dagster.common.errors import (
    MatchboxDatastoreError,
    MatchboxInvalidData,
    MatchboxSnapshotError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.snapshot_layout import MANIFEST
from matchbox_dagster.store.postgres.snapshots_json import snapshot_digest
from tests.hostile.conftest import World, observe, refused, throwaway_store


@pytest.fixture(scope="module")
def target(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """An empty store to restore into (every refused restore must leave it empty)."""
    with throwaway_store(settings) as store:
        yield store


def _rows(data: dict[str, Any], table: str) -> list[list[Any]]:
    return data["tables"][table]["rows"]


def _col(data: dict[str, Any], table: str, column: str) -> int:
    return data["tables"][table]["columns"].index(column)


def _set(data: dict[str, Any], table: str, column: str, value: Any, row: int = 0) -> None:
    _rows(data, table)[row][_col(data, table, column)] = value


def _elevate(data: dict[str, Any]) -> None:
    """Give the analysts group ADMIN on the system: a privilege escalation."""
    groups = {r[_col(data, "groups", "name")]: r[0] for r in _rows(data, "groups")}
    perms = _rows(data, "permissions")
    row = next(r for r in perms if r[_col(data, "permissions", "group_id")] == groups["analysts"])
    row[_col(data, "permissions", "permission")] = "admin"
    row[_col(data, "permissions", "collection_id")] = None
    row[_col(data, "permissions", "is_system")] = True


TAMPERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a changed email": lambda d: _set(d, "users", "email", "mallory@example.com"),
    "a changed score": lambda d: _set(d, "model_edges", "score", 1.0),
    "a changed key": lambda d: _set(d, "source_rows", "key", "stolen"),
    "a changed upload stage": lambda d: _set(
        d,
        "steps",
        "upload_stage",
        "complete",
        row=next(
            i
            for i, r in enumerate(_rows(d, "steps"))
            if r[_col(d, "steps", "upload_stage")] != "complete"
        ),
    ),
    "a privilege escalation": _elevate,
    "a removed table": lambda d: d["tables"].pop("judgements"),
    "an added table": lambda d: d["tables"].__setitem__("pwned", {"columns": ["x"], "rows": []}),
    "a removed row": lambda d: _rows(d, "source_rows").pop(),
    "a duplicated row": lambda d: _rows(d, "model_edges").append(list(_rows(d, "model_edges")[0])),
    "rows reordered": lambda d: _rows(d, "source_rows").reverse(),
    "a removed partition": lambda d: d["partitions"].pop(),
    "half the rows cut off": lambda d: d["tables"]["source_rows"].__setitem__(
        "rows", _rows(d, "source_rows")[: len(_rows(d, "source_rows")) // 2]
    ),
    "no checksum": lambda d: d.pop("sha256"),
    "a garbage checksum": lambda d: d.__setitem__("sha256", "not a digest"),
    "a checksum in upper case": lambda d: d.__setitem__("sha256", d["sha256"].upper()),
    "the checksum of another snapshot": lambda d: d.__setitem__("sha256", "0" * 64),
    "a checksum that is not a string": lambda d: d.__setitem__("sha256", 12345),
}


def _tampered(good: MatchboxSnapshot, how: Callable[[dict[str, Any]], Any]) -> MatchboxSnapshot:
    data = copy.deepcopy(good.data)
    how(data)
    return MatchboxSnapshot(backend_type=good.backend_type, data=data)


@pytest.mark.parametrize("how", list(TAMPERS))
def test_tampered_json_snapshots_are_refused(w: World, target: MatchboxPostgres, how: str) -> None:
    exc = refused(
        target,
        lambda: target.restore(_tampered(w.snapshot, TAMPERS[how])),
        MatchboxSnapshotError,
        full=True,
    )
    assert "checksum" in str(exc)


def _forged(good: MatchboxSnapshot, how: Callable[[dict[str, Any]], Any]) -> MatchboxSnapshot:
    """Damage, then recompute the checksum as a forger would."""
    data = copy.deepcopy(good.data)
    how(data)
    data["sha256"] = snapshot_digest(data)
    return MatchboxSnapshot(backend_type=good.backend_type, data=data)


def _dangling_contains(d: dict[str, Any]) -> None:
    _rows(d, "contains").append([123456789, 1])


FORGERIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a removed table": lambda d: d["tables"].pop("judgements"),
    "an added table": lambda d: d["tables"].__setitem__("pwned", {"columns": ["x"], "rows": []}),
    "a renamed column": lambda d: d["tables"]["users"]["columns"].__setitem__(1, "name"),
    "a short row": lambda d: _rows(d, "runs")[0].pop(),
    "text for an id": lambda d: _set(d, "steps", "step_id", "1; DROP TABLE steps"),
    "bytes that are not base64": lambda d: _set(d, "clusters", "cluster_hash", "'; DROP --"),
    "a contains row without its cluster": _dangling_contains,
    "a duplicated primary key": lambda d: _rows(d, "users").append(list(_rows(d, "users")[0])),
    "rows without a partition": lambda d: d.__setitem__(
        "partitions", [p for p in d["partitions"] if p["table"] != "model_edges"]
    ),
    "a partition without a step": lambda d: d["partitions"].append(
        {"table": "source_rows", "step_id": 999_999, "indexes": []}
    ),
    "a partition of a table that is not partitioned": lambda d: d["partitions"].append(
        {"table": "users", "step_id": 1, "indexes": []}
    ),
    "an index on an unknown column": lambda d: d["partitions"][0].__setitem__(
        "indexes", [{"unique": False, "columns": ["x); DROP TABLE users; --"]}]
    ),
    "an upload stage outside the check": lambda d: _set(d, "steps", "upload_stage", "hacked"),
    "a score outside [0, 1]": lambda d: _set(d, "model_edges", "score", 7.5),
    "tables not a mapping": lambda d: d.__setitem__("tables", []),
    "rows not a list": lambda d: d["tables"]["users"].__setitem__("rows", "everyone"),
    "a NUL in a text value": lambda d: _set(d, "users", "email", "a\x00b"),
}


@pytest.mark.parametrize("how", list(FORGERIES))
def test_forged_json_snapshots_are_still_refused(
    w: World, target: MatchboxPostgres, how: str
) -> None:
    refused(
        target,
        lambda: target.restore(_forged(w.snapshot, FORGERIES[how])),
        MatchboxSnapshotError,
        full=True,
    )


INCOMPATIBLE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "another format version": lambda d: d.__setitem__("format_version", 2),
    "another format": lambda d: d.__setitem__("format", "pg_dump"),
    "another schema revision": lambda d: d.__setitem__("schema_revision", "0002"),
    "no header at all": lambda d: [d.pop(k) for k in ("format", "format_version")],
}


@pytest.mark.parametrize("how", list(INCOMPATIBLE))
def test_incompatible_snapshots_raise_the_contracts_type_error(
    w: World, target: MatchboxPostgres, how: str
) -> None:
    refused(target, lambda: target.restore(_forged(w.snapshot, INCOMPATIBLE[how])), TypeError)


def test_truncated_snapshot_text_does_not_parse(w: World) -> None:
    text = w.snapshot.model_dump_json()
    for cut in (len(text) // 2, len(text) - 1, 10):
        with pytest.raises(ValidationError):
            MatchboxSnapshot.model_validate_json(text[:cut])


def test_snapshot_survives_a_json_round_trip(w: World, target: MatchboxPostgres) -> None:
    """The checksum does not depend on how the snapshot travelled (JSON text and back)."""
    again = MatchboxSnapshot.model_validate_json(w.snapshot.model_dump_json())
    assert snapshot_digest(again.data) == again.data["sha256"]
    assert json.loads(json.dumps(w.snapshot.data)) == w.snapshot.data


def test_restore_into_a_store_holding_data_is_refused(w: World) -> None:
    exc = refused(w.store, lambda: w.store.restore(w.snapshot), MatchboxSnapshotError, full=True)
    assert "not empty" in str(exc)


# --- streamed snapshots -------------------------------------------------------------------------


_DUMPED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def streamed(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world dumped once to a directory (what it held then is kept in ``_DUMPED``)."""
    path = tmp_path_factory.mktemp("hostile") / "snapshot"
    world.store.dump_to(path)
    _DUMPED["tables"] = observe(world.store)["tables"]
    return path


def _copy(streamed: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    copy_dir = tmp_path / "copy"
    shutil.copytree(streamed, copy_dir)
    return copy_dir, json.loads((copy_dir / MANIFEST).read_text())


def _write(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _entry(manifest: dict[str, Any], table: str) -> dict[str, Any]:
    return next(t for t in manifest["tables"] if t["table"] == table)


TABLES = [
    "collections",
    "runs",
    "run_labels",
    "steps",
    "step_lineage",
    "source_configs",
    "source_fields",
    "clusters",
    "contains",
    "source_rows",
    "model_edges",
    "resolver_leaves",
    "users",
    "groups",
    "user_groups",
    "permissions",
    "judgements",
    "judgement_groups",
]


@pytest.mark.parametrize("table", TABLES)
def test_each_truncated_file_is_refused(
    target: MatchboxPostgres, streamed: Path, tmp_path: Path, table: str
) -> None:
    directory, manifest = _copy(streamed, tmp_path)
    file = directory / _entry(manifest, table)["file"]
    file.write_bytes(file.read_bytes()[: max(file.stat().st_size // 2, 1)])
    exc = refused(target, lambda: target.restore_from(directory), MatchboxSnapshotError)
    assert "truncated or altered" in str(exc)


def _rewrite(directory: Path, manifest: dict[str, Any], table: str, data: pa.Table) -> None:
    """Replace a table's file and fix its manifest entry, as a forger would."""
    import hashlib

    entry = _entry(manifest, table)
    path = directory / entry["file"]
    pq.write_table(data, path)
    entry.update(
        rows=data.num_rows,
        bytes=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        columns=data.column_names,
    )
    _write(directory, manifest)


def _recompute(directory: Path, manifest: dict[str, Any], table: str) -> None:
    import hashlib

    entry = _entry(manifest, table)
    path = directory / entry["file"]
    entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    _write(directory, manifest)


def _streamed_damage(directory: Path, manifest: dict[str, Any], how: str) -> None:
    users = _entry(manifest, "users")
    if how == "manifest cut in half":
        text = (directory / MANIFEST).read_text()
        (directory / MANIFEST).write_text(text[: len(text) // 2])
    elif how == "manifest empty":
        (directory / MANIFEST).write_text("")
    elif how == "manifest not an object":
        (directory / MANIFEST).write_text("[]")
    elif how == "manifest missing":
        (directory / MANIFEST).unlink()
    elif how == "a file's digest edited":
        users["sha256"] = "0" * 64
        _write(directory, manifest)
    elif how == "a file's size edited":
        users["bytes"] += 1
        _write(directory, manifest)
    elif how == "a file's row count edited":
        users["rows"] += 1
        _write(directory, manifest)
    elif how == "a file's columns edited":
        users["columns"] = ["user_id", "user_name", "email", "is_admin"]
        _write(directory, manifest)
    elif how == "a table left out":
        manifest["tables"].remove(users)
        _write(directory, manifest)
    elif how == "a table listed twice":
        manifest["tables"].append(dict(users))
        _write(directory, manifest)
    elif how == "a file outside the snapshot":
        users["file"] = "../users.parquet"
        _write(directory, manifest)
    elif how == "an absolute file path":
        users["file"] = "/etc/passwd.parquet"
        _write(directory, manifest)
    elif how == "a file that is not parquet":
        users["file"] = "users.csv"
        _write(directory, manifest)
    elif how == "another table's file":
        users.update({k: v for k, v in _entry(manifest, "groups").items() if k != "table"})
        _write(directory, manifest)
    elif how == "a missing file":
        (directory / users["file"]).unlink()
    elif how == "junk appended to a file":
        with (directory / users["file"]).open("ab") as handle:
            handle.write(b"; DROP TABLE users; --")
    elif how == "garbage with a recomputed digest":
        (directory / users["file"]).write_bytes(b"PAR1 this is not parquet PAR1")
        _recompute(directory, manifest, "users")
    elif how == "an empty file with a recomputed digest":
        (directory / users["file"]).write_bytes(b"")
        _recompute(directory, manifest, "users")
    elif how == "an unknown table with a real file":
        manifest["tables"].append({**users, "table": "pwned"})
        _write(directory, manifest)
    elif how == "a forged contains row":
        contains = pq.read_table(directory / _entry(manifest, "contains")["file"])
        extra = pa.table(
            {n: pa.array([123456789], contains.schema.field(n).type) for n in contains.column_names}
        )
        _rewrite(directory, manifest, "contains", pa.concat_tables([contains, extra]))
    elif how == "a forged step type":
        steps = pq.read_table(directory / _entry(manifest, "steps")["file"])
        kinds = steps.column("step_type").to_pylist()
        with_data = {p["step_id"] for p in manifest["partitions"]}
        i = next(i for i, s in enumerate(steps.column("step_id").to_pylist()) if s in with_data)
        kinds[i] = "model" if kinds[i] != "model" else "source"
        _rewrite(
            directory,
            manifest,
            "steps",
            steps.set_column(
                steps.column_names.index("step_type"), "step_type", pa.array(kinds, pa.string())
            ),
        )
    elif how == "another format version":
        manifest["format_version"] = 99
        _write(directory, manifest)
    elif how == "another schema revision":
        manifest["schema_revision"] = "0001"
        _write(directory, manifest)
    else:  # pragma: no cover
        raise AssertionError(how)


STREAMED = [
    "manifest cut in half",
    "manifest empty",
    "manifest not an object",
    "manifest missing",
    "a file's digest edited",
    "a file's size edited",
    "a file's row count edited",
    "a file's columns edited",
    "a table left out",
    "a table listed twice",
    "a file outside the snapshot",
    "an absolute file path",
    "a file that is not parquet",
    "another table's file",
    "a missing file",
    "junk appended to a file",
    "garbage with a recomputed digest",
    "an empty file with a recomputed digest",
    "an unknown table with a real file",
    "a forged contains row",
    "a forged step type",
    "another format version",
    "another schema revision",
]


@pytest.mark.parametrize("how", STREAMED)
def test_damaged_streamed_snapshots_are_refused(
    target: MatchboxPostgres, streamed: Path, tmp_path: Path, how: str
) -> None:
    directory, manifest = _copy(streamed, tmp_path)
    _streamed_damage(directory, manifest, how)
    error = (
        TypeError
        if how.startswith("another format") or how.startswith("another schema")
        else MatchboxSnapshotError
    )
    refused(target, lambda: target.restore_from(directory), error)


def test_snapshot_locations_that_cannot_be_used(
    w: World, target: MatchboxPostgres, streamed: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases: list[tuple[Callable[[], Any], type[BaseException]]] = [
        (lambda: w.store.dump_to(streamed), MatchboxSnapshotError),  # holds a snapshot already
        (lambda: w.store.dump_to(a_file / "inside"), MatchboxDatastoreError),
        (lambda: w.store.dump_to("s3://"), MatchboxInvalidData),
        (lambda: target.restore_from(tmp_path / "nothing here"), MatchboxSnapshotError),
        (lambda: target.restore_from("s3:///prefix"), MatchboxInvalidData),
    ]
    for call, error in cases:
        refused(w.store, call, error)
        refused(target, call, error)


def test_after_all_that_the_good_snapshots_still_restore(
    w: World, target: MatchboxPostgres, streamed: Path
) -> None:
    """The refusals were about the damage: the undamaged snapshots load, exactly."""
    target.restore(w.snapshot)
    assert target.dump().data == w.snapshot.data
    target.clear(certain=True)
    target.restore_from(streamed)
    assert observe(target)["tables"] == _DUMPED["tables"]
    target.clear(certain=True)
