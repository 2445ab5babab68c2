"""Issue 15 (trust): no silent wrong answer from the store.

Items 1 (reads racing a delete; the default run), 3 (nested resolvers), 4 (``match``'s checks),
7 (judgements of unreadable records), 14 (run-state errors), 15 (step paths with a missing
collection or run), 16 (``combine_type``) and 17 (NUL in a key).
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from matchbox_dagster.common.arrow import ResolverClusters, SourceHashes
from matchbox_dagster.common.dtos import (
    Group,
    Judgement,
    PermissionType,
    QueryConfig,
    ResolverConfig,
    Step,
    StepPath,
    StepType,
    User,
)
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxInputNotComplete,
    MatchboxInvalidData,
    MatchboxPermissionDenied,
    MatchboxRunNotWriteable,
    MatchboxRunStateError,
    MatchboxStepDeletedWhileReading,
    MatchboxStepInvalidData,
    MatchboxStepNotFoundError,
    MatchboxStepNotQueriable,
)
from matchbox_dagster.common.fingerprint import cluster_id
from matchbox_dagster.methods.resolvers import ConnectedComponents
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.factories import (
    add_model,
    add_resolver,
    add_source,
    edges_table,
    hashes_table,
    leaf_of,
    model_step,
    resolver_step,
    source_config,
    store_state,
)
from tests.store.conftest_gov import *  # noqa: F403
from tests.store.conftest_gov import Guarded, populate

# --- item 1: a read racing a delete ---------------------------------------------------------

RACE_KEYS = 200_000
RACE_TRIALS = 20


def _race_run(store: MatchboxPostgres, collection: str) -> tuple[int, StepPath, StepPath]:
    """A run with a source of RACE_KEYS keys and a resolver pairing consecutive leaves."""
    run = store.create_run(collection).run_id
    table = pa.table(
        {
            "hash": pa.array(
                [i.to_bytes(8, "big") + b"race-row" for i in range(RACE_KEYS)],
                type=pa.large_binary(),
            ),
            "keys": pa.array(
                [[f"k{i}"] for i in range(RACE_KEYS)], pa.large_list(pa.large_string())
            ),
        }
    )
    source = StepPath(collection=collection, run=run, name="src")
    hashes = SourceHashes(table)
    store.create_step(
        Step(step_type=StepType.SOURCE, fingerprint=hashes.fingerprint, config=source_config()),
        source,
    )
    store.insert_source_data(source, hashes)
    leaves = hashes.leaf_ids.to_pylist()
    edges = [(leaves[i], leaves[i + 1], 0.9) for i in range(0, RACE_KEYS - 1, 2)]
    add_model(store, collection, run, "m", edges, QueryConfig(sources=("src",)))
    clusters = pa.table(
        {
            "parent_id": pa.array([i // 2 for i in range(RACE_KEYS)], pa.int64()),
            "child_id": pa.array(leaves, pa.int64()),
        }
    )
    resolver = StepPath(collection=collection, run=run, name="r")
    store.create_step(resolver_step(clusters, ("m",)), resolver)
    store.insert_resolver_data(resolver, clusters)
    return run, source, resolver


def _by_key(table: pa.Table) -> pa.Table:
    return table.sort_by("key")


def test_reads_racing_delete_run_are_whole_or_typed(
    store: MatchboxPostgres, collection: str
) -> None:
    """Reads while delete_run removes their run: the snapshot's whole data or the typed error.

    Never an empty (or partial) table for a step that had data, never a database error.
    """
    rng = random.Random(15)
    expected: dict[str, pa.Table] = {}
    outcomes: list[str] = []
    bad: list[str] = []
    for trial in range(RACE_TRIALS):
        run, source, resolver = _race_run(store, collection)
        reads = {
            "query": lambda s=source, r=resolver: _by_key(store.query(s, r)),
            "source": lambda s=source: store.get_source_data(s).sort_by("key"),
            "resolver": lambda r=resolver: store.get_resolver_data(r).sort_by("child_id"),
        }
        if not expected:
            expected = {name: read() for name, read in reads.items()}
            assert expected["query"].num_rows == RACE_KEYS
            assert pc.count_distinct(expected["query"].column("id")).as_py() == RACE_KEYS // 2
        deleted = threading.Event()

        def reader(
            name: str,
            read: object,
            deleted: threading.Event = deleted,
            trial: int = trial,
            expected: dict[str, pa.Table] = expected,
        ) -> None:
            for _ in range(50):  # bounded: stops at the typed error, or once the run is gone
                try:
                    table = read()  # type: ignore[operator]
                except MatchboxStepNotFoundError as exc:  # includes DeletedWhileReading
                    outcomes.append(type(exc).__name__)
                    return
                except Exception as exc:
                    bad.append(f"trial {trial} {name}: {type(exc).__name__}: {exc}")
                    return
                if not table.equals(expected[name]):
                    bad.append(f"trial {trial} {name}: {table.num_rows} rows, not the data")
                    return
                outcomes.append("whole")
                if deleted.is_set():
                    return

        threads = [
            threading.Thread(target=reader, args=(name, read))
            for name, read in list(reads.items()) * 2
        ]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.0, 0.4))
        store.delete_run(collection, run, certain=True)
        deleted.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
    assert bad == []
    assert "whole" in outcomes
    assert any(o != "whole" for o in outcomes)


def test_deleted_partition_is_never_an_empty_read(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A step the read's snapshot shows with data, whose partition is gone: the typed error."""
    source = add_source(store, collection, run, "crm", {"a": ["1"], "b": ["2"]})
    with store.db.adbc() as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        from matchbox_dagster.store.postgres.partitions import adbc_step, read_partition

        step = adbc_step(cur, source, StepType.SOURCE, lock=False)  # the snapshot starts here
        store.delete_run(collection, run, certain=True)  # commits in another session
        with pytest.raises(MatchboxStepDeletedWhileReading, match="deleted or replaced"):
            read_partition(cur, store.db.schema, step, "SELECT * FROM {part}", pa.schema([]))


