"""``runs``, ``promote``, ``delete-run`` and ``prune``: a collection's runs and their lifecycle.

``runs`` prints each run's state (flags, label, running, failed at a step, checks passed n/m,
promotions) with a fixed number of queries. The store settles most runs alone (their steps
complete and every blocking check's outcome recorded since, or never materialised:
:meth:`~matchbox_dagster.common.run_status.RunStatus.settled`); only for the others is Dagster
imported and asked (:func:`~matchbox_dagster.dagster.lifecycle.add_dagster_view`). It reads the
collection's graph from the shape cache (:mod:`.shape_cache`) when the definitions did not
change since a command last loaded them, so in the common case it imports no Dagster at all.
``promote`` refuses a run whose graph is incomplete or whose blocking checks did not all pass
unless ``--force --reason``; deleting never touches the default or an immutable run without
``--force``.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from matchbox_dagster.cli.base import CliError, Graph, instance, run_id_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import dagster as dg

    from matchbox_dagster.common.run_status import RunShape, RunStatus
    from matchbox_dagster.dagster.lifecycle import GraphShape
    from matchbox_dagster.store.base import MatchboxDBAdapter


def _runs_source(
    args: argparse.Namespace,
) -> tuple[MatchboxDBAdapter, RunShape, Callable[[], GraphShape]]:
    """The store, the plain graph shape and (for Dagster) the full one: cached when fresh."""
    from matchbox_dagster.cli.shape_cache import lookup

    cached = None if args.fresh else lookup(args.definitions, args.collection)
    if cached is None:
        graph = Graph.load(args)  # and refreshes the cache
        shape = graph.shape()
        return graph.store, shape.plain(), lambda: shape
    from matchbox_dagster.common.settings import MatchboxSettings
    from matchbox_dagster.store.postgres import MatchboxPostgres

    store = MatchboxPostgres(MatchboxSettings(**cached.settings))
    return (
        (store.as_user(cached.user_name) if cached.user_name else store),
        cached.plain(),
        cached.shape,
    )


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs with their state, checks and promotions (Dagster asked only if needed)."""
    from matchbox_dagster.common.run_status import store_statuses

    store, plain, shape = _runs_source(args)
    if plain.collection not in store.list_collections():
        print(f"collection {plain.collection!r} has no runs yet")
        return 0
    statuses = store_statuses(store.run_summaries(plain.collection), plain)
    unsettled = [s for s in statuses if s.summary.label and not s.settled()]
    if unsettled:  # running, failed, or checks the store did not record: Dagster knows
        from matchbox_dagster.dagster.lifecycle import add_dagster_view

        add_dagster_view(instance(), shape(), unsettled)
    width = max([len(s.label) for s in statuses] + [5])
    print(f"{'run':>5}  {'label':{width}}  {'flags':9} {'state':34} promoted by")
    for status in statuses:
        print(
            f"{status.summary.run_id:>5}  {status.label:{width}}  {status.flags:9} "
            f"{status.state:34} {status.promotion}"
        )
    return 0


