"""Organisation-name, postcode and company-number cleaning as polars expressions.

Every function takes a column (a name or a polars expression) and returns a vectorised
:class:`polars.Expr`, so any model, a spec's ``cleaning:`` or user code can use it::

    frame.with_columns(org_name_core("name").alias("name_core"),
                       postcode_district("postcode").alias("district"))

A name is lower-cased, ``&`` becomes ``and``, apostrophes go, other punctuation becomes a space,
a leading "the" goes, multi-word legal forms are shortened (``public limited company`` → ``plc``,
``limited liability partnership`` → ``llp``, ``and co`` → ``co``), and each word is mapped
through a dictionary of abbreviations and legal forms (``limited`` → ``ltd``, ``intl`` →
``international``; both dictionaries are arguments). The normalised name then splits into:

* its **legal form** (``ltd``, ``plc``, ``llp``, ``co``, …: :func:`org_legal_form`);
* its **distinguishing tokens** (``holdings``, ``trading``, ``services``, …:
  :func:`org_name_tokens`, sorted and space-separated), the words that tell sister companies apart;
* its **core** (:func:`org_name_core`): the rest, without ``and``.

In a spec, a ``cleaning:`` entry may name a building block instead of polars SQL: the value
``"org_name_core(name)"`` (one column argument) is resolved by :func:`cleaning_expr`; any other
text is polars SQL as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping

import polars as pl

ColumnLike = str | pl.Expr

LEGAL_FORMS: dict[str, str] = {
    "limited": "ltd",
    "ltd": "ltd",
    "plc": "plc",
    "llp": "llp",
    "lp": "lp",
    "company": "co",
    "co": "co",
    "corporation": "corp",
    "corp": "corp",
    "incorporated": "inc",
    "inc": "inc",
    "cic": "cic",
    "llc": "llc",
    "gmbh": "gmbh",
}
"""Word → canonical legal form (the values are the legal-form tokens)."""

PHRASES: dict[str, str] = {
    r"\bpublic limited company\b": "plc",
    r"\blimited liability partnership\b": "llp",
    r"\blimited partnership\b": "lp",
    r"\bcommunity interest company\b": "cic",
    r"\band (co|company)\b": "co",
    r"\bp l c\b": "plc",
    r"\bl l p\b": "llp",
}
"""Multi-word legal forms (regular expressions on the lower-cased name) → one token."""

ABBREVIATIONS: dict[str, str] = {
    "intl": "international",
    "int": "international",
    "natl": "national",
    "mfg": "manufacturing",
    "mfrs": "manufacturers",
    "eng": "engineering",
    "engg": "engineering",
    "svcs": "services",
    "svc": "services",
    "serv": "services",
    "hldgs": "holdings",
    "hldg": "holdings",
    "grp": "group",
    "bros": "brothers",
    "assoc": "associates",
    "assocs": "associates",
    "mgmt": "management",
    "mgt": "management",
    "dev": "developments",
    "devs": "developments",
    "props": "properties",
    "prop": "properties",
    "invs": "investments",
    "inv": "investments",
    "tech": "technology",
    "techs": "technologies",
    "sys": "systems",
    "elec": "electrical",
    "constr": "construction",
    "contr": "contractors",
    "dist": "distribution",
    "trdg": "trading",
    "utd": "united",
    "gb": "uk",
    "st": "saint",
    "ctr": "centre",
    "center": "centre",
}
"""Default abbreviation → full word (pass your own to the functions to change it)."""

DISTINGUISHING: frozenset[str] = frozenset(
    {
        "holdings",
        "holding",
        "trading",
        "services",
        "group",
        "properties",
        "property",
        "investments",
        "estates",
        "developments",
        "management",
        "international",
        "uk",
        "europe",
        "global",
        "finance",
        "leasing",
        "retail",
        "wholesale",
        "logistics",
        "consulting",
        "solutions",
        "enterprises",
        "ventures",
        "capital",
        "nominees",
        "trustees",
        "2000",
    }
)
"""Default words that distinguish companies sharing a core name (sister companies)."""

_DROP_FROM_CORE = ("and", "the", "of")
REAL_WORDS: frozenset[str] = frozenset({"capita", "fiance", "holing", "lasing"})
"""Words that are one-letter misspellings of a default distinguishing word, never read as it."""


def typo_variants(
    words: Collection[str], min_length: int = 7, avoid: Collection[str] = ()
) -> dict[str, str]:
    """Misspellings by one letter → the word, for each of ``words`` of ``min_length`` or more.

    A misspelling drops a letter or swaps two neighbours, after the first letter (a first
    letter is seldom mistyped, and changing it makes words: "leasing" → "easing"); a replaced
    letter is not one (it too makes words: "trading" → "grading"). A misspelling that is one
    of ``words``, one of two of them, in ``avoid`` or in :data:`REAL_WORDS` is left out.
    Passed with the abbreviations, it lets ``Acme Holdngs`` keep its distinguishing word.
    """
    found: dict[str, set[str]] = {}
    for word in words:
        if len(word) < min_length:
            continue
        variants = {word[:i] + word[i + 1 :] for i in range(1, len(word))}
        variants |= {
            word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(1, len(word) - 1)
        }
        for variant in variants - {word}:
            found.setdefault(variant, set()).add(word)
    blocked = set(words) | set(avoid) | REAL_WORDS
    return {v: next(iter(w)) for v, w in found.items() if len(w) == 1 and v not in blocked}


def _col(column: ColumnLike) -> pl.Expr:
    return pl.col(column) if isinstance(column, str) else column


def _plain(text: pl.Expr) -> pl.Expr:
    """Lower-case words: apostrophes dropped, any other run of punctuation one space, trimmed."""
    return (
        text.str.to_lowercase()
        .str.replace_all(r"['’`]", "")
        .str.replace_all(r"[^a-z0-9]+", " ")
        .str.strip_chars()
    )


def _map_words(words: pl.Expr, mapping: Mapping[str, str]) -> pl.Expr:
    """Space-separated words each mapped through ``mapping`` (a word mapped to "" goes).

    Each word gets a space of its own on both sides, so one pass of literal replacements
    (``" st "`` → ``" street "``) maps adjacent words too; no list is built (a list
    evaluation per row held ~7 MB more memory than this on 34k names).
    """
    if not mapping:
        return words
    spaced = pl.lit(" ") + words.str.replace_all(" ", "  ", literal=True) + pl.lit(" ")
    mapped = spaced.str.replace_many(
        [f" {k} " for k in mapping], [f" {v} " for v in mapping.values()]
    )
    return mapped.str.replace_all(" +", " ").str.strip_chars()


def _tokens(column: ColumnLike, abbreviations: Mapping[str, str] | None = None) -> pl.Expr:
    """The normalised words of a name as a list (abbreviations and legal forms mapped)."""
    mapping = {**(ABBREVIATIONS if abbreviations is None else abbreviations), **LEGAL_FORMS}
    text = _plain(
        _col(column).cast(pl.String).str.replace_all("&", " and ", literal=True)
    ).str.replace(r"^the ", "")
    for pattern, replacement in PHRASES.items():
        text = text.str.replace_all(pattern, replacement)
    # Words of a name that is only punctuation: none (not one empty word).
    return (
        _map_words(text, mapping).str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    )


def _joined(tokens: pl.Expr) -> pl.Expr:
    """Space-joined tokens, null when none are left."""
    joined = tokens.list.join(" ")
    return pl.when(joined != "").then(joined)


def org_name(column: ColumnLike, abbreviations: Mapping[str, str] | None = None) -> pl.Expr:
    """The whole name normalised (case, punctuation, ``&``, "the", legal form, abbreviations)."""
    return _joined(_tokens(column, abbreviations))


def org_legal_form(column: ColumnLike) -> pl.Expr:
    """The name's last legal-form token (``ltd``, ``plc``, ``llp``, ``co``, …), else null."""
    forms = sorted(set(LEGAL_FORMS.values()))
    return _tokens(column).list.eval(pl.element().filter(pl.element().is_in(forms))).list.last()


