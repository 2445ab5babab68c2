"""What every command shares: loading definitions, the Dagster instance, the graph.

Every failure reaches the user as one line, ``error: <cause>. Hint: <what to do>``, and an exit
code (:data:`~.errors.EXIT_CODES`); the traceback only with ``--verbose``. Dagster and the
Dagster layer are imported by the functions that need them, not by this module.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matchbox_dagster.cli.errors import EXIT_BUG as EXIT_BUG
from matchbox_dagster.cli.errors import EXIT_CODES as EXIT_CODES
from matchbox_dagster.cli.errors import EXIT_FAILED as EXIT_FAILED
from matchbox_dagster.cli.errors import EXIT_OK as EXIT_OK
from matchbox_dagster.cli.errors import EXIT_STORE as EXIT_STORE
from matchbox_dagster.cli.errors import EXIT_USAGE as EXIT_USAGE
from matchbox_dagster.cli.errors import CliError as CliError
from matchbox_dagster.cli.errors import explain as explain

if TYPE_CHECKING:
    import dagster as dg

    from matchbox_dagster.dagster.lifecycle import GraphShape
    from matchbox_dagster.dagster.resources import MatchboxResource
    from matchbox_dagster.store.base import MatchboxDBAdapter


def load_defs(path: str | None) -> dg.Definitions:
    """The ``defs`` of a Python file (its project's folder on ``sys.path``), or the demo's."""
    import dagster as dg

    if path is None:
        from matchbox_dagster.dagster.collection import build_collection_defs
        from matchbox_dagster.examples.febrl import febrl4_spec

        return build_collection_defs(febrl4_spec())
    hint = "pass a Python file that sets `defs = dg.Definitions(...)`"
    if not Path(path).is_file():
        raise CliError(f"definitions file {path!r} does not exist", hint)
    root = next((p for p in Path(path).resolve().parents if (p / "pyproject.toml").exists()), None)
    root = root or Path(path).resolve().parent  # its project's folder, so its package imports
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("matchbox_user_definitions", path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load definitions from {path!r}", hint)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        cause = explain(exc)
        raise CliError(f"loading {path!r} failed: {cause.cause}", cause.hint, cause.code) from exc
    defs = getattr(module, "defs", None)
    if not isinstance(defs, dg.Definitions):
        raise CliError(f"{path!r} has no `defs = Definitions(...)` attribute", hint)
    return defs


def instance() -> dg.DagsterInstance:
    """Dagster's instance: ``$DAGSTER_HOME``, else ``.matchbox/dagster`` (created)."""
    import dagster as dg

    dagster_home()
    return dg.DagsterInstance.get()


def dagster_home() -> Path:
    """``$DAGSTER_HOME``, set to ``.matchbox/dagster`` (created) when unset."""
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(".matchbox/dagster").resolve()
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    return Path(os.environ["DAGSTER_HOME"])


@dataclass
class Graph:
    """The parts of a collection's definitions the CLI needs."""

    defs: dg.Definitions
    collection: str
    job: dg.JobDefinition
    resource: MatchboxResource
    sensors: list[dg.SensorDefinition]

    @classmethod
    def load(cls, args: argparse.Namespace) -> Graph:
        """The collection named by ``--collection`` (or the only one) in ``--definitions``.

        Records the collection's graph in the shape cache (what ``runs`` reads).
        """
        from matchbox_dagster.cli.shape_cache import remember
        from matchbox_dagster.dagster.resources import MatchboxResource
        from matchbox_dagster.dagster.sensors import promotion_sensor_name

        defs = load_defs(args.definitions)
        repo = defs.get_repository_def()
        collections: dict[str, dg.JobDefinition] = {}
        for job in repo.get_all_jobs():
            if not job.name.endswith("_graph"):
                continue
            for key in job.asset_layer.executable_asset_keys:
                meta = repo.asset_graph.get(key).metadata
                if "matchbox/collection" in meta:
                    collections[str(meta["matchbox/collection"])] = job
        if not collections:
            raise CliError(
                "the definitions hold no matchbox collection graph job",
                "build them with build_collection_defs(spec) or the YAML component",
            )
        collection = args.collection
        if collection is None:
            if len(collections) > 1:
                raise CliError(
                    f"the definitions hold several collections {sorted(collections)}",
                    "pass --collection NAME",
                )
            collection = next(iter(collections))
        if collection not in collections:
            raise CliError(
                f"no collection {collection!r} in the definitions; found {sorted(collections)}",
                "pass one of those to --collection",
            )
        configured = defs.resources.get("matchbox") or MatchboxResource()
        resource = _initialised(configured)
        sensors = [s for s in repo.sensor_defs if s.name == promotion_sensor_name(collection)]
        graph = cls(defs, collection, collections[collection], resource, sensors)
        remember(args.definitions, args.collection, graph.shape(), configured, defs)
        return graph

    @property
    def store(self) -> MatchboxDBAdapter:
        """The collection's store."""
        return self.resource.get_store()

    def shape(self) -> GraphShape:
        """The collection's steps and blocking checks."""
        from matchbox_dagster.dagster.lifecycle import graph_shape

        return graph_shape(self.defs, self.collection)


def _initialised(resource: MatchboxResource) -> MatchboxResource:
    """The resource with its ``EnvVar`` fields (and a nested ``S3Resource``'s) read, as in a run."""
    import dagster as dg

    with dg.build_resources({"matchbox": resource}) as built:
        return built.matchbox  # type: ignore[no-any-return]


def run_id_of(store: MatchboxDBAdapter, collection: str, args: argparse.Namespace) -> int:
    """The run named by ``--run`` or ``--label``, else the default run."""
    if getattr(args, "run", None) is not None:
        return int(args.run)
    if getattr(args, "label", None) is not None:
        return store.run_for_label(collection, args.label, create=False).run_id
    default = store.get_collection(collection).default_run
    if default is None:
        raise CliError(f"collection {collection!r} has no default run", "pass --run N or --label L")
    return default