def _status(graph: Graph, inst: dg.DagsterInstance, run_id: int) -> RunStatus:
    from matchbox_dagster.dagster.lifecycle import run_statuses

    (status,) = run_statuses(inst, graph.store, graph.shape(), [run_id]) or [None]
    if status is None:
        graph.store.get_run(graph.collection, run_id)  # raises the store's not-found error
        raise CliError(f"run {run_id} not found", "list the runs with `matchbox-dagster runs`")
    return status


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote (or roll back to) a run, if the gate allows it or ``--force --reason`` says so."""
    from matchbox_dagster.common.runs import Promotion
    from matchbox_dagster.dagster.sensors import current_user, promote_run

    graph = Graph.load(args)
    if args.run is None and args.label is None:
        raise CliError("promote needs a run", "pass --run N or --label L")
    if args.force and not (args.reason or "").strip():
        raise CliError("--force needs --reason TEXT", "say why the gate is overridden")
    inst = instance()
    run_id = run_id_of(graph.store, graph.collection, args)
    status = _status(graph, inst, run_id)
    if status.summary.is_default:
        print(f"run {run_id} ({status.label}) of {graph.collection!r} is already the default")
        return 0
    blockers = status.blockers()
    if blockers and not args.force:
        raise CliError(
            f"run {run_id} ({status.label}) of {graph.collection!r} cannot be promoted: "
            + "; ".join(blockers),
            "run it again (matchbox-dagster check) or override with --force --reason TEXT",
        )
    reason = args.reason or ("gate passed: " + status.state)
    if blockers:
        reason = f"{args.reason} (overrode: {'; '.join(blockers)})"
    promotion = Promotion(promoted_by=current_user(), reason=reason, forced=bool(blockers))
    shape = graph.shape()
    promote_run(
        graph.store,
        graph.collection,
        run_id,
        promotion,
        instance=inst,
        resolver_key=shape.resolver_key,
    )
    forced = " (FORCED)" if blockers else ""
    print(
        f"run {run_id} ({status.label}) of {graph.collection!r} is now the default "
        f"(immutable), promoted by {promotion.promoted_by}{forced}"
    )
    return 0


def _protected(status: RunStatus) -> str | None:
    if status.summary.is_default:
        return "the default run"
    if not status.summary.is_mutable:
        return "immutable"
    return None


def _delete(graph: Graph, inst: dg.DagsterInstance, status: RunStatus) -> None:
    from matchbox_dagster.dagster.partitions import partitions_name

    graph.store.delete_run(graph.collection, status.summary.run_id, certain=True)
    if status.summary.label:
        inst.delete_dynamic_partition(partitions_name(graph.collection), status.summary.label)


def cmd_delete_run(args: argparse.Namespace) -> int:
    """Delete one run (its steps, data and partition); not the default or an immutable one."""
    graph = Graph.load(args)
    if args.run is None and args.label is None:
        raise CliError("delete-run needs a run", "pass --run N or --label L")
    inst = instance()
    status = _status(graph, inst, run_id_of(graph.store, graph.collection, args))
    protected = _protected(status)
    if protected and not args.force:
        raise CliError(
            f"run {status.summary.run_id} ({status.label}) is {protected}; not deleted",
            "pass --force to delete it anyway"
            + (" (better: promote another run first)" if status.summary.is_default else ""),
        )
    if status.running:
        raise CliError(
            f"run {status.summary.run_id} ({status.label}) is still running in Dagster",
            "wait for it to finish (or cancel it in the Dagster UI)",
        )
    _delete(graph, inst, status)
    print(f"deleted run {status.summary.run_id} ({status.label}) of {graph.collection!r}")
    return 0


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` as a :class:`timedelta`."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise CliError(f"--older-than {text!r} is not a duration", "write e.g. 12h, 7d or 2w")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete failed runs older than ``--older-than``; protected runs only with ``--force``."""
    if not args.failed:
        raise CliError("prune deletes failed runs only", "pass --failed (and --older-than)")
    cutoff = datetime.now(UTC) - parse_duration(args.older_than)
    graph = Graph.load(args)
    if graph.collection not in graph.store.list_collections():
        print(f"collection {graph.collection!r} has no runs yet")
        return 0
    from matchbox_dagster.dagster.lifecycle import run_statuses

    inst = instance()
    deleted = kept = 0
    for status in run_statuses(inst, graph.store, graph.shape()):
        if not status.failed or status.summary.created_at >= cutoff:
            continue
        what = f"run {status.summary.run_id} ({status.label}, {status.state})"
        protected = _protected(status)
        if protected and not args.force:
            print(f"kept {what}: {protected}; pass --force to delete it")
            kept += 1
            continue
        if args.dry_run:
            print(f"would delete {what}")
        else:
            _delete(graph, inst, status)
            print(f"deleted {what}")
        deleted += 1
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {deleted} failed run(s) older than {args.older_than}; kept {kept} protected")
    return 0
