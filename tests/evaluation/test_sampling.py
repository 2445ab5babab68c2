"""The review app's sampling strategies, Wilson intervals and judgement undo, on real PostgreSQL.

One source of 20 leaves, a deduper with four edges around its 0.8 threshold, and a resolver
joining the two pairs at or above it: what each strategy returns is known exactly.
"""

from __future__ import annotations

from pathlib import Path

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
from matchbox_dagster.common.errors import MatchboxNotFoundError, MatchboxPermissionDenied
from matchbox_dagster.evaluation.entity_tables import entity_tables
from matchbox_dagster.evaluation.intervals import wilson
from matchbox_dagster.evaluation.sampling import (
    Strategy,
    draw,
    judgement_count,
    lineage,
    resolver_records,
)
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, clusters_table
from tests.sources.test_inputs import indexed, people

THRESHOLD = 0.8


def _resolver(
    store: MatchboxPostgres, collection: str, run: int, clusters: list[list[int]]
) -> StepPath:
    table = clusters_table(clusters)
    path = StepPath(collection=collection, run=run, name="resolved")
    config = ResolverConfig(inputs=("dedupe",), resolver_settings={"thresholds": {"dedupe": 0.8}})
    step = Step(
        step_type=StepType.RESOLVER, fingerprint=ResolverClusters(table).fingerprint, config=config
    )
    store.create_step(step, path)
    store.insert_resolver_data(path, table)
    return path


def _run(
    store: MatchboxPostgres, collection: str, run: int, folder: Path, clusters: list[int]
) -> tuple[StepPath, list[int]]:
    """Source, deduper and resolver in ``run``; the resolver and the sorted leaves."""
    people().write_parquet(folder / "people.parquet")
    source = indexed(store, collection, run, folder / "people.parquet")
    leaves = sorted(pl.DataFrame(pl.from_arrow(store.query(source))).get_column("id").unique())
    L = leaves
    edges = [(L[0], L[1], 0.95), (L[2], L[3], 0.82), (L[4], L[5], 0.79), (L[6], L[7], 0.5)]
    add_model(store, collection, run, "dedupe", edges, QueryConfig(sources=["people"]))
    groups = [[L[a], L[b]] for a, b in zip(clusters[::2], clusters[1::2], strict=True)]
    return _resolver(store, collection, run, groups), leaves


@pytest.fixture
def resolved(
    store: MatchboxPostgres, collection: str, run: int, tmp_path: Path
) -> tuple[StepPath, list[int]]:
    """The resolver joins leaves 0–1 and 2–3 (edges 0.95 and 0.82, threshold 0.8)."""
    return _run(store, collection, run, tmp_path, [0, 1, 2, 3])


def test_lineage_and_records(store: MatchboxPostgres, resolved: tuple[StepPath, list[int]]) -> None:
    path, leaves = resolved
    found = lineage(store, path)
    assert found.thresholds == {"dedupe": THRESHOLD} and found.sources == ["people"]
    records = resolver_records(store, path, found.sources)
    assert records.columns == ["source", "key", "leaf", "entity"] and records.height == 500
    assert records.get_column("leaf").n_unique() == len(leaves) == 20


def test_random_gives_the_resolvers_entities(
    store: MatchboxPostgres, resolved: tuple[StepPath, list[int]]
) -> None:
    path, L = resolved
    store.login(User(user_name="sampler"))
    samples = draw(store, path, "random", 10, "sampler")
    assert {s.leaves for s in samples} == {(L[0], L[1]), (L[2], L[3])}
    for sample in samples:
        assert set(sample.records.get_column("leaf")) == set(sample.leaves)
        assert sample.records.columns == ["source", "key", "leaf"]


def test_uncertain_orders_by_distance_to_the_threshold_and_skips_judged(
    store: MatchboxPostgres, resolved: tuple[StepPath, list[int]]
) -> None:
    path, L = resolved
    store.login(User(user_name="unsure"))
    samples = draw(store, path, Strategy.UNCERTAIN, 10, "unsure")
    # 0.79 (below: two entities shown together), 0.82, 0.95 (above), 0.5 (below).
    assert [s.leaves for s in samples] == [
        (L[4], L[5]),
        (L[2], L[3]),
        (L[0], L[1]),
        (L[6], L[7]),
    ]
    assert "below" in samples[0].reason and "at or above" in samples[1].reason
    assert len(draw(store, path, Strategy.UNCERTAIN, 2, "unsure")) == 2
    # Leaves are content-addressed: other tests' judgements of the same rows count too.
    within, first_four = (judgement_count(store, path.collection, pl.Series(x)) for x in (L, L[:4]))
    store.as_user("unsure").insert_judgement(
        "unsure", Judgement(shown=[L[4], L[5]], endorsed=[[L[4]], [L[5]]])
    )
    again = draw(store, path, Strategy.UNCERTAIN, 10, "unsure")
    assert [s.leaves for s in again] == [(L[2], L[3]), (L[0], L[1]), (L[6], L[7])]
    assert judgement_count(store, path.collection, pl.Series(L)) == within + 1
    assert judgement_count(store, path.collection, pl.Series(L[:4])) == first_four  # L4 outside