def test_the_default_run_cannot_be_deleted(store: MatchboxPostgres, collection: str) -> None:
    """Deleting the default run is refused until another run is default (or none is)."""
    first = store.create_run(collection).run_id
    add_source(store, collection, first, "crm", {"a": ["1"]})
    store.set_run_mutable(collection, first, False)
    store.set_run_default(collection, first, True)
    with pytest.raises(MatchboxRunStateError, match="default run") as refused:
        store.delete_run(collection, first, certain=True)
    assert isinstance(refused.value, ValueError)
    assert "set_run_default" in str(refused.value)
    assert store.get_collection(collection).default_run == first  # nothing changed
    second = store.create_run(collection).run_id
    store.set_run_mutable(collection, second, False)
    store.set_run_default(collection, second, True)
    store.delete_run(collection, first, certain=True)  # no longer the default
    store.set_run_default(collection, second, False)
    store.delete_run(collection, second, certain=True)  # no default at all: allowed
    assert store.get_collection(collection).runs == []


# --- item 3: nested resolvers ---------------------------------------------------------------


def test_uploads_refused_while_an_input_is_not_complete(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A model reading through a READY resolver, a resolver over a READY model: refused."""
    crm = add_source(store, collection, run, "crm", {"a": ["1"], "b": ["2"], "c": ["3"]})
    lc = leaf_of(store, crm)
    add_model(
        store, collection, run, "dedupe", [(lc["1"], lc["2"], 0.9)], QueryConfig(sources=("crm",))
    )
    declared = pa.table(
        {
            "parent_id": pa.array([0, 0], pa.int64()),
            "child_id": pa.array([lc["1"], lc["2"]], pa.int64()),
        }
    )
    store.create_step(
        resolver_step(declared, ("dedupe",)), StepPath(collection=collection, run=run, name="r1")
    )
    edges = edges_table([(lc["3"], cluster_id([lc["1"], lc["2"]]), 0.8)])
    through = QueryConfig(sources=("crm",), resolver="r1")
    path = StepPath(collection=collection, run=run, name="m2")
    store.create_step(model_step(edges, through), path)
    before = store_state(store)
    with pytest.raises(MatchboxInputNotComplete, match="'r1'") as refused:
        store.insert_model_data(path, edges)
    assert isinstance(refused.value, MatchboxStepNotQueriable)
    assert store_state(store) == before
    # write_step too: a model (new step) and a resolver whose input model has no data
    other = StepPath(collection=collection, run=run, name="m3")
    from matchbox_dagster.common.arrow import ModelResults

    with pytest.raises(MatchboxInputNotComplete, match="'r1'"):
        store.write_step(other, model_step(edges, through), ModelResults(edges))
    resolver = StepPath(collection=collection, run=run, name="r2")
    clusters = pa.table(
        {
            "parent_id": pa.array([0, 0], pa.int64()),
            "child_id": pa.array([lc["3"], lc["1"]], pa.int64()),
        }
    )
    with pytest.raises(MatchboxInputNotComplete, match="'m2'"):
        store.write_step(resolver, resolver_step(clusters, ("m2",)), ResolverClusters(clusters))
    assert store_state(store) == before
    store.insert_resolver_data(StepPath(collection=collection, run=run, name="r1"), declared)
    store.insert_model_data(path, edges)  # now accepted


def _cc(store: MatchboxPostgres, collection: str, run: int, name: str, models: dict) -> StepPath:
    """Resolve ``models`` ({name: edges}) with the project's ConnectedComponents and upload."""
    clusters = ConnectedComponents().resolve({m: edges_table(e) for m, e in models.items()})
    path = StepPath(collection=collection, run=run, name=name)
    step = Step(
        step_type=StepType.RESOLVER,
        fingerprint=clusters.fingerprint,
        config=ResolverConfig(inputs=tuple(models), resolver_settings={"thresholds": {}}),
    )
    store.create_step(step, path)
    store.insert_resolver_data(path, clusters)
    return path


def _pairs(ids: list[int], picks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = set()
    for i, j in picks:
        a, b = ids[i % len(ids)], ids[j % len(ids)]
        if a != b:
            out.add((min(a, b), max(a, b)))
    return sorted(out)


def _check_content_addressed(
    store: MatchboxPostgres, sources: list[StepPath], resolver: StepPath
) -> None:
    grouped: dict[int, set[int]] = {}
    for source in sources:
        table = store.query(source, resolver, return_leaf_id=True)
        for i, leaf in zip(
            table.column("id").to_pylist(), table.column("leaf_id").to_pylist(), strict=True
        ):
            grouped.setdefault(i, set()).add(leaf)
    for i, leaves in grouped.items():
        assert i == cluster_id(leaves), f"{resolver.name}: id {i} groups {sorted(leaves)}"


rows = st.dictionaries(
    keys=st.text(alphabet="pqrs", min_size=1, max_size=3),
    values=st.integers(1, 2),  # keys per row
    min_size=2,
    max_size=8,
)


def _keyed(prefix: str, drawn: dict[str, int]) -> dict[str, list[str]]:
    """Rows with ``n`` distinct keys each."""
    return {
        prefix + content: [f"{prefix}{i}_{j}" for j in range(n)]
        for i, (content, n) in enumerate(drawn.items())
    }


picks = st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15)), max_size=8)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows_a=rows, rows_b=rows, m1=picks, m2=picks, m3=picks, m4=picks)
def test_every_query_id_is_the_content_address_of_its_leaves(
    store: MatchboxPostgres,
    rows_a: dict[str, int],
    rows_b: dict[str, int],
    m1: list[tuple[int, int]],
    m2: list[tuple[int, int]],
    m3: list[tuple[int, int]],
    m4: list[tuple[int, int]],
) -> None:
    """Random nested graphs, resolved by ConnectedComponents: sources a, b → m1 (dedupe a) →
    r1 → m2 (r1's entities linked to b) and m3 (a's leaves again) → r2, which mixes a
    leaf-level model with one read through r1 → m4 (through r2) → r3. Under every resolver,
    every id query returns is the content address of exactly the leaves it groups (or the
    upload is refused as overlapping)."""
    collection = f"c_{uuid.uuid4().hex[:10]}"
    store.create_collection(collection)
    run = store.create_run(collection).run_id
    a = add_source(store, collection, run, "a", _keyed("", rows_a))
    b = add_source(store, collection, run, "b", _keyed("b", rows_b))
    la = sorted(set(leaf_of(store, a).values()))
    lb = sorted(set(leaf_of(store, b).values()))
    e1 = [(x, y, 0.9) for x, y in _pairs(la, m1)]
    add_model(store, collection, run, "m1", e1, QueryConfig(sources=("a",)))
    r1 = _cc(store, collection, run, "r1", {"m1": e1})
    _check_content_addressed(store, [a], r1)
    through_r1 = sorted(set(store.query(a, r1).column("id").to_pylist()))
    e2 = [(through_r1[i % len(through_r1)], lb[j % len(lb)], 0.8) for i, j in m2]
    e2 = list({(x, y): (x, y, s) for x, y, s in e2}.values())
    add_model(
        store, collection, run, "m2", e2,
        QueryConfig(sources=("a",), resolver="r1"), QueryConfig(sources=("b",)),
    )  # fmt: skip
    e3 = [(x, y, 0.7) for x, y in _pairs(la, m3)]
    add_model(store, collection, run, "m3", e3, QueryConfig(sources=("a",)))
    try:
        r2 = _cc(store, collection, run, "r2", {"m2": e2, "m3": e3})
    except MatchboxStepInvalidData as exc:
        assert "overlap" in str(exc)
        return
    _check_content_addressed(store, [a, b], r2)
    through_r2 = sorted(set(store.query(a, r2).column("id").to_pylist()))
    e4 = [(x, y, 0.6) for x, y in _pairs(through_r2, m4)]
    add_model(store, collection, run, "m4", e4, QueryConfig(sources=("a",), resolver="r2"))
    try:
        r3 = _cc(store, collection, run, "r3", {"m4": e4, "m3": e3})
    except MatchboxStepInvalidData as exc:
        assert "overlap" in str(exc)
        return
    _check_content_addressed(store, [a, b], r3)


