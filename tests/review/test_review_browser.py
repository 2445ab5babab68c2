"""The review app in a real browser: judge with the keyboard, see the figures, gate promotion.

One scenario (the tests of this module run in order on one collection): a reviewer judges
entities with the keyboard only; the judgements are in the store as theirs; the evaluation
view's figures change; undo removes only their last one; the promotion sensor promotes the run
only once ``min_judgements`` is met and the figures pass; a reviewer without READ is refused;
forged and stale posts change nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import polars as pl
import pytest
from playwright.sync_api import Browser, Page

from matchbox_dagster.cli import main
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.review.conftest import MIN_JUDGEMENTS, Project, judgements_within, screenshot


def _judgements(store: MatchboxPostgres, project: Project, user: str) -> pl.DataFrame:
    """``user``'s judgements of the project's records (not those other tests made elsewhere)."""
    return judgements_within(store, project.collection, project.leaves, user)


def _judge(page: Page, keys: str) -> str:
    """Press ``keys`` then Enter on the review page; the message after the post."""
    for key in keys:
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    message = page.locator("[role=status], [role=alert]")
    assert message.count() == 1, page.content()
    return message.inner_text()


def _evaluation(page: Page, base: str, collection: str) -> dict[str, str]:
    page.goto(f"{base}/evaluation/{collection}")
    if page.locator("#nofigures").count():
        return {}
    return {k: page.inner_text(f"#{k}") for k in ("precision", "recall", "f1", "pairs")}


def _promote(project: Project) -> int:
    """Re-run the graph's checks for run-0001 and the promotion sensor (``demo``)."""
    return main(["demo", "--definitions", str(project.defs), "--label", "run-0001"])


def test_the_resolvers_materialisation_shows_its_entities(project: Project) -> None:
    """The Dagster UI's metadata: largest entities and edges nearest the thresholds, fields too."""
    key = dg.AssetKey([project.collection, "people"])
    event = dg.DagsterInstance.get().get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    text = event.asset_materialization.metadata["entities"].value
    assert "### Largest entities" in text and "### Edges nearest each threshold" in text
    assert "| link_ab |" in text and "surname=" in text and "| febrl_b | rec-" in text


def test_the_evaluation_check_links_to_the_app_and_counts_judgements(project: Project) -> None:
    records = dg.DagsterInstance.get().get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    found = [
        r.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        for r in records
        if r.event_log_entry.dagster_event.event_specific_data.check_name == "evaluation"  # type: ignore[union-attr]
        and r.event_log_entry.dagster_event.event_specific_data.asset_key  # type: ignore[union-attr]
        == dg.AssetKey([project.collection, "people"])
    ]
    assert found, "no evaluation check ran"
    metadata = found[0].metadata
    assert metadata["review"].value == f"http://reviews.example:8765/review/{project.collection}"
    assert metadata["judgements"].value == 0 and not found[0].passed


