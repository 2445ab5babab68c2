"""Users, groups and permissions; permission checks on every mutating call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matchbox_dagster.common.dtos import (
    Group,
    Judgement,
    PermissionGrant,
    PermissionType,
    QueryConfig,
    Step,
    StepPath,
    StepType,
    User,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxDeletionNotConfirmed,
    MatchboxGroupAlreadyExistsError,
    MatchboxGroupNotFoundError,
    MatchboxPermissionDenied,
    MatchboxSystemGroupError,
    MatchboxUserNotFoundError,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.defaults import ensure_defaults
from tests.conftest import drop_schema
from tests.factories import (
    clusters_table,
    edges_table,
    hashes_table,
    model_step,
    source_config,
    store_state,
)
from tests.store.conftest_gov import *  # noqa: F403
from tests.store.conftest_gov import (
    Cached,
    Guarded,
    Populated,
    _settings,
    cache_populated,
    populate,
)

READ, WRITE, ADMIN = PermissionType.READ, PermissionType.WRITE, PermissionType.ADMIN


def names(groups: list[Group]) -> list[str]:
    return [g.name for g in groups]


# --- defaults -------------------------------------------------------------------------------


def test_fresh_store_holds_default_groups_and_grant(gov: MatchboxPostgres) -> None:
    groups = {g.name: g for g in gov.list_groups()}
    assert set(groups) == {"public", "admins"}
    assert groups["public"].is_system and groups["admins"].is_system
    assert [m.user_name for m in groups["public"].members] == ["_public"]
    assert groups["admins"].members == []
    assert gov.get_permissions("system") == [PermissionGrant(group_name="admins", permission=ADMIN)]
    assert gov.users.count() == 1


def test_ensure_defaults_is_idempotent(gov: MatchboxPostgres) -> None:
    before = store_state(gov)
    ensure_defaults(gov.db)
    ensure_defaults(gov.db)
    assert store_state(gov) == before


# --- login and users ------------------------------------------------------------------------


def test_first_user_becomes_admin_and_everyone_joins_public(gov: MatchboxPostgres) -> None:
    first = gov.login(User(user_name="alice", email="alice@example.com"))
    assert first.setup_mode_admin and first.user.email == "alice@example.com"
    second = gov.login(User(user_name="bob"))
    assert not second.setup_mode_admin
    assert gov.get_user_groups("alice") == ["admins", "public"]
    assert gov.get_user_groups("bob") == ["public"]
    again = gov.login(User(user_name="alice"))
    assert not again.setup_mode_admin
    assert again.user.email == "alice@example.com"  # kept when not given
    assert gov.login(User(user_name="alice", email="new@example.com")).user.email == (
        "new@example.com"
    )
    assert gov.users.count() == 3


def test_concurrent_first_logins_make_exactly_one_admin(gov: MatchboxPostgres) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def login(name: str) -> None:
        barrier.wait()
        results.append(gov.login(User(user_name=name)).setup_mode_admin)

    threads = [threading.Thread(target=login, args=(f"user{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert len(gov.get_group("admins").members) == 1


def test_public_user_logging_in_is_not_an_admin(gov: MatchboxPostgres) -> None:
    assert not gov.login(User(user_name="_public")).setup_mode_admin
    assert gov.get_group("admins").members == []


def test_get_user_groups_of_unknown_user(gov: MatchboxPostgres) -> None:
    with pytest.raises(MatchboxUserNotFoundError):
        gov.get_user_groups("nobody")


# --- groups ---------------------------------------------------------------------------------


def test_create_get_and_list_groups(gov: MatchboxPostgres) -> None:
    gov.login(User(user_name="alice"))
    gov.create_group(
        Group(name="analysts", description="Data team", members=[User(user_name="carol")])
    )
    group = gov.get_group("analysts")
    assert group.description == "Data team" and not group.is_system
    assert [m.user_name for m in group.members] == ["carol"]
    assert gov.get_user_groups("carol") == ["analysts", "public"]  # a new member joins public
    assert names(gov.list_groups()) == ["admins", "analysts", "public"]
    with pytest.raises(MatchboxGroupAlreadyExistsError):
        gov.create_group(Group(name="analysts"))
    with pytest.raises(MatchboxGroupAlreadyExistsError):
        gov.create_group(Group(name="public"))
    with pytest.raises(MatchboxSystemGroupError):
        gov.create_group(Group(name="ops", is_system=True))
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.get_group("ops")


def test_delete_group(gov: MatchboxPostgres) -> None:
    gov.create_group(Group(name="temp", members=[User(user_name="dave")]))
    gov.create_collection("c_del")
    gov.grant_permission("temp", WRITE, "c_del")
    before = store_state(gov)
    with pytest.raises(MatchboxDeletionNotConfirmed):
        gov.delete_group("temp")
    assert store_state(gov) == before
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.delete_group("nope", certain=True)
    for system in ("public", "admins"):
        with pytest.raises(MatchboxSystemGroupError):
            gov.delete_group(system, certain=True)
    assert store_state(gov) == before
    gov.delete_group("temp", certain=True)
    assert "temp" not in names(gov.list_groups())
    assert gov.get_permissions("c_del") == []
    assert gov.get_user_groups("dave") == ["public"]


def test_membership(gov: MatchboxPostgres) -> None:
    gov.create_group(Group(name="ops"))
    gov.add_user_to_group("erin", "ops")  # creates erin
    gov.add_user_to_group("erin", "ops")  # idempotent
    assert gov.get_user_groups("erin") == ["ops", "public"]
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.add_user_to_group("erin", "nope")
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.remove_user_from_group("erin", "nope")
    with pytest.raises(MatchboxUserNotFoundError):
        gov.remove_user_from_group("nobody", "ops")
    with pytest.raises(MatchboxSystemGroupError):
        gov.remove_user_from_group("_public", "public")
    gov.remove_user_from_group("erin", "ops")
    gov.remove_user_from_group("erin", "ops")  # no longer a member: no-op
    assert gov.get_user_groups("erin") == ["public"]


# --- permissions ----------------------------------------------------------------------------


def test_permission_hierarchy_on_collections(gov: MatchboxPostgres) -> None:
    gov.login(User(user_name="alice"))  # admin
    gov.login(User(user_name="bob"))
    gov.create_group(Group(name="writers", members=[User(user_name="bob")]))
    gov.create_collection("c_perm")
    gov.create_collection("c_other")
    gov.grant_permission("writers", WRITE, "c_perm")
    gov.grant_permission("writers", WRITE, "c_perm")  # idempotent
    assert gov.get_permissions("c_perm") == [
        PermissionGrant(group_name="writers", permission=WRITE)
    ]
    assert gov.check_permission("bob", READ, "c_perm")
    assert gov.check_permission("bob", WRITE, "c_perm")
    assert not gov.check_permission("bob", ADMIN, "c_perm")
    assert not gov.check_permission("bob", READ, "c_other")
    assert not gov.check_permission("bob", READ, "system")
    # ADMIN on the system implies everything everywhere.
    for permission in (READ, WRITE, ADMIN):
        assert gov.check_permission("alice", permission, "c_other")
        assert gov.check_permission("alice", permission, "system")
    # READ on the system does not reach into collections.
    gov.grant_permission("writers", READ, "system")
    assert gov.check_permission("bob", READ, "system")
    assert not gov.check_permission("bob", WRITE, "system")
    assert not gov.check_permission("bob", READ, "c_other")
    assert not gov.check_permission("nobody", READ, "system")
    with pytest.raises(MatchboxCollectionNotFoundError):
        gov.check_permission("bob", READ, "missing")
    gov.revoke_permission("writers", WRITE, "c_perm")
    gov.revoke_permission("writers", WRITE, "c_perm")  # no-op
    assert not gov.check_permission("bob", READ, "c_perm")
    assert gov.get_permissions("system") == [
        PermissionGrant(group_name="admins", permission=ADMIN),
        PermissionGrant(group_name="writers", permission=READ),
    ]


def test_permission_errors(gov: MatchboxPostgres) -> None:
    gov.create_collection("c_err")
    before = store_state(gov)
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.grant_permission("nope", READ, "c_err")
    with pytest.raises(MatchboxCollectionNotFoundError):
        gov.grant_permission("public", READ, "missing")
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.revoke_permission("nope", READ, "system")
    with pytest.raises(MatchboxCollectionNotFoundError):
        gov.revoke_permission("public", READ, "missing")
    with pytest.raises(MatchboxCollectionNotFoundError):
        gov.get_permissions("missing")
    with pytest.raises(MatchboxSystemGroupError):
        gov.revoke_permission("admins", ADMIN, "system")
    assert store_state(gov) == before


def test_create_collection_grants_initial_permissions(gov: MatchboxPostgres) -> None:
    gov.create_group(Group(name="team"))
    gov.create_collection(
        "c_init",
        [
            PermissionGrant(group_name="team", permission=WRITE),
            PermissionGrant(group_name="public", permission=READ),
        ],
    )
    assert gov.get_permissions("c_init") == [
        PermissionGrant(group_name="public", permission=READ),
        PermissionGrant(group_name="team", permission=WRITE),
    ]
    before = store_state(gov)
    with pytest.raises(MatchboxGroupNotFoundError):
        gov.create_collection("c_bad", [PermissionGrant(group_name="ghosts", permission=READ)])
    assert store_state(gov) == before  # the collection was not created either


# --- authorisation on -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_cache(_guarded_pair: Guarded) -> Cached:
    return cache_populated(_guarded_pair.open)


def test_authorisation_on_reads(guarded: Guarded, guarded_cache: Cached) -> None:
    guarded_cache.restore_into(guarded.open)
    store = guarded.store
    bob = store.as_user("bob")
    with pytest.raises(MatchboxPermissionDenied):
        bob.list_groups()
    with pytest.raises(MatchboxPermissionDenied):
        bob.get_group("public")
    with pytest.raises(MatchboxPermissionDenied):
        bob.get_user_groups("alice")
    assert bob.get_user_groups("bob") == ["analysts", "public"]  # their own
    with pytest.raises(MatchboxPermissionDenied):
        store.get_collection("companies")  # anonymous: the public user
    assert bob.get_collection("companies").default_run is not None  # analysts may read
    with pytest.raises(MatchboxPermissionDenied):
        bob.get_permissions("companies")
    alice = store.as_user("alice")
    assert names(alice.list_groups()) == ["admins", "analysts", "public"]
    assert alice.get_permissions("companies") == [
        PermissionGrant(group_name="analysts", permission=READ)
    ]
    # Login and permission checks need no permission.
    assert not store.login(User(user_name="zoe")).setup_mode_admin
    assert store.check_permission("bob", READ, "companies")


def test_granted_permissions_allow_calls(guarded: Guarded, guarded_cache: Cached) -> None:
    data = guarded_cache.restore_into(guarded.open)
    bob = guarded.store.as_user("bob")
    with pytest.raises(MatchboxPermissionDenied):
        bob.create_run("companies")
    guarded.open.grant_permission("analysts", WRITE, "companies")
    assert bob.create_run("companies").run_id > data.draft_run
    with pytest.raises(MatchboxPermissionDenied):
        bob.delete_run("companies", data.draft_run, certain=True)
    guarded.open.add_user_to_group("bob", "admins")
    bob.delete_run("companies", data.draft_run, certain=True)
    bob.create_group(Group(name="made_by_bob"))


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A populated store with authorisation on, a pending model step, and snapshots of it."""
    settings = _settings()
    pair = Guarded(
        MatchboxPostgres(settings),
        MatchboxPostgres(settings.model_copy(update={"authorisation": True})),
    )
    data = populate(pair.open)
    pending = StepPath(collection=data.collection, run=data.draft_run, name="pending_model")
    pair.open.create_step(model_step(edges_table([]), QueryConfig(sources=("crm",))), pending)
    snapshot_dir = tmp_path_factory.mktemp("locked") / "snap"
    pair.open.dump_to(snapshot_dir)
    draft_crm = pair.open.get_step(
        StepPath(collection=data.collection, run=data.draft_run, name="crm")
    )
    yield pair, data, pair.open.dump(), snapshot_dir, draft_crm
    pair.store.close()
    pair.open.close()
    drop_schema(settings.postgres_schema)


