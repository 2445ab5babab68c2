"""Snapshots (JSON and streamed to a directory or S3), clear, drop, orphans, upload audit."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from matchbox_dagster.common.dtos import (
    Group,
    MatchboxSnapshot,
    QueryConfig,
    Step,
    StepPath,
    StepType,
    UploadStage,
    User,
)
from matchbox_dagster.common.errors import (
    MatchboxDeletionNotConfirmed,
    MatchboxSnapshotError,
)
from matchbox_dagster.common.settings import DatastoreSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, migrate
from matchbox_dagster.store.postgres.audit import UploadAudit
from matchbox_dagster.store.postgres.snapshot_layout import MANIFEST, SnapshotManifest
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    leaf_of,
    source_config,
    store_state,
)
from tests.store.conftest_gov import *  # noqa: F403
from tests.store.conftest_gov import Cached, Populated, cache_populated, populate, sql

PENDING = "crm2"


def add_pending(store: MatchboxPostgres, data: Populated) -> None:
    """A source step caught mid-upload (its stage is snapshotted too)."""
    pending = StepPath(collection=data.collection, run=data.draft_run, name=PENDING)
    store.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=b"\x02" * 32, config=source_config(PENDING)),
        pending,
    )
    store.lock_step_data(pending)


@pytest.fixture(scope="module")
def cached(gov_backend: MatchboxPostgres) -> Cached:
    return cache_populated(gov_backend, add_pending)


@pytest.fixture
def populated(gov: MatchboxPostgres, cached: Cached) -> Populated:
    """The populated store with a pending upload (restored from a snapshot taken once)."""
    return cached.restore_into(gov)


def rows(table: Any) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def observe(store: MatchboxPostgres, data: Populated) -> dict[str, Any]:
    """What users see: query results, judgements, groups, permissions, countables."""
    return {
        "crm_all": rows(store.query(data.crm, data.r_all, return_leaf_id=True)),
        "erp_all": rows(store.query(data.erp, data.r_all)),
        "crm_crm": rows(store.query(data.crm, data.r_crm)),
        "judgements": [rows(t) for t in store.get_judgements()],
        "groups": store.list_groups(),
        "permissions": store.get_permissions("companies"),
        "collection": store.get_collection("companies"),
        "run": store.get_run("companies", data.run),
        "counts": [
            store.sources.count(), store.models.count(), store.resolvers.count(),
            store.model_clusters.count(), store.all_clusters.count(), store.users.count(),
        ],
        "stage": store.get_step_stage(
            StepPath(collection=data.collection, run=data.draft_run, name=PENDING)
        ),
    }  # fmt: skip


def partition_indexes(store: MatchboxPostgres) -> list[tuple]:
    return sql(
        store,
        "SELECT tablename, regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') "
        "FROM pg_indexes WHERE schemaname = %s AND tablename ~ '_[0-9]+$' ORDER BY 1, 2",
        (store.db.schema,),
    )


def partitions(store: MatchboxPostgres) -> int:
    return sql(
        store,
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (store.db.schema,),
    )[0][0]


def cleared_state(store: MatchboxPostgres) -> dict[str, str]:
    store.clear(certain=True)
    return store_state(store)


# --- JSON snapshots -------------------------------------------------------------------------


def test_snapshot_round_trip_is_exact(gov: MatchboxPostgres) -> None:
    populated = populate(gov)  # built through the API, not restored
    add_pending(gov, populated)
    before_tables = store_state(gov)
    before_seen = observe(gov, populated)
    before_indexes = partition_indexes(gov)
    assert partitions(gov) == 7  # 3 sources, 2 models, 2 resolvers
    snapshot = gov.dump()
    # Through JSON text and back, as it would travel.
    text = json.dumps(snapshot.model_dump(mode="json"))
    travelled = MatchboxSnapshot.model_validate(json.loads(text))
    assert travelled.backend_type == "postgres"
    gov.clear(certain=True)
    assert partitions(gov) == 0
    gov.restore(travelled)
    assert store_state(gov) == before_tables  # every table and partition, row for row
    assert partition_indexes(gov) == before_indexes
    assert observe(gov, populated) == before_seen
    assert gov.dump() == snapshot
    # Identity sequences moved past the restored ids.
    assert gov.create_run("companies").run_id > populated.draft_run
    gov.create_group(Group(name="after_restore"))
    gov.login(User(user_name="dave"))


def test_restore_refuses_a_store_with_data(gov: MatchboxPostgres, populated: Populated) -> None:
    snapshot = gov.dump()
    before = store_state(gov)
    with pytest.raises(MatchboxSnapshotError, match="not empty"):
        gov.restore(snapshot)
    assert store_state(gov) == before
    gov.clear(certain=True)
    gov.login(User(user_name="zed"))  # users count as data too
    with pytest.raises(MatchboxSnapshotError, match="beyond the defaults"):
        gov.restore(snapshot)


def test_restore_refuses_incompatible_snapshots(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    good = gov.dump()
    empty = cleared_state(gov)

    def variant(**changes: Any) -> MatchboxSnapshot:
        data = copy.deepcopy(good.data)
        data.update(changes)
        return MatchboxSnapshot(backend_type=good.backend_type, data=data)

    with pytest.raises(TypeError, match="duckdb"):
        gov.restore(MatchboxSnapshot.model_construct(backend_type="duckdb", data=good.data))
    with pytest.raises(TypeError, match="format"):
        gov.restore(variant(format_version=99))
    with pytest.raises(TypeError, match="format"):
        gov.restore(variant(format="something-else"))
    with pytest.raises(TypeError, match="revision"):
        gov.restore(variant(schema_revision="0000"))
    assert store_state(gov) == empty


def _damaged(good: MatchboxSnapshot, damage: str) -> MatchboxSnapshot:
    data = copy.deepcopy(good.data)
    tables = data["tables"]
    if damage == "missing table":
        del tables["judgements"]
    elif damage == "renamed column":
        tables["users"]["columns"][1] = "name"
    elif damage == "short row":
        tables["runs"]["rows"][0].pop()
    elif damage == "bad bytes":
        column = tables["clusters"]["columns"].index("cluster_hash")
        tables["clusters"]["rows"][0][column] = "not base64!"
    elif damage == "text for id":
        tables["steps"]["rows"][0][0] = "one"
    elif damage == "rows without partition":
        data["partitions"] = [p for p in data["partitions"] if p["table"] != "model_edges"]
    elif damage == "partition without step":
        data["partitions"].append({"table": "source_rows", "step_id": 999, "indexes": []})
    elif damage == "partition of unknown table":
        data["partitions"].append({"table": "users", "step_id": 1, "indexes": []})
    elif damage == "index on unknown column":
        data["partitions"][0]["indexes"] = [{"unique": False, "columns": ["nope"]}]
    elif damage == "broken foreign key":
        tables["contains"]["rows"].append([123, 456])
    elif damage == "duplicate key":
        tables["users"]["rows"].append(list(tables["users"]["rows"][0]))
    elif damage == "tables not a dict":
        data["tables"] = []
    return MatchboxSnapshot(backend_type=good.backend_type, data=data)


DAMAGES = [
    "missing table", "renamed column", "short row", "bad bytes", "text for id",
    "rows without partition", "partition without step", "partition of unknown table",
    "index on unknown column", "broken foreign key", "duplicate key", "tables not a dict",
]  # fmt: skip


def test_damaged_snapshots_are_refused_and_change_nothing(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    good = gov.dump()
    empty = cleared_state(gov)
    for damage in DAMAGES:
        with pytest.raises(MatchboxSnapshotError):
            gov.restore(_damaged(good, damage))
        assert store_state(gov) == empty, damage
        assert partitions(gov) == 0, damage
    gov.restore(good)  # the undamaged one still loads
    assert observe(gov, populated)["counts"][2] == 2


# --- clear, drop, orphans -------------------------------------------------------------------


def test_clear(gov: MatchboxPostgres, populated: Populated) -> None:
    before = store_state(gov)
    with pytest.raises(MatchboxDeletionNotConfirmed):
        gov.clear(certain=False)
    assert store_state(gov) == before
    gov.clear(certain=True)
    assert partitions(gov) == 0
    assert [g.name for g in gov.list_groups()] == ["admins", "public"]
    assert gov.users.count() == 1 and gov.list_collections() == []
    assert gov.get_judgements()[0].num_rows == 0
    assert set(store_state(gov)) == set(before) - {
        t for t in before if t.rsplit("_", 1)[-1].isdigit()
    }  # every table kept, partitions gone
    # Ids are not reused after a clear.
    gov.create_collection("again")
    assert gov.create_run("again").run_id > populated.draft_run
    assert gov.login(User(user_name="first_again")).setup_mode_admin


def test_drop(gov: MatchboxPostgres, populated: Populated) -> None:
    before = store_state(gov)
    with pytest.raises(MatchboxDeletionNotConfirmed):
        gov.drop(certain=False)
    assert store_state(gov) == before
    gov.drop(certain=True)
    assert migrate.current_revision(gov.db.engine, gov.db.schema) == migrate.HEAD
    assert partitions(gov) == 0
    assert [g.name for g in gov.list_groups()] == ["admins", "public"]
    gov.create_collection("after_drop")
    assert gov.create_run("after_drop").run_id == 1  # a new schema starts afresh


def test_delete_orphans(gov: MatchboxPostgres, populated: Populated) -> None:
    assert gov.delete_orphans() == 0  # everything is referenced
    c = populated.collection
    run = gov.create_run(c).run_id
    src = add_source(gov, c, run, "s", {"p": ["p1"], "q": ["p2"], "r": ["p3"], "t": ["p4"],
                                        "acme": ["x1"], "acme ltd": ["x2"]})  # fmt: skip
    leaf = leaf_of(gov, src)
    pairs = [[leaf["p1"], leaf["p2"]], [leaf["p3"], leaf["p4"]], [leaf["x1"], leaf["x2"]]]
    add_model(gov, c, run, "m", [(a, b, 0.9) for a, b in pairs], QueryConfig(sources=("s",)))
    add_resolver(gov, c, run, "r", pairs, ("m",))
    clusters = gov.model_clusters.count()
    assert clusters == 5  # acme (r_crm), beta (r_all), acme_12 (judged, reused here), 2 new
    # x1, x2 are leaves "acme" and "acme ltd": their pair is the cluster alice endorsed.
    gov.delete_run(c, run, certain=True)
    # A resolver's clusters live in its partition and go with it; acme_12 stays (judged).
    assert gov.model_clusters.count() == clusters - 2
    assert gov.delete_orphans() == 0
    # An unreferenced cluster left in `clusters` (as a store before revision 0004 could hold)
    # is an orphan: it goes, with its contents.
    sql(gov, "INSERT INTO clusters VALUES (42, '\\x00', 2)")
    sql(gov, "INSERT INTO contains VALUES (42, %s), (42, %s)", (leaf["p1"], leaf["p2"]))
    assert gov.model_clusters.count() == clusters - 1
    assert gov.delete_orphans() == 1
    assert gov.delete_orphans() == 0
    assert gov.model_clusters.count() == clusters - 2
    dangling = "SELECT count(*) FROM contains c WHERE NOT EXISTS " \
        "(SELECT 1 FROM clusters k WHERE k.cluster_id = c.root)"  # fmt: skip
    assert sql(gov, dangling)[0][0] == 0
    assert sql(gov, "SELECT count(*) FROM contains WHERE root = 42")[0][0] == 0
    assert len(gov.get_judgements()[1]) == 4  # every judged cluster still expands


# --- streamed snapshots ---------------------------------------------------------------------


def test_dump_to_directory_round_trip(
    gov: MatchboxPostgres, populated: Populated, tmp_path: Path
) -> None:
    before_tables, before_seen = store_state(gov), observe(gov, populated)
    target = tmp_path / "snap"
    manifest = gov.dump_to(target)
    assert (target / MANIFEST).is_file()
    on_disk = SnapshotManifest.model_validate_json((target / MANIFEST).read_text())
    assert on_disk == manifest
    counts = {f.table: f.rows for f in manifest.tables}
    assert counts["source_rows"] == 8 + 2 and counts["users"] == 3
    assert {p.table for p in manifest.partitions} == {"source_rows", "model_edges",
                                                      "resolver_leaves"}  # fmt: skip
    with pytest.raises(MatchboxSnapshotError, match="already holds"):
        gov.dump_to(target)
    gov.clear(certain=True)
    gov.restore_from(target)
    assert store_state(gov) == before_tables
    assert observe(gov, populated) == before_seen


def _tamper(target: Path, how: str) -> None:
    manifest = json.loads((target / MANIFEST).read_text())
    entry = next(t for t in manifest["tables"] if t["table"] == "source_rows")
    path = target / entry["file"]
    if how == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "missing file":
        path.unlink()
    elif how == "missing manifest":
        (target / MANIFEST).unlink()
    elif how == "rows edited in manifest":
        entry["rows"] += 1
    elif how == "unsafe file name":
        entry["file"] = "../source_rows.parquet"
    elif how == "garbage manifest":
        (target / MANIFEST).write_text("{not json")
    elif how == "table dropped from manifest":
        manifest["tables"].remove(entry)
    elif how == "other format version":
        manifest["format_version"] = 2
    if how in ("rows edited in manifest", "unsafe file name", "table dropped from manifest",
               "other format version"):  # fmt: skip
        (target / MANIFEST).write_text(json.dumps(manifest))


TAMPERS = [
    "flipped byte", "truncated", "missing file", "missing manifest", "rows edited in manifest",
    "unsafe file name", "garbage manifest", "table dropped from manifest",
]  # fmt: skip


def test_tampered_streamed_snapshots_are_refused(
    gov: MatchboxPostgres, populated: Populated, tmp_path: Path
) -> None:
    good = tmp_path / "good"
    gov.dump_to(good)
    empty = cleared_state(gov)
    for how in [*TAMPERS, "other format version"]:
        target = tmp_path / how.replace(" ", "_")
        target.mkdir()
        for file in good.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
        _tamper(target, how)
        error = TypeError if how == "other format version" else MatchboxSnapshotError
        with pytest.raises(error):
            gov.restore_from(target)
        assert store_state(gov) == empty, how
    gov.restore_from(good)
    assert gov.resolvers.count() == 2


def test_dump_to_s3_round_trip(
    gov: MatchboxPostgres,
    populated: Populated,
    moto_s3: DatastoreSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gov, "settings", gov.settings.model_copy(update={"datastore": moto_s3}))
    client = moto_s3.get_client()
    client.create_bucket(Bucket="snapshots")
    before_tables, before_seen = store_state(gov), observe(gov, populated)
    manifest = gov.dump_to("s3://snapshots/nightly/1")
    listed = client.list_objects_v2(Bucket="snapshots", Prefix="nightly/1/")["Contents"]
    keys = {o["Key"] for o in listed}
    assert keys == {f"nightly/1/{f.file}" for f in manifest.tables} | {"nightly/1/manifest.json"}
    with pytest.raises(MatchboxSnapshotError, match="already holds"):
        gov.dump_to("s3://snapshots/nightly/1")
    empty = cleared_state(gov)
    # A tampered object is refused; the store stays empty.
    original = client.get_object(Bucket="snapshots", Key="nightly/1/steps.parquet")["Body"].read()
    client.put_object(Bucket="snapshots", Key="nightly/1/steps.parquet", Body=original[:-10])
    with pytest.raises(MatchboxSnapshotError, match="truncated or altered"):
        gov.restore_from("s3://snapshots/nightly/1")
    with pytest.raises(MatchboxSnapshotError, match="No snapshot"):
        gov.restore_from("s3://snapshots/nowhere")
    client.delete_object(Bucket="snapshots", Key="nightly/1/steps.parquet")
    with pytest.raises(MatchboxSnapshotError, match="missing"):
        gov.restore_from("s3://snapshots/nightly/1")
    assert store_state(gov) == empty
    client.put_object(Bucket="snapshots", Key="nightly/1/steps.parquet", Body=original)
    gov.restore_from("s3://snapshots/nightly/1")
    assert store_state(gov) == before_tables
    assert observe(gov, populated) == before_seen


# --- upload audit ---------------------------------------------------------------------------


def test_audit_and_reset_stuck_uploads(gov: MatchboxPostgres, populated: Populated) -> None:
    pending = StepPath(collection=populated.collection, run=populated.draft_run, name=PENDING)
    audit = gov.audit_uploads()
    assert isinstance(audit, UploadAudit) and audit.clean
    assert audit.uploads_expiry_minutes == 60
    # The writer crashed two hours ago.
    sql(gov, "UPDATE steps SET stage_updated_at = now() - interval '2 hours' WHERE name = %s",
        (PENDING,))  # fmt: skip
    # A run nobody promoted, started 40 days ago.
    sql(gov, "UPDATE runs SET created_at = now() - interval '40 days' WHERE run_id = %s",
        (populated.draft_run,))  # fmt: skip
    audit = gov.audit_uploads(stale_run_days=30)
    assert [s.path for s in audit.stuck] == [pending]
    assert audit.stuck[0].stage == UploadStage.PROCESSING and audit.stuck[0].minutes > 119
    assert [(r.collection, r.run_id, r.steps) for r in audit.stale_runs] == [
        ("companies", populated.draft_run, 2)
    ]
    assert gov.audit_uploads(stale_run_days=50).stale_runs == []
    assert audit.counts() == {
        "stuck": 1,
        "failed": 0,
        "abandoned": 0,
        "empty_immutable": 0,
        "stale_runs": 1,
    }
    assert gov.reset_stuck_uploads() == 1
    assert gov.get_step_stage(pending) == UploadStage.READY
    assert gov.reset_stuck_uploads() == 0
    # Back at READY after an upload began: reported as failed.
    audit = gov.audit_uploads()
    assert [s.path for s in audit.failed] == [pending] and audit.stuck == []
    # A READY step in an immutable run can never get data.
    gov.set_run_mutable(populated.collection, populated.draft_run, False)
    assert [s.path for s in gov.audit_uploads().empty_immutable] == [pending]
    with pytest.raises(ValueError, match="stale_run_days"):
        gov.audit_uploads(stale_run_days=-1)


def test_audit_reports_steps_declared_and_never_filled(
    gov: MatchboxPostgres, populated: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step created, then left READY without data (its writer died): reported once old."""
    from tests.test_helpers_steps import declare_pending_source

    run = gov.create_run(populated.collection).run_id
    old = StepPath(collection=populated.collection, run=run, name="killed")
    fresh = StepPath(collection=populated.collection, run=run, name="just_created")
    declare_pending_source(gov, old)
    declare_pending_source(gov, fresh)
    assert gov.audit_uploads().abandoned == []  # younger than the expiry: maybe still running
    sql(gov, "UPDATE steps SET created_at = now() - interval '2 hours', "
        "stage_updated_at = now() - interval '2 hours' WHERE run_id = %s AND name = %s",
        (run, "killed"))  # fmt: skip
    audit = gov.audit_uploads()
    assert [s.path for s in audit.abandoned] == [old]
    assert audit.abandoned[0].stage == UploadStage.READY and audit.abandoned[0].minutes > 119
    assert audit.failed == [] and audit.stuck == [] and not audit.clean
    assert audit.counts()["abandoned"] == 1
    monkeypatch.setattr(
        gov, "settings", gov.settings.model_copy(update={"uploads_expiry_minutes": None})
    )
    assert gov.audit_uploads().abandoned == []


def test_reset_skips_uploads_still_running(gov: MatchboxPostgres, populated: Populated) -> None:
    import psycopg

    sql(gov, "UPDATE steps SET stage_updated_at = now() - interval '2 hours' WHERE name = %s",
        (PENDING,))  # fmt: skip
    with psycopg.connect(gov.db.uri) as holder:  # a live writer holds the step's row
        holder.execute(
            psycopg.sql.SQL("SELECT 1 FROM {}.steps WHERE name = %s FOR UPDATE").format(
                psycopg.sql.Identifier(gov.db.schema)
            ),
            (PENDING,),
        )
        assert gov.reset_stuck_uploads() == 0
        holder.rollback()
    assert gov.reset_stuck_uploads() == 1


def test_no_expiry_means_nothing_is_stuck(
    gov: MatchboxPostgres, populated: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql(gov, "UPDATE steps SET stage_updated_at = now() - interval '20 days' WHERE name = %s",
        (PENDING,))  # fmt: skip
    monkeypatch.setattr(
        gov, "settings", gov.settings.model_copy(update={"uploads_expiry_minutes": None})
    )
    assert gov.audit_uploads().stuck == []
    assert gov.reset_stuck_uploads() == 0
