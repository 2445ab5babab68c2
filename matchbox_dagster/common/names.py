"""Names and text the store can hold: what a collection, step, group or user may be called."""

from __future__ import annotations

import re

from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxNameError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
"""Names of collections, steps and groups: letters, digits, ``_``, ``.``, ``-``; 1–200 long."""


def validate_name(value: str) -> str:
    """Return ``value`` if it is a valid matchbox name, else raise :class:`MatchboxNameError`."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) < 60 else value[:57] + "..."
        raise MatchboxNameError(
            f"Name {shown!r} is not allowed: use 1 to 200 letters, digits, underscores, dots "
            "or hyphens (for example 'companies', 'dedupe_crm.v2')."
        )
    return value


def is_valid_name(value: object) -> bool:
    """Whether ``value`` is a valid matchbox name (so a lookup by it can match anything)."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


MAX_USER_NAME_LENGTH = 500
"""Longest user name (and judgement tag): within PostgreSQL's B-tree limit in any script."""


def validate_text(value: str, what: str, *, max_length: int | None = None) -> str:
    """Return ``value`` if PostgreSQL can store it as text, else raise ``MatchboxInvalidData``.

    Refused: non-strings, NUL characters and lone surrogates (not Unicode text), and strings
    longer than ``max_length`` characters.
    """
    if not isinstance(value, str):
        raise MatchboxInvalidData(f"{what} must be a string, not {type(value).__name__}.")
    if "\x00" in value:
        raise MatchboxInvalidData(f"{what} contains a NUL character, which text cannot hold.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MatchboxInvalidData(
            f"{what} is not valid Unicode text (it contains a lone surrogate)."
        ) from None
    if max_length is not None and len(value) > max_length:
        raise MatchboxInvalidData(
            f"{what} has {len(value):,} characters; at most {max_length:,} are allowed."
        )
    return value


def validate_user_name(value: str) -> str:
    """Return ``value`` if it is a valid user name (1 to 500 characters of text)."""
    validate_text(value, "A user name", max_length=MAX_USER_NAME_LENGTH)
    if not value:
        raise MatchboxInvalidData("A user name must not be empty.")
    return value