def _calls(
    data: Populated, snapshot: Any, snapshot_dir: Path, draft_crm: Step
) -> dict[str, Callable[[Any], Any]]:
    c, run = data.collection, data.draft_run
    crm_path = StepPath(collection=c, run=run, name="crm")
    pending = StepPath(collection=c, run=run, name="pending_model")
    new_source = Step(
        step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=source_config("new")
    )
    return {
        "create_collection": lambda s: s.create_collection("new_one"),
        "delete_collection": lambda s: s.delete_collection(c, certain=True),
        "create_run": lambda s: s.create_run(c),
        "set_run_mutable": lambda s: s.set_run_mutable(c, run, False),
        "set_run_default": lambda s: s.set_run_default(c, data.run, False),
        "delete_run": lambda s: s.delete_run(c, run, certain=True),
        "create_step": lambda s: s.create_step(
            new_source, StepPath(collection=c, run=run, name="new")
        ),
        "update_step": lambda s: s.update_step(
            draft_crm.model_copy(update={"description": "x"}), crm_path
        ),
        "delete_step": lambda s: s.delete_step(crm_path, certain=True),
        "lock_step_data": lambda s: s.lock_step_data(pending),
        "unlock_step_data": lambda s: s.unlock_step_data(pending, complete=True),
        "insert_source_data": lambda s: s.insert_source_data(
            StepPath(collection=c, run=run, name="new"), hashes_table({"x": ["k"]})
        ),
        "insert_model_data": lambda s: s.insert_model_data(pending, edges_table([])),
        "insert_resolver_data": lambda s: s.insert_resolver_data(
            StepPath(collection=c, run=run, name="r"), clusters_table([[1, 2]])
        ),
        "create_group": lambda s: s.create_group(Group(name="x")),
        "delete_group": lambda s: s.delete_group("analysts", certain=True),
        "add_user_to_group": lambda s: s.add_user_to_group("bob", "admins"),
        "remove_user_from_group": lambda s: s.remove_user_from_group("bob", "analysts"),
        "grant_permission": lambda s: s.grant_permission("analysts", ADMIN, c),
        "grant_system_permission": lambda s: s.grant_permission("analysts", ADMIN, "system"),
        "revoke_permission": lambda s: s.revoke_permission("analysts", READ, c),
        "insert_judgement": lambda s: s.insert_judgement(
            "alice", Judgement(shown=[data.lc["c4"]], endorsed=[[data.lc["c4"]]])
        ),
        "dump": lambda s: s.dump(),
        "restore": lambda s: s.restore(snapshot),
        "clear": lambda s: s.clear(certain=True),
        "drop": lambda s: s.drop(certain=True),
        "delete_orphans": lambda s: s.delete_orphans(),
        "dump_to": lambda s: s.dump_to(snapshot_dir.parent / "other"),
        "restore_from": lambda s: s.restore_from(snapshot_dir),
        "reset_stuck_uploads": lambda s: s.reset_stuck_uploads(),
    }


