"""The review app's request checks, in process (Starlette's test client) on a real store.

Cross-site posts (a foreign ``Origin`` or ``Referer``, or neither), a forged token, an unknown
``Host`` and a post that is not a form are refused, and nothing is written.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from matchbox_dagster.common.dtos import Group, PermissionType, QueryConfig, User
from matchbox_dagster.review.app import create_app
from matchbox_dagster.review.state import ReviewConfig
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_resolver
from tests.review.conftest import judgements_within, source_leaves
from tests.sources.test_inputs import indexed, people

OWN = "http://testserver"


def _two_entities(store: MatchboxPostgres, collection: str, run: int, folder: Path) -> None:
    """Source ``people`` (20 leaves), a deduper and a resolver joining leaves 0–1 and 2–3.

    Leaves are content-addressed across collections, so every name carries a salt: the leaves
    are this test's own, judged by no other test.
    """
    salted = people().with_columns(pl.col("name") + f"-{uuid.uuid4().hex[:8]}")
    salted.write_parquet(folder / "people.parquet")
    source = indexed(store, collection, run, folder / "people.parquet")
    L = sorted(pl.DataFrame(pl.from_arrow(store.query(source))).get_column("id").unique())
    edges = [(L[0], L[1], 0.95), (L[2], L[3], 0.82), (L[4], L[5], 0.79), (L[6], L[7], 0.5)]
    add_model(store, collection, run, "dedupe", edges, QueryConfig(sources=["people"]))
    pairs = [[L[0], L[1]], [L[2], L[3]]]
    add_resolver(store, collection, run, "resolved", pairs, ("dedupe",), {"dedupe": 0.8})


@pytest.fixture
def client(
    store: MatchboxPostgres, collection: str, run: int, tmp_path: Path
) -> tuple[TestClient, str]:
    """The app for ``carol`` (READ on the collection) over a resolver of two entities."""
    _two_entities(store, collection, run, tmp_path)
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)
    store.login(User(user_name="carol"))
    group = f"g_{collection}"
    store.create_group(Group(name=group))
    store.add_user_to_group("carol", group)
    store.grant_permission(group, PermissionType.READ, collection)
    assert _count(store, collection) == 0  # the leaves are this test's own: nothing judged
    config = ReviewConfig(store=store, user="carol", allowed_hosts=("testserver",))
    return TestClient(create_app(config), follow_redirects=False), collection


def _form(client: TestClient, collection: str) -> dict[str, str]:
    html = client.get(f"/review/{collection}").text
    judge = html[html.index('<form id="judge"') : html.index("</form>", html.index('id="judge"'))]
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', judge))


def _count(store: MatchboxPostgres, collection: str) -> int:
    """carol's judgements of the collection's records (not those of other tests' collections)."""
    run = store.get_collection(collection).default_run
    assert run is not None
    leaves = source_leaves(store, collection, run, "people")
    return judgements_within(store, collection, leaves, "carol").height


def test_posts_from_elsewhere_are_refused(
    store: MatchboxPostgres, client: tuple[TestClient, str]
) -> None:
    app, collection = client
    form = _form(app, collection)
    url = f"/review/{collection}/judge"
    cases = [
        ({"origin": "http://evil.example"}, form, "another site"),
        ({"referer": "http://evil.example/page"}, form, "another site"),
        ({}, form, "another site"),  # neither Origin nor Referer
        ({"origin": OWN}, {**form, "csrf": "forged"}, "security token"),
        ({"origin": OWN}, {k: v for k, v in form.items() if k != "csrf"}, "security token"),
    ]
    for headers, data, words in cases:
        answer = app.post(url, data=data, headers=headers)
        assert answer.status_code == 403 and words in answer.text, (headers, answer.text[:300])
    answer = app.post(url, content=b"{}", headers={"origin": OWN, "content-type": "text/json"})
    assert answer.status_code == 415
    answer = app.get(f"/review/{collection}", headers={"host": "attacker.example"})
    assert answer.status_code == 400
    assert _count(store, collection) == 0

    answer = app.post(url, data=form, headers={"origin": OWN})  # the real thing
    assert answer.status_code == 303 and _count(store, collection) == 1
    answer = app.post(url, data=form, headers={"referer": f"{OWN}/review/{collection}"})
    assert answer.status_code == 409 and "already submitted" in answer.text
    assert _count(store, collection) == 1


def test_a_missing_record_and_a_bad_strategy_change_nothing(
    store: MatchboxPostgres, client: tuple[TestClient, str]
) -> None:
    app, collection = client
    form = _form(app, collection)
    leaves = [k for k in form if k.startswith("g-")]
    partial = {k: v for k, v in form.items() if k != leaves[0]}
    answer = app.post(f"/review/{collection}/judge", data=partial, headers={"origin": OWN})
    assert answer.status_code == 400 and "needs a group" in answer.text
    answer = app.get(f"/review/{collection}?strategy=psychic")
    assert answer.status_code == 400 and "Unknown sampling strategy" in answer.text
    answer = app.post(
        f"/review/{collection}/undo", data={"csrf": form["csrf"]}, headers={"origin": OWN}
    )
    assert answer.status_code == 409 and "no judgement to undo" in answer.text
    assert _count(store, collection) == 0
