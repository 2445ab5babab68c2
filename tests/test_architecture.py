"""The package's layers, checked by reading every module's imports with ``ast``.

Each layer may not import what its row of :data:`RULES` forbids (docs/architecture.md draws
them); no module is over :data:`MAX_LINES` lines. Imports count wherever they are written: at
the top, inside functions, under ``if TYPE_CHECKING:``, relative ones, and
``importlib.import_module("...")`` / ``__import__("...")`` called with a string literal.

The checkers take a package root, so the tests below also run them on small trees written under
``tmp_path`` that break each rule once, proving each kind of violation is caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

import matchbox_dagster

PACKAGE_ROOT = Path(matchbox_dagster.__file__).parent
MAX_LINES = 500

DAGSTER = ("dagster", "dagster_*", "matchbox_dagster.dagster")
"""Dagster itself, its integration packages (dagster_aws, dagster_postgres, ...) and our layer."""


@dataclass(frozen=True)
class Rule:
    """Modules in ``layer`` (a module or package) may not import ``forbidden`` unless ``allowed``.

    ``except_in`` exempts modules of the layer. A pattern names a module and all below it; ``*``
    matches within one dotted name (``dagster_*``).
    """

    layer: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    except_in: tuple[str, ...] = ()


MB = "matchbox_dagster"
ABOVE_STORE = ("specs", "sources", "methods", "evaluation", "review", "cli")
"""Layers above the store, which it never imports."""

# fmt: off
RULES: tuple[Rule, ...] = (
    # layer                  may not import                                unless it is in
    Rule(f"{MB}.common",     (MB,),                                        (f"{MB}.common",)),
    Rule(f"{MB}.store",      (*DAGSTER, *(f"{MB}.{up}" for up in ABOVE_STORE))),
    Rule(f"{MB}.sources",    DAGSTER),
    Rule(f"{MB}.methods",    (*DAGSTER, f"{MB}.store", f"{MB}.sources")),
    Rule(f"{MB}.evaluation", DAGSTER),
    Rule(f"{MB}.specs",      DAGSTER),
    Rule(f"{MB}.review",     DAGSTER),
    Rule(f"{MB}.examples",   (*DAGSTER, MB),                               (f"{MB}.specs",
                                                                            f"{MB}.common")),
    # every other module (the root package, any new one) but the Dagster layer and the CLI:
    Rule(MB,                 DAGSTER,            except_in=(f"{MB}.dagster", f"{MB}.cli")),
)
# fmt: on


@dataclass(frozen=True)
class Violation:
    """One forbidden import: where it is written and what it imports."""

    path: str
    line: int
    module: str
    imported: str
    layer: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.module} imports {self.imported} "
            f"(forbidden in {self.layer}, see RULES in tests/test_architecture.py)"
        )


def _within(module: str, pattern: str) -> bool:
    """Whether ``module`` is ``pattern`` or below it (``*`` matches within one dotted name)."""
    parts, wanted = module.split("."), pattern.split(".")
    return len(parts) >= len(wanted) and all(map(fnmatchcase, parts, wanted))


def _modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(
    tree: ast.AST, module: str, is_package: bool, known: set[str]
) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``tree``, at any depth."""
    package = module if is_package else module.rpartition(".")[0]

    def absolute(name: str | None, level: int) -> str:
        if not level:
            return name or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, name] if name else base)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module, node.level)
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    text = first.value
                    level = len(text) - len(text.lstrip("."))
                    yield node.lineno, absolute(text.lstrip(".") or None, level)


def import_violations(root: Path) -> list[Violation]:
    """Every import in the package at ``root`` that :data:`RULES` forbids (one per import)."""
    modules = _modules(root)
    known = set(modules)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, imported in _imports(tree, module, path.name == "__init__.py", known):
            for rule in RULES:
                if (
                    _within(module, rule.layer)
                    and not any(_within(module, x) for x in rule.except_in)
                    and any(_within(imported, x) for x in rule.forbidden)
                    and not any(_within(imported, x) for x in rule.allowed)
                ):
                    rel = path.relative_to(root.parent).as_posix()
                    found.append(Violation(rel, line, module, imported, rule.layer))
                    break
    return found


