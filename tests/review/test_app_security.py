"""The review app's request checks, in process (Starlette's test client) on a real store.

Cross-site posts (a foreign ``Origin`` or ``Referer``, or neither), a forged token, an unknown
``Host`` and a post that is not a form are refused, and nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from matchbox_dagster.common.dtos import Group, PermissionType, User
from matchbox_dagster.review.app import create_app
from matchbox_dagster.review.state import ReviewConfig
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.evaluation.test_sampling import _run

OWN = "http://testserver"


@pytest.fixture
def client(
    store: MatchboxPostgres, collection: str, run: int, tmp_path: Path
) -> tuple[TestClient, str]:
    """The app for ``carol`` (READ on the collection) over a resolver of two entities."""
    _run(store, collection, run, tmp_path, [0, 1, 2, 3])
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)
    store.login(User(user_name="carol"))
    group = f"g_{collection}"
    store.create_group(Group(name=group))
    store.add_user_to_group("carol", group)
    store.grant_permission(group, PermissionType.READ, collection)
    config = ReviewConfig(store=store, user="carol", allowed_hosts=("testserver",))
    return TestClient(create_app(config), follow_redirects=False), collection


def _form(client: TestClient, collection: str) -> dict[str, str]:
    html = client.get(f"/review/{collection}").text
    judge = html[html.index('<form id="judge"') : html.index("</form>", html.index('id="judge"'))]
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', judge))


def _count(store: MatchboxPostgres, collection: str) -> int:
    table, _ = store.get_collection_judgements(collection)
    return pl.DataFrame(pl.from_arrow(table)).filter(pl.col("user_name") == "carol").height


def test_posts_from_elsewhere_are_refused(
    store: MatchboxPostgres, client: tuple[TestClient, str]
) -> None:
    app, collection = client
    before = _count(store, collection)
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
    assert _count(store, collection) == before

    answer = app.post(url, data=form, headers={"origin": OWN})  # the real thing
    assert answer.status_code == 303 and _count(store, collection) == before + 1
    answer = app.post(url, data=form, headers={"referer": f"{OWN}/review/{collection}"})
    assert answer.status_code == 409 and "already submitted" in answer.text
    assert _count(store, collection) == before + 1


def test_a_missing_record_and_a_bad_strategy_change_nothing(
    store: MatchboxPostgres, client: tuple[TestClient, str]
) -> None:
    app, collection = client
    before = _count(store, collection)  # leaves are content-addressed: shared with other tests
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
    assert _count(store, collection) == before
