"""Preflight: a collection checked against its sources' schemas before a run writes anything.

:func:`preflight` reads each source's schema cheaply — a CSV header, a Parquet footer, an SQL
query's columns (a lazy DuckDB relation, or a server-side cursor's description before any row
is fetched), an arrow callable's frame schema, an S3 object's head and a partial read — and
checks, all in one pass:

* the graph itself (:func:`~matchbox_dagster.specs.plan_collection`: names, inputs, cycles,
  thresholds naming models, resolvers listing every model that scores their sources);
* that each location can be read and its ``extract_transform`` compiles;
* the key field and index fields against the source's columns;
* each model input's cleaning expressions, compiled with polars SQL against the input's columns;
* the fields each model reads (weights, rule fields) against its inputs' columns;
* each resolver's truth expressions against *all* columns of the source (any column may hold the
  truth, not only an index field) plus ``key``;
* each resolver threshold against the best score its model's rules can give.

Every problem found is collected; :class:`PreflightError` lists them all, each with the
``defs.yaml`` file and line when the spec came from YAML. Nothing here writes anywhere.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from matchbox_dagster.common.dtos import LocationType, SourceConfig
from matchbox_dagster.common.errors import MatchboxError, MatchboxInvalidData
from matchbox_dagster.common.redaction import redact
from matchbox_dagster.methods.organisations import cleaning_expr
from matchbox_dagster.sources.roots import (
    allowed_files,
    database_file_allowed,
    location_roots,
    refuse_file_functions,
)
from matchbox_dagster.specs import CollectionPlan, CollectionSpec, InputSpec, plan_collection
from matchbox_dagster.specs.shape import SpecError, SpecProblem, Where

Problem = SpecProblem
"""One thing to fix (where in the spec, what, and the YAML file and line when known)."""


class PreflightError(MatchboxInvalidData):
    """A collection that would fail at run time; nothing was written. ``problems`` lists all."""

    def __init__(self, collection: str, problems: Sequence[Problem]) -> None:
        self.collection = collection
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"Preflight of collection {collection!r} found {len(self.problems)} problem(s); "
            f"nothing was written:\n{lines}"
        )


@dataclass
class _Found:
    """Problems found so far, placed in the YAML file when there is one."""

    yaml: Path | None
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: Where, message: str) -> None:
        self.problems.append(SpecProblem(where, message).located(self.yaml))


def _short(exc: BaseException) -> str:
    """An exception's first line, without polars' hints."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- schemas ----------------------------------------------------------------------------------


def _transformed(frame: pl.LazyFrame, sql: str) -> pl.Schema:
    if sql.strip():
        frame = pl.SQLContext(source=frame).execute(sql, eager=False)
    return frame.collect_schema()


def _file_schema(kind: LocationType, name: str | list[str], sql: str) -> pl.Schema:
    if kind == LocationType.CSV:
        return _transformed(pl.scan_csv(name, infer_schema=False), sql)
    return _transformed(pl.scan_parquet(name), sql)


def _database_columns(uri: str, sql: str, local_only: bool) -> list[str]:
    if not sql.strip():
        raise MatchboxInvalidData("a database source needs an extract_transform query")
    if uri.startswith("duckdb://"):
        import duckdb

        path = uri.removeprefix("duckdb://").removeprefix("/") or ":memory:"
        settings = {"enable_external_access": False} if local_only else {}
        with duckdb.connect(path, read_only=path != ":memory:", config=settings) as con:
            relation = con.sql(sql)  # lazy: its columns are known without running it
            if relation is None:
                raise MatchboxInvalidData("extract_transform is not a query")
            return list(relation.columns)
    import sqlalchemy as sa

    from matchbox_dagster.sources.locations import database_engine

    engine, _ = database_engine(uri)  # its ${NAME} password filled in from the environment
    try:
        with engine.connect() as conn:
            # A server-side cursor: the columns are described before any row is fetched.
            result = conn.execution_options(stream_results=True).execute(sa.text(sql))
            try:
                return list(result.keys())
            finally:
                result.close()
    finally:
        engine.dispose()


