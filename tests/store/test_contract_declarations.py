"""Every store operation declares its permission rule and its retry policy, and they hold.

The facade (:class:`MatchboxPostgres`) defines each contract method itself with one
``@operation(need, retry=…)``; a method without one would run unchecked and unretried.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from matchbox_dagster.common.dtos import (
    Group,
    Judgement,
    PermissionGrant,
    PermissionType,
    StepPath,
    User,
    WriteOutcome,
)
from matchbox_dagster.common.errors import (
    MatchboxPermissionDenied,
    MatchboxRunLabelNotFound,
    MatchboxStepNotFoundError,
)
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.base import MatchboxDBAdapter
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.db import Database
from matchbox_dagster.store.postgres.operations import declaration
from tests.conftest import own_schema_store
from tests.factories import store_state
from tests.store.test_write_step import ROWS, source

EXTENSIONS = {"audit_uploads", "close", "dump_to", "reset_stuck_uploads", "restore_from"}
"""Public methods of the facade beyond the abstract contract (which holds write_step,
run_for_label, run_labels and step_statistics too)."""


def contract_methods() -> list[str]:
    """Every abstract method of the contract and every public method of the facade."""
    public = {
        name
        for name, value in vars(MatchboxPostgres).items()
        if not name.startswith("_") and callable(value)
    }
    return sorted(set(MatchboxDBAdapter.__abstractmethods__) | public | EXTENSIONS)


def test_the_facade_is_flat() -> None:
    """No mixins: the facade derives from the contract only and defines every method itself."""
    assert MatchboxPostgres.__bases__ == (MatchboxDBAdapter,)
    classes = [c for c in MatchboxPostgres.__mro__ if c is not object]
    assert not any("__init_subclass__" in vars(c) for c in classes)
    inherited = [name for name in contract_methods() if name not in vars(MatchboxPostgres)]
    assert inherited == []


@pytest.mark.parametrize("name", contract_methods())
def test_every_method_declares_permission_and_retry(name: str) -> None:
    """A method without a declaration (or with a rule naming no argument) fails here."""
    method = getattr(MatchboxPostgres, name)
    op = declaration(method)
    assert op is not None, f"{name} has no @operation declaration (permission and retry)"
    assert op.name == name
    assert op.need is not None and op.retry is not None
    if op.need.permission is None:
        assert op.need.kind in ("public", "body") and len(op.need.reason) > 10, op.need
    else:
        parameters = inspect.signature(method).parameters
        for argument in (*op.need.arguments, *filter(None, [op.need.read_unless])):
            assert argument in parameters, f"{name}: {op.need} names no argument {argument!r}"


def test_rules_decided_in_the_body_are_few() -> None:
    """Data-dependent and public rules are the exception, each with its reason."""
    special = {
        name: declaration(getattr(MatchboxPostgres, name)).need.kind  # type: ignore[union-attr]
        for name in contract_methods()
        if declaration(getattr(MatchboxPostgres, name)).need.permission is None  # type: ignore[union-attr]
    }
    assert special == {
        "as_user": "public",
        "close": "public",
        "login": "public",
        "check_permission": "public",
        "get_user_groups": "body",
        "insert_judgement": "body",
        "delete_last_judgement": "body",
    }


def test_retry_policies_of_calls_that_must_not_run_twice() -> None:
    """A second run or judgement after a lost commit would duplicate work."""

    def retry(name: str):
        return declaration(getattr(MatchboxPostgres, name)).retry  # type: ignore[union-attr]

    assert not retry("create_run").repeatable and not retry("insert_judgement").repeatable
    assert retry("create_step").done_if and retry("delete_step").done_if
    assert retry("write_step").repeatable and not retry("write_step").done_if
    assert not retry("as_user").database


# --- the declarations are enforced ----------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """A store with authorisation on: an admin, a reader and a writer of ``alpha``, an outsider.

    ``beta`` has no grants.
    """
    with own_schema_store(settings.model_copy(update={"authorisation": True})) as store:
        assert store.login(User(user_name="admin")).setup_mode_admin
        admin = store.as_user("admin")
        admin.create_group(Group(name="readers", members=[User(user_name="reader")]))
        admin.create_group(Group(name="writers", members=[User(user_name="writer")]))
        admin.login(User(user_name="outsider"))
        admin.create_collection(
            "alpha",
            [
                PermissionGrant(group_name="readers", permission=PermissionType.READ),
                PermissionGrant(group_name="writers", permission=PermissionType.WRITE),
            ],
        )
        admin.create_collection("beta")
        yield store


def denied(call) -> None:
    with pytest.raises(MatchboxPermissionDenied):
        call()


def test_system_rule(guarded: MatchboxPostgres) -> None:
    """READ on the system: list_collections."""
    denied(lambda: guarded.as_user("outsider").list_collections())
    assert guarded.as_user("admin").list_collections() == ["alpha", "beta"]


def test_collection_rule(guarded: MatchboxPostgres) -> None:
    """WRITE on a named collection: create_run (a reader may not; a writer may)."""
    denied(lambda: guarded.as_user("reader").create_run("alpha"))
    denied(lambda: guarded.as_user("writer").create_run("beta"))
    assert guarded.as_user("writer").create_run("alpha").is_mutable


def test_collection_rule_relaxed_by_an_argument(guarded: MatchboxPostgres) -> None:
    """run_for_label: WRITE to create, READ to look up."""
    reader = guarded.as_user("reader")
    denied(lambda: reader.run_for_label("alpha", "2026-01"))
    with pytest.raises(MatchboxRunLabelNotFound):  # allowed, and the label is missing
        reader.run_for_label("alpha", "2026-01", create=False)
    denied(lambda: guarded.as_user("outsider").run_for_label("alpha", "x", create=False))


def test_path_rule_checked_before_anything_is_written(guarded: MatchboxPostgres) -> None:
    """WRITE on a step path's collection: write_step; READ: get_step."""
    run = guarded.as_user("writer").create_run("alpha").run_id
    path = StepPath(collection="alpha", run=run, name="people")
    before = store_state(guarded)
    denied(lambda: guarded.as_user("reader").write_step(path, *source(ROWS)))
    assert store_state(guarded) == before
    assert guarded.as_user("writer").write_step(path, *source(ROWS)) == WriteOutcome.STORED
    denied(lambda: guarded.as_user("outsider").get_step(path))
    assert guarded.as_user("reader").get_step(path).fingerprint == source(ROWS)[1].fingerprint