def test_a_partly_claimed_ancestor_cluster_is_readdressed(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """r1 groups {1, 2, 3}; r2 takes 1 with 4: the rest, {2, 3}, gets its own address."""
    src = add_source(store, collection, run, "a", {"w": ["1"], "x": ["2"], "y": ["3"], "z": ["4"]})
    lv = leaf_of(store, src)
    e1 = [(lv["1"], lv["2"], 0.9), (lv["2"], lv["3"], 0.9)]
    add_model(store, collection, run, "m1", e1, QueryConfig(sources=("a",)))
    r1 = _cc(store, collection, run, "r1", {"m1": e1})
    e3 = [(lv["1"], lv["4"], 0.9)]
    add_model(store, collection, run, "m3", e3, QueryConfig(sources=("a",)))
    add_model(store, collection, run, "m2", [], QueryConfig(sources=("a",), resolver="r1"))
    r2 = _cc(store, collection, run, "r2", {"m2": [], "m3": e3})
    ids = dict(
        zip(*[store.query(src, r2).column(c).to_pylist() for c in ("key", "id")], strict=True)
    )
    assert ids["1"] == ids["4"] == cluster_id([lv["1"], lv["4"]])
    assert ids["2"] == ids["3"] == cluster_id([lv["2"], lv["3"]])
    assert ids["2"] != cluster_id([lv["1"], lv["2"], lv["3"]])  # r1's id, for r1's content
    assert set(store.query(src, r1).column("id").to_pylist()) == {
        cluster_id([lv["1"], lv["2"], lv["3"]]),
        lv["4"],
    }


# --- item 4: match checks run and lineage ---------------------------------------------------


def test_match_refuses_other_runs_and_sources_outside_the_lineage(
    store: MatchboxPostgres, collection: str
) -> None:
    """As query(): the source and targets must be of the resolver's run and in its lineage."""
    run1 = store.create_run(collection).run_id
    run2 = store.create_run(collection).run_id
    paths = {}
    for run in (run1, run2):
        crm = add_source(store, collection, run, "crm", {"acme": ["c1"], "acme ltd": ["c2"]})
        add_source(store, collection, run, "other", {"zeta": ["z1"]})
        lc = leaf_of(store, crm)
        add_model(
            store, collection, run, "m", [(lc["c1"], lc["c2"], 0.9)], QueryConfig(sources=("crm",))
        )
        paths[run] = add_resolver(store, collection, run, "r", [[lc["c1"], lc["c2"]]], ("m",))
    crm1 = StepPath(collection=collection, run=run1, name="crm")
    crm2 = StepPath(collection=collection, run=run2, name="crm")
    other1 = StepPath(collection=collection, run=run1, name="other")
    found = store.match("c1", crm1, [crm1], paths[run1])
    assert found[0].target_id == {"c1", "c2"}
    with pytest.raises(MatchboxStepInvalidData, match="another run"):
        store.match("c1", crm2, [crm2], paths[run1])
    with pytest.raises(MatchboxStepInvalidData, match="another run"):
        store.match("c1", crm1, [crm2], paths[run1])
    with pytest.raises(MatchboxStepInvalidData, match="does not descend"):
        store.match("z1", other1, [crm1], paths[run1])
    with pytest.raises(MatchboxStepInvalidData, match="does not descend"):
        store.match("c1", crm1, [other1], paths[run1])


# --- item 7: judgements are no membership oracle --------------------------------------------


def test_judgements_only_of_readable_leaves_and_counted_for_readers(guarded: Guarded) -> None:
    """A user without READ learns nothing from a judgement, and their judgements do not count."""
    data = populate(guarded.open)
    guarded.open.login(User(user_name="carol"))  # public only: no READ on companies
    lc = data.lc
    carol = guarded.store.as_user("carol")
    with pytest.raises(MatchboxDataNotFound) as unreadable:
        carol.insert_judgement("carol", Judgement(shown=[lc["c3"]], endorsed=[[lc["c3"]]]))
    absent_id = 4242
    with pytest.raises(MatchboxDataNotFound) as absent:
        carol.insert_judgement("carol", Judgement(shown=[absent_id], endorsed=[[absent_id]]))
    assert str(unreadable.value).replace(str(lc["c3"]), "ID") == str(absent.value).replace(
        str(absent_id), "ID"
    )
    # bob reads companies: he may judge its leaves
    guarded.store.as_user("bob").insert_judgement(
        "bob", Judgement(shown=[lc["c3"], lc["c4"]], endorsed=[[lc["c3"]], [lc["c4"]]])
    )
    # dave judges while he may read the collection, then loses READ: his judgement stays,
    # but an evaluation of the collection no longer counts it
    guarded.open.create_group(Group(name="auditors", members=[User(user_name="dave")]))
    guarded.open.grant_permission("auditors", PermissionType.READ, "companies")
    guarded.store.as_user("dave").insert_judgement(
        "dave", Judgement(shown=[lc["c1"], lc["c4"]], endorsed=[[lc["c1"], lc["c4"]]])
    )
    guarded.open.revoke_permission("auditors", PermissionType.READ, "companies")
    everyone, _ = guarded.store.as_user("alice").get_judgements()
    assert "dave" in everyone.column("user_name").to_pylist()
    judgements, expansion = guarded.store.as_user("bob").get_collection_judgements("companies")
    users = set(judgements.column("user_name").to_pylist())
    assert users == {"alice", "bob"}
    roots = set(expansion.column("root").to_pylist())
    assert roots >= set(judgements.column("shown").to_pylist())
    assert cluster_id([lc["c1"], lc["c4"]]) not in set(judgements.column("shown").to_pylist())
    with pytest.raises(MatchboxPermissionDenied, match="read permission"):
        carol.get_collection_judgements("companies")


# --- item 14: run-state errors --------------------------------------------------------------


def test_run_state_errors_say_what_to_do_and_are_value_errors(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """A mutable run cannot be the default; the default cannot be made mutable."""
    with pytest.raises(MatchboxRunStateError) as mutable:
        store.set_run_default(collection, run, True)
    message = str(mutable.value)
    assert isinstance(mutable.value, ValueError)
    assert isinstance(mutable.value, MatchboxRunNotWriteable)
    assert "is mutable" in message and "set_run_mutable(..., mutable=False)" in message
    assert "immutable, so" not in message and "mutable=True" not in message
    store.set_run_mutable(collection, run, False)
    store.set_run_default(collection, run, True)
    with pytest.raises(ValueError, match="default run cannot be mutable") as default:
        store.set_run_mutable(collection, run, True)
    assert "mutable=True" not in str(default.value)


# --- item 15: step paths with a missing collection or run -----------------------------------


STEP_CALLS = {
    "get_step": lambda s, p: s.get_step(p),
    "get_step_stage": lambda s, p: s.get_step_stage(p),
    "step_statistics": lambda s, p: s.step_statistics(p),
    "get_source_data": lambda s, p: s.get_source_data(p),
    "query": lambda s, p: s.query(p),
    "sample_for_eval": lambda s, p: s.sample_for_eval(5, p, "_public"),
    "lock_step_data": lambda s, p: s.lock_step_data(p),
    "delete_step": lambda s, p: s.delete_step(p, certain=True),
    "update_step": lambda s, p: s.update_step(
        Step(step_type=StepType.SOURCE, fingerprint=b"\0" * 32, config=source_config()), p
    ),
}


@pytest.mark.parametrize("call", sorted(STEP_CALLS))
def test_a_missing_collection_or_run_is_step_not_found(
    store: MatchboxPostgres, collection: str, run: int, call: str
) -> None:
    """Calls addressed by a step path raise the step-not-found error, naming what is missing."""
    guarded = store.as_user(None)
    for path, what in (
        (StepPath(collection="no_such_collection", run=run, name="crm"), "collection"),
        (StepPath(collection=collection, run=run + 1000, name="crm"), f"run {run + 1000}"),
        (StepPath(collection=collection, run=run, name="crm"), "no step 'crm'"),
    ):
        with pytest.raises(MatchboxStepNotFoundError, match=what):
            STEP_CALLS[call](guarded, path)


def test_a_missing_collection_is_step_not_found_with_authorisation_on(
    guarded: Guarded,
) -> None:
    """The permission check of a step-path call gives the same error for a missing collection."""
    populate(guarded.open)
    alice = guarded.store.as_user("alice")
    with pytest.raises(MatchboxStepNotFoundError, match="collection 'nowhere'"):
        alice.get_step(StepPath(collection="nowhere", run=1, name="crm"))


# --- item 16: combine_type ------------------------------------------------------------------


def test_combine_type_round_trips_and_unknown_values_are_refused(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """The contract's field is kept (concat, what model inputs do); others fail, never dropped."""
    crm = add_source(store, collection, run, "crm", {"a": ["1"], "b": ["2"]})
    lc = leaf_of(store, crm)
    query = QueryConfig(sources=("crm",), combine_type="concat")
    path = add_model(store, collection, run, "m", [(lc["1"], lc["2"], 0.5)], query)
    stored = store.get_step(path).config.left_query  # type: ignore[union-attr]
    assert stored == query and stored.combine_type == "concat"
    with pytest.raises(ValidationError, match="combine_type 'explode' is not supported"):
        QueryConfig(sources=("crm",), combine_type="explode")
    with pytest.raises(ValidationError, match="combine_types"):
        QueryConfig.model_validate({"sources": ["crm"], "combine_types": "concat"})


# --- item 17: NUL in a key ------------------------------------------------------------------


def test_a_nul_in_a_key_is_invalid_data_before_the_database(
    store: MatchboxPostgres, collection: str, run: int
) -> None:
    """Refused by the payload's validation (MatchboxInvalidData), the store unchanged."""
    table = hashes_table({"a": ["ok"], "b": ["bad\x00key", "fine"]})
    with pytest.raises(MatchboxInvalidData, match="1 key\\(s\\) with a NUL"):
        SourceHashes(table)
    path = StepPath(collection=collection, run=run, name="crm")
    before = store_state(store)
    with pytest.raises(MatchboxInvalidData, match="NUL"):
        store.insert_source_data(path, table)
    with pytest.raises(MatchboxInvalidData, match="NUL"):
        store.write_step(
            path,
            Step(step_type=StepType.SOURCE, fingerprint=b"\0" * 32, config=source_config()),
            SourceHashes(table),
        )
    assert store_state(store) == before
    with pytest.raises(MatchboxInvalidData, match="NUL"):
        store.match("a\x00b", path, [path], path)


@pytest.mark.parametrize("call", ["match", "sample_for_eval"])
def test_shared_table_reads_racing_delete_run_are_typed(
    store: MatchboxPostgres, collection: str, run: int, call: str
) -> None:
    """match() and sample_for_eval() while their run's deletion commits: the typed error,
    never an empty answer."""
    import psycopg

    crm = add_source(store, collection, run, "crm", {"acme": ["c1"], "acme ltd": ["c2"]})
    lc = leaf_of(store, crm)
    add_model(
        store, collection, run, "m", [(lc["c1"], lc["c2"], 0.9)], QueryConfig(sources=("crm",))
    )
    resolver = add_resolver(store, collection, run, "r", [[lc["c1"], lc["c2"]]], ("m",))
    assert store.match("c1", crm, [crm], resolver)[0].target_id == {"c1", "c2"}
    assert store.sample_for_eval(5, resolver, "_public").num_rows == 2
    results: list[object] = []

    def match() -> None:
        try:
            if call == "match":
                results.append(store.match("c1", crm, [crm], resolver))
            else:
                results.append(store.sample_for_eval(5, resolver, "_public"))
        except Exception as exc:  # recorded and checked below
            results.append(exc)

    with psycopg.connect(store.db.uri) as deleter:  # delete_run's statements, held open
        deleter.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(store.db.schema))
        )
        steps = deleter.execute("SELECT step_id FROM steps WHERE run_id = %s", (run,)).fetchall()
        from matchbox_dagster.store.postgres.data_refs import delete_step_rows

        delete_step_rows(psycopg.RawCursor(deleter), store.db.schema, [int(s[0]) for s in steps])
        deleter.execute("DELETE FROM runs WHERE run_id = %s", (run,))
        thread = threading.Thread(target=match)
        thread.start()
        time.sleep(1.0)  # match has found its steps and waits for their partitions
        deleter.commit()
    thread.join(timeout=60)
    assert len(results) == 1
    assert isinstance(results[0], MatchboxStepNotFoundError), results[0]