def test_judge_ten_entities_with_the_keyboard_and_gate_promotion(
    project: Project,
    store: MatchboxPostgres,
    start_app: Callable[..., str],
    browser: Browser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = start_app("alice")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    collection = project.collection
    assert _evaluation(page, base, collection) == {}  # nothing judged yet

    page.goto(f"{base}/")  # one collection: straight to its review page
    assert page.url.endswith(f"/review/{collection}")
    assert page.inner_text("#progress") == f"0 of {MIN_JUDGEMENTS}"
    assert page.locator("th.rec").count() >= 2  # records side by side
    screenshot(page, "review")

    for i in range(5):
        assert "Recorded: one entity" in _judge(page, "e")
        assert page.inner_text("#progress") == f"{i + 1} of {MIN_JUDGEMENTS}"
    assert _judgements(store, project, "alice").height == 5
    figures = _evaluation(page, base, collection)
    assert figures["pairs"] == "5" and figures["precision"] == "1.000"

    # Half-way the gate still holds, and says how many more are needed.
    capsys.readouterr()
    assert _promote(project) == 1
    assert "5 more judgement(s) needed (minimum 10)" in capsys.readouterr().out
    assert store.get_collection(collection).default_run is None

    page.goto(f"{base}/review/{collection}")
    for _ in range(5):
        assert "Recorded" in _judge(page, "e")
    judged = _judgements(store, project, "alice")
    assert judged.get_column("shown").n_unique() == MIN_JUDGEMENTS
    figures = _evaluation(page, base, collection)
    assert figures["pairs"] == str(MIN_JUDGEMENTS)
    assert page.locator("#curves polyline").count() >= 1  # curves drawn server-side
    screenshot(page, "evaluation")

    # A split lowers precision; undo (the keyboard's u) takes it back.
    page.goto(f"{base}/review/{collection}")
    assert page.inner_text("#verdict") == "one entity (endorse)"
    page.keyboard.press("ArrowRight")  # the second record ...
    page.keyboard.press("2")  # ... into group 2
    assert page.inner_text("#verdict") == "2 entities (split)"
    screenshot(page, "split")
    assert "2 entities" in _judge(page, "")
    assert float(_evaluation(page, base, collection)["precision"]) < 1.0
    page.goto(f"{base}/review/{collection}")
    with page.expect_navigation():
        page.keyboard.press("u")
    assert "Undone" in page.inner_text("[role=status]")
    assert _judgements(store, project, "alice").get_column("shown").n_unique() == 10
    assert _evaluation(page, base, collection)["precision"] == "1.000"

    # Enough judgements and passing figures: the sensor promotes the run.
    assert _promote(project) == 0
    assert store.get_collection(collection).default_run == project.run_id
    page.close()


def test_bad_input_is_refused_on_the_page_and_changes_nothing(
    project: Project,
    store: MatchboxPostgres,
    start_app: Callable[..., str],
    browser: Browser,
) -> None:
    base = start_app("alice")
    page = browser.new_page()
    collection = project.collection
    before = _judgements(store, project, "alice").height

    # The uncertain strategy: an edge nearest its threshold, and why it was picked.
    page.goto(f"{base}/review/{collection}")
    page.click("text=uncertain")
    assert "link_ab edge scoring" in page.inner_text(".reason")
    assert page.locator("th.rec").count() >= 2

    page.goto(f"{base}/review/no_such_collection")
    assert "no collection 'no_such_collection'" in page.inner_text("[role=alert]")

    page.goto(f"{base}/review/{collection}")
    # A judgement naming a record outside the sample.
    page.evaluate(
        "() => { const i = document.createElement('input'); i.type = 'hidden';"
        " i.name = 'g-12345'; i.value = '1'; document.getElementById('judge').append(i); }"
    )
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "outside the sample" in page.inner_text("[role=alert]")

    # A double submit: the same form posted twice.
    page.goto(f"{base}/review/{collection}")
    form = page.evaluate("() => Object.fromEntries(new FormData(document.getElementById('judge')))")
    assert "Recorded" in _judge(page, "e")
    replay = (
        "(fields) => { const f = document.createElement('form'); f.method = 'post';"
        f" f.action = '/review/{collection}/judge';"
        " for (const [k, v] of Object.entries(fields)) { const i = document.createElement('input');"
        " i.type = 'hidden'; i.name = k; i.value = v; f.append(i); }"
        " document.body.append(f); f.submit(); }"
    )
    with page.expect_navigation():
        page.evaluate(replay, form)
    assert "already submitted" in page.inner_text("[role=alert]")
    # A stale sample: the page's sample was skipped in another tab.
    form = page.evaluate("() => Object.fromEntries(new FormData(document.getElementById('judge')))")
    with page.expect_navigation():
        page.keyboard.press("n")  # skip
    with page.expect_navigation():
        page.evaluate(replay, {**form, "sample": "not-a-sample"})
    assert "stale" in page.inner_text("[role=alert]")
    # A forged token.
    with page.expect_navigation():
        page.evaluate(replay, {**form, "csrf": "forged"})
    assert "security token" in page.inner_text("[role=alert]")
    screenshot(page, "refused")
    assert _judgements(store, project, "alice").height == before + 1  # only the real one
    page.close()


def test_a_reviewer_without_read_is_refused(
    project: Project, start_app: Callable[..., str], browser: Browser
) -> None:
    base = start_app("bob")
    page = browser.new_page()
    page.goto(f"{base}/")
    assert "You may read no collection" in page.inner_text("main")
    answer = page.goto(f"{base}/review/{project.collection}")
    assert answer is not None and answer.status == 404
    assert f"no collection '{project.collection}' that user 'bob' may read" in page.inner_text(
        "[role=alert]"
    )
    answer = page.goto(f"{base}/evaluation/{project.collection}")
    assert answer is not None and answer.status == 404
    page.close()
