"""``retrain``: make a model train anew in the next run (its stored trained versions retired).

A Splink model keeps its trained parameters in the store and later runs predict with them
(docs/methods.md, "Trained models are reused"). ``matchbox-dagster retrain --collection C
--model M`` retires every stored version of model ``M`` of collection ``C``: the versions stay
(a run's check may name one) but none is used again, so the next run that computes the model
trains it and stores a new version. For retraining in every run, set ``retrain: true`` in the
model's settings instead.
"""

from __future__ import annotations

import argparse

from matchbox_dagster.cli.base import CliError, Graph


def _plain(value: object) -> object:
    return getattr(value, "value", value)


def model_steps(graph: Graph) -> list[str]:
    """Names of the collection's model steps in the loaded definitions."""
    asset_graph = graph.defs.get_repository_def().asset_graph
    found = []
    for key in asset_graph.get_all_asset_keys():
        meta = asset_graph.get(key).metadata
        if (
            str(_plain(meta.get("matchbox/collection"))) == graph.collection
            and str(_plain(meta.get("matchbox/step_type"))) == "model"
        ):
            found.append(str(_plain(meta.get("matchbox/step"))))
    return sorted(found)


def cmd_retrain(args: argparse.Namespace) -> int:
    """Retire a model's stored trained versions so the next run trains it anew."""
    from matchbox_dagster.dagster.trained import retire  # the Dagster layer, only when run

    graph = Graph.load(args)
    models = model_steps(graph)
    if args.model not in models:
        raise CliError(
            f"collection {graph.collection!r} has no model step {args.model!r}",
            f"pass one of {models} to --model" if models else "the collection has no models",
        )
    if graph.collection not in graph.store.list_collections():
        print(f"collection {graph.collection!r} has no runs yet: nothing trained to retire")
        return 0
    retired = retire(graph.store, graph.collection, args.model)
    print(
        f"retired {retired} trained version(s) of model {args.model!r} of "
        f"{graph.collection!r}; the next run that computes it trains anew"
    )
    return 0


def add_retrain(sub: argparse._SubParsersAction) -> None:
    """Register ``retrain`` on the CLI's sub-parsers."""
    text = "make a model train anew in the next run (retire its stored trained versions)"
    p = sub.add_parser("retrain", help=text, description=text)
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--definitions", help="Python file with `defs` (default: FEBRL4 demo)")
    p.add_argument("--collection", help="collection (when the definitions hold several)")
    p.add_argument("--model", required=True, help="the model step whose training is redone")
    p.set_defaults(func=cmd_retrain)
