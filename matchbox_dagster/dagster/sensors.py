"""The promotion sensor: a run becomes the collection's default once its final checks pass.

It walks new materialisations of the collection's final resolver (oldest first, at most
``batch`` per tick) and, for each, reads the latest execution of every blocking check of that
resolver for the same partition:

* all passed in the same Dagster run as the materialisation → the store run is made immutable
  and default (unless a newer run already is default: rollbacks are explicit, see
  :func:`promote_run`);
* any failed → the current default stays; the log names the failed checks;
* some not finished while the Dagster run is still going → stop and look again next tick.

The cursor (:class:`PromotionCursor`, JSON) remembers the last materialisation handled and the
partitions promoted, so each materialisation is decided exactly once; an unreadable cursor
restarts from the beginning, which is safe because promotion is idempotent.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import dagster as dg

from matchbox_dagster.common.dtos import Run
from matchbox_dagster.common.errors import MatchboxNotFoundError
from matchbox_dagster.dagster.partitions import dagster_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.base import MatchboxDBAdapter


@dataclass
class PromotionCursor:
    """What the promotion sensor has handled."""

    after_storage_id: int = 0
    promoted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialise (lists bounded to the last 100 entries)."""
        return json.dumps(
            {**asdict(self), "promoted": self.promoted[-100:], "rejected": self.rejected[-100:]}
        )

    @classmethod
    def from_json(cls, text: str | None) -> "PromotionCursor":
        """Parse a cursor; anything unreadable starts afresh."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                after_storage_id=int(data["after_storage_id"]),
                promoted=[str(x) for x in data.get("promoted", [])],
                rejected=[str(x) for x in data.get("rejected", [])],
            )
        except (ValueError, KeyError, TypeError):
            return cls()


def check_results(
    instance: dg.DagsterInstance, run_id: str, asset_key: dg.AssetKey
) -> dict[str, tuple[bool, str | None]]:
    """``{check name: (passed, description)}`` of the checks on ``asset_key`` in a Dagster run.

    Matchbox checks run in the asset's own step, so the run that materialised a partition is the
    run whose check evaluations count for it (public event-log API, no storage internals).
    """
    found: dict[str, tuple[bool, str | None]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        if data is None or getattr(data, "asset_key", None) != asset_key:
            continue
        description = getattr(data, "description", None)
        found[data.check_name] = (bool(data.passed), description)
    return found


def promote_run(store: MatchboxDBAdapter, collection: str, run_id: int) -> Run:
    """Make ``run_id`` immutable and the collection's default (also the way to roll back)."""
    run = store.get_run(collection, run_id)
    if run.is_mutable:
        store.set_run_mutable(collection, run_id, False)
    return store.set_run_default(collection, run_id, True)


def promotion_sensor_name(collection: str) -> str:
    """Default name of a collection's promotion sensor."""
    return f"{dagster_name(collection)}_promotion"


def build_promotion_sensor(
    *,
    collection: str,
    resolver_key: dg.AssetKey,
    check_names: Sequence[str],
    name: str | None = None,
    minimum_interval_seconds: int = 30,
    batch: int = 20,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor promoting runs of ``collection`` whose ``resolver_key`` checks all passed."""
    if not check_names:
        raise dg.DagsterInvalidDefinitionError(
            "Argument 'check_names': promotion needs at least one blocking check to gate on."
        )

    @dg.sensor(
        name=name or promotion_sensor_name(collection),
        minimum_interval_seconds=minimum_interval_seconds,
        asset_selection=None,
        default_status=default_status,
        description=f"Promotes a run of {collection!r} to default when every blocking check of "
        f"{resolver_key.to_user_string()} passed: {', '.join(check_names)}.",
    )
    def _promotion(
        context: dg.SensorEvaluationContext, matchbox: MatchboxResource
    ) -> dg.SkipReason:
        cursor = PromotionCursor.from_json(context.cursor)
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=resolver_key, after_storage_id=cursor.after_storage_id),
            limit=batch,
            ascending=True,
        ).records
        if not records:
            return dg.SkipReason(f"No new materialisation of {resolver_key.to_user_string()}.")
        store = matchbox.get_store()
        decided = []
        # Only the latest materialisation of each partition in this batch is decided.
        latest = {r.partition_key: r.storage_id for r in records}
        for record in records:
            partition = record.partition_key
            if partition is None or latest[partition] != record.storage_id:
                cursor.after_storage_id = record.storage_id
                continue
            results = check_results(context.instance, record.run_id, resolver_key)
            pending = [n for n in check_names if n not in results]
            dagster_run = context.instance.get_run_by_id(record.run_id)
            if pending and dagster_run is not None and not dagster_run.is_finished:
                context.log.info(
                    "Partition %s: waiting for check(s) %s of run %s",
                    partition,
                    pending,
                    record.run_id,
                )
                break
            failed = [
                f"{n} ({results[n][1] or 'failed'})"
                for n in check_names
                if n in results and not results[n][0]
            ] + [f"{n} (did not run)" for n in pending]
            cursor.after_storage_id = record.storage_id
            if failed:
                cursor.rejected.append(partition)
                context.log.warning(
                    "Not promoting %s partition %s: blocking check(s) failed: %s. The default "
                    "run is unchanged.",
                    collection,
                    partition,
                    "; ".join(failed),
                )
                decided.append(f"{partition}: rejected")
                continue
            try:
                run = store.run_for_label(collection, partition, create=False)
                current = store.get_collection(collection).default_run
            except MatchboxNotFoundError as exc:
                context.log.warning("Partition %s has no store run: %s", partition, exc)
                continue
            if current == run.run_id:
                decided.append(f"{partition}: already default")
                continue
            if current is not None and current > run.run_id:
                context.log.info(
                    "Not promoting %s run %s (partition %s): newer run %s is the default. Roll "
                    "back explicitly with `matchbox-dagster promote`.",
                    collection,
                    run.run_id,
                    partition,
                    current,
                )
                decided.append(f"{partition}: older than default")
                continue
            promote_run(store, collection, run.run_id)
            cursor.promoted.append(partition)
            context.log.info(
                "Promoted %s run %s (partition %s) to default: checks %s passed.",
                collection,
                run.run_id,
                partition,
                ", ".join(check_names),
            )
            decided.append(f"{partition}: promoted run {run.run_id}")
        context.update_cursor(cursor.to_json())
        if not decided:
            return dg.SkipReason("Waiting for checks to finish.")
        return dg.SkipReason("; ".join(decided))

    return _promotion
