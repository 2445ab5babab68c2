"""``matchbox-dagster``: run, gate, inspect, promote and prune runs from a shell or CI.

Commands (each accepts ``--definitions FILE`` naming a Python file with a ``defs`` attribute;
by default the FEBRL4 demo graph):

``demo``        add a run, materialise the graph with its checks, evaluate the promotion sensor
                and print a summary (embedded PostgreSQL unless ``MATCHBOX_POSTGRES_URI`` is set)
``check``       materialise a run's graph and checks; exit 1 if any blocking check fails (CI gate)
``runs``        list a collection's runs: label, flags, state (running, failed at step X, checks
                passed n/m), who promoted it
``promote``     make a run immutable and the default (also rolls back to an older run); refuses a
                run whose graph is incomplete or whose checks did not pass, unless ``--force
                --reason TEXT``
``delete-run``  delete one run; never the default or an immutable run without ``--force``
``prune``       delete failed runs older than ``--older-than`` (same protection)
``query``       print or save the entities of a source's keys (default run unless told)
``validate``    the preflight alone: each source's schema against the collection, nothing written
``init DIR``    a new project (pyproject ``[tool.dg]``, package, ``defs.yaml``, ``definitions.py``)
``review``      the review web app: judge entities in a browser (docs/review.md)
``retrain``     retire a model's stored trained versions so the next run trains it anew
                (docs/methods.md)

Errors are one line (``error: <cause>. Hint: <what to do>``) with an exit code
(``base.EXIT_CODES``: 0 ok, 1 a check or step failed, 2 refused or bad input, 3 store unreachable,
4 a bug); ``--verbose`` adds the traceback. Dagster's instance is ``$DAGSTER_HOME`` when set, else
``.matchbox/dagster`` (persistent, so ``DAGSTER_HOME=.matchbox/dagster dg dev`` shows what the
CLI ran).

Each command imports what it needs when it runs (:func:`_lazy`): building the parser imports no
Dagster, store or data library, and ``runs`` reads a collection's graph from the shape cache
(:mod:`.shape_cache`) when its definitions did not change, without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A command ``module:function`` of this package, imported only when it runs."""
    module, _, name = target.partition(":")

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"matchbox_dagster.cli.{module}"), name)(args))

    return run


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="matchbox-dagster", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="tracebacks and Dagster logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, *, graph: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
        if graph:
            p.add_argument("--definitions", help="Python file with `defs` (default: FEBRL4 demo)")
            p.add_argument("--collection", help="collection (when the definitions hold several)")
        return p

    def which(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--run", type=int, help=f"store run id of the run to {what}")
        p.add_argument("--label", help=f"label (partition key) of the run to {what}")

    demo = add("demo", "run the graph once, promote if checks pass, print a summary")
    demo.add_argument("--label", help="partition key of the new run (default run-NNNN)")
    demo.set_defaults(func=_lazy("graph:cmd_demo"))
    check = add("check", "materialise a run and its checks; exit 1 if a blocking check fails")
    check.add_argument("--label", help="partition key of the run (default ci-NNNN)")
    check.set_defaults(func=_lazy("graph:cmd_check"))
    runs = add("runs", "list runs with their state and promotions")
    runs.add_argument(
        "--fresh", action="store_true", help="load the definitions even if the cache is fresh"
    )
    runs.set_defaults(func=_lazy("runs:cmd_runs"))
    promote = add("promote", "make a run immutable and default (rollback too)")
    which(promote, "promote")
    promote.add_argument("--force", action="store_true", help="override the gate (needs --reason)")
    promote.add_argument("--reason", help="why (recorded with the promotion)")
    promote.set_defaults(func=_lazy("runs:cmd_promote"))
    delete = add("delete-run", "delete a run; the default or an immutable one only with --force")
    which(delete, "delete")
    delete.add_argument("--force", action="store_true", help="delete even a protected run")
    delete.set_defaults(func=_lazy("runs:cmd_delete_run"))
    prune = add("prune", "delete failed runs older than a duration")
    prune.add_argument("--failed", action="store_true", help="delete failed runs (required)")
    prune.add_argument("--older-than", required=True, help="e.g. 12h, 7d, 2w; 0s for all")
    prune.add_argument("--force", action="store_true", help="also default/immutable failed runs")
    prune.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    prune.set_defaults(func=_lazy("runs:cmd_prune"))
    query = add("query", "entities of a source's keys")
    query.add_argument("--source", required=True)
    query.add_argument("--resolver", help="default: the run's last resolver")
    query.add_argument("--run", type=int, help="default: the collection's default run")
    query.add_argument("--label")
    query.add_argument("--limit", type=int)
    query.add_argument("--output", help="write Parquet here instead of printing")
    query.set_defaults(func=_lazy("graph:cmd_query"))
    add("validate", "preflight only: check sources' schemas against the collection").set_defaults(
        func=_lazy("project:cmd_validate")
    )
    init = add("init", "create a new project", graph=False)
    init.add_argument("directory", help="new or empty folder")
    init.set_defaults(func=_lazy("project:cmd_init"))
    add_review(sub)
    add_retrain(sub)
    return parser


def add_review(sub: argparse._SubParsersAction) -> None:
    """``review`` (matchbox_dagster/cli/review.py: its options; the app imported when run)."""
    from matchbox_dagster.cli.review import add_review as register

    register(sub)


def add_retrain(sub: argparse._SubParsersAction) -> None:
    """``retrain`` (matchbox_dagster/cli/trained.py, H3's)."""
    from matchbox_dagster.cli.trained import add_retrain as register

    register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``matchbox-dagster``: run a command; one line per error, with a hint."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    args.verbose = verbose
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from matchbox_dagster.cli.errors import explain

        error = explain(exc)
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {error.cause.rstrip('.')}. Hint: {error.hint}.", file=sys.stderr)
        return error.code
