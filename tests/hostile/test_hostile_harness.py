"""The corpus's own instruments can fail: "unchanged" notices a changed row and a new relation,
"refused" an untyped error, and the digest is ``tests.factories.store_state``'s."""

from __future__ import annotations

import pytest

from matchbox_dagster.common.dtos import Group
from matchbox_dagster.common.errors import MatchboxError
from tests.factories import store_state
from tests.hostile.conftest import World, _conn, observe, refused, unchanged


def test_digest_is_store_state(w: World) -> None:
    assert observe(w.store)["tables"] == store_state(w.store)


def test_unchanged_notices_a_new_row(w: World) -> None:
    try:
        with pytest.raises(AssertionError, match="rows changed"), unchanged(w.store):
            w.store.create_group(Group(name="noticed"))
    finally:
        w.store.delete_group("noticed", certain=True)


def test_unchanged_notices_a_new_relation(w: World) -> None:
    schema = w.store.db.schema
    try:
        with pytest.raises(AssertionError, match="schema objects"), unchanged(w.store):
            _conn(w.store).execute(f'CREATE INDEX noticed ON "{schema}".users (email)')
    finally:
        _conn(w.store).execute(f'DROP INDEX IF EXISTS "{schema}".noticed')


def test_refused_insists_on_a_typed_error(w: World) -> None:
    with pytest.raises(AssertionError, match="untyped"):
        refused(w.store, lambda: [][1], IndexError)
    with pytest.raises(AssertionError, match="expected MatchboxError"):
        refused(w.store, lambda: {}["x"])
    refused(w.store, lambda: w.store.get_group("nope"), MatchboxError)
