"""Concurrent use of one store: first starts, promotions racing."""

from __future__ import annotations

import threading
import uuid

import psycopg

from matchbox_dagster.common.dtos import User
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from matchbox_dagster.store.postgres.migrate import HEAD, current_revision
from tests.conftest import drop_schema


def test_concurrent_first_starts_migrate_once(settings: MatchboxSettings) -> None:
    fresh = settings.model_copy(update={"postgres_schema": f"mbt_{uuid.uuid4().hex[:10]}"})
    stores: list[MatchboxPostgres] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(MatchboxPostgres(fresh))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert current_revision(stores[0].db.engine, fresh.postgres_schema) == HEAD
        assert {g.name for g in stores[0].list_groups()} == {"public", "admins"}
    finally:
        for store in stores:
            store.close()
        drop_schema(fresh.postgres_schema)


def test_racing_promotions_leave_exactly_one_default(
    store: MatchboxPostgres, collection: str
) -> None:
    runs = [store.create_run(collection).run_id for _ in range(4)]
    for run in runs:
        store.set_run_mutable(collection, run, False)
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def promote(run: int) -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                store.set_run_default(collection, run, True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(store.db.uri, options=f"-c search_path={store.db.schema}") as conn:
        defaults = conn.execute(
            "SELECT count(*) FROM runs r JOIN collections c USING (collection_id) "
            "WHERE c.name = %s AND r.is_default",
            (collection,),
        ).fetchone()[0]
    assert defaults == 1
    assert store.get_collection(collection).default_run in runs


def test_users_countable(store: MatchboxPostgres) -> None:
    before = store.users.count()
    store.login(User(user_name=f"u_{uuid.uuid4().hex[:8]}"))
    assert store.users.count() == before + 1
