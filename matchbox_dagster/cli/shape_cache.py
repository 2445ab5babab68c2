"""The shape cache: what ``runs`` needs of a collection's definitions, kept between commands.

``runs`` needs a collection's graph shape (its steps and blocking checks, what a run's status
compares it with) and the store's settings; read from the cache, both need no Dagster.
Loading the definitions to learn them imports the whole Dagster layer and builds every asset,
most of ``runs``' time. So each command that loads them (:meth:`.base.Graph.load`)
records the shape in ``$DAGSTER_HOME/matchbox-cli-shapes.json``, with the size and modification
time of every file the definitions were built from: the definitions file, each Python module
imported from outside the interpreter's own folders (the project's and this package's) and the
collection's ``defs.yaml``. ``runs`` uses an entry only while every one of those files is
unchanged; otherwise (or with ``--fresh``) it loads the definitions and refreshes the entry.

The resource's settings are kept as given: ``EnvVar`` fields as the variable's name (read again
at each use), literal values only when they hold no password (a URI with one is never written:
``runs`` then loads the definitions each time).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    from matchbox_dagster.common.run_status import RunShape
    from matchbox_dagster.dagster.lifecycle import GraphShape
    from matchbox_dagster.dagster.resources import MatchboxResource

VERSION = 1
FILE_NAME = "matchbox-cli-shapes.json"
FIELDS = ("postgres_uri", "postgres_schema", "embedded_data_dir", "batch_size", "user_name")
"""The ``MatchboxResource`` fields ``runs`` needs (the store's settings and user)."""


@dataclass(frozen=True)
class Cached:
    """A collection's shape and the store settings of its definitions, from the cache.

    :meth:`plain` needs no Dagster (what ``runs`` reads for runs the store settles);
    :meth:`shape` builds Dagster's keys, for the runs it must ask Dagster about.
    """

    collection: str
    entry: dict[str, Any]
    settings: dict[str, Any]
    user_name: str | None

    def plain(self) -> RunShape:
        """Step names and ``(step, check)`` pairs, without importing Dagster."""
        from matchbox_dagster.common.run_status import RunShape

        entry = self.entry
        return RunShape.from_keys(
            self.collection, entry["steps"], entry["asset_keys"], entry["checks"]
        )

    def shape(self) -> GraphShape:
        """The shape with Dagster's asset and check keys (imports Dagster)."""
        import dagster as dg

        from matchbox_dagster.dagster.lifecycle import GraphShape

        entry = self.entry
        return GraphShape(
            collection=entry["collection"],
            steps=tuple(entry["steps"]),
            asset_keys=tuple(dg.AssetKey(k) for k in entry["asset_keys"]),
            checks=tuple(dg.AssetCheckKey(dg.AssetKey(k), name) for k, name in entry["checks"]),
            resolver_key=dg.AssetKey(entry["resolver_key"]) if entry["resolver_key"] else None,
            job_name=entry["job_name"],
        )


def _path() -> Path:
    from matchbox_dagster.cli.base import dagster_home

    return dagster_home() / FILE_NAME


def _key(definitions: str | None, collection: str | None) -> str:
    where = str(Path(definitions).resolve()) if definitions else "<demo>"
    return f"{where}::{collection or ''}"


def _system_folders() -> tuple[str, ...]:
    return tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _files(definitions: str | None, defs: dg.Definitions, collection: str) -> dict[str, list[int]]:
    """Size and modification time of every file the definitions were built from."""
    from matchbox_dagster.specs.preflight import YAML_META

    system = _system_folders()
    paths = {
        os.path.realpath(module.__file__)
        for module in list(sys.modules.values())
        if isinstance(getattr(module, "__file__", None), str)
    }
    paths = {p for p in paths if not p.startswith(system)}
    if definitions:  # loaded from its path, not kept in sys.modules
        paths.add(os.path.realpath(definitions))
    yaml = (defs.metadata or {}).get(YAML_META + collection)
    if yaml is not None:
        paths.add(os.path.realpath(str(getattr(yaml, "value", yaml))))
    return {p: _stat(p) for p in sorted(paths)}


def _stat(path: str) -> list[int]:
    try:
        found = os.stat(path)
    except OSError:
        return [-1, -1]
    return [found.st_mtime_ns, found.st_size]


def _fields(resource: MatchboxResource) -> dict[str, Any] | None:
    """The resource's fields as kept (None: a literal secret, so nothing is kept)."""
    from matchbox_dagster.common.redaction import redact

    kept: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(resource, name, None)
        if value is None:
            continue
        env = getattr(value, "env_var_name", None)  # dg.EnvVar (and Dagster's int variant)
        if env is not None:
            kept[name] = {"env": str(env)}
        elif name == "postgres_uri" and redact(str(value)) != str(value):
            return None  # a password written in the definitions is not copied to disk
        else:
            kept[name] = value
    return kept


def remember(
    definitions: str | None,
    collection_arg: str | None,
    shape: GraphShape,
    resource: MatchboxResource,
    defs: dg.Definitions,
) -> None:
    """Record a loaded collection's shape and store settings (best effort, never fails)."""
    try:
        _remember(definitions, collection_arg, shape, resource, defs)
    except Exception:  # a cache that cannot be written only makes the next `runs` slower
        logging.getLogger(__name__).debug("shape cache not written", exc_info=True)


def _remember(
    definitions: str | None,
    collection_arg: str | None,
    shape: GraphShape,
    resource: MatchboxResource,
    defs: dg.Definitions,
) -> None:
    fields = _fields(resource)
    if fields is None:
        return
    entry = {
        "version": VERSION,
        "collection": shape.collection,
        "steps": list(shape.steps),
        "asset_keys": [list(k.path) for k in shape.asset_keys],
        "checks": [[list(k.asset_key.path), k.name] for k in shape.checks],
        "resolver_key": list(shape.resolver_key.path) if shape.resolver_key else None,
        "job_name": shape.job_name,
        "resource": fields,
        "files": _files(definitions, defs, shape.collection),
    }
    path = _path()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    cache[_key(definitions, collection_arg)] = entry
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            json.dump(cache, handle)
        os.replace(handle.name, path)
    except OSError:
        return


def lookup(definitions: str | None, collection_arg: str | None) -> Cached | None:
    """The cached shape and settings, if every file they were built from is unchanged."""
    path = _path()
    try:
        entry = json.loads(path.read_text()).get(_key(definitions, collection_arg))
    except (OSError, ValueError):
        return None
    if not entry or entry.get("version") != VERSION:
        return None
    if any(_stat(file) != stat for file, stat in entry["files"].items()):
        return None
    settings: dict[str, Any] = {}
    user_name = None
    for name, value in entry["resource"].items():
        if isinstance(value, dict):
            value = os.environ.get(value["env"])
            if value is None:
                return None  # the variable is gone: let the definitions say what is wrong
        if name == "user_name":
            user_name = value
        else:
            settings[name] = value
    return Cached(entry["collection"], entry, settings, user_name)
