"""Splink's engines for :class:`~matchbox_dagster.methods.models.splink.SplinkModel`.

``duckdb`` runs in the process. ``spark`` runs on a Spark session: the active one (a cluster's,
through spark-submit or Spark Connect), else a local one made here. Either way a model run gets
a fresh Splink database API from :func:`database_api`, and on exit everything the run put in
the engine is gone: its input views, Splink's tables and views, and their checkpoint files.
Rows go in and pairs come out as Arrow (no per-row Python). See docs/scale.md.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import polars as pl

from matchbox_dagster.common.errors import MatchboxInvalidData

if TYPE_CHECKING:
    from splink.internals.database_api import DatabaseAPI

SPARK_HINT = "pip install 'matchbox-dagster[spark]'"
SPARK_JAR_HINT = (
    "start the Spark session with Splink's similarity functions on its classpath: "
    "SparkSession.builder.config('spark.jars', "
    "splink.backends.spark.similarity_jar_location()) (spark-submit --jars …, or the server's "
    "spark.jars for Spark Connect)"
)
_SIMILARITY_PROBE = ("jaro_winkler", "uk.gov.moj.dash.linkage.JaroWinklerSimilarity")


@contextmanager
def database_api(engine: str) -> Iterator[DatabaseAPI]:
    """A fresh Splink database API for ``engine``; what the run left in the engine goes on exit."""
    if engine == "duckdb":
        import duckdb
        from splink.backends.duckdb import DuckDBAPI

        connection = duckdb.connect()
        try:
            yield DuckDBAPI(connection)
        finally:
            connection.close()
        return
    if engine == "spark":
        api = spark_api()
        try:
            yield api
        finally:
            _clean_spark(api)
        return
    raise MatchboxInvalidData(f"Unknown Splink engine {engine!r}; use 'duckdb' or 'spark'.")


def engine_table(frame: pl.DataFrame, engine: str) -> Any:
    """What the engine's ``register`` takes: Arrow for both (Spark 4 reads it in batches)."""
    # polars gives large_string/large_list, which DuckDB and Spark 4 both read; no view types.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _is_connect(session: Any) -> bool:
    return type(session).__module__.startswith("pyspark.sql.connect")


def spark_api() -> DatabaseAPI:
    """Splink's Spark API on the active Spark session (pyspark is imported only here).

    Without an active session one is made with ``SparkSession.builder`` (``spark-defaults.conf``
    and ``SPARK_REMOTE`` apply), adding Splink's similarity-function jar to ``spark.jars``
    unless it is a Spark Connect session. Each run checkpoints Splink's intermediate tables in
    a directory of its own under the session's checkpoint directory (a local session without
    one gets a temporary one; a cluster's session without one is refused); over Spark Connect,
    where the client reaches no checkpoint directory, they are cached instead. A session
    without Splink's jar is refused with how to add it.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ImportError(
            f"The Splink 'spark' engine needs pyspark, which is not installed: {SPARK_HINT}"
        ) from exc
    from splink.backends.spark import similarity_jar_location

    session = SparkSession.getActiveSession()
    if session is None:
        builder = SparkSession.builder.appName("matchbox-splink")
        if not os.environ.get("SPARK_REMOTE"):  # a Connect server has its own jars
            builder = builder.config("spark.jars", similarity_jar_location())
        session = builder.getOrCreate()
    _require_similarity_jar(session)
    if _is_connect(session):
        return _spark_api_class()(spark_session=session, break_lineage_method="persist")
    context = session.sparkContext
    if context.getCheckpointDir() is None:
        if not context.master.startswith("local"):
            raise MatchboxInvalidData(
                f"The Splink 'spark' engine's session (master {context.master!r}) has no "
                "checkpoint directory: set spark.checkpoint.dir (or call "
                "spark.sparkContext.setCheckpointDir) to a directory every executor and the "
                "driver can reach (HDFS, S3, a shared volume)."
            )
        context.setCheckpointDir(tempfile.mkdtemp(prefix="matchbox-splink-"))
    return _spark_api_class()(spark_session=session, break_lineage_method="parquet")


def _require_similarity_jar(session: Any) -> None:
    """Refuse a session without Splink's jar: its comparisons would fail much later."""
    from pyspark.sql.types import DoubleType

    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return  # Splink registers its functions on Databricks itself.
    try:
        session.udf.registerJavaFunction(*_SIMILARITY_PROBE, DoubleType())
    except Exception as exc:
        raise MatchboxInvalidData(
            "The Splink 'spark' engine's session cannot load Splink's similarity functions "
            f"(jaro_winkler, damerau_levenshtein, …): {SPARK_JAR_HINT}. Spark said: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


@cache
def _spark_api_class() -> type:
    """Splink's ``SparkAPI`` writing each run's checkpoints to a directory of its own."""
    from splink.backends.spark import SparkAPI

    class RunSparkAPI(SparkAPI):
        run_directory: str | None = None

        def _get_checkpoint_dir_path(self, spark_df: Any) -> str:
            if self.run_directory is None:
                root = super()._get_checkpoint_dir_path(spark_df)
                self.run_directory = f"{root.rstrip('/')}/matchbox-{uuid.uuid4().hex[:12]}"
            return self.run_directory

    return RunSparkAPI


def _clean_spark(api: Any) -> None:
    """Drop every table and view a run made in the session and delete its checkpoint files."""
    spark = api.spark
    # Splink forgets the tables it drops itself, but with "parquet" or "persist" their views
    # (and cached data) stay: every table the run made is dropped here, then our input views.
    made = {df.physical_name for df in api._intermediate_table_cache.executed_queries}
    made |= set(api._created_tables)
    api.delete_tables_created_by_splink_from_db()
    for name in sorted(made | set(api._registered_table_names)):
        spark.catalog.dropTempView(name)  # a cached view is uncached too
    directory = getattr(api, "run_directory", None)
    if directory is not None and not _is_connect(spark):
        jvm = spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(directory)
        path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)
