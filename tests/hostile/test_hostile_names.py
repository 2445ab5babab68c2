"""Hostile names and free text: quotes, semicolons, SQL, placeholders, unicode, 10k characters,
empty and blank strings, NUL and lone surrogates — for collections, steps, users, groups,
judgement tags, run labels and descriptions.

Each is either refused with a typed error (the store unchanged) or stored verbatim (read back
exactly, the schema's tables and indexes as they were): never executed.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from matchbox_dagster.common.dtos import (
    NAME_PATTERN,
    Group,
    Judgement,
    PermissionType,
    Step,
    StepPath,
    StepType,
    User,
    is_valid_name,
)
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxError,
    MatchboxGroupNotFoundError,
    MatchboxInvalidData,
    MatchboxNameError,
    MatchboxRunLabelNotFound,
    MatchboxStepNotFoundError,
    MatchboxUserNotFoundError,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_source, leaf_of, source_config
from tests.hostile.conftest import World, all_refused, refused, relations, unchanged

ATTACKS: dict[str, str] = {
    "single quote": "'",
    "double quote": '"',
    "drop users": "'; DROP TABLE users; --",
    "drop collections (identifier quote)": '"; DROP TABLE collections; --',
    "bobby tables": "Robert'); DROP TABLE steps;--",
    "or 1=1": "' OR '1'='1",
    "statement chain": "x; DELETE FROM runs",
    "open comment": "x/*",
    "dollar quoting": "$$; DROP TABLE groups; $$",
    "psycopg placeholder": "%s",
    "named placeholder": "%(name)s",
    "numbered placeholder": "$1",
    "format braces": "{t}",
    "backslash": "\\",
    "quote inside identifier": 'x"y',
    "keyword SELECT": "SELECT",
    "a table's name": "users",
    "schema-qualified table": "public.users",
    "dots": "..",
    "unicode": "naïve-名前",
    "emoji": "🙂",
    "right-to-left override": "\u202eevil",
    "zero-width space": "a\u200bb",
    "NUL": "a\x00b",
    "lone surrogate": "a\ud800b",
    "empty": "",
    "space": " ",
    "newline": "\n",
    "trailing newline": "name\n",
    "leading space": " name",
    "10k characters": "x" * 10_000,
    "10k unicode characters": "名" * 10_000,
    "1 MB": "x'; DROP TABLE users; -- " * 40_000,
    "201 characters": "a" * 201,
    "200 characters": "a" * 200,
    "system": "system",
}
"""Strings an attacker or a careless caller might use as a name or a label."""

UNSTORABLE = {"NUL", "lone surrogate"}
"""Not text PostgreSQL can hold at all."""

USER_REFUSED = UNSTORABLE | {"empty", "10k characters", "10k unicode characters", "1 MB"}
"""User names (and tags, but for "empty") are text of 1 to 500 characters."""


def is_collection_name(value: str) -> bool:
    return is_valid_name(value) and value != "system"


# --- collections ------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_collection_names(w: World, scratch: MatchboxPostgres, attack: str) -> None:
    name = ATTACKS[attack]
    if not is_collection_name(name):
        exc = refused(
            w.store, lambda: w.store.create_collection(name), MatchboxNameError, full=True
        )
        assert "not allowed" in str(exc) or "system" in str(exc)
        return
    before = relations(scratch)
    scratch.create_collection(name)
    assert name in scratch.list_collections()
    assert scratch.get_collection(name).name == name
    assert relations(scratch) == before


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_lookups_by_hostile_collection_names(w: World, attack: str) -> None:
    name = ATTACKS[attack]
    path = StepPath.model_construct(collection=name, run=w.data.run, name="crm")
    not_found = MatchboxCollectionNotFoundError
    calls: list[tuple[Callable[[], Any], type[BaseException]]] = [
        (lambda: w.store.get_collection(name), not_found),
        (lambda: w.store.create_run(name), not_found),
        (lambda: w.store.get_run(name, w.data.run), not_found),
        (lambda: w.store.set_run_mutable(name, w.data.run, True), not_found),
        (lambda: w.store.delete_collection(name, certain=True), not_found),
        (lambda: w.store.get_step(path), not_found),
        (lambda: w.store.delete_step(path, certain=True), not_found),
    ]
    if name != "system":  # "system" names the whole store in permissions
        calls += [
            (lambda: w.store.get_permissions(name), not_found),
            (lambda: w.store.grant_permission("analysts", PermissionType.READ, name), not_found),
            (lambda: w.store.check_permission("alice", PermissionType.READ, name), not_found),
        ]
    all_refused(w.store, calls)


# --- steps --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_step_names(w: World, scratch: MatchboxPostgres, attack: str) -> None:
    name = ATTACKS[attack]
    step = Step(step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=source_config())
    if not is_valid_name(name):
        with pytest.raises(ValidationError) as info:
            StepPath(collection="companies", run=w.data.draft_run, name=name)
        assert any(
            isinstance(e.get("ctx", {}).get("error"), MatchboxNameError)
            for e in info.value.errors()
        )
        # A path that bypasses validation is refused by the store itself.
        bypass = StepPath.model_construct(collection="companies", run=w.data.draft_run, name=name)
        all_refused(
            w.store,
            [
                (lambda: w.store.create_step(step, bypass), MatchboxNameError),
                (lambda: w.store.get_step(bypass), MatchboxStepNotFoundError),
                (lambda: w.store.lock_step_data(bypass), MatchboxStepNotFoundError),
                (lambda: w.store.get_step_stage(bypass), MatchboxStepNotFoundError),
            ],
        )
        return
    run = scratch.create_run(_collection(scratch)).run_id
    before = relations(scratch)
    path = StepPath(collection="c", run=run, name=name)
    scratch.create_step(step, path)
    assert list(scratch.get_run("c", run).steps) == [name]
    assert scratch.get_step(path) == step
    assert relations(scratch) == before


# --- users ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_user_names(w: World, scratch: MatchboxPostgres, attack: str) -> None:
    name = ATTACKS[attack]
    if attack in USER_REFUSED:
        with pytest.raises(ValidationError):
            User(user_name=name)
        bypass = User.model_construct(user_name=name, email=None)
        all_refused(
            w.store,
            [
                (lambda: w.store.login(bypass), MatchboxInvalidData),
                (lambda: w.store.add_user_to_group(name, "analysts"), MatchboxInvalidData),
                (lambda: w.store.get_user_groups(name), MatchboxUserNotFoundError),
                (lambda: w.store.remove_user_from_group(name, "analysts"), MatchboxError),
            ],
        )
        with unchanged(w.store):
            assert w.store.check_permission(name, PermissionType.READ, "companies") is False
        return
    before = relations(scratch)
    assert scratch.login(User(user_name=name, email=name)).user == User(user_name=name, email=name)
    scratch.add_user_to_group(name + "2", "admins")
    assert "public" in scratch.get_user_groups(name)
    assert scratch.get_user_groups(name + "2") == ["admins", "public"]
    members = {m.user_name for m in scratch.get_group("admins").members}
    assert name + "2" in members
    assert relations(scratch) == before


@pytest.mark.parametrize(
    "impostor", ["alice ", " alice", "ALICE", "Alice", "alice\n", "alice\u200b", "аlice"]
)
def test_names_close_to_a_user_are_other_users(w: World, impostor: str) -> None:
    """Lookups are exact: no trimming, case folding or unicode confusion reaches alice."""
    with unchanged(w.store):
        with pytest.raises(MatchboxUserNotFoundError):
            w.store.get_user_groups(impostor)
        assert not w.store.check_permission(impostor, PermissionType.ADMIN, "system")


# --- groups -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_group_names(w: World, scratch: MatchboxPostgres, attack: str) -> None:
    name = ATTACKS[attack]
    not_found = MatchboxGroupNotFoundError
    calls: list[tuple[Callable[[], Any], type[BaseException]]] = [
        (lambda: w.store.get_group(name), not_found),
        (lambda: w.store.delete_group(name, certain=True), not_found),
        (lambda: w.store.add_user_to_group("bob", name), not_found),
        (lambda: w.store.remove_user_from_group("bob", name), not_found),
        (lambda: w.store.grant_permission(name, PermissionType.READ, "companies"), not_found),
        (lambda: w.store.revoke_permission(name, PermissionType.READ, "system"), not_found),
    ]
    if not is_valid_name(name):
        with pytest.raises(ValidationError):
            Group(name=name)
        bypass = Group.model_construct(name=name, description=None, is_system=False, members=[])
        calls.append((lambda: w.store.create_group(bypass), MatchboxNameError))
        all_refused(w.store, calls)
        return
    all_refused(w.store, calls)
    before = relations(scratch)
    member = f"member of {name}"[:500]
    scratch.create_group(Group(name=name, description=name, members=[User(user_name=member)]))
    assert scratch.get_group(name).description == name
    assert name in [g.name for g in scratch.list_groups()]
    assert set(scratch.get_user_groups(member)) == {name, "public"}
    scratch.grant_permission(name, PermissionType.READ, "system")
    assert scratch.check_permission(member, PermissionType.READ, "system")
    assert relations(scratch) == before


# --- judgement tags -----------------------------------------------------------------------------


def _collection(store: MatchboxPostgres) -> str:
    """The scratch store's collection ``c`` (created once)."""
    if "c" not in store.list_collections():
        store.create_collection("c")
    return "c"