def oversized_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``"path: N lines"`` for every module under ``root`` longer than ``limit`` lines."""
    found = []
    for path in _modules(root).values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root.parent).as_posix()}: {lines} lines")
    return found


# --- the real package ------------------------------------------------------------------------


def test_the_package_keeps_its_import_rules() -> None:
    """No module of matchbox_dagster imports what its layer forbids."""
    violations = import_violations(PACKAGE_ROOT)
    assert not violations, "Forbidden imports:\n" + "\n".join(map(str, violations))


def test_no_module_of_the_package_is_over_the_line_budget() -> None:
    """Every module of matchbox_dagster stays within MAX_LINES lines."""
    oversized = oversized_modules(PACKAGE_ROOT)
    assert not oversized, f"Modules over {MAX_LINES} lines:\n" + "\n".join(oversized)


def test_the_checker_sees_the_whole_package() -> None:
    """The walk finds every layer of the real tree and the imports between them."""
    modules = _modules(PACKAGE_ROOT)
    layers = ("common", "store", "sources", "methods", "evaluation", "specs", "dagster", "examples")
    for layer in layers:
        assert any(_within(m, f"{MB}.{layer}") for m in modules), layer
    assert f"{MB}.cli" in modules
    path = modules[f"{MB}.dagster.collection"]
    imported = {m for _, m in _imports(ast.parse(path.read_text()), "x.y", False, set(modules))}
    for expected in ("dagster", f"{MB}.specs", f"{MB}.dagster.assets"):
        assert any(_within(m, expected) for m in imported), (expected, imported)


# --- the checker, on trees that break each rule once -----------------------------------------

CLEAN_TREE = {
    "__init__.py": '"""Root."""\n',
    "cli.py": "import dagster\nfrom matchbox_dagster.dagster import collection\n",
    "specs.py": "import pydantic\nfrom matchbox_dagster.common import dtos\n"
    "def f():\n    from matchbox_dagster.methods.models import build_model\n",
    "common/__init__.py": "from matchbox_dagster.common.dtos import StepPath\n",
    "common/dtos.py": "from .errors import MatchboxError\nimport pydantic\n",
    "common/errors.py": "class MatchboxError(Exception):\n    pass\n",
    "store/__init__.py": "from matchbox_dagster.store.base import Adapter\n",
    "store/base.py": "from matchbox_dagster.common.dtos import StepPath\nclass Adapter: ...\n",
    "store/postgres/__init__.py": "from ..base import Adapter\nimport psycopg\n",
    "sources/__init__.py": "",
    "sources/inputs.py": "from matchbox_dagster.store.base import Adapter\n"
    "from matchbox_dagster.methods import hashing\nimport dagsterish_lookalike\n",
    "methods/__init__.py": "from . import hashing\n",
    "methods/hashing.py": "import polars\nfrom matchbox_dagster.common.dtos import StepPath\n",
    "evaluation/__init__.py": "from matchbox_dagster.common.errors import MatchboxError\n",
    "examples/__init__.py": "",
    "examples/febrl.py": "from matchbox_dagster.specs import CollectionSpec\n"
    "from matchbox_dagster.common.dtos import StepPath\n",
    "dagster/__init__.py": "from matchbox_dagster.dagster.collection import build\n",
    "dagster/collection.py": "import dagster as dg\nimport dagster_aws.s3\n"
    "from matchbox_dagster.store.base import Adapter\nfrom matchbox_dagster import specs\n",
}


def _write_tree(base: Path, files: dict[str, str]) -> Path:
    root = base / MB
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_tree_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    """Allowed imports (each row's exceptions, the Dagster layer, the CLI) raise nothing."""
    root = _write_tree(tmp_path, CLEAN_TREE)
    assert import_violations(root) == []
    assert oversized_modules(root) == []


BROKEN = [
    # (file, code appended to it (its last line is the offending import), module reported)
    ("common/dtos.py", "from matchbox_dagster.store.base import Adapter", f"{MB}.store.base"),
    ("common/dtos.py", "from ..specs import CollectionSpec", f"{MB}.specs"),
    ("common/fresh.py", "import matchbox_dagster", MB),
    ("store/postgres/writes.py", "import dagster as dg", "dagster"),
    ("store/base.py", "def f():\n    from dagster_aws.s3 import S3Resource", "dagster_aws.s3"),
    ("store/postgres/writes.py", "from matchbox_dagster.specs import plan", f"{MB}.specs"),
    ("store/base.py", "from ..sources import inputs", f"{MB}.sources.inputs"),
    ("sources/inputs.py", "from matchbox_dagster.dagster import io_manager", f"{MB}.dagster"),
    ("methods/hashing.py", "import importlib\nimportlib.import_module('dagster')", "dagster"),
    ("methods/hashing.py", "from matchbox_dagster.store.base import Adapter", f"{MB}.store.base"),
    ("methods/models/base.py", "from matchbox_dagster import sources", f"{MB}.sources"),
    ("methods/hashing.py", "from ..sources.inputs import x", f"{MB}.sources.inputs"),
    (
        "evaluation/metrics.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dagster",
        "dagster",
    ),
    ("specs.py", "from dagster import Definitions", "dagster"),
    (
        "examples/febrl.py",
        "from matchbox_dagster.dagster.collection import build",
        f"{MB}.dagster.collection",
    ),
    ("examples/febrl.py", "from matchbox_dagster.store import base", f"{MB}.store.base"),
    ("examples/febrl.py", "import dagster", "dagster"),
    ("__init__.py", "__import__('matchbox_dagster.dagster')", f"{MB}.dagster"),
    ("newroom/commands.py", "import dagster as dg", "dagster"),
    (
        "review/app.py",
        "from matchbox_dagster.dagster.resources import R",
        f"{MB}.dagster.resources",
    ),
]


@pytest.mark.parametrize(("name", "code", "imported"), BROKEN)
def test_each_kind_of_violation_is_caught(
    tmp_path: Path, name: str, code: str, imported: str
) -> None:
    """One forbidden import added to a clean tree is reported with its file, line and module."""
    files = dict(CLEAN_TREE)
    before = files.get(name, '"""A new module."""\n')
    files[name] = before + code + "\n"
    root = _write_tree(tmp_path, files)
    violations = import_violations(root)
    assert len(violations) == 1, violations
    (found,) = violations
    assert (found.path, found.line, found.imported) == (
        f"{MB}/{name}",
        before.count("\n") + code.count("\n") + 1,
        imported,
    )
    assert f"{MB}/{name}:{found.line}: " in str(found) and imported in str(found)


def test_modules_over_the_budget_are_named_with_their_length(tmp_path: Path) -> None:
    """A 501-line module is reported with its length; a 500-line one is not."""
    files = dict(CLEAN_TREE)
    files["store/postgres/admin.py"] = "x = 1\n" * (MAX_LINES + 1)
    files["store/postgres/auth.py"] = "x = 1\n" * MAX_LINES
    root = _write_tree(tmp_path, files)
    assert oversized_modules(root) == [f"{MB}/store/postgres/admin.py: {MAX_LINES + 1} lines"]
