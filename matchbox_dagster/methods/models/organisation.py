"""The organisations preset: :class:`OrganisationLinker`.

A user names the columns that play each role and gets a tuned model::

    ModelSpec(name="orgs", model_class="OrganisationLinker", left=..., right=...,
              settings={"roles": {"name": "company_name", "postcode": "pc", "town": "town",
                                  "address": "street", "company_number": "crn"}})

Every role but ``name`` is optional; with ``left`` only it deduplicates. The records are cleaned
with the building blocks of :mod:`matchbox_dagster.methods.organisations` (core name,
distinguishing tokens, postcode and district, town, company number) and scored by Splink
(:class:`~matchbox_dagster.methods.models.splink.SplinkModel`: Jaro-Winkler levels on the core
name with term frequencies, distinguishing tokens, postcode levels (exact, sector, district,
area), town, address, company number; trained by EM). Pairs scoring at least ``threshold``
are kept. Two records left without any such pair whose cleaned name no other record holds (a
firm that moved, in a register without its company number) are paired with the score
``unique_names`` (:func:`unique_name_pairs`).

Records that must never share an entity are marked with an edge scoring 0 (a *conflict*): two
records brought together by a shared core name, postcode or address but holding different
company numbers or different distinguishing tokens (``Acme Holdings`` and ``Acme Services``).
Only conflicts between records the model's own pairs join (directly or through others) are kept
unless ``conflict_scope="all"``. Connected components ignore these edges (any threshold above 0
drops them); the matching resolver, :class:`~matchbox_dagster.methods.clustering.SplitConflicts`
(:func:`organisation_resolver`), keeps conflicting records apart and cuts weak links.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
import pyarrow as pa
from pydantic import Field, field_validator

from matchbox_dagster.common.arrow import SCHEMA_MODEL_EDGES, ModelResults
from matchbox_dagster.methods.models.base import ID, Model, require_columns
from matchbox_dagster.methods.models.splink import SplinkModel
from matchbox_dagster.methods.organisations import (
    ABBREVIATIONS,
    DISTINGUISHING,
    LEGAL_FORMS,
    address_clean,
    area_of,
    company_number_clean,
    core_of,
    district_of,
    org_words,
    postcode_clean,
    sector_of,
    tokens_of,
    town_clean,
    typo_variants,
)
from matchbox_dagster.methods.resolvers import components

ROLES = ("name", "postcode", "town", "address", "company_number")
MIN_NUMBER_PAIRS = 500
"""Candidate pairs sharing a company number needed to train EM on them first."""
MAX_BLOCK = 200
"""Blocks (records sharing a core name, postcode or address) larger than this on a side are not
searched for conflicts: a very common value says little."""


TOKENS_COMPARISON: dict[str, Any] = {
    "output_column_name": "tokens",
    "comparison_description": "Distinguishing tokens, none counted as a value",
    "comparison_levels": [
        {  # tokens say nothing of a record without a name
            "sql_condition": '"core_l" IS NULL OR "core_r" IS NULL',
            "label_for_charts": "No name",
            "is_null_level": True,
        },
        {
            "sql_condition": "coalesce(\"tokens_l\", '') = coalesce(\"tokens_r\", '')",
            "label_for_charts": "Same distinguishing tokens (or none on both)",
        },
        {"sql_condition": "ELSE", "label_for_charts": "Different, or on one side only"},
    ],
}
"""Distinguishing tokens on one record and none on the other are evidence against a match
("Acme Ltd" and its sister "Acme Group Ltd"), not missing data: Splink learns its weight."""


POSTCODE_COMPARISON: dict[str, Any] = {
    "output_column_name": "postcode",
    "comparison_description": "Postcode: exact (with term frequencies), sector, district, area",
    "comparison_levels": [
        {
            "sql_condition": '"postcode_l" IS NULL OR "postcode_r" IS NULL',
            "label_for_charts": "postcode is NULL",
            "is_null_level": True,
        },
        {
            "sql_condition": '"postcode_l" = "postcode_r"',
            "label_for_charts": "Exact match on full postcode",
            "tf_adjustment_column": "postcode",
            "tf_adjustment_weight": 1.0,
        },
        *(
            {"sql_condition": f'"{part}_l" = "{part}_r"', "label_for_charts": f"Same {part}"}
            for part in ("sector", "district", "area")
        ),
        {"sql_condition": "ELSE", "label_for_charts": "All other comparisons"},
    ],
}
"""Splink's ``PostcodeComparison`` levels on parts cut once per record (:meth:`prepare`), not
by three regular expressions on both sides of every pair."""


class OrganisationLinker(Model):
    """Organisations matched on cleaned names, postcodes, towns, addresses, company numbers."""

    model_class = "OrganisationLinker"

    roles: dict[str, str] = Field(
        description="Role → input column; roles: name (required), postcode, town, address, "
        "company_number."
    )
    threshold: float = Field(default=0.5, ge=0, le=1, description="Minimum match probability.")
    conflicts: bool = Field(
        default=True, description="Emit score-0 edges for records that must not share an entity."
    )
    conflict_scope: Literal["linked", "all"] = Field(
        default="linked",
        description="linked: conflicts only between records this model's pairs join, directly "
        "or through others (no other conflict can change its entities); all: every one, for a "
        "resolver that also reads another model's edges.",
    )
    abbreviations: dict[str, str] | None = Field(
        default=None, description="Abbreviation → word (default: the module's dictionary)."
    )
    distinguishing: list[str] | None = Field(
        default=None, description="Distinguishing words (default: the module's list)."
    )
    max_pairs: float | None = Field(
        default=None,
        gt=0,
        description="Pairs sampled to estimate u (default: 3 a record, 250,000 to 2,000,000).",
    )
    seed: int = Field(default=1, description="Seed of Splink's sampling.")
    typos: bool = Field(
        default=True,
        description="Read a distinguishing word of 7+ letters misspelt by one letter as the word.",
    )
    unique_names: float | None = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Score of a pair of records left without any match whose cleaned name "
        "(core and tokens) no other record holds (see unique_name_pairs); None: not paired.",
    )

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {list(ROLES)}")
        if "name" not in value:
            raise ValueError("the 'name' role is required")
        return value

    @property
    def fields(self) -> list[str]:
        """The input columns of the roles."""
        return list(self.roles.values())

    @property
    def input_fields(self) -> list[str]:
        """Exactly the role columns."""
        return self.fields

    def prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``id`` and the cleaned columns the model compares (``core``, ``tokens``, …)."""
        col = {role: pl.col(column) for role, column in self.roles.items()}
        words = pl.col("__words")
        out = [
            pl.col(ID).cast(pl.Int64),
            core_of(words, self.distinguishing).alias("core"),
            tokens_of(words, self.distinguishing).alias("tokens"),
        ]
        if "postcode" in col:
            code = pl.col("__postcode")
            out += [
                code.alias("postcode"),
                sector_of(code).alias("sector"),
                district_of(code).alias("district"),
                area_of(code).alias("area"),
            ]
        if "town" in col:
            out.append(town_clean(col["town"]).alias("town"))
        if "address" in col:
            out.append(address_clean(col["address"]).alias("address"))
        if "company_number" in col:
            out.append(company_number_clean(col["company_number"]).alias("company_number"))
        # Once each: the name's words (the costliest step) and the postcode (its parts sliced).
        once = [org_words(col["name"], self._words()).alias("__words")]
        if "postcode" in col:
            once.append(postcode_clean(col["postcode"]).alias("__postcode"))
        return frame.with_columns(once).select(out)

    def _words(self) -> dict[str, str]:
        """The abbreviations, and distinguishing words misspelt by one letter."""
        abbreviations = ABBREVIATIONS if self.abbreviations is None else self.abbreviations
        if not self.typos:
            return dict(abbreviations)
        words = DISTINGUISHING if self.distinguishing is None else self.distinguishing
        avoid = {*abbreviations, *abbreviations.values(), *LEGAL_FORMS, *LEGAL_FORMS.values()}
        return {**typo_variants(words, avoid=avoid), **abbreviations}

    def splink(self, records: int = 0, shared_numbers: int = 0) -> SplinkModel:
        """The Splink model over :meth:`prepare`'s columns.

        ``records`` (all inputs) sizes the u sample when ``max_pairs`` is not set;
        ``shared_numbers`` is how many candidate pairs share a company number: with at least
        :data:`MIN_NUMBER_PAIRS` of them, EM first trains on those pairs (nearly all matches:
        few pairs, quick convergence) instead of on pairs sharing a postcode.
        """
        roles = self.roles
        comparisons: list[dict[str, Any]] = [
            {
                "comparison": "JaroWinklerAtThresholds",
                "col_name": "core",
                "score_threshold_or_thresholds": [0.95, 0.88, 0.8],
                "term_frequency_adjustments": True,
            },
            TOKENS_COMPARISON,
        ]
        # Blocking: every rule an equi-join on a cleaned value; a bare postcode or address
        # would compare every pair of an industrial estate or of "1 High Street" in all towns.
        blocking: list[Any] = [["core"]]
        em: list[Any] = []
        if "postcode" in roles:
            comparisons.append(POSTCODE_COMPARISON)
            blocking += [
                "l.district = r.district and substr(l.core, 1, 4) = substr(r.core, 1, 4)",
                "l.postcode = r.postcode and substr(l.core, 1, 1) = substr(r.core, 1, 1)",
            ]
        if "town" in roles:
            comparisons.append(
                {"comparison": "ExactMatch", "col_name": "town", "term_frequency_adjustments": True}
            )
        if "address" in roles:
            comparisons.append(
                {
                    "comparison": "ExactMatch",
                    "col_name": "address",
                    "term_frequency_adjustments": True,
                }
            )
            places = [
                f"l.{column} = r.{column}"
                for role, column in (("town", "town"), ("postcode", "district"))
                if role in roles
            ]
            blocking.append(
                f"l.address = r.address and ({' or '.join(places)})" if places else ["address"]
            )
            # A record missing its town and postcode, or with a typo in its name, still meets
            # the same name at the same address.
            if places:
                blocking.append(
                    "l.address = r.address and substr(l.core, 1, 4) = substr(r.core, 1, 4)"
                )
        if "company_number" in roles:
            comparisons.append({"comparison": "ExactMatch", "col_name": "company_number"})
            blocking.append(["company_number"])
            if shared_numbers >= MIN_NUMBER_PAIRS:
                em.append(["company_number"])
        if not em and "postcode" in roles:
            em.append(["postcode"])
        # Then on the core name, within a town when a first session already trained town's m:
        # a common core alone pairs every same-name firm of every town (318k pairs at 144k
        # records against 50k; EM 1.2 s against 0.4 s, the same F1).
        em.append(["core", "town"] if "town" in roles and em else ["core"])
        if "postcode" not in roles and "town" in roles:
            em.append(["town"])
        max_pairs = self.max_pairs or min(2e6, max(2.5e5, 3.0 * records))
        training: list[dict[str, dict[str, Any]]] = [
            {
                "estimate_probability_two_random_records_match": {
                    "deterministic_matching_rules": [
                        "l.core = r.core and l.postcode = r.postcode"
                        if "postcode" in roles
                        else "l.core = r.core"
                    ],
                    "recall": 0.7,
                }
            },
            # One pass a comparison over at most 2M pairs: Splink's probe and ten chunks (made
            # to stop early on 1e8+ pairs) were ~200 statements, 0.4 s of CPU at 34k records.
            {
                "estimate_u_using_random_sampling": {
                    "max_pairs": max_pairs,
                    "seed": self.seed,
                    "num_chunks": 1,
                }
            },
            *(
                {"estimate_parameters_using_expectation_maximisation": {"blocking_rule": rule}}
                for rule in em
            ),
        ]
        return SplinkModel(
            splink_settings={
                "comparisons": comparisons,
                "blocking_rules_to_generate_predictions": blocking,
                "retain_intermediate_calculation_columns": False,
            },
            training=training,
            threshold=self.threshold,
        )

    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Pairs of distinct ids within ``data``, and conflicts scoring 0."""
        require_columns(data, self.fields, "OrganisationLinker")
        rows = self.prepare(data)
        _release_arrow_memory()
        model = self.splink(rows.height, _shared_numbers(rows, None))
        return self._finish(model.dedupe(rows), rows, None)

    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Pairs (left id, right id), and conflicts scoring 0."""
        require_columns(left, self.fields, "OrganisationLinker left")
        require_columns(right, self.fields, "OrganisationLinker right")
        a, b = self.prepare(left), self.prepare(right)
        _release_arrow_memory()
        model = self.splink(a.height + b.height, _shared_numbers(a, b))
        return self._finish(model.link(a, b), a, b)

    def _finish(
        self, scored: ModelResults, left: pl.DataFrame, right: pl.DataFrame | None
    ) -> ModelResults:
        """Splink's pairs, with unique-name pairs, and conflicts scoring 0."""
        if self.unique_names is None and not self.conflicts:
            return scored
        pairs = pl.DataFrame(pl.from_arrow(scored.table)).select("left_id", "right_id", "score")
        linked = pairs.filter(pl.col("score") > 0).select("left_id", "right_id")
        found = None
        if self.unique_names is not None:
            found = unique_name_pairs(left, right, linked)
        clash = None
        if self.conflicts:
            within = None
            if self.conflict_scope == "linked":
                within = _components(linked if found is None else pl.concat([linked, found]))
            clash = conflict_pairs(left, right, within)
        if found is not None:
            if clash is not None:
                found = found.join(clash, on=["left_id", "right_id"], how="anti")
            pairs = pl.concat(
                [pairs, found.with_columns(pl.lit(self.unique_names, pl.Float32).alias("score"))]
            )
        if clash is None or clash.height == 0:
            return ModelResults(pairs.to_arrow().cast(SCHEMA_MODEL_EDGES))
        # A conflict overrides a score: the pair must not be linked. Scored pairs and conflicts
        # are each unique (a deduper's ordered alike) and now disjoint: no second pass through
        # finish_pairs (its group-by held ~47 MB more on 265k rows at 85k records).
        kept = pairs.join(clash, on=["left_id", "right_id"], how="anti")
        zero = clash.filter(pl.col("left_id") != pl.col("right_id")).with_columns(
            pl.lit(0.0, pl.Float32).alias("score")
        )
        table = pl.concat([kept, zero], how="vertical_relaxed").to_arrow()
        return ModelResults(table.cast(SCHEMA_MODEL_EDGES))


