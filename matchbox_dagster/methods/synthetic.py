"""Synthetic people with ground truth, for accuracy tests and benchmarks at any size.

:func:`generate_people` draws ``n_entities`` people and writes each as one or more records, the
extra records (duplicates) corrupted the way real registers are: typos, missing values. Names
follow a Zipf-like law (a few very common names, a long tail of rare ones), so blocking on a
name is as uneven as it is in real data. Everything is vectorised (numpy draws, polars string
expressions): a million records take a few seconds.

The same arguments and ``seed`` give the same frames on every machine (numpy's PCG64 generator;
the name vocabularies are drawn from a fixed seed and do not depend on ``seed``).

Fields
    ``key`` (a record id that says nothing about the entity), ``given_name``, ``surname``,
    ``date_of_birth`` (ISO ``YYYY-MM-DD`` text), ``postcode`` (UK-style ``AB12 3CD``) and
    ``town`` (follows the postcode area).

Corruptions of a duplicate record, each field independently
    with probability ``typo_rate`` one edit — a substituted, deleted, inserted or transposed
    character (a substituted digit for dates, keeping the format); and with probability
    ``missing_rate`` a null, in any record (first records too). The first record of an entity
    has no typos.

Example::

    records, truth = generate_people(10_000, duplicates_rate=0.5, seed=1)
    records.join(truth, on="key")  # key, fields…, entity
"""

from __future__ import annotations

import numpy as np
import polars as pl

FIELDS = ("given_name", "surname", "date_of_birth", "postcode", "town")
"""The fields of a generated record besides ``key``."""

_VOCABULARY_SEED = 20_240_601
_ONSETS = (
    "b br c ch cl d dr f fr g gr h j k l m n p ph pr r s sh st t th tr v w y z "
    "bl gl kr sk sl sm sn sp"
).split()
_VOWELS = "a e i o u a e i o ae ai ea ee ie oa ou y".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "rd", "ll", "nn", "m", "ck", "ng", "x", "t"]
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_DIGITS = np.array(list("0123456789"))
_UPPER = np.array(list("ABCDEFGHJKLMNPRSTUVWXY"))


def _syllables(rng: np.random.Generator, n: int) -> np.ndarray:
    onset = np.array(_ONSETS)[rng.integers(0, len(_ONSETS), n)]
    vowel = np.array(_VOWELS)[rng.integers(0, len(_VOWELS), n)]
    coda = np.array(_CODAS)[rng.integers(0, len(_CODAS), n)]
    return np.char.add(np.char.add(onset, vowel), coda)


