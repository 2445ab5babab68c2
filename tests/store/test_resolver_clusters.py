"""Where resolver clusters live (schema revision 0004): the resolver's partition only.

Judged clusters alone go to ``clusters``/``contains``; children naming an ancestor resolver's
cluster are expanded from that resolver's partition; cluster-id collisions the store can see are
refused; the migration moves an older store's resolver clusters out (and back on downgrade).
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pytest

from matchbox_dagster.common.dtos import (
    Judgement,
    QueryConfig,
    StepPath,
    User,
)
from matchbox_dagster.common.errors import MatchboxDataNotFound, MatchboxStepInvalidData
from matchbox_dagster.common.fingerprint import cluster_id
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres, migrate, writes
from matchbox_dagster.store.postgres.evaluation import cluster_hash
from tests.conftest import own_schema_store
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    clusters_table,
    ids_of,
    leaf_of,
    resolver_step,
    store_state,
)
from tests.store.conftest_gov import sql


@pytest.fixture
def own_store(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """A store in a schema of its own: its shared tables start empty."""
    with own_schema_store(settings) as store:
        yield store


def _people(store: MatchboxPostgres) -> tuple[int, StepPath, dict[str, int]]:
    """Collection ``c``, a run of it and a source of five leaves: (run, source, key → leaf)."""
    store.create_collection("c")
    run = store.create_run("c").run_id
    src = add_source(
        store, "c", run, "people", {"a": ["1"], "b": ["2"], "c": ["3"], "d": ["4"], "e": ["5"]}
    )
    return run, src, leaf_of(store, src)


def _chain(store: MatchboxPostgres) -> dict:
    """people → dedupe → r1 (clusters 1+2 and 4+5) → rescore (through r1) → r2 (r1's 1+2 with 3)."""
    run, src, lv = _people(store)
    add_model(
        store,
        "c",
        run,
        "dedupe",
        [(lv["1"], lv["2"], 0.9), (lv["4"], lv["5"], 0.9)],
        QueryConfig(sources=("people",)),
    )
    r1 = add_resolver(store, "c", run, "r1", [[lv["1"], lv["2"]], [lv["4"], lv["5"]]], ("dedupe",))
    c12 = cluster_id([lv["1"], lv["2"]])
    add_model(
        store,
        "c",
        run,
        "rescore",
        [(c12, lv["3"], 0.9)],
        QueryConfig(sources=("people",), resolver="r1"),
    )
    r2 = add_resolver(store, "c", run, "r2", [[c12, lv["3"]]], ("rescore",))
    return {"run": run, "src": src, "r1": r1, "r2": r2, "lv": lv, "c12": c12}


def _count(store: MatchboxPostgres, table: str) -> int:
    return sql(store, f"SELECT count(*) FROM {table}")[0][0]


def test_resolver_clusters_stay_in_their_partition(own_store: MatchboxPostgres) -> None:
    chain = _chain(own_store)
    lv, c12 = chain["lv"], chain["c12"]
    # Nothing in the shared tables; both resolvers' clusters come from their partitions.
    assert _count(own_store, "clusters") == 0 and _count(own_store, "contains") == 0
    c123 = cluster_id([lv["1"], lv["2"], lv["3"]])
    c45 = cluster_id([lv["4"], lv["5"]])
    ids = ids_of(own_store, chain["src"], chain["r2"])
    # r2 expanded r1's cluster c12 to its leaves and inherited 4+5 from r1.
    assert ids == {"1": c123, "2": c123, "3": c123, "4": c45, "5": c45}
    assert own_store.validate_ids([c12, c123, c45, lv["1"]])
    with pytest.raises(MatchboxDataNotFound):
        own_store.validate_ids([c12 ^ 1])
    assert own_store.model_clusters.count() == 3  # c12, c45 (r1); c123 (r2)
    assert own_store.merges.count() == 7  # 2 + 2 + 3 (root, leaf) pairs
    assert own_store.all_clusters.count() == 5 + 3


def test_a_cluster_outside_the_lineage_is_refused(own_store: MatchboxPostgres) -> None:
    chain = _chain(own_store)
    lv = chain["lv"]
    # r_other descends from dedupe only, so r1's cluster c12 is not one of its children.
    with pytest.raises(MatchboxStepInvalidData, match="neither"):
        add_resolver(
            own_store, "c", chain["run"], "r_other", [[chain["c12"], lv["3"]]], ("dedupe",)
        )


def test_a_judged_cluster_expands_as_a_child(own_store: MatchboxPostgres) -> None:
    chain = _chain(own_store)
    lv = chain["lv"]
    own_store.login(User(user_name="alice"))
    own_store.insert_judgement(
        "alice", Judgement(shown=[lv["3"], lv["4"]], endorsed=[[lv["3"], lv["4"]]])
    )
    c34 = cluster_id([lv["3"], lv["4"]])
    assert _count(own_store, "clusters") == 1
    add_resolver(own_store, "c", chain["run"], "r_judged", [[c34]], ("dedupe",))
    ids = ids_of(
        own_store, chain["src"], StepPath(collection="c", run=chain["run"], name="r_judged")
    )
    assert ids["3"] == ids["4"] == c34


@pytest.mark.parametrize("clash", ["two parents", "a leaf", "a judged cluster"])
def test_cluster_id_collisions_are_refused(
    own_store: MatchboxPostgres, monkeypatch: pytest.MonkeyPatch, clash: str
) -> None:
    """A forged content address standing in for a 63-bit collision is refused, nothing written."""
    run, _, lv = _people(own_store)
    add_model(
        own_store,
        "c",
        run,
        "dedupe",
        [(lv["1"], lv["2"], 0.9), (lv["3"], lv["4"], 0.9)],
        QueryConfig(sources=("people",)),
    )
    # Judge 1+5 (another content) so `clusters` holds a cluster whose id a forgery can take.
    own_store.login(User(user_name="alice"))
    own_store.insert_judgement(
        "alice", Judgement(shown=[lv["1"], lv["5"]], endorsed=[[lv["1"], lv["5"]]])
    )
    forged = {
        "two parents": cluster_id([lv["1"], lv["2"]]),
        "a leaf": lv["5"],
        "a judged cluster": cluster_id([lv["1"], lv["5"]]),
    }[clash]
    real = writes.content_address

    def forge(expanded: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
        rows, parents = real(expanded)
        ids = parents.column("cluster_id").to_numpy().copy()
        ids[0] = ids[1] if clash == "two parents" else forged
        return rows, parents.set_column(0, "cluster_id", pa.array(ids))

    monkeypatch.setattr(writes, "content_address", forge)
    table = clusters_table([[lv["1"], lv["2"]], [lv["3"], lv["4"]]])
    path = StepPath(collection="c", run=run, name="r")
    own_store.create_step(resolver_step(table, ("dedupe",)), path)
    before = store_state(own_store)
    with pytest.raises(MatchboxStepInvalidData, match="collide"):
        own_store.insert_resolver_data(path, table)
    assert store_state(own_store) == before


def test_migration_moves_resolver_clusters_out_and_back(own_store: MatchboxPostgres) -> None:
    chain = _chain(own_store)
    lv = chain["lv"]
    own_store.login(User(user_name="alice"))
    own_store.insert_judgement(
        "alice",
        Judgement(shown=[lv["1"], lv["2"], lv["3"]], endorsed=[[lv["1"], lv["2"]], [lv["3"]]]),
    )
    c123, c12, c45 = (
        cluster_id([lv["1"], lv["2"], lv["3"]]),
        chain["c12"],
        cluster_id([lv["4"], lv["5"]]),
    )
    judged = {c123, c12}
    engine, schema = own_store.db.engine, own_store.db.schema
    # Down to 0003: every resolver's multi-leaf cluster is written back, with the store's hash.
    migrate.downgrade(engine, schema, "0003")
    rows = dict(sql(own_store, "SELECT cluster_id, cluster_hash FROM clusters"))
    assert set(rows) == judged | {c45}
    assert bytes(rows[c45]) == cluster_hash([lv["4"], lv["5"]])
    assert bytes(rows[c123]) == cluster_hash([lv["1"], lv["2"], lv["3"]])
    assert sorted(
        r[0] for r in sql(own_store, "SELECT leaf FROM contains WHERE root = %s", (c45,))
    ) == sorted([lv["4"], lv["5"]])
    # Up again: only the judged clusters stay; queries are unchanged.
    migrate.upgrade(engine, schema)
    assert migrate.current_revision(engine, schema) == migrate.HEAD
    assert {r[0] for r in sql(own_store, "SELECT cluster_id FROM clusters")} == judged
    assert {r[0] for r in sql(own_store, "SELECT DISTINCT root FROM contains")} == judged
    assert ids_of(own_store, chain["src"], chain["r2"])["4"] == c45
    assert len(own_store.get_judgements()[1]) == 3  # c123, c12 and leaf 3