_JUDGED: dict[str, int] = {}


@pytest.fixture
def judged(scratch: MatchboxPostgres) -> tuple[MatchboxPostgres, int]:
    """The scratch store with a source to judge (made once) and the user ``judge``."""
    if scratch.db.schema not in _JUDGED:
        run = scratch.create_run(_collection(scratch)).run_id
        source = add_source(scratch, "c", run, "s", {"a": ["k1"], "b": ["k2"]})
        scratch.login(User(user_name="judge"))
        _JUDGED[scratch.db.schema] = leaf_of(scratch, source)["k1"]
    return scratch, _JUDGED[scratch.db.schema]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_judgement_tags(w: World, judged: tuple[MatchboxPostgres, int], attack: str) -> None:
    tag = ATTACKS[attack]
    store, leaf = judged
    if attack in USER_REFUSED - {"empty"}:
        with pytest.raises(ValidationError):
            Judgement(shown=[leaf], endorsed=[[leaf]], tag=tag)
        return
    # Filtering by the tag reads nothing and changes nothing in a store without it.
    with unchanged(w.store):
        assert w.store.get_judgements(tag=tag)[0].num_rows == 0
    before = relations(store)
    store.insert_judgement("judge", Judgement(shown=[leaf], endorsed=[[leaf]], tag=tag))
    judgements, _ = store.get_judgements(tag=tag)
    assert judgements.num_rows == 1, "the tag was not stored verbatim, or stored twice"
    assert store.get_judgements(tag=tag + "x")[0].num_rows == 0
    assert relations(store) == before


