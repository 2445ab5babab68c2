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


def _usable(frame: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """Rows with a value in every field, de-duplicated per (id, fields)."""
    present = [pl.col(f).is_not_null() & (pl.col(f).cast(pl.String) != "") for f in fields]
    return frame.select([ID, *fields]).filter(pl.all_horizontal(present)).unique()


def rule_pairs(
    left: pl.DataFrame, right: pl.DataFrame | None, fields: list[str], score: float
) -> pl.DataFrame:
    """``(left_id, right_id, score)`` for rows equal on ``fields`` (within ``left`` if no right)."""
    a = _usable(left, fields)
    b = a if right is None else _usable(right, fields)
    # Inputs typed differently (an Int64 age against a CSV's text age) compare as text.
    differ = [
        f
        for f in fields
        if a.schema[f] != b.schema[f]
        and not (a.schema[f].is_numeric() and b.schema[f].is_numeric())
    ]
    if differ:
        a = a.with_columns(pl.col(differ).cast(pl.String))
        b = b.with_columns(pl.col(differ).cast(pl.String))
    joined = a.join(b, on=fields, suffix="_r")
    pairs = joined.select(
        pl.col(ID).alias("left_id"), pl.col(f"{ID}_r").alias("right_id"), pl.lit(score)
    )
    if right is None:
        pairs = pairs.filter(pl.col("left_id") < pl.col("right_id"))
    return pairs.rename({"literal": "score"})


class ExactMatch(Model):
    """Pairs equal on every field in ``fields`` (score 1.0)."""

    model_class = "ExactMatch"

    fields_: list[str] = Field(alias="fields", min_length=1)

    @property
    def fields(self) -> list[str]:
        """The compared fields."""
        return list(self.fields_)

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
