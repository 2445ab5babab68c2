"""``matchbox-dagster init DIR``: a defs-folder Dagster project for a team's own data.

The project is what ``dg`` expects (``[tool.dg]`` in ``pyproject.toml``, a package with
``__init__.py``, a ``defs`` folder, ``definitions.py`` calling ``load_from_defs_folder``) plus a
small CSV so that ``dg check yaml``, ``dagster definitions validate`` and ``matchbox-dagster
check`` pass at once; the team then points ``defs.yaml`` at its own data. Plain text only: no
Dagster import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from matchbox_dagster.common.errors import MatchboxInvalidData

PYPROJECT = """\
[project]
name = "{package}"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["matchbox-dagster"]

# `dg` reads this table: the folder is a project whose definitions live in {package}.defs.
[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "{package}"
defs_module = "{package}.defs"
code_location_name = "{package}"

# `dagster definitions validate` / `dagster dev` without arguments load this module.
[tool.dagster]
module_name = "{package}.definitions"
code_location_name = "{package}"
"""

DEFINITIONS = '''\
"""Everything under {package}/defs/ as Dagster definitions (each folder holds a defs.yaml).

Used by `dagster definitions validate`, `dg dev` and `matchbox-dagster --definitions`.
"""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
'''

DEFS_YAML = """\
# One matchbox collection: sources -> models (dedupers, linkers) -> resolvers (entities).
# The fields are those of matchbox_dagster.specs.CollectionSpec; `dg check yaml` checks them and
# `matchbox-dagster validate --definitions {package}/definitions.py` checks them against the
# data (columns, weights, cleaning, truth, thresholds) without writing anything.
type: matchbox_dagster.dagster.component.MatchboxCollectionComponent
attributes:
  collection: {collection}
  sources:
    # A source: where the records are, the column holding each record's own key, and the
    # columns that identify a record (hashed; identical rows share one leaf).
    - name: {source}
      # csv | parquet (a path or glob, relative to the folder you run commands from),
      # s3 (s3://bucket/key.csv), rdbms (a database URI + extract_transform: SQL),
      # arrow (module:function returning a table).
      location: {{type: csv, name: {csv}}}
      key_field: id
      index_fields: [name, dob, postcode]
  models:
    # A deduper reads one input (`left`); a linker reads `left` and `right`.
    - name: {model}
      left: {{step: {source}}}
      model_class: WeightedRules
      settings:
        # Score = weighted share of agreeing fields; pairs scoring under `threshold` are dropped.
        weights: {{name: 2, dob: 2, postcode: 1}}
        threshold: 0.8
  resolvers:
    # A resolver clusters the edges of the models it lists, each kept at or above its
    # threshold. List every model that scores its sources: one left out is refused (put it
    # under `exclude` to leave it out on purpose).
    - name: {resolver}
      thresholds: {{{model}: 0.8}}
      checks:
        max_cluster_size: 10
        # Ground truth: a polars SQL expression over any column of the source (here the
        # `person` column) giving each record's true entity; enables precision and recall.
        truth: {{{source}: person}}
        min_precision: 0.9
        min_recall: 0.9
"""

SAMPLE_CSV = """\
id,name,dob,postcode,person
1,Ada Lovelace,1815-12-10,W1 1AA,p1
2,Ada Lovelace,1815-12-10,W1 1AB,p1
3,Alan Turing,1912-06-23,SW1 2BB,p2
4,Alan Turing,1912-06-23,SW1 2BB,p2
5,Grace Hopper,1906-12-09,NY1 3CC,p3
6,Grace Hopper,1906-12-09,NY1 3CD,p3
7,Edsger Dijkstra,1930-05-11,NL1 4DD,p4
"""

GITIGNORE = ".matchbox/\n__pycache__/\n"


@dataclass(frozen=True)
class Project:
    """What :func:`init_project` wrote: the folder, its package and its files."""

    root: Path
    package: str
    collection: str
    files: tuple[Path, ...]

    @property
    def definitions(self) -> Path:
        """The ``definitions.py`` the CLI and Dagster load."""
        return self.root / self.package / "definitions.py"

    @property
    def defs_yaml(self) -> Path:
        """The collection's ``defs.yaml``."""
        return self.root / self.package / "defs" / self.collection / "defs.yaml"


def package_name(folder: Path) -> str:
    """A Python package name from a folder name (``my-data`` → ``my_data``)."""
    name = re.sub(r"\W+", "_", folder.resolve().name).strip("_").lower() or "project"
    return f"p_{name}" if name[0].isdigit() else name


def init_project(folder: Path, *, package: str | None = None) -> Project:
    """Write a new project into ``folder`` (created; refused if it holds any file)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise MatchboxInvalidData(
            f"{str(folder)!r} is not empty; `matchbox-dagster init` writes a new project into an "
            "empty or new folder."
        )
    package = package or package_name(folder)
    if not package.isidentifier():
        raise MatchboxInvalidData(f"{package!r} is not a Python package name.")
    collection = package
    fields = {
        "package": package,
        "collection": collection,
        "source": "records",
        "csv": "data/records.csv",
        "model": "dedupe_records",
        "resolver": "entities",
    }
    files = {
        "pyproject.toml": PYPROJECT.format(**fields),
        ".gitignore": GITIGNORE,
        "data/records.csv": SAMPLE_CSV,
        f"{package}/__init__.py": f'"""The {package} project."""\n',
        f"{package}/definitions.py": DEFINITIONS.format(**fields),
        f"{package}/defs/__init__.py": "",
        f"{package}/defs/{collection}/defs.yaml": DEFS_YAML.format(**fields),
    }
    written = []
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return Project(root=folder, package=package, collection=collection, files=tuple(written))
