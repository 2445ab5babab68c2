"""Deterministic methodologies: pairs equal on chosen fields.

:class:`ExactMatch` links records equal on every listed field. :class:`DeterministicRules` links
records equal on *any* of several field combinations, each rule with its own score (e.g. the
national-insurance number alone scores 1.0, name + date of birth 0.9). Empty strings and nulls
never match.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.methods.models.base import ID, Model, finish_pairs, require_columns

CHUNK_ROWS = 1_000_000
"""Records joined at a time: a rule's join runs over slices of about this many rows."""


def _usable(frame: pl.DataFrame, fields: list[str], casts: dict[str, pl.DataType]) -> pl.DataFrame:
    """Distinct (id, fields) rows with a value in every field, fields cast as ``casts`` says."""
    present = [pl.col(f).is_not_null() & (pl.col(f).cast(pl.String) != "") for f in fields]
    rows = frame.select([ID, *fields]).filter(pl.all_horizontal(present))
    if casts:
        rows = rows.with_columns(pl.col(f).cast(t) for f, t in casts.items())
    return rows.unique()


def _slice_of(
    frame: pl.DataFrame, fields: list[str], casts: dict[str, pl.DataType], slices: int
) -> pl.Series:
    """Each row's slice: from hashes of its ``fields`` values (cast as ``casts`` says).

    Categorical values are hashed as text: two inputs' categories may encode one value apart.
    Each field is hashed alone and the residues summed, so equal values share a slice without
    hashing a struct of the fields (which encodes every row's values: +0.4 GB at 5M rows).
    """
    values = [
        pl.col(f).cast(pl.String)
        if isinstance(frame.schema[f], pl.Categorical | pl.Enum)
        else pl.col(f).cast(casts[f])
        if f in casts
        else pl.col(f)
        for f in fields
    ]
    residues = [(value.hash() % slices).cast(pl.UInt32) for value in values]
    # From the rule's columns alone: on an input of many chunks (batches) hashing from the
    # whole frame peaked ~0.25 GB higher at 5M rows.
    return frame.select(fields).select(pl.sum_horizontal(residues) % slices).to_series()


def _common_types(
    left: pl.DataFrame, right: pl.DataFrame, fields: list[str]
) -> dict[str, pl.DataType]:
    """Casts that give each field one type on both sides.

    Numbers of different widths or kinds become Float64 (if either is a float) or Int64;
    anything else mismatched becomes String (an Int64 age against a CSV's text age compares as
    text). One type per field also makes equal values hash alike, which slicing relies on.
    """
    casts: dict[str, pl.DataType] = {}
    for f in fields:
        a, b = left.schema[f], right.schema[f]
        if a == b:
            continue
        if a.is_numeric() and b.is_numeric():
            casts[f] = pl.Float64() if a.is_float() or b.is_float() else pl.Int64()
        else:
            casts[f] = pl.String()
    return casts


def rule_pairs(
    left: pl.DataFrame, right: pl.DataFrame | None, fields: list[str], score: float
) -> pl.DataFrame:
    """``(left_id, right_id, score)`` for rows equal on ``fields`` (within ``left`` if no right).

    Big inputs are split into slices by a hash of the rule's values, so equal rows always meet
    in the same slice, and each slice is joined on the values themselves (the hash never
    decides a match): memory holds one slice's rows and join at a time, and each input once.
    """
    other = left if right is None else right
    casts = _common_types(left, other, fields)
    slices = max(1, -(-max(left.height, other.height) // CHUNK_ROWS))
    a_slice = _slice_of(left, fields, casts, slices) if slices > 1 else None
    b_slice = _slice_of(other, fields, casts, slices) if slices > 1 and right is not None else None
    pairs = []
    for i in range(slices):
        a_i = _usable(left if a_slice is None else left.filter(a_slice == i), fields, casts)
        if right is None:
            b_i = a_i
        else:
            b_i = _usable(other if b_slice is None else other.filter(b_slice == i), fields, casts)
        joined = a_i.join(b_i, on=fields, suffix="_r").select(
            pl.col(ID).alias("left_id"), pl.col(f"{ID}_r").alias("right_id")
        )
        del a_i, b_i
        if right is None:
            joined = joined.filter(pl.col("left_id") < pl.col("right_id"))
        pairs.append(joined)
    return pl.concat(pairs).with_columns(pl.lit(score, dtype=pl.Float64).alias("score"))


class ExactMatch(Model):
    """Pairs equal on every field in ``fields`` (score 1.0)."""

    model_class = "ExactMatch"

    fields_: list[str] = Field(alias="fields", min_length=1)

    @property
    def fields(self) -> list[str]:
        """The compared fields."""
        return list(self.fields_)

    @property
    def input_fields(self) -> list[str]:
        """Exactly :attr:`fields`."""
        return self.fields

    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Pairs of distinct ids equal on every field."""
        require_columns(data, self.fields, "ExactMatch")
        return finish_pairs(rule_pairs(data, None, self.fields, 1.0), dedupe=True)

    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Pairs across the inputs equal on every field."""
        require_columns(left, self.fields, "ExactMatch left")
        require_columns(right, self.fields, "ExactMatch right")
        return finish_pairs(rule_pairs(left, right, self.fields, 1.0), dedupe=False)

    def settings(self) -> dict[str, object]:
        """Stored settings."""
        return {"fields": self.fields}


class Rule(BaseModel):
    """One rule of :class:`DeterministicRules`: fields that must all be equal, and its score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fields_: list[str] = Field(alias="fields", min_length=1)
    score: float = Field(default=1.0, ge=0, le=1)


class DeterministicRules(Model):
    """Pairs equal on any rule's fields; a pair's score is its best matching rule's score."""

    model_class = "DeterministicRules"

    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        """Accept ``[["a"], ["b", "c"]]`` as rules scoring 1.0."""
        if isinstance(value, list):
            return [{"fields": r} if isinstance(r, list | tuple) else r for r in value]
        return value

    @property
    def fields(self) -> list[str]:
        """Every field any rule reads."""
        return list(dict.fromkeys(f for rule in self.rules for f in rule.fields_))

    @property
    def input_fields(self) -> list[str]:
        """Exactly :attr:`fields`."""
        return self.fields

    def _pairs(self, left: pl.DataFrame, right: pl.DataFrame | None) -> pl.DataFrame:
        return pl.concat(
            [rule_pairs(left, right, list(r.fields_), r.score) for r in self.rules],
            how="vertical_relaxed",
        )

    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Pairs of distinct ids matching any rule."""
        require_columns(data, self.fields, "DeterministicRules")
        return finish_pairs(self._pairs(data, None), dedupe=True)

    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Pairs across the inputs matching any rule."""
        require_columns(left, self.fields, "DeterministicRules left")
        require_columns(right, self.fields, "DeterministicRules right")
        return finish_pairs(self._pairs(left, right), dedupe=False)

    def settings(self) -> dict[str, object]:
        """Stored settings."""
        return {"rules": [{"fields": list(r.fields_), "score": r.score} for r in self.rules]}
