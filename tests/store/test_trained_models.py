"""Trained models: versions per (collection, model, config key), retire, permissions, snapshots."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from matchbox_dagster.common.dtos import Group, PermissionGrant, PermissionType, User
from matchbox_dagster.common.errors import (
    MatchboxCollectionNotFoundError,
    MatchboxInvalidData,
    MatchboxPermissionDenied,
    MatchboxRunNotFoundError,
)
from matchbox_dagster.common.reuse import TrainedModel
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.conftest import own_schema_store

KEY = "ab" * 16


def trained(
    collection: str, m: float = 0.9, key: str = KEY, run: int | None = None
) -> TrainedModel:
    """A trained model whose parameters hold ``m``."""
    return TrainedModel(
        collection=collection,
        model="splink",
        config_key=key,
        training_fingerprint=b"\x07" * 32,
        sketch=[3, 1, 2],
        params={"m": [m, 0.1], "u": [0.01], "lambda": 1e-4},
        trained_in_run=run,
    )


def test_versions_get_and_retire(store: MatchboxPostgres, collection: str, run: int) -> None:
    """Each new parameter set is a new version; the latest live one is returned."""
    assert store.get_trained_model(collection, "splink", KEY) is None
    assert store.put_trained_model(trained(collection, run=run)) == 1
    assert store.put_trained_model(trained(collection, run=run)) == 1  # identical: same version
    assert store.put_trained_model(trained(collection, 0.8)) == 2
    assert store.put_trained_model(trained(collection, 0.7, key="cd" * 16)) == 1  # other key
    got = store.get_trained_model(collection, "splink", KEY)
    assert got is not None
    assert (got.version, got.params["m"], got.sketch, got.retired) == (
        2,
        [0.8, 0.1],
        [3, 1, 2],
        False,
    )
    assert got.training_fingerprint == b"\x07" * 32 and got.created_at is not None
    assert got.trained_in_run is None
    assert store.retire_trained_models(collection, "splink") == 3
    assert store.retire_trained_models(collection, "splink") == 0
    assert store.get_trained_model(collection, "splink", KEY) is None
    # Retraining after a retire: a new version, numbered after the retired ones.
    assert store.put_trained_model(trained(collection, 0.9, run=run)) == 3
    latest = store.get_trained_model(collection, "splink", KEY)
    assert latest is not None and (latest.version, latest.trained_in_run) == (3, run)


def test_refusals(store: MatchboxPostgres, collection: str, run: int) -> None:
    """Unknown collection or run, parameters that are not JSON: typed errors, nothing stored."""
    with pytest.raises(MatchboxCollectionNotFoundError):
        store.put_trained_model(trained("no_such_collection"))
    other = f"{collection}_b"
    store.create_collection(other)
    with pytest.raises(MatchboxRunNotFoundError):
        store.put_trained_model(trained(other, run=run))  # a run of another collection
    nan = trained(collection).model_copy(update={"params": {"m": float("nan")}})
    with pytest.raises(MatchboxInvalidData, match="not plain JSON"):
        store.put_trained_model(nan)
    with pytest.raises(ValueError):
        TrainedModel(
            collection=collection,
            model="splink",
            config_key="NOT HEX",
            training_fingerprint=b"",
            params={},
        )
    assert store.get_trained_model(collection, "splink", KEY) is None
    assert store.get_trained_model(other, "splink", KEY) is None


def test_deleting_the_run_or_collection(store: MatchboxPostgres, collection: str, run: int) -> None:
    """A deleted run leaves the version without its run; a deleted collection takes them all."""
    store.put_trained_model(trained(collection, run=run))
    store.delete_run(collection, run, certain=True)
    got = store.get_trained_model(collection, "splink", KEY)
    assert got is not None and got.trained_in_run is None and got.version == 1
    store.delete_collection(collection, certain=True)
    store.create_collection(collection)
    assert store.get_trained_model(collection, "splink", KEY) is None


@pytest.fixture(scope="module")
def guarded(settings: MatchboxSettings) -> Iterator[MatchboxPostgres]:
    """Authorisation on: a reader and a writer of ``alpha``, and an outsider."""
    with own_schema_store(settings.model_copy(update={"authorisation": True})) as store:
        store.login(User(user_name="admin"))
        admin = store.as_user("admin")
        admin.create_group(Group(name="readers", members=[User(user_name="reader")]))
        admin.create_group(Group(name="writers", members=[User(user_name="writer")]))
        admin.login(User(user_name="outsider"))
        admin.create_collection(
            "alpha",
            [
                PermissionGrant(group_name="readers", permission=PermissionType.READ),
                PermissionGrant(group_name="writers", permission=PermissionType.WRITE),
            ],
        )
        yield store


def test_permissions(guarded: MatchboxPostgres) -> None:
    """Put and retire need WRITE on the collection; get needs READ."""
    reader, writer = guarded.as_user("reader"), guarded.as_user("writer")
    outsider = guarded.as_user("outsider")
    with pytest.raises(MatchboxPermissionDenied):
        reader.put_trained_model(trained("alpha"))
    with pytest.raises(MatchboxPermissionDenied):
        guarded.put_trained_model(trained("alpha"))  # the anonymous user
    assert writer.put_trained_model(trained("alpha")) == 1
    with pytest.raises(MatchboxPermissionDenied):
        outsider.get_trained_model("alpha", "splink", KEY)
    got = reader.get_trained_model("alpha", "splink", KEY)
    assert got is not None and got.version == 1
    with pytest.raises(MatchboxPermissionDenied):
        reader.retire_trained_models("alpha", "splink")
    assert writer.retire_trained_models("alpha", "splink") == 1


def test_snapshot_round_trip(settings: MatchboxSettings, tmp_path) -> None:
    """Trained models are dumped and restored with the store (JSON and Parquet)."""
    with own_schema_store(settings) as store:
        store.create_collection("alpha")
        run = store.create_run("alpha").run_id
        store.put_trained_model(trained("alpha", run=run))
        store.put_trained_model(trained("alpha", 0.5, run=run))
        store.retire_trained_models("alpha", "splink")
        store.put_trained_model(trained("alpha", 0.25))
        expected = store.get_trained_model("alpha", "splink", KEY)
        snapshot = store.dump()
        store.dump_to(tmp_path / "snap")
        for restore in (
            lambda: store.restore(snapshot),
            lambda: store.restore_from(tmp_path / "snap"),
        ):
            store.clear(certain=True)
            assert store.list_collections() == []
            restore()
            assert store.get_trained_model("alpha", "splink", KEY) == expected
            assert store.put_trained_model(trained("alpha", 0.125)) == 4
