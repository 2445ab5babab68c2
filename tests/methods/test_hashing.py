"""Stable row hashing: pinned digests, invariances, key aggregation and refusals.

The expected digests below were computed once from the algorithm in the docstring of
``matchbox_dagster.methods.hashing`` with an independent XXH3-128 implementation (the ``xxhash``
package) and frozen here: a change of any of them is a change of every stored leaf id.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from matchbox_dagster.common.arrow import SourceHashes
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.hashing import RowDigests, digest_rows, index_rows, row_hashes


def hexes(array: pa.Array) -> list[str]:
    return [value.as_py().hex() for value in array]


def grouped(result: SourceHashes) -> dict[bytes, list[str]]:
    """{hash: sorted keys}, independent of row and key order."""
    return {
        row["hash"]: sorted(row["keys"])
        for row in result.table.to_pylist()  # small tables only
    }


PEOPLE = pl.DataFrame(
    {
        "key": ["1", "2", "3", "4", "5"],
        "name": ["alice", None, "", "bob", "alice"],
        "n": [1, None, 0, -5, 1],
        "d": [dt.date(2020, 1, 2), None, dt.date(1970, 1, 1), dt.date(1999, 12, 31), None],
    }
)

# Text hashed for each row (fields in name order d, n, name; \x00 null, \x01 present, \x1f between):
#   "\x012020-01-02\x1f\x011\x1f\x01alice", "\x00\x1f\x00\x1f\x00",
#   "\x011970-01-01\x1f\x010\x1f\x01", "\x011999-12-31\x1f\x01-5\x1f\x01bob",
#   "\x00\x1f\x011\x1f\x01alice"
PEOPLE_DIGESTS = [
    "964c2197707b6fc40e5f084d321f3bf2",
    "20e8c324710018ffa0b8e555212b5f74",
    "8a809d4db780cbd465eca26ecb117a5b",
    "c23031448c3a99401265f1f0592a7da3",
]


def test_pinned_digests_with_nulls_empty_strings_ints_and_dates():
    hashes = row_hashes(PEOPLE, ["name", "n", "d"])
    assert hashes.type == pa.binary(16)
    assert hexes(hashes)[:4] == PEOPLE_DIGESTS
    # Row 5 differs from row 1 only by a null date: a different digest.
    assert hexes(hashes)[4] not in PEOPLE_DIGESTS


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            pl.DataFrame({"s": ["x\x1fy", "e\x1bz"]}),
            ["14a971262a314d1f5fe27e11c9844709", "ce0a55a59cab78db2e77d82eb7a6bce8"],
            id="separator-and-escape-in-text",
        ),
        pytest.param(
            pl.DataFrame({"b": [b"\xff\x00", b"AB"]}),
            ["7960d995eb04d297a39840c73c025fbe", "4203fbb74e87f3c70aa792dd02ddd280"],
            id="binary-as-hex",
        ),
        pytest.param(
            pl.DataFrame({"f": [1.5, -0.25], "t": [True, False]}),
            ["9793b86fc1325421ddd72d4852ddfa1f", "d97a3ddb4ab8677066408219089e6568"],
            id="float-and-boolean",
        ),
        pytest.param(
            pl.DataFrame(
                {"ts": [dt.datetime(2021, 3, 4, 5, 6, 7, 890000)]},
                schema={"ts": pl.Datetime("us")},
            ),
            ["833e660769d62af5083947c6c04dd4d1"],
            id="datetime-us",
        ),
        pytest.param(
            pl.DataFrame({"s": ["Zoë Ångström", "東京"]}),
            ["477c6195261d76815cfb1012734cb638", "01321d18fceb1fb3464ed8d5fa12c279"],
            id="unicode",
        ),
    ],
)
def test_pinned_digests_of_other_types(frame: pl.DataFrame, expected: list[str]):
    assert hexes(row_hashes(frame, frame.columns)) == expected


def test_integer_width_does_not_change_the_digest():
    """Integers hash as their decimal text: Int32 from DuckDB and Int64 from PostgreSQL agree."""
    values = [1, -5, 2**31 - 1]
    as32 = pl.DataFrame({"n": values}, schema={"n": pl.Int32})
    as64 = pl.DataFrame({"n": values}, schema={"n": pl.Int64})
    as_text = pl.DataFrame({"n": [str(v) for v in values]})
    assert hexes(row_hashes(as32, ["n"])) == hexes(row_hashes(as64, ["n"]))
    assert hexes(row_hashes(as64, ["n"])) == hexes(row_hashes(as_text, ["n"]))


def test_column_order_does_not_matter():
    reordered = PEOPLE.select("d", "key", "n", "name")
    base = row_hashes(PEOPLE, ["name", "n", "d"])
    assert row_hashes(reordered, ["d", "name", "n"]).equals(base)
    assert row_hashes(reordered, ["n", "d", "name"]).equals(base)


def test_non_index_columns_do_not_matter():
    other = PEOPLE.with_columns(key=pl.lit("x"), extra=pl.lit(42))
    assert row_hashes(other, ["name", "n", "d"]).equals(row_hashes(PEOPLE, ["name", "n", "d"]))


def test_null_empty_and_control_characters_are_distinct():
    frame = pl.DataFrame({"s": [None, "", "\x00", "\x01", "\x1f", "\x1b", "\x1b\x1f"]})
    assert len(set(hexes(row_hashes(frame, ["s"])))) == frame.height


def test_values_cannot_forge_a_field_boundary():
    """Two different rows whose naive joined texts coincide must not share a hash."""
    frame = pl.DataFrame(
        {
            "a": ["x\x1f\x01y", "x", "p\x1f\x00", "p", "q\x1b", "q"],
            "b": [None, "y\x1f\x00", "r", "\x00\x1fr", "\x1fz", "\x1b\x1fz"],
        }
    )
    assert len(set(hexes(row_hashes(frame, ["a", "b"])))) == frame.height


def test_field_values_are_not_swappable():
    frame = pl.DataFrame({"a": ["x", "y"], "b": ["y", "x"]})
    first, second = hexes(row_hashes(frame, ["a", "b"]))
    assert first != second


def test_binary_that_is_not_utf8_hashes():
    frame = pl.DataFrame({"b": [b"\xff\xfe", b"\x00", None, b""]})
    assert len(set(hexes(row_hashes(frame, ["b"])))) == 4


def test_no_fields_or_missing_field_refused():
    with pytest.raises(MatchboxInvalidData, match="at least one index field"):
        row_hashes(PEOPLE, [])
    with pytest.raises(MatchboxInvalidData, match=r"\['nope'\]"):
        row_hashes(PEOPLE, ["name", "nope"])


def test_empty_frame_gives_an_empty_array():
    hashes = row_hashes(PEOPLE.head(0), ["name"])
    assert len(hashes) == 0
    assert hashes.type == pa.binary(16)


def test_digests_are_always_16_bytes_on_a_large_random_sample():
    rng = np.random.default_rng(20240601)
    n = 200_000
    frame = pl.DataFrame(
        {
            "i": rng.integers(-(2**62), 2**62, n),
            "s": rng.integers(0, 10**12, n).astype(str),
        }
    )
    hashes = row_hashes(frame, ["i", "s"])
    assert len(hashes) == n
    lengths = pc.binary_length(hashes.cast(pa.binary()))
    assert pc.min(lengths).as_py() == pc.max(lengths).as_py() == 16
    raw = np.frombuffer(hashes.buffers()[1], dtype=np.uint8).reshape(n, 16)
    # The sample holds digests with leading and trailing zero bytes, which naive byte-string
    # conversions drop; they are kept.
    assert (raw[:, 0] == 0).any()
    assert (raw[:, 15] == 0).any()
    # Distinct rows, distinct digests.
    assert len(set(hashes.to_pylist())) == frame.unique().height


# --- index_rows --------------------------------------------------------------------------------


def test_identical_rows_share_a_hash_and_keys_aggregate():
    result = index_rows([PEOPLE], key_field="key", index_fields=["name", "n"])
    groups = grouped(result)
    assert isinstance(result, SourceHashes)
    assert sorted(groups.values()) == [["1", "5"], ["2"], ["3"], ["4"]]
    alice = row_hashes(PEOPLE.head(1), ["name", "n"])[0].as_py()
    assert groups[alice] == ["1", "5"]
    assert result.num_keys == PEOPLE.height


def test_keys_are_cast_to_strings():
    frame = pl.DataFrame({"id": [10, 20, 30], "name": ["a", "a", "b"]})
    result = index_rows([frame], key_field="id", index_fields=["name"])
    assert result.table.schema.field("keys").type.value_type == pa.large_string()
    assert sorted(grouped(result).values()) == [["10", "20"], ["30"]]


def test_null_key_refused():
    frame = pl.DataFrame({"key": ["a", None], "name": ["x", "y"]})
    with pytest.raises(MatchboxInvalidData, match="null"):
        index_rows([frame], key_field="key", index_fields=["name"])


@pytest.mark.parametrize(
    "batches",
    [
        pytest.param([pl.DataFrame({"key": ["a", "a"], "name": ["x", "y"]})], id="within-a-batch"),
        pytest.param([pl.DataFrame({"key": ["a", "a"], "name": ["x", "x"]})], id="same-row-twice"),
        pytest.param(
            [
                pl.DataFrame({"key": ["a"], "name": ["x"]}),
                pl.DataFrame({"key": ["a"], "name": ["y"]}),
            ],
            id="across-batches",
        ),
    ],
)
def test_duplicate_key_refused(batches: list[pl.DataFrame]):
    with pytest.raises(MatchboxInvalidData, match="more than once"):
        index_rows(batches, key_field="key", index_fields=["name"])


def test_missing_key_field_refused():
    with pytest.raises(MatchboxInvalidData, match="'id'"):
        index_rows([PEOPLE], key_field="id", index_fields=["name"])


def test_several_batches_equal_one_batch():
    rng = np.random.default_rng(7)
    n = 5_000
    frame = pl.DataFrame(
        {
            "key": [f"k{i}" for i in range(n)],
            "first": rng.choice(["ann", "bob", "cy", None, ""], n),
            "born": rng.integers(1950, 1955, n),
        }
    )
    one = index_rows([frame], key_field="key", index_fields=["first", "born"])
    batches = [frame.slice(offset, 333) for offset in range(0, n, 333)]
    many = index_rows(batches, key_field="key", index_fields=["first", "born"])
    assert grouped(many) == grouped(one)
    # Identical rows in different batches land under one hash.
    assert many.num_rows == frame.select("first", "born").unique().height
    assert many.num_keys == n


def test_no_batches_or_empty_batches_give_empty_hashes():
    empty = pl.DataFrame({"key": [], "name": []}, schema={"key": pl.String, "name": pl.String})
    for batches in ([], [empty, empty]):
        result = index_rows(batches, key_field="key", index_fields=["name"])
        assert result.num_rows == 0
        assert result.num_keys == 0


def test_an_all_null_batch_hashes_like_typed_nulls():
    """A database batch whose column is all null arrives as dtype Null: same digests."""
    untyped = pl.DataFrame({"x": [None, None], "s": ["a", None]})
    typed = untyped.with_columns(pl.col("x").cast(pl.Int64))
    assert untyped.schema["x"] == pl.Null
    assert row_hashes(untyped, ["x", "s"]).equals(row_hashes(typed, ["x", "s"]))


def test_categorical_hashes_like_string():
    text = pl.DataFrame({"s": ["a", "b\x1f", None]})
    categorical = text.with_columns(pl.col("s").cast(pl.Categorical))
    assert row_hashes(categorical, ["s"]).equals(row_hashes(text, ["s"]))


# --- digest_rows: the fingerprint before indexing ----------------------------------------------


def test_row_digests_fingerprint_equals_the_indexed_sources() -> None:
    """Without sorting or grouping, the fingerprint is the one the indexed hashes have."""
    frame = pl.DataFrame(
        {
            "key": [f"k{i}" for i in range(1000)],
            "name": [f"n{i % 97}" if i % 13 else None for i in range(1000)],
            "n": [i % 31 for i in range(1000)],
        }
    )
    batches = [frame.slice(0, 300), frame.slice(300, 700)]
    digests = digest_rows(batches, key_field="key", index_fields=["name", "n"])
    fingerprint, distinct = digests.fingerprint, digests.num_rows
    indexed = digests.index()
    assert digests.num_keys == indexed.num_keys == 1000
    assert distinct == indexed.num_rows < 1000  # identical rows share a hash
    assert fingerprint == indexed.fingerprint
    assert len(digests.digests) == len(digests.keys) == 0  # index() took the rows over
    assert (
        indexed.fingerprint
        == index_rows([frame], key_field="key", index_fields=["name", "n"]).fingerprint
    )
    moved = frame.with_columns(
        key=pl.when(pl.col("key") == "k5").then(pl.lit("k5x")).otherwise("key")
    )
    other = digest_rows([moved], key_field="key", index_fields=["name", "n"])
    assert other.fingerprint != fingerprint  # one key changed: another fingerprint
    all_distinct = digest_rows([frame], key_field="key", index_fields=["key", "name"])
    assert all_distinct.num_rows == 1000
    assert all_distinct.index().num_rows == 1000


def test_row_digests_of_nothing() -> None:
    empty = digest_rows([], key_field="key", index_fields=["name"])
    assert (empty.num_keys, empty.num_rows) == (0, 0)
    assert empty.fingerprint == empty.index().fingerprint


def test_row_digests_count_hashes_sharing_a_high_half_apart() -> None:
    """Identical rows count once; two hashes with one high half and two low halves twice."""
    digests = np.array([[5, 1], [5, 1], [5, 2], [7, 3], [5, 1]], dtype=np.uint64)
    keys = pl.Series("key", ["a", "b", "c", "d", "e"])
    assert RowDigests(digests, keys).num_rows == 3
    assert RowDigests(digests[[0, 1, 3, 4]], keys[:4]).num_rows == 2
