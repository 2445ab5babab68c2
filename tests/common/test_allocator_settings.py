"""Importing the package sets the allocators to return freed memory, unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from matchbox_dagster import RETURN_MEMORY

JEMALLOC, MIMALLOC = "_RJEM_MALLOC_CONF", "MIMALLOC_PURGE_DELAY"
SHOW = (
    "import os\n{before}\nimport matchbox_dagster\n"
    f"print(repr(os.environ.get({JEMALLOC!r})), repr(os.environ.get({MIMALLOC!r})))"
)
UNSET = (JEMALLOC, MIMALLOC, "POLARS_THP", "MATCHBOX_RETURN_MEMORY")


def _run(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _settings(before: str = "", **env: str) -> tuple[str | None, str | None]:
    jemalloc, mimalloc = _run(SHOW.format(before=before), env).split()
    return eval(jemalloc), eval(mimalloc)  # reprs of str or None


def test_import_sets_both_allocators_when_unset() -> None:
    assert _settings() == (RETURN_MEMORY[JEMALLOC], RETURN_MEMORY[MIMALLOC])


def test_a_users_value_is_kept() -> None:
    value = "dirty_decay_ms:5000"
    assert _settings(**{JEMALLOC: value, MIMALLOC: value}) == (value, value)
    # polars loaded first puts the user's value after its own (the user's options win)
    jemalloc, _ = _settings(before="import polars", **{JEMALLOC: value})
    assert jemalloc.endswith(value)


@pytest.mark.parametrize("before", ["", "import polars"])
def test_matchbox_return_memory_0_sets_nothing(before: str) -> None:
    jemalloc, mimalloc = _settings(before=before, MATCHBOX_RETURN_MEMORY="0")
    assert mimalloc is None and not (jemalloc or "").endswith(RETURN_MEMORY[JEMALLOC])


@pytest.mark.parametrize("thp", ["0", "1"])
def test_after_polars_its_own_setting_is_extended_for_the_processes_started(thp: str) -> None:
    """Too late for this process's polars, not for Dagster's step processes (they inherit it)."""
    jemalloc, mimalloc = _settings(before="import polars", POLARS_THP=thp)
    assert jemalloc.startswith("dirty_decay_ms:500") and jemalloc.endswith(RETURN_MEMORY[JEMALLOC])
    assert mimalloc == RETURN_MEMORY[MIMALLOC]
    # A process started now: polars puts its own setting before the inherited one, which wins.
    child = _run("import polars, os; print(os.environ['_RJEM_MALLOC_CONF'])", {JEMALLOC: jemalloc})
    assert child.endswith(RETURN_MEMORY[JEMALLOC])


def test_polars_setting_inherited_through_processes_that_loaded_polars_is_extended() -> None:
    """A process started by one that loaded polars (and not this package) before it."""
    grandparent = _run("import polars, os; print(os.environ['_RJEM_MALLOC_CONF'])", {})
    jemalloc, _ = _settings(before="import polars", **{JEMALLOC: grandparent})
    assert jemalloc.count("dirty_decay_ms:500") == 2
    assert jemalloc.endswith(RETURN_MEMORY[JEMALLOC])


def test_freed_memory_is_returned_at_once_in_a_process_started_after_polars() -> None:
    """The effect itself: a grouped frame's memory is back with the system right after del."""
    code = (
        "import polars as pl, time\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
        "df = pl.DataFrame({'a': pl.int_range(0, 5_000_000, eager=True) % 2_000_000})\n"
        "base = rss(); g = df.group_by('a').len(); del g; time.sleep(0.05)\n"
        "print(rss() - base)"
    )
    parent = _settings(before="import polars")[0]  # what a step process inherits
    kept_by_default = int(_run(code, {}))
    kept_now = int(_run(code, {JEMALLOC: parent}))
    assert kept_now < kept_by_default / 2, (kept_now, kept_by_default)