@pytest.mark.parametrize("attack", sorted(UNSTORABLE))
def test_judgement_filter_by_unstorable_tag_is_refused(w: World, attack: str) -> None:
    refused(w.store, lambda: w.store.get_judgements(tag=ATTACKS[attack]))


def test_judgement_bypassing_the_dto_with_a_10k_tag(judged: tuple[MatchboxPostgres, int]) -> None:
    """A tag over the B-tree limit, sneaked past the DTO, must still fail typed and whole."""
    store, leaf = judged
    tag = "".join(random.Random(8).choices(string.ascii_letters, k=10_000))  # incompressible
    bypass = Judgement.model_construct(shown=[leaf], endorsed=[[leaf]], tag=tag)
    refused(store, lambda: store.insert_judgement("judge", bypass))


# --- run labels, descriptions, emails -----------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_run_labels(w: World, scratch: MatchboxPostgres, attack: str) -> None:
    label = ATTACKS[attack]
    if attack in UNSTORABLE or not 1 <= len(label) <= 200:
        refused(
            w.store,
            lambda: w.store.run_for_label("companies", label),
            MatchboxInvalidData,
        )
        return
    refused(
        w.store,
        lambda: w.store.run_for_label("companies", label, create=False),
        MatchboxRunLabelNotFound,
        full=False,
    )
    run = scratch.run_for_label(_collection(scratch), label)
    assert scratch.run_labels("c")[run.run_id] == label
    assert scratch.run_for_label("c", label) == run  # the same run again