def _s3_schema(uri: str, sql: str, client: Any) -> pl.Schema:
    from matchbox_dagster.sources.locations import s3_object

    bucket, key, suffix = s3_object(uri)
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]

    def read(start: int, end: int) -> bytes:
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
        return answer["Body"].read()

    if suffix == ".csv":
        head = read(0, min(size, 65536) - 1)
        header = head.split(b"\n", 1)[0] + b"\n"
        return _transformed(pl.read_csv(io.BytesIO(header), infer_schema=False).lazy(), sql)
    # Parquet: the footer alone (its last 8 bytes give its length) holds the schema.
    tail = read(size - 8, size - 1)
    footer_length = int.from_bytes(tail[:4], "little")
    footer = read(size - 8 - footer_length, size - 9)
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        tmp.write(b"PAR1" + footer + tail)
        tmp.flush()
        import pyarrow.parquet as pq

        schema = pq.read_schema(tmp.name)
    empty = pl.DataFrame(pl.from_arrow(schema.empty_table())).lazy()
    return _transformed(empty, sql)


def source_schema(
    config: SourceConfig,
    *,
    s3_client: Any | None = None,
    s3_client_factory: Callable[[], Any] | None = None,
) -> pl.Schema:
    """The columns a source's extract gives (names and types), read without its rows.

    An S3 object is read with ``s3_client``, else ``s3_client_factory()`` (the Dagster layer's
    ``S3Resource``), else boto3 from the environment (:func:`~.sources.locations.s3_client_for`).
    ``MATCHBOX_LOCATION_ROOTS`` binds it as it binds the extract (:mod:`~.sources.roots`).
    """
    location = config.location_config
    sql = config.extract_transform
    allowed = location_roots()
    if location.type in (LocationType.CSV, LocationType.PARQUET):
        files: str | list[str] = location.name
        if allowed:
            files = allowed_files(location, allowed)
            refuse_file_functions(location.name, sql)
        return _file_schema(location.type, files, sql)
    if location.type == LocationType.ARROW:
        from matchbox_dagster.sources.locations import read_callable

        return _transformed(read_callable(location.name).lazy(), sql)
    if location.type == LocationType.RDBMS:
        if allowed:
            database_file_allowed(location.name, allowed)
        names = _database_columns(location.name, sql, local_only=bool(allowed))
        return pl.Schema(dict.fromkeys(names, pl.String))
    if location.type == LocationType.S3:
        from matchbox_dagster.sources.locations import s3_client_for

        return _s3_schema(location.name, sql, s3_client_for(s3_client, s3_client_factory))
    raise MatchboxInvalidData(f"unsupported location type {location.type!r}")


# --- checks -----------------------------------------------------------------------------------


def _compile(expression: str, columns: Sequence[str]) -> str | None:
    """Why ``expression`` does not compile against ``columns`` (None when it does)."""
    try:
        expr = cleaning_expr(expression)
        pl.LazyFrame(schema=dict.fromkeys(columns, pl.String)).select(expr).collect_schema()
    except Exception as exc:  # polars raises several types for bad SQL and unknown columns
        return _short(exc)
    return None


def _check_sources(plan: CollectionPlan, found: _Found, s3: dict[str, Any]) -> dict[str, list[str]]:
    """Each readable source's columns; problems for unreadable ones and missing fields."""
    columns: dict[str, list[str]] = {}
    for i, spec in enumerate(plan.spec.sources):
        config = plan.sources[spec.name]
        shown = redact(config.location_config.name)
        try:
            names = list(source_schema(config, **s3).names())
        except FileNotFoundError as exc:
            found.add(("sources", i, "location"), f"{shown}: no such file ({_short(exc)})")
            continue
        except Exception as exc:  # any reader's error: the location cannot be read
            where = "extract_transform" if config.extract_transform.strip() else "location"
            found.add(("sources", i, where), f"cannot read {shown}: {_short(exc)}")
            continue
        columns[spec.name] = names
        if spec.key_field not in names:
            found.add(
                ("sources", i, "key_field"),
                f"source {spec.name!r} has no column {spec.key_field!r}; it has {names}",
            )
        for j, name in enumerate(spec.index_fields):
            if name not in names:
                found.add(
                    ("sources", i, "index_fields", j),
                    f"source {spec.name!r} has no column {name!r}; it has {names}",
                )
    return columns


