"""Print pip constraints pinning every dependency of pyproject.toml to its declared minimum.

Each requirement with a ``>=`` floor (core dependencies and the ``dev`` extra) becomes
``name==floor``; requirements pinned with ``==`` (the Dagster family) stay as they are. Used by
``scripts/min-venv`` so that CI proves the floors are true.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def constraints(pyproject: Path, extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """``name==version`` lines for every floored or pinned requirement of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    lines: list[str] = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement.split(";")[0])
        if match is None:
            raise SystemExit(f"min_constraints: cannot read requirement {requirement!r}")
        name, spec = match.group(1), match.group(2)
        pinned = re.search(r"==\s*([^,\s]+)", spec)
        floor = re.search(r">=\s*([^,\s]+)", spec)
        if pinned:
            lines.append(f"{name}=={pinned.group(1)}")
        elif floor:
            lines.append(f"{name}=={floor.group(1)}")
        else:
            raise SystemExit(f"min_constraints: {requirement!r} declares no floor")
    return lines


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(constraints(root / "pyproject.toml", tuple(sys.argv[1:]) or ("dev",))))
