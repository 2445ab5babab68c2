"""The promotion sensor: a run becomes the collection's default once its final checks pass.

It walks new materialisations of the collection's final resolver (oldest first, at most
``batch`` per tick) and, for the latest of each partition, reads every blocking check of that
resolver in the Dagster run that materialised it:

* all passed → the store run is made immutable and default, recording who (this sensor) and
  why (unless a newer run already is default: rollbacks are explicit, see :func:`promote_run`);
* any failed → the current default stays; the tick and the log name the failed checks;
* some not finished while the Dagster run is still going → the partition *waits* (kept in the
  cursor, looked at again each tick) and later partitions go on being decided;
* the Dagster run ended (failed, canceled — or marked failed by Dagster's run monitoring after
  its worker died) before its checks finished → skipped with the reason.

Each tick's summary (its ``SkipReason``, shown in the UI) says what was promoted, rejected,
skipped or is waiting, and why. A promotion is also shown in the Dagster UI: an observation of
the resolver's partition naming the default run (:func:`.lifecycle.mark_default`).

The cursor (:class:`PromotionCursor`, JSON) remembers the last materialisation handled, the
partitions promoted and rejected and those waiting, so each materialisation is decided exactly
once; an unreadable cursor restarts from the beginning, which is safe because promotion is
idempotent.
"""

import getpass
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import dagster as dg

from matchbox_dagster.common.dtos import Run
from matchbox_dagster.common.errors import MatchboxNotFoundError
from matchbox_dagster.common.runs import Promotion
from matchbox_dagster.dagster.lifecycle import mark_default
from matchbox_dagster.dagster.partitions import dagster_name, partitions_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.store.base import MatchboxDBAdapter


@dataclass
class PromotionCursor:
    """What the promotion sensor has handled."""

    after_storage_id: int = 0
    promoted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """Partition → the Dagster run whose checks are not finished yet."""

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
                waiting={str(k): str(v) for k, v in dict(data.get("waiting", {})).items()},
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


def promote_run(
    store: MatchboxDBAdapter,
    collection: str,
    run_id: int,
    promotion: Promotion | None = None,
    *,
    instance: dg.DagsterInstance | None = None,
    resolver_key: dg.AssetKey | None = None,
) -> Run:
    """Make ``run_id`` immutable and the collection's default (also the way to roll back).

    The store records ``promotion`` (who, why, forced) in the same transaction; by default the
    current OS user, unforced. With ``instance`` and ``resolver_key`` the Dagster UI is told too
    (:func:`.lifecycle.mark_default`). Whether the run *should* be promoted is the caller's
    decision (the sensor's checks, or the CLI's gate).
    """
    promotion = promotion or Promotion(promoted_by=current_user())
    run = store.promote_run(collection, run_id, promotion)
    if instance is not None and resolver_key is not None:
        label = store.run_labels(collection).get(run_id) or f"#{run_id}"
        known = instance.has_dynamic_partition(partitions_name(collection), label)
        mark_default(instance, resolver_key, label, run_id, promotion, partition=known)
    return run


