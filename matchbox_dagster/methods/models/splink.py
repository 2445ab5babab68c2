"""Splink 5 as a methodology: probabilistic (Fellegi–Sunter) dedupers and linkers.

:class:`SplinkModel` holds everything as JSON-serialisable settings, so a model step's stored
``model_settings`` rebuild the same model:

``splink_settings``
    A Splink settings dict — ``comparisons``, ``blocking_rules_to_generate_predictions`` and any
    other :class:`splink.SettingsCreator` key (``probability_two_random_records_match``,
    ``em_convergence``, ``max_iterations``, …). ``link_type`` and the id columns are set by the
    model (``dedupe_only`` for :meth:`~SplinkModel.dedupe`, ``link_only`` for
    :meth:`~SplinkModel.link`) and dropped if given.

    Each **comparison** is either Splink's own dict (``{"output_column_name": …,
    "comparison_levels": [{"sql_condition": …}, …]}``, e.g.
    ``cl.NameComparison("surname").get_comparison("duckdb").as_dict()``, or a trained model's
    comparisons as saved by Splink) or a short, dialect-neutral **spec** naming a class of
    :mod:`splink.comparison_library` with its keyword arguments; ``term_frequency_adjustments``,
    ``m_probabilities`` and ``u_probabilities`` go to ``.configure()``::

        {"comparison": "NameComparison", "col_name": "surname",
         "term_frequency_adjustments": True}
        {"comparison": "DateOfBirthComparison", "col_name": "dob", "input_is_string": True,
         "datetime_format": "%Y%m%d"}

    Each **blocking rule** (here and in training steps) is a SQL condition on ``l.`` and ``r.``
    (``"l.surname = r.surname and l.dob = r.dob"``), a list of columns to be equal
    (``["surname", "dob"]``, i.e. ``block_on("surname", "dob")``), ``{"block_on": [...]}``, or
    Splink's dict ``{"blocking_rule": "…", "sql_dialect": "duckdb"}``.

``training``
    Steps run in order on the linker, each ``{method name: keyword arguments}`` of
    ``linker.training``: ``estimate_probability_two_random_records_match``
    (``deterministic_matching_rules``, ``recall``), ``estimate_u_using_random_sampling``
    (``max_pairs``, ``seed``), ``estimate_parameters_using_expectation_maximisation``
    (``blocking_rule``, …), ``estimate_m_from_label_column`` (``label_colname``). Empty when
    ``splink_settings`` already hold trained parameters (see :meth:`SplinkModel.trained`).

``threshold``
    Minimum ``match_probability`` of the pairs kept; it becomes the pair's score.

``engine``
    ``"duckdb"`` (default, in-process, one machine) or ``"spark"`` (pyspark, imported only when
    used: ``pip install 'matchbox-dagster[spark]'``; the active Spark session is used, or one
    is created with the default builder).

Every input row goes to Splink, numbered (several rows may share an ``id``); predictions are
mapped back to ids keeping the best probability of each id pair, and pairs of rows of the same id
are dropped. Pass one row per *record* (e.g. per source key, even where identical rows share a
leaf id): Splink's parameter estimates and term frequencies then describe the records, and the
results equal standalone Splink's on the same records. Rows are numbered in a canonical order,
so seeded training gives the same model whatever order the rows arrive in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa
from pydantic import Field, field_validator

from matchbox_dagster.common.arrow import ModelResults
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.methods.models.base import (
    ID,
    Model,
    empty_results,
    finish_pairs,
    require_columns,
)
from matchbox_dagster.methods.models.splink_engines import (
    SPARK_HINT,  # noqa: F401 (re-exported: the missing-pyspark hint)
    database_api,
    engine_table,
)

if TYPE_CHECKING:
    from splink import Linker
    from splink.internals.blocking_rule_creator import BlockingRuleCreator
    from splink.internals.comparison_creator import ComparisonCreator
    from splink.internals.database_api import DatabaseAPI

UNIQUE_ID = "mb_row_id"
"""Splink's unique id column: a row number over both inputs."""

_OWNED_KEYS = ("link_type", "unique_id_column_name", "source_dataset_column_name", "sql_dialect")
_CONFIGURE_KEYS = ("term_frequency_adjustments", "m_probabilities", "u_probabilities")
TRAINING_STEPS = (
    "estimate_probability_two_random_records_match",
    "estimate_u_using_random_sampling",
    "estimate_parameters_using_expectation_maximisation",
    "estimate_m_from_label_column",
)


# --- settings specs → Splink objects ---------------------------------------------------------