def _components(pairs: pl.DataFrame) -> pl.DataFrame:
    """(``id``, ``_comp``): the connected component of each record that ``pairs`` hold."""
    labels = pl.DataFrame(pl.from_arrow(components(pairs).table))
    return labels.select(pl.col("child_id").alias(ID), pl.col("parent_id").alias("_comp"))


def conflict_pairs(
    left: pl.DataFrame, right: pl.DataFrame | None, within: pl.DataFrame | None = None
) -> pl.DataFrame:
    """(``left_id``, ``right_id``) of records that must not share an entity.

    Records sharing a core name, postcode or address (blocks of at most :data:`MAX_BLOCK` a
    side) conflict when both have a company number and they differ, or both have
    distinguishing tokens and they differ, or their core names are equal and only one has
    tokens ("Acme Ltd" and its sister "Acme Holdings Ltd"; not "Acme Holdngs Ltd", whose typo
    left its core "acme holdngs"). Each rule joins only the records it can apply to (a
    record without a company number is never joined on numbers), so the joins stay small:
    joining whole blocks and filtering after held ~140 MB at 85k records.

    ``within`` (``id``, ``_comp``): only pairs of records in one component (records it does
    not hold have none), a subset of the conflicts found without it.
    """
    keys = [k for k in ("core", "postcode", "address") if k in left.columns]
    checks = [c for c in ("company_number", "tokens") if c in left.columns]
    scope = [] if within is None else ["_comp"]

    def blocks(frame: pl.DataFrame, key: str) -> pl.DataFrame:
        columns = [ID, key, pl.col("core").alias("_core"), *checks]
        small = _small_blocks(frame.select(columns), key)  # block sizes before the scope
        return small if within is None else small.join(within, on=ID)

    parts: list[pl.DataFrame] = []
    for key in keys:
        on = [key, *scope]
        a = blocks(left, key)
        b = a if right is None else blocks(right, key)
        for check in checks:  # both present and different
            has_a = a.select(ID, *on, check).drop_nulls(check)
            has_b = has_a if right is None else b.select(ID, *on, check).drop_nulls(check)
            joined = has_a.join(has_b, on=on, suffix="_r")
            parts.append(_ids(joined.filter(pl.col(check) != pl.col(f"{check}_r"))))
        if "tokens" in checks:  # equal cores, tokens on one side only
            sides = [(a, b)] if right is None else [(a, b), (b, a)]
            for one, two in sides:
                named = one.filter(pl.col("tokens").is_not_null()).select(ID, *on, "_core")
                plain = two.filter(pl.col("tokens").is_null()).select(ID, *on, "_core")
                joined = _ids(named.join(plain, on=[*on, "_core"], suffix="_r"))
                if one is not a:  # found right → left: put the left record first
                    joined = joined.select(
                        pl.col("right_id").alias("left_id"), pl.col("left_id").alias("right_id")
                    )
                parts.append(joined)
    if not parts:
        return pl.DataFrame(schema={"left_id": pl.Int64, "right_id": pl.Int64})
    found = pl.concat(parts)
    if right is None:  # one record pair, whichever way it was found
        found = found.filter(pl.col("left_id") != pl.col("right_id")).select(
            pl.min_horizontal("left_id", "right_id").alias("left_id"),
            pl.max_horizontal("left_id", "right_id").alias("right_id"),
        )
    return found.unique()


