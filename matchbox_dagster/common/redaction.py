"""Redaction and credential references: URIs and messages made safe to log, store and show.

A source location never holds a password (:func:`literal_password` finds one, and
:class:`~matchbox_dagster.common.dtos.LocationConfig` refuses it). It may reference one held
in the environment, ``postgresql://user:${PG_PASSWORD}@host/db`` (or ``?password=${NAME}``),
which :func:`resolve_credentials` fills in at connect time only, percent-encoded.
:func:`redact` and :func:`redact_text` take passwords out of URIs and messages, in their raw,
percent-encoded and decoded forms.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote

from matchbox_dagster.common.errors import MatchboxInvalidData

MASK = "***"
SECRET_PARAMETERS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token"})
"""Query-string parameters whose values are secrets (compared case-insensitively)."""

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""``${NAME}``: a value read from the environment variable ``NAME`` at connect time."""

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_PAIR = re.compile(
    r"(?i)\b(" + "|".join(sorted(SECRET_PARAMETERS)) + r")(\s*[=:]\s*)([^\s&;,'\"]+)"
)
_ODBC_PASSWORD = re.compile(r"(?i)\bpwd\s*=")


def _split_query(query: str) -> list[tuple[str, str, str]]:
    """``(name, separator, value)`` of each ``&``-separated query part, as written."""
    parts = []
    for part in query.split("&") if query else []:
        name, equals, value = part.partition("=")
        parts.append((name, equals, value))
    return parts


def _reference(value: str) -> bool:
    """Whether a password is a ``${NAME}`` reference (shown as is: it holds no secret)."""
    return bool(ENV_REFERENCE.fullmatch(unquote(value)))


def _is_secret(name: str) -> bool:
    return unquote(name).strip().lower() in SECRET_PARAMETERS


def _masked(name: str, equals: str, value: str) -> str:
    """A query part with its value masked when it is (or holds, ODBC-style) a password."""
    if equals and not _reference(value):
        if _is_secret(name) or _ODBC_PASSWORD.search(unquote(value)):
            return f"{name}{equals}{MASK}"
    return f"{name}{equals}{value}"


def redact(uri: str) -> str:
    """``uri`` with any password (user info or query string) replaced by ``***``.

    The rest is kept as written (nothing re-encoded, ``sqlite:///file`` stays as it is), so a
    percent-encoded password is replaced whole. A ``${NAME}`` reference is kept: it is no
    secret.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    # The user info runs to the last "@" before the query: a password written unencoded may
    # hold "/" or "@" itself (masking too much is the safe mistake).
    end = min([len(rest), *(i for i in (rest.find(c) for c in "?#") if i >= 0)])
    at = rest.rfind("@", 0, end)
    cut = min([len(rest), *(i for i in (rest.find(c, at + 1) for c in "/?#") if i >= 0)])
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon and not _reference(password):
            netloc = f"{user}:{MASK}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        query = "&".join(_masked(*part) for part in _split_query(query)) + hash_ + fragment
    return f"{scheme}{sep}{netloc}{path}{question}{query}"


def _forms(secret: str) -> list[str]:
    """A secret as it may appear: raw, decoded, percent-encoded (longest first)."""
    forms = {secret, unquote(secret), quote(secret, safe=""), quote_plus(secret, safe="")}
    forms |= {quote(unquote(secret), safe=""), quote_plus(unquote(secret), safe="")}
    return sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URI redacted, ``password=…`` pairs masked and ``secrets`` removed.

    Each secret is removed in its raw, decoded and percent-encoded forms (a driver may echo a
    password either way).
    """
    for secret in secrets:
        for form in _forms(secret):
            text = text.replace(form, MASK)
    text = _URI.sub(lambda m: redact(m.group(0)), text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def literal_password(uri: str) -> bool:
    """Whether ``uri`` carries a password as text (not as a ``${NAME}`` reference)."""
    return redact(uri) != uri


def credential_references(uri: str) -> list[str]:
    """The environment variables a URI references (``${NAME}``), in order."""
    return ENV_REFERENCE.findall(unquote(uri))


def resolve_credentials(
    uri: str, environ: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """``uri`` with each ``${NAME}`` replaced by that variable's value (percent-encoded).

    Returns the connectable URI and the secret values (for :func:`redact_text`). Call it only
    where the connection is made; never store, log or show its result. A variable that is not
    set raises :class:`MatchboxInvalidData` naming the variable.
    """
    env = os.environ if environ is None else environ
    names = credential_references(uri)
    missing = [n for n in names if n not in env]
    if missing:
        raise MatchboxInvalidData(
            f"The location {redact(uri)} references environment variable(s) {missing}, which "
            "are not set where this runs: set them (e.g. in the code location's environment)."
        )
    secrets = [env[n] for n in names]
    resolved = ENV_REFERENCE.sub(lambda m: quote(env[m.group(1)], safe=""), unquote_refs(uri))
    return resolved, secrets


def unquote_refs(uri: str) -> str:
    """``uri`` with percent-encoded ``${NAME}`` references (``%24%7BNAME%7D``) decoded."""
    return re.sub(
        r"%24%7B([A-Za-z_][A-Za-z0-9_]*)%7D", lambda m: "${" + m.group(1) + "}", uri, flags=re.I
    )
