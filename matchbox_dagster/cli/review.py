"""``review``: start the review web app for a store user and print its URL."""

from __future__ import annotations

import argparse
import getpass
import os

from matchbox_dagster.cli.errors import CliError

DEFAULT_PORT = 8765
STRATEGIES = ("random", "uncertain", "changed")
"""The sampling strategies (``evaluation.sampling.Strategy``; named here so the parser imports
nothing heavy; a test keeps the two equal)."""


def add_review(sub: argparse._SubParsersAction) -> None:
    """Register ``review`` on the CLI's sub-parsers."""
    text = "start the review web app (judge entities in a browser) and print its URL"
    p = sub.add_parser("review", help=text, description=text)
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--collection", help="review only this collection")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", type=int, help="run id to review (default: the default run)")
    which.add_argument("--label", help="label of the run to review")
    p.add_argument("--resolver", help="resolver to review (default: the run's last)")
    p.add_argument("--user", help="store user judging (default: $MATCHBOX_USER, else your login)")
    p.add_argument("--strategy", choices=STRATEGIES, default="random")
    p.add_argument("--target", type=int, default=50, help="judgements to aim for (progress)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.set_defaults(func=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    """Serve the app until interrupted."""
    import uvicorn

    from matchbox_dagster.common.dtos import User
    from matchbox_dagster.dagster.resources import MatchboxResource
    from matchbox_dagster.evaluation.sampling import Strategy
    from matchbox_dagster.review.app import create_app
    from matchbox_dagster.review.state import ReviewConfig

    if (args.run is not None or args.label is not None) and not args.collection:
        raise CliError("--run and --label name a run of one collection", "add --collection C")
    user = args.user or os.environ.get("MATCHBOX_USER") or getpass.getuser()
    store = MatchboxResource().get_store()
    store.login(User(user_name=user))  # the reviewer is a store user (created on first use)
    hosts = ("127.0.0.1", "localhost", args.host)
    config = ReviewConfig(
        store=store,
        user=user,
        collection=args.collection,
        run=args.run,
        label=args.label,
        resolver=args.resolver,
        strategy=Strategy(args.strategy),
        target=args.target,
        allowed_hosts=tuple(dict.fromkeys(hosts)),
    )
    app = create_app(config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"review app for {user!r}: http://{host}:{args.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