@pytest.mark.parametrize("attack", sorted(UNSTORABLE))
def test_unstorable_descriptions_and_emails_are_refused(w: World, attack: str) -> None:
    text = ATTACKS[attack]
    path = w.path("described")
    step = Step.model_construct(
        description=text,
        fingerprint=b"\x00" * 32,
        step_type=StepType.SOURCE,
        config=source_config("described"),
    )
    config = source_config("described").model_copy(update={"extract_transform": text})
    with_config = Step(step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=config)
    group = Group.model_construct(name="described", description=text, is_system=False, members=[])
    user = User.model_construct(user_name="described", email=text)
    all_refused(
        w.store,
        [
            (lambda: w.store.create_step(step, path), MatchboxInvalidData),
            (lambda: w.store.create_step(with_config, path), MatchboxInvalidData),
            (lambda: w.store.create_group(group), MatchboxInvalidData),
            (lambda: w.store.login(user), MatchboxInvalidData),
        ],
        full=True,
    )
    with pytest.raises(ValidationError):
        Step(
            step_type=StepType.SOURCE,
            fingerprint=b"\x00" * 32,
            config=source_config(),
            description=text,
        )


def test_huge_hostile_free_text_is_stored_verbatim(scratch: MatchboxPostgres) -> None:
    """Descriptions, configs and emails are data: 1 MB of SQL-looking text is kept as is."""
    text = "'; DROP TABLE steps; -- 名前 🙂 " * 30_000
    before = relations(scratch)
    run = scratch.create_run(_collection(scratch)).run_id
    config = source_config("s").model_copy(update={"extract_transform": text})
    step = Step(
        step_type=StepType.SOURCE, fingerprint=b"\x00" * 32, config=config, description=text
    )
    path = StepPath(collection="c", run=run, name="s")
    scratch.create_step(step, path)
    assert scratch.get_step(path) == step
    scratch.create_group(Group(name="described", description=text))
    assert scratch.get_group("described").description == text
    assert scratch.login(User(user_name="described", email=text)).user.email == text
    assert relations(scratch) == before


# --- generated ----------------------------------------------------------------------------------

any_text = st.text(max_size=60) | st.sampled_from(list(ATTACKS.values()))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=any_text)
def test_generated_collection_names(scratch: MatchboxPostgres, name: str) -> None:
    before = relations(scratch)
    existing = scratch.list_collections()
    if is_collection_name(name) and name not in existing:
        scratch.create_collection(name)
        assert name in scratch.list_collections()
        assert NAME_PATTERN.fullmatch(name)
    elif not is_collection_name(name):
        with pytest.raises(MatchboxNameError):
            scratch.create_collection(name)
        with pytest.raises(MatchboxCollectionNotFoundError):
            scratch.get_collection(name)
        assert scratch.list_collections() == existing
    assert relations(scratch) == before


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=any_text, email=st.none() | any_text)
def test_generated_user_names_and_emails(scratch: MatchboxPostgres, name: str, email: Any) -> None:
    before = relations(scratch)
    user = User.model_construct(user_name=name, email=email)

    def storable(text: str) -> bool:
        return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)

    valid_name = storable(name) and 1 <= len(name) <= 500
    if valid_name and storable(email or ""):
        assert scratch.login(user).user.user_name == name
        assert "public" in scratch.get_user_groups(name)
    else:
        with pytest.raises(MatchboxInvalidData):
            scratch.login(user)
        if not valid_name:
            with pytest.raises(MatchboxUserNotFoundError):
                scratch.get_user_groups(name)
    assert relations(scratch) == before
