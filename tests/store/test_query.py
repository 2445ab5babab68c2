"""query and match through nested resolvers, validate_ids and the countables."""

from __future__ import annotations

import pytest

from matchbox_dagster.common.dtos import QueryConfig, StepPath
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxStepInvalidData,
    MatchboxStepNotQueriable,
)
from matchbox_dagster.common.fingerprint import cluster_id
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import add_model, add_resolver, add_source, ids_of, leaf_of


@pytest.fixture
def linked(store: MatchboxPostgres, collection: str, run: int) -> dict:
    """crm (deduped by r_crm) linked to erp by r_all."""
    crm = add_source(
        store,
        collection,
        run,
        "crm",
        {"acme": ["c1"], "acme ltd": ["c2"], "beta": ["c3"], "gamma": ["c4"]},
    )
    erp = add_source(
        store, collection, run, "erp", {"acme": ["e1"], "beta inc": ["e2"], "delta": ["e3"]}
    )
    lc, le = leaf_of(store, crm), leaf_of(store, erp)
    add_model(
        store,
        collection,
        run,
        "dedupe_crm",
        [(lc["c1"], lc["c2"], 0.9)],
        QueryConfig(sources=("crm",)),
    )
    r_crm = add_resolver(store, collection, run, "r_crm", [[lc["c1"], lc["c2"]]], ("dedupe_crm",))
    acme = cluster_id([lc["c1"], lc["c2"]])
    # Identical rows "acme" share a leaf: c1 and e1 are one leaf already.
    assert lc["c1"] == le["e1"]
    add_model(
        store,
        collection,
        run,
        "link",
        [(acme, le["e2"], 0.2), (lc["c3"], le["e2"], 0.95)],
        QueryConfig(sources=("crm",), resolver="r_crm"),
        QueryConfig(sources=("erp",)),
    )
    # r_all nests r_crm's cluster (acme) and adds beta; it leaves gamma and delta alone.
    r_all = add_resolver(store, collection, run, "r_all", [[lc["c3"], le["e2"]]], ("link",))
    return {
        "crm": crm,
        "erp": erp,
        "r_crm": r_crm,
        "r_all": r_all,
        "lc": lc,
        "le": le,
        "acme": acme,
    }


def test_query_without_resolver_gives_leaves(store: MatchboxPostgres, linked: dict) -> None:
    assert ids_of(store, linked["crm"], None) == linked["lc"]


def test_query_nearest_resolver_then_leaf(store: MatchboxPostgres, linked: dict) -> None:
    lc, le, acme = linked["lc"], linked["le"], linked["acme"]
    beta = cluster_id([lc["c3"], le["e2"]])
    assert ids_of(store, linked["crm"], linked["r_crm"]) == {
        "c1": acme,
        "c2": acme,
        "c3": lc["c3"],
        "c4": lc["c4"],
    }
    assert ids_of(store, linked["crm"], linked["r_all"]) == {
        "c1": acme,
        "c2": acme,
        "c3": beta,
        "c4": lc["c4"],
    }
    # e1 shares the leaf of c1, so r_all (inheriting r_crm's cluster) puts it in acme too.
    assert ids_of(store, linked["erp"], linked["r_all"]) == {"e1": acme, "e2": beta, "e3": le["e3"]}


def test_query_options(store: MatchboxPostgres, linked: dict) -> None:
    table = store.query(linked["crm"], linked["r_all"], return_leaf_id=True)
    assert table.column_names == ["id", "key", "leaf_id"]
    assert (
        dict(zip(table.column("key").to_pylist(), table.column("leaf_id").to_pylist(), strict=True))
        == linked["lc"]
    )
    limited = store.query(linked["crm"], linked["r_all"], limit=2)
    assert limited.num_rows == 2
    assert (
        limited.to_pylist()
        == sorted(
            store.query(linked["crm"], linked["r_all"]).to_pylist(),
            key=lambda r: (r["id"], r["key"]),
        )[:2]
    )


def test_query_refuses_incomplete_or_unrelated_steps(
    store: MatchboxPostgres, linked: dict, collection: str, run: int
) -> None:
    other = add_source(store, collection, run, "other", {"x": ["o1"]})
    with pytest.raises(MatchboxStepInvalidData, match="does not descend"):
        store.query(other, linked["r_all"])
    path = StepPath(collection=collection, run=run, name="pending")
    from tests.test_helpers_steps import declare_pending_source

    declare_pending_source(store, path)
    with pytest.raises(MatchboxStepNotQueriable, match="ready"):
        store.query(path)


def test_match(store: MatchboxPostgres, linked: dict) -> None:
    crm, erp, r_all = linked["crm"], linked["erp"], linked["r_all"]
    [found] = store.match("c3", crm, [erp], r_all)
    assert found.cluster == cluster_id([linked["lc"]["c3"], linked["le"]["e2"]])
    assert found.source_id == {"c3"} and found.target_id == {"e2"}
    [acme] = store.match("c2", crm, [erp], r_all)
    assert acme.source_id == {"c1", "c2"} and acme.target_id == {"e1"}
    [alone] = store.match("c4", crm, [erp], r_all)
    assert alone.cluster == linked["lc"]["c4"] and alone.source_id == {"c4"}
    assert alone.target_id == set()
    [missing] = store.match("nobody", crm, [erp], r_all)
    assert missing.cluster is None and missing.source_id == set() == missing.target_id


def test_validate_ids(store: MatchboxPostgres, linked: dict) -> None:
    assert store.validate_ids([linked["acme"], linked["lc"]["c4"]])
    with pytest.raises(MatchboxDataNotFound, match="1 of 2"):
        store.validate_ids([linked["acme"], 42])


def test_countables(store: MatchboxPostgres, linked: dict) -> None:
    assert store.sources.count() >= 2 and store.source_steps.count() >= 2
    assert "/".join([linked["crm"].collection, str(linked["crm"].run), "crm"]) in (
        store.sources.list_all()
    )
    assert store.models.count() >= 2 and store.resolvers.count() >= 2
    assert store.model_clusters.count() >= 2  # acme and beta
    assert store.all_clusters.count() >= store.source_clusters.count() + 2
    assert store.creates.count() >= 3  # r_crm: acme; r_all: beta (+ nothing else)
    assert store.merges.count() >= 4
    assert store.proposes.count() >= 3
