"""matchbox-dagster: entity resolution as Dagster assets on a PostgreSQL store."""

import os

__version__ = "0.1.0"

RETURN_MEMORY = {
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",  # polars' jemalloc
    "MIMALLOC_PURGE_DELAY": "0",  # pyarrow's mimalloc (Arrow's default pool)
}
"""Allocator settings that return freed memory to the system at once (polars' own setting keeps
it for 0.5–1 s), so the phases of a step (load, resolve, store, checks) and the operators of one
polars query do not stack their peaks. Set on import unless set already or
``MATCHBOX_RETURN_MEMORY=0`` (see docs/dagster.md)."""

_POLARS_OWN = {"dirty_decay_ms:500", "muzzy_decay_ms:1000", "thp:always", "metadata_thp:always"}
"""The options ``import polars`` (1.x–2.x) writes to ``_RJEM_MALLOC_CONF`` when the user set
nothing (once per process: a process started by one that loaded polars holds them repeated)."""


def _return_memory() -> None:
    """Set :data:`RETURN_MEMORY` where the user has not.

    Effective for this process when its allocator is not loaded yet, and always for the
    processes it starts (Dagster's step processes inherit the environment).
    """
    if os.environ.get("MATCHBOX_RETURN_MEMORY", "").strip().lower() in {"0", "false", "no"}:
        return
    for variable, value in RETURN_MEMORY.items():
        current = os.environ.get(variable)
        if current is None:
            os.environ[variable] = value
        elif variable == "_RJEM_MALLOC_CONF" and set(current.split(",")) <= _POLARS_OWN:
            # polars loaded first and wrote its own default (no user value): later options win
            os.environ[variable] = f"{current},{value}"


_return_memory()
