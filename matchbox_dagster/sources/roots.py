"""The optional allow-list of roots for file locations (``MATCHBOX_LOCATION_ROOTS``).

A collection spec is code (see docs/governance.md, "Trust model"): whoever writes one chooses
what the code location reads. Where spec authors should not read any file the code location
can, set ``MATCHBOX_LOCATION_ROOTS`` to the folders they may read (separated by ``os.pathsep``,
``:`` on Unix). Every Parquet/CSV path (each file a glob or directory expands to) and every
SQLite/DuckDB database file must then resolve, symlinks and ``..`` followed, under one of them;
otherwise :class:`~matchbox_dagster.common.errors.MatchboxLocationNotAllowed` is raised before
anything is read. The resolved files are what is read, so a link cannot be swapped in between.
Remote paths (``s3://``, ``https://``) in a file location are refused while roots are set (the
``s3`` location type is for objects). Unset, any path is read.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from matchbox_dagster.common.dtos import LocationConfig, LocationType
from matchbox_dagster.common.errors import MatchboxLocationNotAllowed

ROOTS_VARIABLE = "MATCHBOX_LOCATION_ROOTS"
_GLOB = set("*?[")
_FILE_FUNCTIONS = re.compile(r"(?i)\bread_(parquet|csv|ipc|json|ndjson|delta|excel)\s*\(")


def location_roots(environ: dict[str, str] | None = None) -> list[Path]:
    """The allowed roots from ``MATCHBOX_LOCATION_ROOTS`` (empty: no restriction)."""
    value = (os.environ if environ is None else environ).get(ROOTS_VARIABLE, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def _refuse(location: str, resolved: str, roots: Sequence[Path]) -> MatchboxLocationNotAllowed:
    shown = ", ".join(str(r) for r in roots)
    return MatchboxLocationNotAllowed(
        f"The location {location!r} resolves to {resolved!r}, outside the allowed roots "
        f"({ROOTS_VARIABLE}={shown}). Move the data under one of them, or add its folder to "
        f"{ROOTS_VARIABLE} if this collection may read it."
    )


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def allowed_files(location: LocationConfig, roots: Sequence[Path]) -> list[str]:
    """The resolved files a Parquet/CSV location reads, each checked against ``roots``.

    A glob or directory is expanded; every file it gives must resolve under a root. Returns
    real paths (what is then read). A path matching nothing is returned as written (resolved),
    so the reader reports it missing.
    """
    name = location.name
    if location.type not in (LocationType.PARQUET, LocationType.CSV):
        return [name]
    if "://" in name:
        raise _refuse(name, name, roots)
    path = Path(name).expanduser()
    if _GLOB & set(name):
        found = sorted(glob.glob(str(path), recursive=True))
    elif path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file())
    else:
        found = [str(path)]
    if not found:
        found = [str(path)]
    real = [os.path.realpath(f) for f in found]
    for original, resolved in zip(found, real, strict=True):
        if not _inside(Path(original), roots):
            raise _refuse(name, resolved, roots)
    return real


def database_file_allowed(uri: str, roots: Sequence[Path]) -> None:
    """Check that a ``sqlite:///…`` or ``duckdb:///…`` database file resolves under ``roots``."""
    for prefix in ("sqlite:///", "duckdb:///", "sqlite+pysqlite:///"):
        if uri.startswith(prefix):
            path = uri.removeprefix(prefix).partition("?")[0]
            if path in ("", ":memory:"):
                return
            if not _inside(Path(path), roots):
                raise _refuse(uri, os.path.realpath(path), roots)
            return


def refuse_file_functions(location: str, sql: str) -> None:
    """Refuse an extract_transform reading files itself (``read_parquet(…)`` and kin).

    While roots are set, a file location's query reads only the table ``source``: polars SQL's
    file functions would read any path, past the allow-list.
    """
    found = _FILE_FUNCTIONS.search(sql)
    if found:
        raise MatchboxLocationNotAllowed(
            f"The extract_transform of {location!r} calls {found.group(0).strip()}…); while "
            f"{ROOTS_VARIABLE} is set, a query reads only its location, as the table 'source'."
        )
