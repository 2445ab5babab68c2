"""Pooled connections never carry one call's transaction settings into the next call.

``query`` reads in a ``REPEATABLE READ, READ ONLY`` transaction; ADBC 1.11 ended it with
``ROLLBACK AND CHAIN``, so the pooled connection's next transaction was read only too and the
next insert failed. The pool must not rely on the driver's rollback to reset a connection.
"""

from __future__ import annotations

from matchbox_dagster.common.settings import MatchboxSettings
from tests.conftest import own_schema_store
from tests.factories import add_source, ids_of

CHARACTERISTICS = (
    "SELECT current_setting('transaction_read_only'), current_setting('transaction_isolation')"
)


def test_insert_after_a_read_only_query_on_the_same_pooled_connection(
    settings: MatchboxSettings,
) -> None:
    with own_schema_store(settings) as store:
        store.create_collection("pool")
        run = store.create_run("pool").run_id
        first = add_source(store, "pool", run, "first", {"a": ["1"], "b": ["2"]})
        assert set(ids_of(store, first, None)) == {"1", "2"}  # a read-only snapshot
        second = add_source(store, "pool", run, "second", {"c": ["3"]})  # the next writer
        assert set(ids_of(store, second, None)) == {"3"}


def test_transaction_settings_left_on_a_connection_do_not_reach_the_next_call(
    settings: MatchboxSettings,
) -> None:
    """A connection that would start its next transaction read only is not handed out again
    (here the setting is left at session level, as a chaining rollback leaves it)."""
    with own_schema_store(settings) as store:
        store.create_collection("pool")
        run = store.create_run("pool").run_id
        for level in ("SERIALIZABLE, READ ONLY", "REPEATABLE READ"):
            with store.db.adbc() as conn, conn.cursor() as cur:
                cur.execute(f"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {level}")
                conn.commit()
            with store.db.adbc() as conn, conn.cursor() as cur:
                cur.execute(CHARACTERISTICS)
                assert cur.fetchall() == [("off", "read committed")]
        path = add_source(store, "pool", run, "after", {"a": ["1"]})
        assert set(ids_of(store, path, None)) == {"1"}