def comparison(spec: dict[str, Any]) -> ComparisonCreator | dict[str, Any]:
    """A Splink comparison from a spec (``{"comparison": class name, **kwargs}``) or its dict."""
    from splink import comparison_library

    if not isinstance(spec, dict):
        raise MatchboxInvalidData(
            f"A Splink comparison is a dict (a spec or Splink's own); got {spec!r}."
        )
    if "comparison" not in spec:
        if "comparison_levels" not in spec:
            raise MatchboxInvalidData(
                "A Splink comparison dict needs 'comparison' (a class of "
                f"splink.comparison_library) or 'comparison_levels'; got keys {sorted(spec)}."
            )
        return deepcopy(spec)
    kwargs = {k: v for k, v in spec.items() if k != "comparison" and k not in _CONFIGURE_KEYS}
    configure = {k: spec[k] for k in _CONFIGURE_KEYS if k in spec}
    name = spec["comparison"]
    if name not in comparison_library.__all__:
        raise MatchboxInvalidData(
            f"Unknown Splink comparison {name!r}; known: {sorted(comparison_library.__all__)}."
        )
    try:
        creator = getattr(comparison_library, name)(**kwargs)
        return creator.configure(**configure) if configure else creator
    except (TypeError, ValueError) as exc:
        raise MatchboxInvalidData(f"Invalid Splink comparison {spec!r}: {exc}") from exc


def blocking_rule(spec: Any) -> BlockingRuleCreator:
    """A Splink blocking rule from SQL, a list of columns, ``{"block_on": […]}`` or its dict."""
    from splink import block_on
    from splink.blocking_rule_library import CustomRule

    if isinstance(spec, str):
        return CustomRule(spec)
    if isinstance(spec, list | tuple) and spec and all(isinstance(c, str) for c in spec):
        return block_on(*spec)
    if isinstance(spec, dict) and "block_on" in spec:
        return blocking_rule(list(spec["block_on"]))
    if isinstance(spec, dict) and "blocking_rule" in spec:
        return CustomRule(**spec)
    raise MatchboxInvalidData(
        "A blocking rule is SQL ('l.a = r.a'), a list of columns, {'block_on': [...]} or "
        f"{{'blocking_rule': '...'}}; got {spec!r}."
    )