def _input_columns(
    plan: CollectionPlan,
    found: _Found,
    where: Where,
    spec: InputSpec,
    sources: Sequence[str],
    columns: dict[str, list[str]],
) -> set[str] | None:
    """The columns a model input gives (None when a source is unreadable)."""
    given: set[str] = set()
    for name in sources:
        if name not in columns:
            return None
        index = [f.name for f in plan.sources[name].index_fields]
        available = ["id", *index]
        for column, expression in (spec.cleaning or {}).items():
            reason = _compile(expression, available)
            if reason:
                found.add(
                    (*where, "cleaning", column),
                    f"cleaning of {column!r} does not compile against source {name!r} "
                    f"(columns {available}): {reason}",
                )
        given |= {*index, *(spec.cleaning or {})}
    return given


def _check_models(plan: CollectionPlan, found: _Found, columns: dict[str, list[str]]) -> None:
    for i, model in enumerate(plan.models):
        reads = model.methodology.input_fields
        if reads is None:
            reads = model.methodology.fields
        for side, query in model.queries.items():
            spec = model.spec.left if side == "left" else model.spec.right
            assert spec is not None
            where: Where = ("models", i, side)
            given = _input_columns(plan, found, where, spec, query.sources, columns)
            if given is None:
                continue
            missing = [f for f in reads if f not in given]
            if missing:
                found.add(
                    ("models", i, "settings"),
                    f"model {model.spec.name!r} reads {missing}, which its {side} input "
                    f"({', '.join(query.sources)}) does not give: it has {sorted(given)} "
                    "(index fields and cleaned columns)",
                )


def _check_truth(plan: CollectionPlan, found: _Found, columns: dict[str, list[str]]) -> None:
    for i, resolver in enumerate(plan.resolvers):
        for source, expression in (resolver.checks.truth or {}).items():
            if source not in columns:
                continue
            available = ["key", *columns[source]]
            reason = _compile(expression, available)
            if reason:
                found.add(
                    ("resolvers", i, "checks", "truth", source),
                    f"truth of {source!r} does not compile against its columns "
                    f"{columns[source]} (plus key): {reason}",
                )


def _check_thresholds(plan: CollectionPlan, found: _Found) -> None:
    """A threshold above the best score its model can give keeps none of its edges."""
    best: dict[str, float] = {}
    for model in plan.models:
        rules = model.config.model_settings.get("rules")
        if isinstance(rules, list) and rules and all(isinstance(r, dict) for r in rules):
            best[model.spec.name] = max(float(r.get("score", 1.0)) for r in rules)
    for i, resolver in enumerate(plan.resolvers):
        for name, threshold in resolver.spec.thresholds.items():
            if name in best and threshold > best[name] + 1e-9:
                found.add(
                    ("resolvers", i, "thresholds", name),
                    f"threshold {threshold} for {name!r} keeps none of its edges: its best "
                    f"rule scores {best[name]}",
                )


def preflight_problems(
    spec: CollectionSpec,
    *,
    yaml_path: Path | None = None,
    s3_client: Any | None = None,
    s3_client_factory: Callable[[], Any] | None = None,
) -> list[Problem]:
    """Every problem :func:`preflight` finds (empty when the collection can run)."""
    found = _Found(yaml_path)
    try:
        plan = plan_collection(spec, yaml_path=yaml_path)
    except SpecError as exc:  # every problem of the graph, already placed in the file
        return exc.problems or [SpecProblem((), str(exc)).located(yaml_path)]
    except MatchboxError as exc:
        found.add((), str(exc))
        return found.problems
    s3 = {"s3_client": s3_client, "s3_client_factory": s3_client_factory}
    columns = _check_sources(plan, found, s3)
    _check_models(plan, found, columns)
    _check_truth(plan, found, columns)
    _check_thresholds(plan, found)
    return found.problems