def test_changed_compares_with_the_default_run(
    store: MatchboxPostgres, collection: str, run: int, tmp_path: Path
) -> None:
    first, L = _run(store, collection, run, tmp_path, [0, 1, 2, 3])
    store.login(User(user_name="churner"))
    with pytest.raises(MatchboxNotFoundError, match="no other default run"):
        draw(store, first, Strategy.CHANGED, 10, "churner")
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)
    second_run = store.create_run(collection).run_id
    folder = tmp_path / "second"
    folder.mkdir()
    second, _ = _run(store, collection, second_run, folder, [0, 1, 4, 5])
    samples = draw(store, second, Strategy.CHANGED, 10, "churner")
    # New here: 4–5 joined; gone: the default run's 2–3, split here. 0–1 is unchanged.
    assert [s.leaves for s in samples] == [(L[4], L[5]), (L[2], L[3])]
    assert "splits" in samples[1].reason


def test_undo_deletes_only_the_users_own_latest_judgement(
    store: MatchboxPostgres, resolved: tuple[StepPath, list[int]]
) -> None:
    path, L = resolved
    for user in ("undoer", "other"):
        store.login(User(user_name=user))
    mine = store.as_user("undoer")
    mine.insert_judgement("undoer", Judgement(shown=[L[0], L[1]], endorsed=[[L[0], L[1]]]))
    mine.insert_judgement("undoer", Judgement(shown=[L[2], L[3]], endorsed=[[L[2]], [L[3]]]))
    store.as_user("other").insert_judgement(
        "other", Judgement(shown=[L[6], L[7]], endorsed=[[L[6], L[7]]])
    )

    def shown(user: str) -> set[int]:
        table, _ = store.get_collection_judgements(path.collection)
        frame = pl.DataFrame(pl.from_arrow(table)).filter(pl.col("user_name") == user)
        return set(frame.get_column("shown").to_list())

    before_other = shown("other")
    with pytest.raises(MatchboxPermissionDenied):
        store.as_user("other").delete_last_judgement("undoer")
    with pytest.raises(MatchboxPermissionDenied):
        store.delete_last_judgement("undoer")  # not acting as anyone: refused too
    assert len(shown("undoer")) == 2
    assert mine.delete_last_judgement("undoer") is not None
    assert len(shown("undoer")) == 1 and shown("other") == before_other
    assert mine.delete_last_judgement("undoer") is not None
    assert mine.delete_last_judgement("undoer") is None  # nothing left to undo
    assert shown("other") == before_other


def test_wilson_interval() -> None:
    low, high = wilson(9, 10)
    assert round(low, 4) == 0.5958 and round(high, 4) == 0.9821
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(5, 5)[1] == 1.0 and wilson(0, 5)[0] == 0.0
    assert wilson(90, 100)[1] - wilson(90, 100)[0] < high - low  # more trials, narrower
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)


def test_entity_tables_show_the_largest_entities_and_edges_near_thresholds(
    store: MatchboxPostgres, resolved: tuple[StepPath, list[int]]
) -> None:
    path, _ = resolved
    text = entity_tables(store, path, n=2)
    largest, nearest = text.split("### Edges nearest each threshold")
    # Two entities of 50 records (two leaves of 25 identical rows), at most 10 rows each.
    assert largest.count("| 50 | people |") == 20
    assert "name=name" in largest and "town=town" in largest  # fields re-read from the source
    assert "| dedupe | 0.790 | 0.8 | no | people |" in nearest  # just below: not kept
    assert "| dedupe | 0.820 | 0.8 | yes | people |" in nearest
    assert "0.950" not in nearest  # only the two nearest
    keys_only = entity_tables(store, path, n=1, max_keys=10)
    assert "name=" not in keys_only and "| 50 | people |" in keys_only
