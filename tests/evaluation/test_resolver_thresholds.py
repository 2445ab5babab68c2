"""Issue 19 item 5: the resolver's evaluation suggests, per model, the best-F1 threshold.

A real store holds a source of nine records (entities a, b, d, f of two records each, c and e
alone: four true pairs) and a deduper scoring

    a1–a2 0.95 (true)   b1–b2 0.85 (true)   a1–c1 0.75 (false)   d1–d2 0.65 (true)
    c1–e1 0.55 (false)  and never f1–f2.

Keeping edges ≥ t gives F1 = 2·tp / (kept + 4): 0.40, 0.67, 0.57, **0.75**, 0.67 — the best
threshold is 0.65; the resolver uses 0.8 (F1 0.67). The same edges judged by a person (every
pair shown, f1–f2 endorsed too) must give the same answer, and the check and the review
figures must show both thresholds.
"""

from __future__ import annotations

import uuid

import polars as pl
import pytest

from matchbox_dagster.common.arrow import ResolverClusters
from matchbox_dagster.common.dtos import (
    Judgement,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    User,
)
from matchbox_dagster.dagster.checks import resolver_checks
from matchbox_dagster.evaluation.entities import resolver_entities
from matchbox_dagster.evaluation.resolver import evaluate_resolver, thresholds_in_use
from matchbox_dagster.evaluation.sampling import lineage
from matchbox_dagster.review.figures import evaluation_html, figures
from matchbox_dagster.review.state import Target
from matchbox_dagster.specs import ResolverChecksSpec
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_source, clusters_table, leaf_of

KEYS = ["a1", "a2", "b1", "b2", "c1", "d1", "d2", "e1", "f1", "f2"]
TRUTH = {"firms": "left(key, 1)"}
EDGES = [("a1", "a2", 0.95), ("b1", "b2", 0.85), ("a1", "c1", 0.75), ("d1", "d2", 0.65)]
EDGES += [("c1", "e1", 0.55)]


@pytest.fixture
def graph(store: MatchboxPostgres, collection: str, run: int) -> tuple[StepPath, dict[str, int]]:
    """The source, the deduper, and a resolver at 0.8 (clusters as connected components)."""
    salt = uuid.uuid4().hex  # leaves are content-addressed: no other test's judgements count
    firms = add_source(store, collection, run, "firms", {f"{k}-{salt}": [k] for k in KEYS})
    leaf = leaf_of(store, firms)
    edges = [(min(leaf[a], leaf[b]), max(leaf[a], leaf[b]), s) for a, b, s in EDGES]
    add_model(store, collection, run, "dedupe", edges, QueryConfig(sources=["firms"]))
    clusters = [[leaf["a1"], leaf["a2"]], [leaf["b1"], leaf["b2"]]]
    clusters += [[leaf[k]] for k in ("c1", "d1", "d2", "e1", "f1", "f2")]
    table = clusters_table(clusters)
    path = StepPath(collection=collection, run=run, name="resolved")
    config = ResolverConfig(inputs=("dedupe",), resolver_settings={"thresholds": {"dedupe": 0.8}})
    step = Step(
        step_type=StepType.RESOLVER, fingerprint=ResolverClusters(table).fingerprint, config=config
    )
    store.create_step(step, path)
    store.insert_resolver_data(path, table)
    return path, leaf


def _judge(store: MatchboxPostgres, leaf: dict[str, int], user: str) -> None:
    """A person shown every scored pair (and f1–f2) says which belong together."""
    store.login(User(user_name=user))
    mine = store.as_user(user)
    for a, b, _ in EDGES:
        together = a[0] == b[0]
        endorsed = [[leaf[a], leaf[b]]] if together else [[leaf[a]], [leaf[b]]]
        mine.insert_judgement(user, Judgement(shown=[leaf[a], leaf[b]], endorsed=endorsed))
    pair = [leaf["f1"], leaf["f2"]]
    mine.insert_judgement(user, Judgement(shown=pair, endorsed=[pair]))


def test_against_truth_the_best_threshold_counts_every_true_pair(
    store: MatchboxPostgres, graph: tuple[StepPath, dict[str, int]]
) -> None:
    path, _ = graph
    assert thresholds_in_use(store, path) == {"dedupe": 0.8}
    entities = resolver_entities(store, path, ["firms"], 64, TRUTH)
    found = evaluate_resolver(store, path, ["dedupe"], entities, truth=True, sources=["firms"])
    (row,) = found.thresholds
    assert row.model == "dedupe" and row.in_use == 0.8
    assert row.f1_in_use == pytest.approx(4 / 6)
    best = row.suggestion
    assert best is not None
    assert best.threshold == pytest.approx(0.65)  # float32 scores
    assert best.f1 == pytest.approx(0.75)
    assert best.recall == pytest.approx(3 / 4)  # f1–f2 was never proposed: a miss
    assert best.precision == pytest.approx(3 / 4) and best.positives == pytest.approx(4)
    assert best.low <= best.threshold <= best.high


def test_the_check_shows_the_suggested_and_the_used_threshold(
    store: MatchboxPostgres, graph: tuple[StepPath, dict[str, int]]
) -> None:
    path, _ = graph
    results = resolver_checks(
        store,
        path,
        sources=["firms"],
        models=["dedupe"],
        checks=ResolverChecksSpec(max_cluster_size=10, min_precision=0.1, truth=TRUTH),
        batch_size=64,
    )
    evaluation = next(r for r in results if r.check_name == "evaluation")
    (row,) = evaluation.metadata["thresholds"].value
    assert row["model"] == "dedupe" and row["in_use"] == 0.8
    assert row["suggested"] == pytest.approx(0.65) and row["f1"] == pytest.approx(0.75)
    table = evaluation.metadata["suggested_thresholds"].value
    cells = next(line for line in table.splitlines() if line.startswith("| dedupe"))
    assert [c.strip() for c in cells.split("|")][1:6] == [
        "dedupe",
        "0.8000",
        "0.6667",
        "0.6500",
        "0.7500",
    ]


def test_against_judgements_the_check_and_the_figures_agree(
    store: MatchboxPostgres, graph: tuple[StepPath, dict[str, int]]
) -> None:
    path, leaf = graph
    user = f"judge_{uuid.uuid4().hex[:6]}"
    _judge(store, leaf, user)
    # A judged pair of records outside the resolver (another source): not a miss of its models.
    salt = uuid.uuid4().hex
    outside = add_source(
        store, path.collection, path.run, "others", {f"{k}-{salt}": [k] for k in ("o1", "o2")}
    )
    pair = list(leaf_of(store, outside).values())
    store.as_user(user).insert_judgement(user, Judgement(shown=pair, endorsed=[pair]))
    entities = resolver_entities(store, path, ["firms"], 64, None)
    found = evaluate_resolver(store, path, ["dedupe"], entities, truth=False)
    (row,) = found.thresholds
    assert row.suggestion is not None and row.suggestion.labelled == 6
    assert row.suggestion.threshold == pytest.approx(0.65)
    assert row.suggestion.f1 == pytest.approx(0.75) and row.f1_in_use == pytest.approx(4 / 6)

    records = entities.select(pl.col("id").alias("entity"), pl.col("leaf_id").alias("leaf"))
    target = Target(path=path, lineage=lineage(store, path), records=records)
    shown = figures(store, target)
    assert [t.row() for t in shown.thresholds] == [row.row()]
    html = evaluation_html(shown, "resolved", path.collection)
    assert 'id="thresholds"' in html
    assert '<td class="in-use">0.800</td><td>0.667</td><td class="suggested">0.650</td>' in html