def org_name_tokens(
    column: ColumnLike,
    abbreviations: Mapping[str, str] | None = None,
    distinguishing: Collection[str] | None = None,
) -> pl.Expr:
    """The distinguishing words (``holdings``, ``services``, …), sorted, space-joined; else null."""
    return tokens_of(_tokens(column, abbreviations), distinguishing)


def tokens_of(words: pl.Expr, distinguishing: Collection[str] | None = None) -> pl.Expr:
    """:func:`org_name_tokens` of an already normalised word list (:func:`org_words`)."""
    wanted = sorted(DISTINGUISHING if distinguishing is None else distinguishing)
    found = words.list.eval(pl.element().filter(pl.element().is_in(wanted)))
    return _joined(found.list.unique().list.sort())


def org_name_core(
    column: ColumnLike,
    abbreviations: Mapping[str, str] | None = None,
    distinguishing: Collection[str] | None = None,
) -> pl.Expr:
    """The name without legal form, distinguishing words, "and", "the" and "of"; else null.

    A name made only of such words (``"Holdings Ltd"``) keeps them, so it is never empty.
    """
    return core_of(_tokens(column, abbreviations), distinguishing)


def core_of(words: pl.Expr, distinguishing: Collection[str] | None = None) -> pl.Expr:
    """:func:`org_name_core` of an already normalised word list (:func:`org_words`)."""
    drop = sorted(
        {*LEGAL_FORMS.values(), *_DROP_FROM_CORE}
        | set(DISTINGUISHING if distinguishing is None else distinguishing)
    )
    core = words.list.eval(pl.element().filter(~pl.element().is_in(drop)))
    return _joined(pl.when(core.list.len() > 0).then(core).otherwise(words))