def unique_name_pairs(
    left: pl.DataFrame, right: pl.DataFrame | None, scored: pl.DataFrame
) -> pl.DataFrame:
    """Pairs (``left_id``, ``right_id``) of unmatched records with a name no other one holds.

    The records are held by no scored pair, and their cleaned name (core and tokens) by no
    other record: one record on each side when linking, two when deduplicating. A firm that
    moved (another address, town and postcode), in a register that lacks its company number,
    keeps only its name; a name no other firm holds is evidence enough for a weak link (the
    matching resolver keeps it only as both records' best edge). Firms of the same name in
    other towns, each in one register only, are the cost: with many of them, turn it off.
    """
    key = ["core", "tokens"] if "tokens" in left.columns else ["core"]
    held = pl.concat([scored.get_column("left_id"), scored.get_column("right_id")])
    sides = [left] if right is None else [left, right]
    alone = [
        f.select(ID, *key)
        .drop_nulls("core")
        .filter(pl.col(ID).n_unique().over(key) == (1 if right is not None else 2))
        .filter(~pl.col(ID).is_in(held.implode()))
        for f in sides
    ]
    if right is None:
        found = alone[0].join(alone[0], on=key, nulls_equal=True, suffix="_r")
        found = found.filter(pl.col(ID) < pl.col(f"{ID}_r"))
    else:
        found = alone[0].join(alone[1], on=key, nulls_equal=True, suffix="_r")
    # Identical rows share an id (a leaf), on one side or both: already one entity.
    return _ids(found.filter(pl.col(ID) != pl.col(f"{ID}_r"))).unique()