def _vocabulary(rng: np.random.Generator, size: int, parts: tuple[int, ...]) -> np.ndarray:
    """``size`` distinct invented words of 2–3 syllables, in a random (frequency) order."""
    words: np.ndarray = np.array([], dtype=str)
    while len(words) < size:
        n = size * 2
        count = rng.choice(parts, n)
        word = np.char.add(_syllables(rng, n), _syllables(rng, n))
        third = _syllables(rng, n)
        word = np.where(count >= 3, np.char.add(word, third), word)
        words = _unique_in_order(np.concatenate([words, word]))
    return words[:size]


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    """Distinct values in order of first appearance."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _zipf_choice(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
    """``n`` indices into ``range(size)`` with P(k) ∝ 1 / (k + 1) ** exponent."""
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    cumulative = np.cumsum(weights)
    return np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right")


_VOCAB_RNG = np.random.default_rng(_VOCABULARY_SEED)
GIVEN_NAMES = _vocabulary(_VOCAB_RNG, 4_000, (2, 2, 3))
SURNAMES = _vocabulary(_VOCAB_RNG, 30_000, (2, 3))
TOWNS = np.char.add(
    _vocabulary(_VOCAB_RNG, 400, (2, 3)), np.array(["ton", "ford", "by", "ham"])[np.arange(400) % 4]
)
_GIVEN = pl.Series(GIVEN_NAMES)
_SURNAMES = pl.Series(SURNAMES)
_TOWNS = pl.Series(TOWNS)
AREAS = _unique_in_order(
    np.char.add(
        _UPPER[_VOCAB_RNG.integers(0, len(_UPPER), 400)],
        _UPPER[_VOCAB_RNG.integers(0, len(_UPPER), 400)],
    )
)[:120]
_AREAS = pl.Series(AREAS)


def generate_people(
    n_entities: int,
    *,
    duplicates_rate: float = 0.5,
    typo_rate: float = 0.1,
    missing_rate: float = 0.05,
    seed: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Records of ``n_entities`` people and their ground truth.

    Each entity gets ``1 + Poisson(duplicates_rate)`` records, so about ``n_entities * (1 +
    duplicates_rate)`` in all, shuffled. Returns ``(records, truth)``: ``records`` has ``key``
    and :data:`FIELDS`; ``truth`` maps each ``key`` to its ``entity`` (0 … n_entities − 1).
    """
    if n_entities < 0:
        raise ValueError(f"n_entities must be >= 0, got {n_entities}")
    for name, rate in (("typo_rate", typo_rate), ("missing_rate", missing_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {rate}")
    if duplicates_rate < 0:
        raise ValueError(f"duplicates_rate must be >= 0, got {duplicates_rate}")
    rng = np.random.default_rng(seed)

    # People: vocabulary indices drawn in numpy, strings gathered in polars.
    area = _zipf_choice(rng, len(AREAS), n_entities, 0.8)
    upper = pl.Series(_UPPER)
    people = pl.DataFrame(
        {
            "entity": np.arange(n_entities, dtype=np.int64),
            "given_name": _GIVEN.gather(_zipf_choice(rng, len(_GIVEN), n_entities, 0.8)),
            "surname": _SURNAMES.gather(_zipf_choice(rng, len(_SURNAMES), n_entities, 0.75)),
            "date_of_birth": pl.Series(rng.integers(0, 80 * 365, n_entities), dtype=pl.Int32),
            "area": _AREAS.gather(area),
            "district": pl.Series(rng.integers(1, 30, n_entities), dtype=pl.Int32),
            "sector": pl.Series(rng.integers(0, 10, n_entities), dtype=pl.Int32),
            "unit1": upper.gather(rng.integers(0, len(_UPPER), n_entities)),
            "unit2": upper.gather(rng.integers(0, len(_UPPER), n_entities)),
            "town": _TOWNS.gather(area % len(_TOWNS)),
        }
    ).select(
        "entity",
        "given_name",
        "surname",
        # Born 1930 … 2009.
        (pl.date(1930, 1, 1) + pl.duration(days=pl.col("date_of_birth")))
        .dt.to_string("%Y-%m-%d")
        .alias("date_of_birth"),
        pl.concat_str("area", "district", pl.lit(" "), "sector", "unit1", "unit2").alias(
            "postcode"
        ),
        "town",
    )

    # Records: each person once, then its duplicates.
    copies = 1 + rng.poisson(duplicates_rate, n_entities)
    index = np.repeat(np.arange(n_entities), copies)
    first = np.ones(len(index), dtype=bool)
    first[1:] = index[1:] != index[:-1]
    records = people[index]
    n = records.height

    corrupted = []
    for field in FIELDS:
        typo = (rng.random(n) < typo_rate) & ~first
        missing = rng.random(n) < missing_rate
        edited = _date_typo(rng, n) if field == "date_of_birth" else _string_typo(rng, n, field)
        corrupted.append(
            pl.when(pl.lit(pl.Series(missing)))
            .then(None)
            .when(pl.lit(pl.Series(typo)))
            .then(edited)
            .otherwise(pl.col(field))
            .alias(field)
        )
    # Shuffle, then number the keys in the new order: a key says nothing about its entity.
    records = (
        records.with_columns(corrupted)[rng.permutation(n)]
        .with_row_index("key")
        .with_columns(pl.format("r{}", "key").alias("key"))
    )
    return records.select("key", *FIELDS), records.select("key", "entity")


def _string_typo(rng: np.random.Generator, n: int, field: str) -> pl.Expr:
    """One random edit of ``field``: substitution, deletion, insertion or transposition."""
    text = pl.col(field)
    length = text.str.len_chars()
    pos = (pl.lit(pl.Series(rng.random(n))) * length).floor().cast(pl.Int64)
    alphabet = np.concatenate([_DIGITS, _UPPER]) if field == "postcode" else _LETTERS
    char = pl.lit(pl.Series(alphabet).gather(rng.integers(0, len(alphabet), n)))
    op = pl.lit(pl.Series(rng.integers(0, 4, n)))
    head = text.str.slice(0, pos)
    substitution = head + char + text.str.slice(pos + 1)
    deletion = head + text.str.slice(pos + 1)
    insertion = head + char + text.str.slice(pos)
    transposition = (
        head + text.str.slice(pos + 1, 1) + text.str.slice(pos, 1) + text.str.slice(pos + 2)
    )
    return (
        pl.when(op == 0)
        .then(substitution)
        .when((op == 1) & (length > 2))
        .then(deletion)
        .when(op == 2)
        .then(insertion)
        .when(pos < length - 1)
        .then(transposition)
        .otherwise(substitution)
    )


def _date_typo(rng: np.random.Generator, n: int) -> pl.Expr:
    """One substituted digit of an ISO date (``YYYY-MM-DD``), at a digit position."""
    text = pl.col("date_of_birth")
    pos = pl.lit(pl.Series(np.array([2, 3, 5, 6, 8, 9])[rng.integers(0, 6, n)]))
    digit = pl.lit(pl.Series(_DIGITS).gather(rng.integers(0, 10, n)))
    return text.str.slice(0, pos) + digit + text.str.slice(pos + 1)
