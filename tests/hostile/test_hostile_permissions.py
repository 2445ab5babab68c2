"""Permissions with ``authorisation=True``: every mutating call by a user without the grant is
refused with ``MatchboxPermissionDenied`` and changes nothing; nobody reads a collection without
READ on it; the system groups cannot be deleted.

The users of the populated store (``tests/hostile/conftest.py``): alice administers the system,
bob (analysts) reads ``companies``, carol (writers) writes ``companies``, dave (people_admins)
administers ``people``, eve is only in ``public``; ``None`` is the anonymous user; and names
that look like alice, or like SQL, are nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from matchbox_dagster.common.dtos import Group, Judgement, PermissionType, Step, StepType
from matchbox_dagster.common.errors import (
    MatchboxGroupAlreadyExistsError,
    MatchboxPermissionDenied,
    MatchboxStepInvalidData,
    MatchboxSystemGroupError,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import clusters_table, edges_table, hashes_table, source_config
from tests.hostile.conftest import World, refused

READ, WRITE, ADMIN = PermissionType.READ, PermissionType.WRITE, PermissionType.ADMIN
LEVEL = {READ: 1, WRITE: 2, ADMIN: 3}

GRANTS: dict[str | None, dict[str, PermissionType]] = {
    "bob": {"companies": READ},
    "carol": {"companies": WRITE},
    "dave": {"people": ADMIN},
    "eve": {},
    None: {},
    "ALICE": {},
    "alice ": {},
    "'; DROP TABLE users; --": {},
}
"""What each acting user holds (alice, the system admin, may do everything and is not here)."""


def allowed(user: str | None, permission: PermissionType, resource: str) -> bool:
    held = GRANTS[user].get(resource)
    return held is not None and LEVEL[held] >= LEVEL[permission]


Call = Callable[[MatchboxPostgres, World], Any]

MUTATING: dict[str, tuple[PermissionType, str, Call]] = {
    "create_collection": (WRITE, "system", lambda s, w: s.create_collection("new_one")),
    "delete_collection companies": (
        ADMIN, "companies", lambda s, w: s.delete_collection("companies", certain=True)),
    "delete_collection people": (
        ADMIN, "people", lambda s, w: s.delete_collection("people", certain=True)),
    "create_run companies": (WRITE, "companies", lambda s, w: s.create_run("companies")),
    "create_run people": (WRITE, "people", lambda s, w: s.create_run("people")),
    "run_for_label": (WRITE, "companies", lambda s, w: s.run_for_label("companies", "mine")),
    "set_run_mutable": (
        WRITE, "companies", lambda s, w: s.set_run_mutable("companies", w.data.draft_run, False)),
    "set_run_default": (
        WRITE, "companies", lambda s, w: s.set_run_default("companies", w.data.run, False)),
    "delete_run": (
        ADMIN, "companies", lambda s, w: s.delete_run("companies", w.data.draft_run, certain=True)),
    "create_step": (WRITE, "companies", lambda s, w: s.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=source_config("x")),
        w.path("x"))),
    "create_step in people": (WRITE, "people", lambda s, w: s.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=source_config("x")),
        w.other_crm.model_copy(update={"name": "x"}))),
    "update_step": (WRITE, "companies", lambda s, w: s.update_step(
        w.store.get_step(w.draft_crm).model_copy(update={"description": "mine"}), w.draft_crm)),
    "delete_step": (WRITE, "companies", lambda s, w: s.delete_step(w.draft_crm, certain=True)),
    "delete_step in people": (
        WRITE, "people", lambda s, w: s.delete_step(w.other_crm, certain=True)),
    "lock_step_data": (WRITE, "companies", lambda s, w: s.lock_step_data(w.pending_source)),
    "unlock_step_data": (
        WRITE, "companies", lambda s, w: s.unlock_step_data(w.pending_source, complete=True)),
    "insert_source_data": (WRITE, "companies", lambda s, w: s.insert_source_data(
        w.pending_source, hashes_table({"x": ["1"]}))),
    "insert_model_data": (WRITE, "companies", lambda s, w: s.insert_model_data(
        w.pending_model, edges_table([(1, 2, 0.5)]))),
    "insert_resolver_data": (WRITE, "companies", lambda s, w: s.insert_resolver_data(
        w.pending_resolver, clusters_table([[1, 2]]))),
    "create_group": (ADMIN, "system", lambda s, w: s.create_group(Group(name="mine"))),
    "delete_group": (ADMIN, "system", lambda s, w: s.delete_group("analysts", certain=True)),
    "add_user_to_group admins": (
        ADMIN, "system", lambda s, w: s.add_user_to_group("eve", "admins")),
    "add_user_to_group writers": (
        ADMIN, "system", lambda s, w: s.add_user_to_group("eve", "writers")),
    "remove_user_from_group": (
        ADMIN, "system", lambda s, w: s.remove_user_from_group("bob", "analysts")),
    "grant ADMIN on companies": (
        ADMIN, "companies", lambda s, w: s.grant_permission("analysts", ADMIN, "companies")),
    "grant WRITE on companies to public": (
        ADMIN, "companies", lambda s, w: s.grant_permission("public", WRITE, "companies")),
    "grant ADMIN on the system": (
        ADMIN, "system", lambda s, w: s.grant_permission("people_admins", ADMIN, "system")),
    "grant READ on people": (
        ADMIN, "people", lambda s, w: s.grant_permission("public", READ, "people")),
    "revoke READ on companies": (
        ADMIN, "companies", lambda s, w: s.revoke_permission("analysts", READ, "companies")),
    "revoke ADMIN on people": (
        ADMIN, "people", lambda s, w: s.revoke_permission("people_admins", ADMIN, "people")),
    "insert_judgement as alice": (ADMIN, "system", lambda s, w: s.insert_judgement(
        "alice", Judgement(shown=[w.data.lc["c4"]], endorsed=[[w.data.lc["c4"]]]))),
    "dump": (ADMIN, "system", lambda s, w: s.dump()),
    "restore": (ADMIN, "system", lambda s, w: s.restore(w.snapshot)),
    "clear": (ADMIN, "system", lambda s, w: s.clear(certain=True)),
    "drop": (ADMIN, "system", lambda s, w: s.drop(certain=True)),
    "delete_orphans": (ADMIN, "system", lambda s, w: s.delete_orphans()),
    "dump_to": (ADMIN, "system", lambda s, w: s.dump_to("/nonexistent/hostile-dump")),
    "restore_from": (ADMIN, "system", lambda s, w: s.restore_from("/nonexistent/hostile-dump")),
    "reset_stuck_uploads": (ADMIN, "system", lambda s, w: s.reset_stuck_uploads()),
}  # fmt: skip

MUTATORS = ["carol", "dave", "eve", None, "ALICE", "'; DROP TABLE users; --"]
"""(bob and the anonymous user also run tests/store/test_auth.py's list of mutating calls.)"""

DENIED = [
    (call, user)
    for call, (permission, resource, _) in MUTATING.items()
    for user in MUTATORS
    if not allowed(user, permission, resource)
]


@pytest.mark.parametrize(("call", "user"), DENIED)
def test_mutating_calls_without_the_grant_are_denied(w: World, call: str, user: Any) -> None:
    _, resource, action = MUTATING[call]
    exc = refused(w.store, lambda: action(w.guarded.as_user(user), w), MatchboxPermissionDenied)
    assert isinstance(exc, MatchboxPermissionDenied)
    assert exc.resource in (resource, "system")


def test_the_grant_table_matches_the_store(w: World) -> None:
    """The expectations above agree with what the store itself says about each user."""
    for user, grants in GRANTS.items():
        for resource in ("system", "companies", "people"):
            for permission in (READ, WRITE, ADMIN):
                expected = LEVEL[permission] <= LEVEL.get(grants.get(resource), 0)  # type: ignore[arg-type]
                name = user or "_public"
                assert w.store.check_permission(name, permission, resource) == expected, (
                    user, permission, resource)  # fmt: skip


# --- reads --------------------------------------------------------------------------------------

READS: dict[str, tuple[str, Call]] = {
    "get_collection": ("c", lambda s, w: s.get_collection(w.c)),
    "get_run": ("c", lambda s, w: s.get_run(w.c, w.run_of(w.c))),
    "get_step": ("c", lambda s, w: s.get_step(w.source_of(w.c))),
    "get_step_stage": ("c", lambda s, w: s.get_step_stage(w.source_of(w.c))),
    "query": ("c", lambda s, w: s.query(w.source_of(w.c))),
    "query with a limit": ("c", lambda s, w: s.query(w.source_of(w.c), limit=1)),
    "get_source_data": ("c", lambda s, w: s.get_source_data(w.source_of(w.c))),
    "step_statistics": ("c", lambda s, w: s.step_statistics(w.source_of(w.c))),
    "run_labels": ("c", lambda s, w: s.run_labels(w.c)),
    "run_for_label without creating": (
        "c", lambda s, w: s.run_for_label(w.c, "any", create=False)),
    "get_permissions": ("c", lambda s, w: s.get_permissions(w.c)),
    "list_collections": ("system", lambda s, w: s.list_collections()),
    "list_groups": ("system", lambda s, w: s.list_groups()),
    "get_group": ("system", lambda s, w: s.get_group("admins")),
    "get_user_groups of alice": ("system", lambda s, w: s.get_user_groups("alice")),
    "get_judgements": ("system", lambda s, w: s.get_judgements()),
    "validate_ids": ("system", lambda s, w: s.validate_ids([w.data.lc["c1"]])),
    "audit_uploads": ("system", lambda s, w: s.audit_uploads()),
}  # fmt: skip

COMPANY_READS: dict[str, Call] = {
    "match": lambda s, w: s.match("c1", w.data.crm, [w.data.erp], w.data.r_all),
    "query through a resolver": lambda s, w: s.query(w.data.crm, w.data.r_all),
    "get_model_data": lambda s, w: s.get_model_data(w.data.link),
    "get_resolver_data": lambda s, w: s.get_resolver_data(w.data.r_all),
    "sample_for_eval": lambda s, w: s.sample_for_eval(5, w.data.r_all, "alice"),
}


class _Reader:
    """Which collection a read call targets, and its paths there."""

    def __init__(self, w: World, collection: str) -> None:
        self.w, self.c, self.data, self.snapshot = w, collection, w.data, w.snapshot

    def run_of(self, collection: str) -> int:
        return self.w.data.run if collection == "companies" else self.w.other_crm.run

    def source_of(self, collection: str) -> Any:
        return self.w.data.crm if collection == "companies" else self.w.other_crm


UNREADABLE = [
    (call, user, collection)
    for call, (scope, _) in READS.items()
    for user in GRANTS
    for collection in (("system",) if scope == "system" else ("companies", "people"))
    if scope == "system"
    or not allowed(user, ADMIN if call == "get_permissions" else READ, collection)
]
UNREADABLE += [
    (call, user, "companies") for call in COMPANY_READS for user in GRANTS
    if not allowed(user, READ, "companies")
]  # fmt: skip


@pytest.mark.parametrize(("call", "user", "collection"), UNREADABLE)
def test_reads_without_the_grant_are_denied(
    w: World, call: str, user: Any, collection: str
) -> None:
    reader = _Reader(w, collection)
    action = READS[call][1] if call in READS else COMPANY_READS[call]
    refused(w.store, lambda: action(w.guarded.as_user(user), reader), MatchboxPermissionDenied)


def test_reads_with_the_grant_are_allowed(w: World) -> None:
    """The other side: the denials above are not a store that refuses everything."""
    bob, dave = w.guarded.as_user("bob"), w.guarded.as_user("dave")
    assert bob.query(w.data.crm, w.data.r_all).num_rows == 5
    assert bob.get_collection("companies").default_run == w.data.run
    assert dave.query(w.other_crm).num_rows == 2
    assert bob.get_user_groups("bob") == ["analysts", "public"]


def test_match_cannot_reach_into_a_collection_without_read(w: World) -> None:
    """Leaves are shared across collections, so match must check READ on every collection it
    reads: bob may read 'companies' only, and the target is in 'people'."""
    bob = w.guarded.as_user("bob")
    refused(
        w.store,
        lambda: bob.match("c1", w.data.crm, [w.other_crm], w.data.r_all),
        MatchboxPermissionDenied,
    )
    # Someone who may read both collections is refused too: the target is outside the
    # resolver's lineage (issue 15 item 4), as for query().
    refused(
        w.store,
        lambda: w.store.match("c1", w.data.crm, [w.other_crm], w.data.r_all),
        MatchboxStepInvalidData,
    )


# --- system groups ------------------------------------------------------------------------------

SYSTEM_GROUP_CALLS: dict[str, tuple[Call, type[BaseException]]] = {
    "delete public": (
        lambda s, w: s.delete_group("public", certain=True), MatchboxSystemGroupError),
    "delete admins": (
        lambda s, w: s.delete_group("admins", certain=True), MatchboxSystemGroupError),
    "delete admins unconfirmed": (
        lambda s, w: s.delete_group("admins", certain=False), MatchboxSystemGroupError),
    "remove _public from public": (
        lambda s, w: s.remove_user_from_group("_public", "public"), MatchboxSystemGroupError),
    "revoke the admins' grant": (
        lambda s, w: s.revoke_permission("admins", ADMIN, "system"), MatchboxSystemGroupError),
    "create a system group": (
        lambda s, w: s.create_group(Group(name="root", is_system=True)), MatchboxSystemGroupError),
    "create admins again": (
        lambda s, w: s.create_group(Group(name="admins")), MatchboxGroupAlreadyExistsError),
    "create public again": (
        lambda s, w: s.create_group(Group(name="public")), MatchboxGroupAlreadyExistsError),
}  # fmt: skip


@pytest.mark.parametrize("user", ["alice", "carol", None])
@pytest.mark.parametrize("case", list(SYSTEM_GROUP_CALLS))
def test_system_groups_cannot_be_deleted(w: World, case: str, user: Any) -> None:
    """Not even by the administrator; everyone else is not even asked."""
    call, error = SYSTEM_GROUP_CALLS[case]
    expected = error if user == "alice" else MatchboxPermissionDenied
    refused(w.store, lambda: call(w.guarded.as_user(user), w), expected)


def test_system_groups_survive_an_unguarded_store_too(w: World) -> None:
    for name in ("public", "admins"):
        refused(
            w.store,
            lambda n=name: w.store.delete_group(n, certain=True),
            MatchboxSystemGroupError,
        )
    assert {g.name for g in w.store.list_groups() if g.is_system} == {"public", "admins"}