def _ids(joined: pl.DataFrame) -> pl.DataFrame:
    return joined.select(pl.col(ID).alias("left_id"), pl.col(f"{ID}_r").alias("right_id"))


def _release_arrow_memory() -> None:
    """Return Arrow's freed memory to the system before Splink's engine allocates its own.

    What reading and writing the store left (~10 MB less at the peak at 34k records).
    """
    pa.default_memory_pool().release_unused()


def _shared_numbers(left: pl.DataFrame, right: pl.DataFrame | None) -> int:
    """Pairs of distinct records (across the inputs when linking) sharing a company number."""
    if "company_number" not in left.columns:
        return 0
    counts = [
        f.get_column("company_number").drop_nulls().value_counts(name="n")
        for f in (left, left if right is None else right)
    ]
    if right is None:
        return int(counts[0].select((pl.col("n") * (pl.col("n") - 1) // 2).sum()).item())
    both = counts[0].join(counts[1], on="company_number")
    return int(both.select((pl.col("n") * pl.col("n_right")).sum()).item())


def _small_blocks(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    return frame.drop_nulls(key).filter(pl.len().over(key) <= MAX_BLOCK)


def organisation_resolver(
    model: str, threshold: float = 0.9, strong: float = 0.99
) -> dict[str, Any]:
    """The resolver spec fields matching the preset (``ResolverSpec(name=…, **this)``)."""
    return {
        "thresholds": {model: threshold},
        "method": "split_conflicts",
        "settings": {"strong": {model: strong}},
    }
