"""What every command shares: loading definitions, the Dagster instance, the graph, errors.

Every failure reaches the user as one line, ``error: <cause>. Hint: <what to do>``, and an exit
code (:data:`EXIT_CODES`); the traceback only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pydantic

from matchbox_dagster.common.errors import (
    MatchboxConnectionError,
    MatchboxDatabaseWriteError,
    MatchboxDatastoreError,
    MatchboxError,
    MatchboxNotFoundError,
    MatchboxPermissionDenied,
    MatchboxRunNotWriteable,
)
from matchbox_dagster.dagster.lifecycle import GraphShape, graph_shape
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.dagster.sensors import promotion_sensor_name
from matchbox_dagster.store.base import MatchboxDBAdapter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE, EXIT_BUG = 0, 1, 2, 3, 4
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "a blocking check or a step failed (check, demo); nothing else went wrong",
    EXIT_USAGE: "refused: bad arguments, unknown collection/run/label, a run the gate protects, "
    "invalid data or spec (the message says which)",
    EXIT_STORE: "the store could not be reached or could not write (PostgreSQL)",
    EXIT_BUG: "an unexpected error (a bug): run again with --verbose and report the traceback",
}


class CliError(Exception):
    """A failure the CLI explains: its cause, a hint, and the exit code."""

    def __init__(self, cause: str, hint: str, code: int = EXIT_USAGE) -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint
        self.code = code


def explain(exc: BaseException) -> CliError:
    """Turn any exception into a :class:`CliError` (cause, hint, exit code)."""
    if isinstance(exc, CliError):
        return exc
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MatchboxNotFoundError):
        return CliError(text, "list the runs with `matchbox-dagster runs`")
    if isinstance(exc, MatchboxPermissionDenied):
        return CliError(text, "ask an administrator of the store for that permission")
    if isinstance(exc, MatchboxRunNotWriteable):
        return CliError(text, "start a new run: pass a new --label (or none)")
    if isinstance(exc, MatchboxConnectionError | MatchboxDatastoreError):
        return CliError(text, _STORE_HINT, EXIT_STORE)
    if isinstance(exc, MatchboxDatabaseWriteError):
        return CliError(text, _STORE_HINT, EXIT_STORE)
    if type(exc).__name__ == "PreflightError":  # keeps its list of problems, one per line
        return CliError(
            str(exc), "fix each problem (file and line above), then `matchbox-dagster validate`"
        )
    if isinstance(exc, MatchboxError | pydantic.ValidationError | ValueError):
        return CliError(text, "correct the value named above")
    if _is_database_error(exc):
        return CliError(f"{type(exc).__name__}: {text}", _STORE_HINT, EXIT_STORE)
    return CliError(
        f"unexpected {type(exc).__name__}: {text}",
        "run again with --verbose for the traceback, and report it",
        EXIT_BUG,
    )


_STORE_HINT = (
    "is PostgreSQL reachable? Check MATCHBOX_POSTGRES_URI (unset: the embedded server "
    "under .matchbox/)"
)


def _is_database_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "psycopg")) and "OperationalError" in type(
        exc
    ).__name__


def load_defs(path: str | None) -> dg.Definitions:
    """The ``defs`` of a Python file (its project's folder on ``sys.path``), or the demo's."""
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
        raise CliError(
            f"loading {path!r} failed: {cause.cause}", cause.hint, cause.code
        ) from exc
    defs = getattr(module, "defs", None)
    if not isinstance(defs, dg.Definitions):
        raise CliError(f"{path!r} has no `defs = Definitions(...)` attribute", hint)
    return defs


def instance() -> dg.DagsterInstance:
    """Dagster's instance: ``$DAGSTER_HOME``, else ``.matchbox/dagster`` (created)."""
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(".matchbox/dagster").resolve()
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


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
        """The collection named by ``--collection`` (or the only one) in ``--definitions``."""
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
        resource = defs.resources.get("matchbox") or MatchboxResource()
        sensors = [s for s in repo.sensor_defs if s.name == promotion_sensor_name(collection)]
        return cls(defs, collection, collections[collection], resource, sensors)

    @property
    def store(self) -> MatchboxDBAdapter:
        """The collection's store."""
        return self.resource.get_store()

    def shape(self) -> GraphShape:
        """The collection's steps and blocking checks."""
        return graph_shape(self.defs, self.collection)


def run_id_of(store: MatchboxDBAdapter, collection: str, args: argparse.Namespace) -> int:
    """The run named by ``--run`` or ``--label``, else the default run."""
    if getattr(args, "run", None) is not None:
        return int(args.run)
    if getattr(args, "label", None) is not None:
        return store.run_for_label(collection, args.label, create=False).run_id
    default = store.get_collection(collection).default_run
    if default is None:
        raise CliError(
            f"collection {collection!r} has no default run", "pass --run N or --label L"
        )
    return default
