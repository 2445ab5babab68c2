"""``matchbox-dagster init`` and ``validate``, and the preflight the CLI runs before a write.

Dagster's own API only (``Definitions`` metadata); never this package's Dagster layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from matchbox_dagster.cli.template import init_project

if TYPE_CHECKING:
    import dagster as dg


def preflight_defs(defs: dg.Definitions, collection: str) -> bool:
    """Run a collection's preflight (:class:`PreflightError` if it fails); False if no spec."""
    from matchbox_dagster.specs.preflight import preflight, spec_from_metadata

    found = spec_from_metadata(dict(defs.metadata or {}), collection)
    if found is None:
        return False
    spec, yaml_path = found
    preflight(spec, yaml_path=yaml_path)
    return True


def cmd_init(args: argparse.Namespace) -> int:
    """Write a new project into ``args.directory``."""
    project = init_project(Path(args.directory))
    root = project.root
    print(f"created project {project.package!r} in {root}:")
    for path in project.files:
        print(f"  {path.relative_to(root)}")
    definitions = project.definitions.relative_to(root)
    print(
        f"next: cd {root}; edit {project.defs_yaml.relative_to(root)} to read your data, then\n"
        f"  matchbox-dagster validate --definitions {definitions}\n"
        f"  matchbox-dagster check --definitions {definitions}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``validate``: load the definitions, then run the chosen collection's preflight."""
    from matchbox_dagster.cli.base import Graph

    graph = Graph.load(args)
    return validate_loaded(graph.defs, graph.collection)


def validate_loaded(defs: dg.Definitions, collection: str) -> int:
    """``validate`` once the CLI has loaded the definitions and chosen the collection."""
    if not preflight_defs(defs, collection):
        print(f"collection {collection!r} carries no spec to check (not built from a spec)")
        return 1
    print(f"preflight of {collection!r} passed: sources readable, fields, cleaning, truth ok")
    return 0