def _training_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Training keyword arguments with blocking-rule specs turned into Splink rules."""
    converted = dict(arguments)
    if "blocking_rule" in converted:
        converted["blocking_rule"] = blocking_rule(converted["blocking_rule"])
    if "deterministic_matching_rules" in converted:
        rules = converted["deterministic_matching_rules"]
        if isinstance(rules, str) or (rules and isinstance(rules, dict)):
            rules = [rules]
        converted["deterministic_matching_rules"] = [blocking_rule(r) for r in rules]
    return converted


# --- the methodology --------------------------------------------------------------------------


class SplinkModel(Model):
    """A Splink 5 model: comparisons, blocking and training as settings (see the module doc).

    Example::

        SplinkModel(
            splink_settings={
                "comparisons": [
                    {"comparison": "NameComparison", "col_name": "given_name"},
                    {"comparison": "NameComparison", "col_name": "surname"},
                    {"comparison": "DateOfBirthComparison", "col_name": "dob",
                     "input_is_string": True, "datetime_format": "%Y%m%d"},
                ],
                "blocking_rules_to_generate_predictions": [["surname"], ["dob"]],
            },
            training=[
                {"estimate_u_using_random_sampling": {"max_pairs": 1e6, "seed": 1}},
                {"estimate_parameters_using_expectation_maximisation":
                    {"blocking_rule": ["dob"]}},
            ],
            threshold=0.9,
        )
    """

    model_class = "Splink"

    splink_settings: dict[str, Any] = Field(
        description="Splink settings dict: comparisons (specs or Splink dicts), "
        "blocking_rules_to_generate_predictions, model parameters."
    )
    training: list[dict[str, dict[str, Any]]] = Field(
        default_factory=list,
        description="Training steps in order, each {linker.training method: kwargs}.",
    )
    threshold: float = Field(default=0.0, ge=0, le=1, description="Minimum match probability.")
    engine: Literal["duckdb", "spark"] = Field(default="duckdb", description="Splink backend.")
    retrain: bool = Field(
        default=False,
        description="Train anew in every run even when a trained model of this config is "
        "stored (the Dagster layer reuses stored trained parameters otherwise).",
    )

    @field_validator("splink_settings")
    @classmethod
    def _check_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        value = {k: v for k, v in value.items() if k not in _OWNED_KEYS}
        comparisons = value.get("comparisons")
        if not comparisons or not isinstance(comparisons, list):
            raise ValueError("splink_settings need a non-empty list of 'comparisons'")
        for spec in comparisons:
            comparison(spec)
        rules = value.get("blocking_rules_to_generate_predictions", [])
        if not isinstance(rules, list):
            raise ValueError("'blocking_rules_to_generate_predictions' must be a list")
        for rule in rules:
            blocking_rule(rule)
        return value

    @field_validator("training")
    @classmethod
    def _check_training(cls, value: list[dict[str, dict[str, Any]]]) -> Any:
        for step in value:
            if len(step) != 1 or next(iter(step)) not in TRAINING_STEPS:
                raise ValueError(
                    f"each training step is {{method: kwargs}} with one of {TRAINING_STEPS}; "
                    f"got {step!r}"
                )
            _training_arguments(next(iter(step.values())))
        return value

    @property
    def fields(self) -> list[str]:
        """Input columns the comparisons read (as Splink reports them)."""
        try:
            settings = self._creator("dedupe_only").get_settings("duckdb")
            return [
                c.input_name
                for c in settings._columns_used_by_comparisons
                if c.input_name != UNIQUE_ID
            ]
        except Exception:  # Splink-dialect SQL it cannot parse: the inputs decide.
            return []

    def _creator(self, link_type: str) -> Any:
        from splink import SettingsCreator

        settings = deepcopy(self.splink_settings)
        settings["comparisons"] = [comparison(c) for c in settings["comparisons"]]
        settings["blocking_rules_to_generate_predictions"] = [
            blocking_rule(r) for r in settings.get("blocking_rules_to_generate_predictions", [])
        ]
        return SettingsCreator(link_type=link_type, unique_id_column_name=UNIQUE_ID, **settings)

    # --- scoring ------------------------------------------------------------------------------

    def dedupe(self, data: pl.DataFrame) -> ModelResults:
        """Pairs of distinct ids within ``data`` with match probability ≥ ``threshold``."""
        return self._predict([data], dedupe=True)[0]

    def link(self, left: pl.DataFrame, right: pl.DataFrame) -> ModelResults:
        """Pairs (left id, right id) with match probability ≥ ``threshold``."""
        return self._predict([left, right], dedupe=False)[0]

    def trained(self, data: pl.DataFrame, right: pl.DataFrame | None = None) -> SplinkModel:
        """A copy of the model trained on the data: trained parameters, no training steps.

        Storing the trained model (its :meth:`settings`) makes later runs reproducible and
        skips training; pass ``right`` to train a linker.
        """
        frames = [data] if right is None else [data, right]
        rows, columns = self._rows(frames, "Splink")
        link_type = "dedupe_only" if right is None else "link_only"
        with database_api(self.engine) as api:
            settings = _parameters(self._linker(api, rows, columns, link_type))
        return self.with_parameters(settings)

    # --- trained parameters (kept by the Dagster layer, see docs/methods.md) -------------------

    def training_settings(self) -> dict[str, Any]:
        """What shapes the trained parameters: settings, training steps and engine.

        ``threshold`` and ``retrain`` are left out: they change neither the training nor
        the parameters, so a model differing only in them may predict with the same ones.
        """
        return self.model_dump(mode="json", include={"splink_settings", "training", "engine"})

    def with_parameters(self, parameters: dict[str, Any]) -> SplinkModel:
        """A copy predicting with trained ``parameters`` (as :meth:`fit_predict` gives them).

        No training steps: predictions use the parameters as they are. ``threshold`` and
        ``engine`` stay this model's. The parameters are validated like ``splink_settings``.
        """
        return SplinkModel(
            splink_settings=parameters,
            training=[],
            threshold=self.threshold,
            engine=self.engine,
            retrain=self.retrain,
        )

    def fit_predict(
        self, data: pl.DataFrame, right: pl.DataFrame | None = None
    ) -> tuple[ModelResults, dict[str, Any] | None]:
        """Train on the input(s) and score them, in one linker; also return the trained parameters.

        The results are those of :meth:`dedupe` (``right`` None) or :meth:`link`; the
        parameters (a JSON-able Splink settings dict with m and u probabilities, None when an
        input is empty) make :meth:`with_parameters` predict the same scores without training.
        """
        frames = [data] if right is None else [data, right]
        return self._predict(frames, dedupe=right is None, export=True)

    def _rows(self, frames: list[pl.DataFrame], what: str) -> tuple[list[pl.DataFrame], list[str]]:
        """The (id, columns) rows of each input, numbered across inputs for Splink."""
        fields = self.fields
        for i, frame in enumerate(frames):
            require_columns(frame, fields, what if len(frames) == 1 else f"{what} input {i + 1}")
        # Every column the inputs share goes to Splink: blocking rules and custom SQL may read
        # columns no comparison names.
        shared = set.intersection(*(set(f.columns) for f in frames))
        columns = [c for c in frames[0].columns if c in shared and c != ID]
        if UNIQUE_ID in columns:
            raise MatchboxInvalidData(f"Splink input may not have a column named {UNIQUE_ID!r}.")
        # Sorted, so the row numbers — which Splink's seeded sampling hashes — depend only on the
        # rows: the same data trains the same model whatever order it comes in. Identical rows are
        # kept: they are records, and Splink's estimates count them.
        parts = [f.select(pl.col(ID).cast(pl.Int64), *columns).sort([ID, *columns]) for f in frames]
        # One schema for both inputs (e.g. Int64 vs String postcodes) and one row numbering.
        merged = pl.concat(
            [p.with_columns(pl.lit(i, pl.Int8).alias("__input")) for i, p in enumerate(parts)],
            how="vertical_relaxed",
        ).with_row_index(UNIQUE_ID)
        merged = merged.with_columns(pl.col(UNIQUE_ID).cast(pl.Int64))
        rows = [merged.filter(pl.col("__input") == i).drop("__input") for i in range(len(frames))]
        return rows, columns

    def _linker(
        self, api: DatabaseAPI, rows: list[pl.DataFrame], columns: list[str], link_type: str
    ) -> Linker:
        from splink import Linker

        run = uuid.uuid4().hex[:8]  # Spark sessions outlive a model run: names must not clash
        tables = [
            api.register(self._engine_table(r.select(UNIQUE_ID, *columns)), table_name=name)
            for r, name in zip(rows, (f"mb_left_{run}", f"mb_right_{run}"), strict=False)
        ]
        # log_level=None: leave logging to the application (Splink would add its own handler).
        linker = Linker(
            tables if len(tables) > 1 else tables[0], self._creator(link_type), log_level=None
        )
        for step in self.training:
            method, arguments = next(iter(step.items()))
            train: Callable[..., Any] = getattr(linker.training, method)
            train(**_training_arguments(arguments))
        return linker

    def _engine_table(self, frame: pl.DataFrame) -> Any:
        return engine_table(frame, self.engine)

    def _predict(
        self, frames: list[pl.DataFrame], *, dedupe: bool, export: bool = False
    ) -> tuple[ModelResults, dict[str, Any] | None]:
        """Scored pairs, and with ``export`` the linker's (trained) parameters."""
        rows, columns = self._rows(frames, "Splink")
        if any(r.height == 0 for r in rows):
            return empty_results(), None
        link_type = "dedupe_only" if dedupe else "link_only"
        # Row numbers follow the inputs: those of the left input come first.
        left_count = rows[0].height
        ids = pl.concat([r.select(UNIQUE_ID, ID) for r in rows])
        with database_api(self.engine) as api:
            linker = self._linker(api, rows, columns, link_type)
            parameters = _parameters(linker) if export else None
            # The engine holds its own copy of the rows now; keep only the ids while it predicts
            # (~65 MB less at the peak for 1M synthetic people).
            rows.clear()
            predictions = linker.inference.predict(
                threshold_match_probability=self.threshold or None
            )
            selected = predictions.query_sql(
                f"SELECT {UNIQUE_ID}_l, {UNIQUE_ID}_r, match_probability FROM {{this}}"  # noqa: S608
            )
            table: pa.Table = selected.as_pyarrow_table()
        pairs = pl.DataFrame(pl.from_arrow(table)).filter(
            pl.col("match_probability") >= self.threshold
        )
        mapped = (
            pairs.join(ids, left_on=f"{UNIQUE_ID}_l", right_on=UNIQUE_ID)
            .join(ids, left_on=f"{UNIQUE_ID}_r", right_on=UNIQUE_ID, suffix="_r")
            .with_columns((pl.col(f"{UNIQUE_ID}_l") < left_count).alias("l"))
        )
        if dedupe:
            oriented = mapped.select(
                pl.col(ID).alias("left_id"),
                pl.col(f"{ID}_r").alias("right_id"),
                "match_probability",
            )
        else:
            # Whichever side of a Splink pair came from the left input is our left_id.
            oriented = mapped.select(
                pl.when("l").then(pl.col(ID)).otherwise(pl.col(f"{ID}_r")).alias("left_id"),
                pl.when("l").then(pl.col(f"{ID}_r")).otherwise(pl.col(ID)).alias("right_id"),
                "match_probability",
            )
        scored = oriented.rename({"match_probability": "score"}).drop_nulls()
        return finish_pairs(scored, dedupe=dedupe), parameters


def _parameters(linker: Linker) -> dict[str, Any]:
    """A linker's settings with its current m and u probabilities, less what the model sets."""
    saved = linker.misc.save_model_to_json(out_path=None)
    return {k: v for k, v in saved.items() if k not in (*_OWNED_KEYS, "linker_uid")}