def test_several_paths_rule(guarded: MatchboxPostgres) -> None:
    """match reads every collection it names: READ on each."""
    reader = guarded.as_user("reader")
    a = StepPath(collection="alpha", run=1, name="src")
    b = StepPath(collection="beta", run=1, name="src")
    r = StepPath(collection="alpha", run=1, name="res")
    denied(lambda: reader.match("k", a, [b], r))
    with pytest.raises(MatchboxStepNotFoundError):  # allowed; the steps do not exist
        reader.match("k", a, [a], r)


def test_resource_rule(guarded: MatchboxPostgres) -> None:
    """ADMIN on the resource argument (system or collection): get_permissions."""
    writer = guarded.as_user("writer")
    denied(lambda: writer.get_permissions("alpha"))
    denied(lambda: writer.get_permissions("system"))
    assert guarded.as_user("admin").get_permissions("beta") == []


def test_rules_decided_in_the_body(guarded: MatchboxPostgres) -> None:
    """get_user_groups and insert_judgement: the user themself, or a wider permission."""
    reader = guarded.as_user("reader")
    assert reader.get_user_groups("reader") == ["public", "readers"]
    denied(lambda: reader.get_user_groups("writer"))
    judgement = Judgement(shown=[1, 2], endorsed=[[1, 2]])
    denied(lambda: reader.insert_judgement("writer", judgement))
    denied(lambda: guarded.insert_judgement("_public", judgement))  # the anonymous user


def test_public_rules(guarded: MatchboxPostgres) -> None:
    """login and check_permission need no permission."""
    outsider = guarded.as_user("outsider")
    assert outsider.check_permission("reader", PermissionType.READ, "alpha")
    assert not outsider.check_permission("outsider", PermissionType.READ, "alpha")
    assert not guarded.login(User(user_name="newcomer")).setup_mode_admin


def test_permission_check_and_body_share_one_retried_unit(
    guarded: MatchboxPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs inside the call's retries: one retried unit per call, never nested."""
    calls: list[str] = []
    original = Database.retry

    def counting(self, what, call, **kwargs):
        calls.append(what)
        return original(self, what, call, **kwargs)

    monkeypatch.setattr(Database, "retry", counting)
    guarded.as_user("admin").list_collections()
    guarded.as_user("reader").get_run("alpha", guarded.as_user("writer").create_run("alpha").run_id)
    assert calls == ["list_collections", "create_run", "get_run"]