def current_user() -> str:
    """The OS user running this process (who promotes from a shell)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return "unknown user"


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
        if not records and not cursor.waiting:
            return dg.SkipReason(f"No new materialisation of {resolver_key.to_user_string()}.")
        decider = _Decider(
            context=context,
            store=matchbox.get_store(),
            collection=collection,
            resolver_key=resolver_key,
            check_names=list(check_names),
            sensor_name=name or promotion_sensor_name(collection),
        )
        # Only the latest materialisation of each partition in this batch is decided; a new one
        # of a waiting partition replaces the wait.
        latest = {r.partition_key: r for r in records if r.partition_key is not None}
        for record in records:
            cursor.after_storage_id = max(cursor.after_storage_id, record.storage_id)
        pending = dict(cursor.waiting)
        pending.update({p: r.run_id for p, r in latest.items()})
        decided = []
        cursor.waiting = {}
        for partition, dagster_run_id in pending.items():
            outcome, text = decider.decide(partition, dagster_run_id)
            if outcome == "waiting":
                cursor.waiting[partition] = dagster_run_id
            elif outcome == "promoted":
                cursor.promoted.append(partition)
            elif outcome in ("rejected", "skipped"):
                cursor.rejected.append(partition)
            decided.append(f"{partition}: {text}")
        context.update_cursor(cursor.to_json())
        if not decided:
            return dg.SkipReason("Nothing to decide.")
        return dg.SkipReason("; ".join(decided))

    return _promotion


@dataclass
class _Decider:
    """Decides one partition of one tick of the promotion sensor (and logs why)."""

    context: dg.SensorEvaluationContext
    store: MatchboxDBAdapter
    collection: str
    resolver_key: dg.AssetKey
    check_names: list[str]
    sensor_name: str

    def decide(self, partition: str, dagster_run_id: str) -> tuple[str, str]:
        """``(outcome, text for the tick)``: promoted, rejected, skipped, waiting, older, ..."""
        log = self.context.log
        instance = self.context.instance
        results = check_results(instance, dagster_run_id, self.resolver_key)
        missing = [n for n in self.check_names if n not in results]
        dagster_run = instance.get_run_by_id(dagster_run_id)
        if missing and dagster_run is not None and not dagster_run.is_finished:
            log.info(
                "Partition %s: waiting for check(s) %s of Dagster run %s (%s); later partitions "
                "are decided meanwhile.",
                partition,
                ", ".join(missing),
                dagster_run_id,
                dagster_run.status.value,
            )
            return "waiting", f"waiting for {', '.join(missing)} (run {dagster_run.status.value})"
        if missing and (dagster_run is None or dagster_run.status != dg.DagsterRunStatus.SUCCESS):
            status = dagster_run.status.value if dagster_run is not None else "GONE"
            log.warning(
                "Skipping %s partition %s: its Dagster run %s ended %s before check(s) %s "
                "finished, so it can never be promoted by this sensor. The default run is "
                "unchanged; run the partition again to retry.",
                self.collection,
                partition,
                dagster_run_id,
                status,
                ", ".join(missing),
            )
            return "skipped", f"skipped (Dagster run ended {status} before {', '.join(missing)})"
        failed = [
            f"{n} ({results[n][1] or 'failed'})"
            for n in self.check_names
            if n in results and not results[n][0]
        ] + [f"{n} (did not run)" for n in missing]
        if failed:
            log.warning(
                "Not promoting %s partition %s: blocking check(s) failed: %s. The default "
                "run is unchanged.",
                self.collection,
                partition,
                "; ".join(failed),
            )
            return "rejected", f"rejected ({'; '.join(failed)})"
        try:
            run = self.store.run_for_label(self.collection, partition, create=False)
            current = self.store.get_collection(self.collection).default_run
        except MatchboxNotFoundError as exc:
            log.warning("Partition %s has no store run: %s", partition, exc)
            return "unknown", f"no store run ({exc})"
        if current == run.run_id:
            return "default", "already default"
        if current is not None and current > run.run_id:
            log.info(
                "Not promoting %s run %s (partition %s): newer run %s is the default. Roll "
                "back explicitly with `matchbox-dagster promote`.",
                self.collection,
                run.run_id,
                partition,
                current,
            )
            return "older", f"older than default run {current}"
        passed = ", ".join(self.check_names)
        promote_run(
            self.store,
            self.collection,
            run.run_id,
            Promotion(
                promoted_by=f"sensor {self.sensor_name}",
                reason=f"blocking checks passed: {passed}",
            ),
            instance=instance,
            resolver_key=self.resolver_key,
        )
        log.info(
            "Promoted %s run %s (partition %s) to default: checks %s passed.",
            self.collection,
            run.run_id,
            partition,
            passed,
        )
        return "promoted", f"promoted run {run.run_id} (checks {passed} passed)"
