"""Weighted deterministic matching: a weighted vote of exact field agreements.

:class:`WeightedRules` scores a candidate pair by the weights of the fields on which its two
records agree exactly, divided by the total weight, and keeps the pairs scoring at least
``threshold``. With weights ``{"surname": 2, "dob": 2, "postcode": 1}`` and threshold 0.75,
records agreeing on surname and date of birth score 0.8 and are kept; agreeing on surname and
postcode (0.6) is not enough. A null or empty value never agrees with anything.

Candidate pairs come from ``blocking`` rules: two records are compared when they are equal on
every field of at least one rule. By default each weighted field is a rule of its own, which
finds every pair with a positive score but compares all records sharing a common value; give
selective rules (e.g. ``[["surname", "dob"], ["postcode"]]``) for large inputs. A pair that no
rule brings together is never scored, whatever its score would be.

Everything is vectorised in polars: one join per blocking rule, then one expression per field.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field, field_validator, model_validator

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.methods.models.base import (
    ID,
    Model,
    empty_results,
    finish_pairs,
    require_columns,
)

_ROW = "__mb_row"
_TOLERANCE = 1e-9
"""Scores within this of the threshold count as reaching it (float sums of weights)."""


class WeightedRules(Model):
    """Pairs whose weighted share of exactly agreeing fields is at least ``threshold``.

    Example::

        WeightedRules(
            weights={"given_name": 1, "surname": 2, "date_of_birth": 2, "postcode": 1},
            threshold=0.8,
            blocking=[["surname"], ["date_of_birth"]],
        )
    """

    model_class = "WeightedRules"

    weights: dict[str, float] = Field(
        min_length=1, description="Field name → weight (> 0) of agreeing on it."
    )
    threshold: float = Field(
        ge=0, le=1, description="Minimum score (agreeing weight / total weight) kept."
    )
    blocking: list[list[str]] = Field(
        default_factory=list,
        description="Candidate pairs: records equal on all fields of any rule. Default: each "
        "weighted field alone.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_blocking(cls, value: Any) -> Any:
        """Fill in the default blocking (each weighted field alone) so it is stored."""
        if isinstance(value, dict) and not value.get("blocking") and value.get("weights"):
            weights = value["weights"]
            if isinstance(weights, dict):
                value = {**value, "blocking": [[f] for f in weights]}
        return value

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {f: w for f, w in value.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be positive; got {bad}")
        return value

    @field_validator("blocking")
    @classmethod
    def _rules(cls, value: list[list[str]]) -> list[list[str]]:
        if any(not rule for rule in value):
            raise ValueError("a blocking rule needs at least one field")
        return value

    @property
    def fields(self) -> list[str]:
        """Weighted fields, then any blocking-only fields."""
        blocking = [f for rule in self.blocking for f in rule]
        return list(dict.fromkeys([*self.weights, *blocking]))

    @property
    def input_fields(self) -> list[str]:
        """Exactly :attr:`fields`."""
        return self.fields

    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Pairs of distinct ids within ``data`` scoring at least the threshold."""
        require_columns(data, self.fields, "WeightedRules")
        rows = self._prepare(data)
        return self._score(rows, None)

    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Pairs (left id, right id) scoring at least the threshold."""
        require_columns(left, self.fields, "WeightedRules left")
        require_columns(right, self.fields, "WeightedRules right")
        return self._score(self._prepare(left), self._prepare(right))

    def _prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Distinct (id, fields) rows, every field as a string with empty strings as null."""
        text = [
            pl.when(pl.col(f).cast(pl.String) != "").then(pl.col(f).cast(pl.String)).alias(f)
            for f in self.fields
        ]
        return (
            frame.select(pl.col(ID).cast(pl.Int64), *text)
            .unique()
            .with_row_index(_ROW)
            .with_columns(pl.col(_ROW).cast(pl.Int64))
        )

    def _candidates(self, left: pl.DataFrame, right: pl.DataFrame | None) -> pl.DataFrame:
        """Distinct row pairs (``__mb_row``, ``__mb_row_r``) brought together by a rule."""
        parts = []
        for rule in self.blocking:
            a = left.select(_ROW, ID, *rule).drop_nulls(rule)
            b = a if right is None else right.select(_ROW, ID, *rule).drop_nulls(rule)
            joined = a.join(b, on=rule, suffix="_r")
            if right is None:
                # Each unordered pair of distinct ids once; rows of one id never pair.
                joined = joined.filter(pl.col(ID) < pl.col(f"{ID}_r"))
            parts.append(joined.select(_ROW, f"{_ROW}_r"))
        return pl.concat(parts).unique()

    def _score(self, left: pl.DataFrame, right: pl.DataFrame | None) -> ModelResults:
        candidates = self._candidates(left, right)
        if candidates.height == 0:
            return empty_results()
        other = left if right is None else right
        pairs = candidates.join(left, on=_ROW).join(
            other.rename({c: f"{c}_r" for c in other.columns}), on=f"{_ROW}_r"
        )
        total = float(sum(self.weights.values()))
        agreement = pl.sum_horizontal(
            (pl.col(f) == pl.col(f"{f}_r")).fill_null(False).cast(pl.Float64) * weight
            for f, weight in self.weights.items()
        )
        scored = pairs.select(
            pl.col(ID).alias("left_id"),
            pl.col(f"{ID}_r").alias("right_id"),
            (agreement / total).alias("score"),
        ).filter(pl.col("score") >= self.threshold - _TOLERANCE)
        return finish_pairs(scored, dedupe=right is None)