def preflight(
    spec: CollectionSpec,
    *,
    yaml_path: Path | None = None,
    s3_client: Any | None = None,
    s3_client_factory: Callable[[], Any] | None = None,
) -> None:
    """Raise :class:`PreflightError` listing every problem; return when the run can start."""
    problems = preflight_problems(
        spec, yaml_path=yaml_path, s3_client=s3_client, s3_client_factory=s3_client_factory
    )
    if problems:
        raise PreflightError(spec.collection, problems)


class RunMarker(Protocol):
    """Where a Dagster run records that its preflight passed, seen by every step process.

    The Dagster layer implements it with the run's tags (``matchbox/preflight``).
    """

    def passed(self, run_id: str) -> bool:
        """Whether the run's preflight already passed (in any process)."""
        ...

    def mark_passed(self, run_id: str) -> None:
        """Record that the run's preflight passed."""
        ...


@contextmanager
def _run_lock(run_id: str) -> Iterator[None]:
    """Steps of one run on one machine take turns here, so the first checks and others wait.

    A lock file per run in the temporary folder (``flock``; where there is none, no lock: each
    process may then check once, which is slower but as safe).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:24]
    path = Path(tempfile.gettempdir()) / f"matchbox-preflight-{digest}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunPreflight:
    """A collection's preflight, run once per Dagster run whatever the executor.

    In one process a run that passed is remembered. Across processes (the multiprocess
    executor starts one per step) ``marker`` records the pass in the run itself, and a lock
    per run makes the steps that start together wait for the first one's verdict instead of
    each reading every source again. A failed preflight is not recorded: each step that
    starts reports it (and writes nothing).
    """

    def __init__(self, spec: CollectionSpec, yaml_path: Path | None = None) -> None:
        self.spec = spec
        self.yaml_path = yaml_path
        self._passed: set[str] = set()
        self.checks = 0
        """How many times this object ran the preflight (the rest were skipped)."""

    def __call__(
        self,
        run_id: str,
        *,
        marker: RunMarker | None = None,
        s3_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        """Check before the step writes (:class:`PreflightError`); skip a run that passed."""
        if run_id in self._passed:
            return
        if marker is None:
            self._check(s3_client_factory)
        else:
            with _run_lock(run_id):
                if not marker.passed(run_id):
                    self._check(s3_client_factory)
                    marker.mark_passed(run_id)
        self._passed.add(run_id)

    def _check(self, s3_client_factory: Callable[[], Any] | None) -> None:
        self.checks += 1
        preflight(self.spec, yaml_path=self.yaml_path, s3_client_factory=s3_client_factory)


PreflightHook = Callable[[str], None]
"""What an asset body calls first with its Dagster run id (a :class:`RunPreflight`)."""

SPEC_META = "matchbox/spec/"
"""Definitions metadata key prefix (+ collection) of a collection's spec as JSON."""
YAML_META = "matchbox/defs_yaml/"
"""Definitions metadata key prefix (+ collection) of the ``defs.yaml`` a spec came from."""


def spec_metadata(spec: CollectionSpec, defs_yaml: Path | None) -> dict[str, str]:
    """Definitions metadata keeping a collection's spec (JSON) and its ``defs.yaml`` path."""
    found = {SPEC_META + spec.collection: spec.model_dump_json()}
    if defs_yaml is not None:
        found[YAML_META + spec.collection] = str(defs_yaml)
    return found


def spec_from_metadata(
    metadata: dict[str, Any], collection: str
) -> tuple[CollectionSpec, Path | None] | None:
    """The spec and ``defs.yaml`` that :func:`spec_metadata` kept (None if absent)."""

    def text(value: Any) -> str | None:
        return None if value is None else str(getattr(value, "value", value))

    raw = text(metadata.get(SPEC_META + collection))
    if raw is None:
        return None
    yaml_path = text(metadata.get(YAML_META + collection))
    return CollectionSpec.model_validate_json(raw), Path(yaml_path) if yaml_path else None
