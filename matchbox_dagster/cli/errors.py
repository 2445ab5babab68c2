"""The CLI's errors: one line, ``error: <cause>. Hint: <what to do>``, and an exit code.

Imports nothing heavy (the parser and every command's failure path use it); the classes of
errors it explains are imported only when an error is explained.
"""

from __future__ import annotations

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
    spec_problems = getattr(exc.__cause__, "problems", None) or getattr(exc, "problems", None)
    if spec_problems and len(spec_problems) > 1:  # a spec's graph: every problem, one per line
        return CliError(str(exc), "fix each problem (file and line where shown) and run again")
    if type(exc.__cause__).__name__ == "SpecError":  # Dagster's wrapping of one spec problem
        return CliError(text, "correct the spec as said above")
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
    return module.startswith(("sqlalchemy", "psycopg")) and "OperationalError" in type(exc).__name__
