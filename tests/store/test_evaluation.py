"""Judgements, their cluster expansion, and evaluation samples."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from matchbox_dagster.common.arrow import (
    SCHEMA_CLUSTER_EXPANSION,
    SCHEMA_EVAL_SAMPLES,
    SCHEMA_JUDGEMENTS,
)
from matchbox_dagster.common.dtos import (
    Judgement,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    User,
)
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxStepNotQueriable,
    MatchboxStepTypeError,
    MatchboxTooManySamplesRequested,
    MatchboxUserNotFoundError,
)
from matchbox_dagster.common.fingerprint import cluster_id
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.evaluation import cluster_hash
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    edges_table,
    leaf_of,
    model_step,
    store_state,
)
from tests.store.conftest_gov import *  # noqa: F403
from tests.store.conftest_gov import Cached, Populated, cache_populated, sql


@pytest.fixture(scope="module")
def cached(gov_backend: MatchboxPostgres) -> Cached:
    return cache_populated(gov_backend)


@pytest.fixture
def populated(gov: MatchboxPostgres, cached: Cached) -> Populated:
    return cached.restore_into(gov)


def expansion_of(table) -> dict[int, list[int]]:
    return dict(zip(table.column("root").to_pylist(), table.column("leaves").to_pylist(),
                    strict=True))  # fmt: skip


def test_judgements_are_stored_as_content_addressed_clusters(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    lc, le = populated.lc, populated.le
    acme = cluster_id([lc["c1"], lc["c2"], lc["c5"]])  # r_crm's cluster, shown to alice
    acme_12 = cluster_id([lc["c1"], lc["c2"]])  # endorsed by alice: a new cluster
    beta = cluster_id([lc["c3"], le["e2"]])  # r_all's cluster, shown to and endorsed by bob
    judgements, expansion = gov.get_judgements()
    assert judgements.schema == SCHEMA_JUDGEMENTS
    assert expansion.schema == SCHEMA_CLUSTER_EXPANSION
    assert sorted(judgements.to_pylist(), key=lambda r: (r["user_name"], r["endorsed"])) == sorted(
        [
            {"user_name": "alice", "endorsed": acme_12, "shown": acme},
            {"user_name": "alice", "endorsed": lc["c5"], "shown": acme},
            {"user_name": "bob", "endorsed": beta, "shown": beta},
        ],
        key=lambda r: (r["user_name"], r["endorsed"]),
    )
    assert expansion_of(expansion) == {
        acme: sorted([lc["c1"], lc["c2"], lc["c5"]]),
        acme_12: sorted([lc["c1"], lc["c2"]]),
        lc["c5"]: [lc["c5"]],
        beta: sorted([lc["c3"], le["e2"]]),
    }
    # Judged clusters are stored with their hash and leaves, under the id a resolver gives
    # the same leaves (acme is r_crm's cluster; acme_12 is new).
    rows = dict(sql(gov, "SELECT cluster_id, cluster_hash FROM clusters"))
    assert bytes(rows[acme_12]) == cluster_hash([lc["c1"], lc["c2"]])
    assert bytes(rows[acme]) == cluster_hash([lc["c1"], lc["c2"], lc["c5"]])
    assert sorted(r[0] for r in sql(gov, "SELECT leaf FROM contains WHERE root = %s",
                                    (acme_12,))) == sorted([lc["c1"], lc["c2"]])  # fmt: skip
    tagged, tagged_expansion = gov.get_judgements("round-1")
    assert set(tagged.column("user_name").to_pylist()) == {"alice"}
    assert set(expansion_of(tagged_expansion)) == {acme, acme_12, lc["c5"]}
    empty, empty_expansion = gov.get_judgements("no-such-tag")
    assert empty.num_rows == 0 and empty.schema == SCHEMA_JUDGEMENTS
    assert empty_expansion.num_rows == 0 and empty_expansion.schema == SCHEMA_CLUSTER_EXPANSION


def test_same_judgement_twice_adds_no_cluster(gov: MatchboxPostgres, populated: Populated) -> None:
    lc = populated.lc
    clusters = gov.model_clusters.count()
    judgement = Judgement(shown=[lc["c1"], lc["c2"], lc["c5"]], endorsed=[[lc["c1"], lc["c2"]],
                                                                           [lc["c5"]]])  # fmt: skip
    gov.insert_judgement("bob", judgement)
    assert gov.model_clusters.count() == clusters
    assert gov.get_judgements()[0].num_rows == 5


def test_bad_judgements_change_nothing(gov: MatchboxPostgres, populated: Populated) -> None:
    lc = populated.lc
    before = store_state(gov)
    with pytest.raises(MatchboxDataNotFound, match="not leaf clusters"):
        gov.insert_judgement("alice", Judgement(shown=[lc["c1"], 42], endorsed=[[lc["c1"], 42]]))
    with pytest.raises(MatchboxUserNotFoundError):
        gov.insert_judgement("nobody", Judgement(shown=[lc["c1"]], endorsed=[[lc["c1"]]]))
    assert store_state(gov) == before
    with pytest.raises(ValidationError):
        Judgement(shown=[lc["c1"], lc["c2"]], endorsed=[[lc["c1"]]])  # not a partition
    with pytest.raises(ValidationError):
        Judgement(shown=[lc["c1"]], endorsed=[[lc["c1"]], []])


def test_no_judgements_gives_empty_tables(gov: MatchboxPostgres) -> None:
    judgements, expansion = gov.get_judgements()
    assert judgements.num_rows == expansion.num_rows == 0
    assert judgements.schema == SCHEMA_JUDGEMENTS


def test_sample_offers_own_clusters_with_every_key(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    lc, le = populated.lc, populated.le
    gov.login(User(user_name="carol"))
    sample = gov.sample_for_eval(10, populated.r_crm, "carol")
    assert sample.schema == SCHEMA_EVAL_SAMPLES
    acme = cluster_id([lc["c1"], lc["c2"], lc["c5"]])
    assert sorted(sample.to_pylist(), key=lambda r: r["key"]) == [
        {"root": acme, "leaf": lc["c1"], "key": "c1", "source": "crm"},
        {"root": acme, "leaf": lc["c2"], "key": "c2", "source": "crm"},
        {"root": acme, "leaf": lc["c5"], "key": "c5", "source": "crm"},
    ]
    # r_all owns only beta: acme is inherited from r_crm and not offered again.
    beta = cluster_id([lc["c3"], le["e2"]])
    sample = gov.sample_for_eval(10, populated.r_all, "carol")
    assert sorted((r["root"], r["key"], r["source"]) for r in sample.to_pylist()) == [
        (beta, "c3", "crm"),
        (beta, "e2", "erp"),
    ]


def test_sample_skips_what_the_user_judged_this_year(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    assert gov.sample_for_eval(10, populated.r_crm, "alice").num_rows == 0  # alice judged acme
    assert gov.sample_for_eval(10, populated.r_crm, "bob").num_rows == 3
    assert gov.sample_for_eval(10, populated.r_all, "bob").num_rows == 0  # bob judged beta
    assert gov.sample_for_eval(10, populated.r_all, "alice").num_rows == 2
    sql(gov, "UPDATE judgements SET created_at = now() - interval '13 months'")
    assert gov.sample_for_eval(10, populated.r_crm, "alice").num_rows == 3


def test_sample_size(gov: MatchboxPostgres) -> None:
    gov.login(User(user_name="carol"))
    gov.create_collection("sampled")
    run = gov.create_run("sampled").run_id
    rows = {f"row{i}": [f"k{i}"] for i in range(8)}
    src = add_source(gov, "sampled", run, "src", rows)
    leaf = leaf_of(gov, src)
    pairs = [[leaf[f"k{i}"], leaf[f"k{i + 1}"]] for i in range(0, 8, 2)]
    add_model(gov, "sampled", run, "m", [(a, b, 0.9) for a, b in pairs],
              QueryConfig(sources=("src",)))  # fmt: skip
    res = add_resolver(gov, "sampled", run, "res", pairs, ("m",))
    two = gov.sample_for_eval(2, res, "carol")
    assert len(set(two.column("root").to_pylist())) == 2 and two.num_rows == 4
    assert len(set(gov.sample_for_eval(100, res, "carol").column("root").to_pylist())) == 4
    empty = gov.sample_for_eval(0, res, "carol")
    assert empty.num_rows == 0 and empty.schema == SCHEMA_EVAL_SAMPLES
    with pytest.raises(MatchboxTooManySamplesRequested):
        gov.sample_for_eval(101, res, "carol")
    with pytest.raises(ValueError, match="positive"):
        gov.sample_for_eval(-1, res, "carol")
    with pytest.raises(MatchboxUserNotFoundError):
        gov.sample_for_eval(1, res, "nobody")
    with pytest.raises(MatchboxStepTypeError):
        gov.sample_for_eval(1, src, "carol")
    pending_model = StepPath(collection="sampled", run=run, name="m2")
    gov.create_step(model_step(edges_table([]), QueryConfig(sources=("src",))), pending_model)
    pending = StepPath(collection="sampled", run=run, name="r2")
    gov.create_step(
        Step(step_type=StepType.RESOLVER, fingerprint=b"\x01" * 32,
             config=ResolverConfig(inputs=("m2",))),
        pending,
    )  # fmt: skip
    with pytest.raises(MatchboxStepNotQueriable):
        gov.sample_for_eval(1, pending, "carol")


def test_resolver_scored_against_stored_judgements(
    gov: MatchboxPostgres, populated: Populated
) -> None:
    from matchbox_dagster.evaluation import score_against_judgements

    judgements, expansion = gov.get_judgements()
    clusters = gov.get_resolver_data(populated.r_crm)
    universe = gov.query(populated.crm, return_leaf_id=True).column("leaf_id").to_pylist()
    # alice split c5 off acme: r_crm's acme cluster claims (c1,c2) rightly and two pairs wrongly.
    scores = score_against_judgements(
        clusters, judgements, expansion, root="parent_id", leaf="child_id", universe=universe
    )
    assert (scores.tp, scores.fp, scores.fn) == (1.0, 2.0, 0.0)
    assert scores.precision == pytest.approx(1 / 3) and scores.recall == 1.0