CALLS = [
    "create_collection", "delete_collection", "create_run", "set_run_mutable",
    "set_run_default", "delete_run", "create_step", "update_step", "delete_step",
    "lock_step_data", "unlock_step_data", "insert_source_data", "insert_model_data",
    "insert_resolver_data", "create_group", "delete_group", "add_user_to_group",
    "remove_user_from_group", "grant_permission", "grant_system_permission",
    "revoke_permission", "insert_judgement", "dump", "restore", "clear", "drop",
    "delete_orphans", "dump_to", "restore_from", "reset_stuck_uploads",
]  # fmt: skip


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("user", ["bob", None])
def test_every_mutating_call_is_denied_without_permission(
    locked: Any, call: str, user: str | None
) -> None:
    pair, data, snapshot, snapshot_dir, draft_crm = locked
    before = store_state(pair.open)
    action = _calls(data, snapshot, snapshot_dir, draft_crm)[call]
    with pytest.raises(MatchboxPermissionDenied):
        action(pair.store.as_user(user))
    assert store_state(pair.open) == before


def test_users_judge_as_themselves(guarded: Guarded, guarded_cache: Cached) -> None:
    data = guarded_cache.restore_into(guarded.open)
    judgement = Judgement(shown=[data.lc["c4"]], endorsed=[[data.lc["c4"]]])
    guarded.store.as_user("bob").insert_judgement("bob", judgement)
    guarded.store.as_user("alice").insert_judgement("bob", judgement)  # an admin may
    with pytest.raises(MatchboxPermissionDenied):
        guarded.store.insert_judgement("_public", judgement)  # anonymous


def test_unguarded_store_allows_everything(gov: MatchboxPostgres) -> None:
    assert not gov.settings.authorisation
    gov.as_user("nobody").create_collection("anything")
    assert gov.as_user("nobody").list_collections() == ["anything"]


def test_settings_default_to_no_authorisation() -> None:
    assert _settings().authorisation is False