def org_words(column: ColumnLike, abbreviations: Mapping[str, str] | None = None) -> pl.Expr:
    """The normalised words of a name as a list (to derive core and tokens from one pass)."""
    return _tokens(column, abbreviations)


def postcode_clean(column: ColumnLike) -> pl.Expr:
    """A UK-style postcode upper-cased with one space before the inward code (``SW1A 1AA``).

    Anything not 5–7 letters and digits after removing spaces and punctuation is null.
    """
    compact = _col(column).cast(pl.String).str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")
    valid = compact.str.contains(r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$")
    return pl.when(valid).then(
        pl.concat_str(
            compact.str.slice(0, compact.str.len_chars() - 3), pl.lit(" "), compact.str.slice(-3)
        )
    )


def postcode_district(column: ColumnLike) -> pl.Expr:
    """The outward code (district) of a UK-style postcode (``SW1A 1AA`` → ``SW1A``), else null."""
    return district_of(postcode_clean(column))


def postcode_sector(column: ColumnLike) -> pl.Expr:
    """The sector of a UK-style postcode (``SW1A 1AA`` → ``SW1A 1``), else null."""
    return sector_of(postcode_clean(column))


def postcode_area(column: ColumnLike) -> pl.Expr:
    """The postcode area, its leading letters (``SW1A 1AA`` → ``SW``), else null."""
    return area_of(postcode_clean(column))


def district_of(clean: pl.Expr) -> pl.Expr:
    """:func:`postcode_district` of a postcode already cleaned by :func:`postcode_clean`."""
    return clean.str.slice(0, clean.str.len_chars() - 4)


def sector_of(clean: pl.Expr) -> pl.Expr:
    """:func:`postcode_sector` of a postcode already cleaned by :func:`postcode_clean`."""
    return clean.str.slice(0, clean.str.len_chars() - 2)


def area_of(clean: pl.Expr) -> pl.Expr:
    """:func:`postcode_area` of a postcode already cleaned by :func:`postcode_clean`."""
    return clean.str.extract(r"^([A-Z]{1,2})")


def company_number_clean(column: ColumnLike) -> pl.Expr:
    """A company number upper-cased without punctuation, digits zero-padded to 8; else null.

    ``"1234567"`` → ``"01234567"``, ``"sc 123456"`` → ``"SC123456"``; all zeros is null.
    """
    compact = _col(column).cast(pl.String).str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")
    padded = (
        pl.when(compact.str.contains(r"^[0-9]+$")).then(compact.str.zfill(8)).otherwise(compact)
    )
    return pl.when((compact != "") & ~compact.str.contains(r"^0+$")).then(padded)


def town_clean(column: ColumnLike) -> pl.Expr:
    """A town lower-cased without punctuation and a leading "the"; else null."""
    text = _plain(_col(column).cast(pl.String)).str.replace(r"^the ", "")
    return pl.when(text != "").then(text)


ADDRESS_WORDS: dict[str, str] = {
    "st": "street",
    "rd": "road",
    "ave": "avenue",
    "ln": "lane",
    "dr": "drive",
    "ct": "court",
    "pl": "place",
    "sq": "square",
    "ind": "industrial",
    "est": "estate",
    "bus": "business",
    "pk": "park",
    "bldg": "building",
    "flr": "floor",
    "no": "",
}
"""Default address abbreviation → word (an empty word is dropped)."""


def address_clean(column: ColumnLike, words: Mapping[str, str] | None = None) -> pl.Expr:
    """An address lower-cased, without punctuation, its abbreviations expanded; else null."""
    mapping = ADDRESS_WORDS if words is None else words
    text = _map_words(_plain(_col(column).cast(pl.String)), mapping)
    return pl.when(text != "").then(text)


BUILDING_BLOCKS: dict[str, Callable[[ColumnLike], pl.Expr]] = {
    "address_clean": address_clean,
    "org_name": org_name,
    "org_name_core": org_name_core,
    "org_name_tokens": org_name_tokens,
    "org_legal_form": org_legal_form,
    "postcode_clean": postcode_clean,
    "postcode_district": postcode_district,
    "postcode_sector": postcode_sector,
    "postcode_area": postcode_area,
    "company_number_clean": company_number_clean,
    "town_clean": town_clean,
}
"""Building blocks a spec's ``cleaning:`` may name, each applied to one column."""

_CALL = re.compile(r"^\s*([a-z_]+)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def cleaning_expr(text: str) -> pl.Expr:
    """A cleaning entry as an expression: ``"block(column)"`` for a building block, else SQL.

    ``"org_name_core(name)"`` is :func:`org_name_core` on column ``name``; text that does not
    name a building block of :data:`BUILDING_BLOCKS` (``"upper(name)"``, ``"trim(a) || b"``) is
    polars SQL, as every cleaning entry was before.
    """
    match = _CALL.match(text)
    if match and match.group(1) in BUILDING_BLOCKS:
        return BUILDING_BLOCKS[match.group(1)](match.group(2))
    return pl.sql_expr(text)
