"""Issue 15 item 8: the optional allow-list of roots for file locations (MATCHBOX_LOCATION_ROOTS).

Real files in a temporary directory: an allowed root, a folder outside it holding a "secret"
table, and the ways out of the root a spec author might try (a symlink, ``..``, a glob over a
folder holding a link, a database file, the query's own file functions).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import duckdb
import polars as pl
import pytest

from matchbox_dagster.common.dtos import LocationConfig, LocationType, SourceConfig
from matchbox_dagster.common.errors import MatchboxInvalidData, MatchboxLocationNotAllowed
from matchbox_dagster.sources.locations import extract, index_source
from matchbox_dagster.sources.roots import ROOTS_VARIABLE, location_roots
from matchbox_dagster.specs import SourceSpec

ROWS = pl.DataFrame({"k": ["1", "2", "3"], "name": ["a", "b", "c"]})


def config(type_: LocationType | str, name: str, sql: str = "") -> SourceConfig:
    return SourceSpec(
        name="people",
        location=LocationConfig(type=type_, name=name),
        key_field="k",
        index_fields=["name"],
        extract_transform=sql,
    ).config()


def read(cfg: SourceConfig, **kw: object) -> pl.DataFrame:
    return pl.concat(list(extract(cfg, batch_size=2, **kw)))  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """``allowed/`` (a root) with a table and links out; ``outside/`` with the secret table."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "parts").mkdir(parents=True)
    outside.mkdir()
    ROWS.write_parquet(allowed / "people.parquet")
    ROWS.write_csv(allowed / "people.csv")
    ROWS.write_parquet(allowed / "parts" / "a.parquet")
    ROWS.with_columns(pl.lit("secret").alias("name")).write_parquet(outside / "secret.parquet")
    ROWS.write_csv(outside / "secret.csv")
    os.symlink(outside / "secret.parquet", allowed / "link.parquet")
    os.symlink(outside / "secret.parquet", allowed / "parts" / "b.parquet")
    os.symlink(outside, allowed / "door")
    with sqlite3.connect(outside / "secret.db") as con:
        con.execute("CREATE TABLE people (k TEXT, name TEXT)")
        con.executemany("INSERT INTO people VALUES (?, ?)", ROWS.rows())
    with sqlite3.connect(allowed / "ok.db") as con:
        con.execute("CREATE TABLE people (k TEXT, name TEXT)")
        con.executemany("INSERT INTO people VALUES (?, ?)", ROWS.rows())
    with duckdb.connect(str(allowed / "ok.duckdb")) as con:
        con.execute("CREATE TABLE people AS SELECT * FROM ROWS")
    return {"allowed": allowed, "outside": outside}


def escapes(tree: dict[str, Path]) -> dict[str, SourceConfig]:
    allowed, outside = tree["allowed"], tree["outside"]
    return {
        "symlink to a file": config("parquet", str(allowed / "link.parquet")),
        "symlinked folder": config("csv", str(allowed / "door" / "secret.csv")),
        "dot-dot": config("parquet", str(allowed / ".." / "outside" / "secret.parquet")),
        "relative dot-dot": config(
            "parquet", os.path.relpath(outside / "secret.parquet", Path.cwd())
        ),
        "glob over a link": config("parquet", str(allowed / "parts" / "*.parquet")),
        "folder holding a link": config("parquet", str(allowed / "parts")),
        "sqlite file outside": config(
            "rdbms", f"sqlite:///{allowed}/../outside/secret.db", "SELECT k, name FROM people"
        ),
        "remote path": config("parquet", "https://example.org/secret.parquet"),
        "query reading a file": config(
            "parquet",
            str(allowed / "people.parquet"),
            f"SELECT * FROM read_parquet('{outside / 'secret.parquet'}')",
        ),
    }


@pytest.mark.parametrize(
    "escape",
    [
        "symlink to a file",
        "symlinked folder",
        "dot-dot",
        "relative dot-dot",
        "glob over a link",
        "folder holding a link",
        "sqlite file outside",
        "remote path",
        "query reading a file",
    ],
)
def test_a_location_outside_the_roots_is_refused(
    tree: dict[str, Path], escape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = escapes(tree)[escape]
    # Explicit roots, and the setting (what a deployment uses), refuse the same way.
    with pytest.raises(MatchboxLocationNotAllowed, match=ROOTS_VARIABLE) as info:
        read(cfg, roots=[tree["allowed"]])
    assert isinstance(info.value, MatchboxInvalidData)
    roots = [tree["allowed"] / "nowhere", tree["allowed"]]
    monkeypatch.setenv(ROOTS_VARIABLE, os.pathsep.join(str(r) for r in roots))
    with pytest.raises(MatchboxLocationNotAllowed, match=ROOTS_VARIABLE):
        index_source(cfg)


def test_locations_inside_the_roots_read(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tree["allowed"]
    monkeypatch.setenv(ROOTS_VARIABLE, str(allowed))
    assert location_roots() == [allowed]
    inside = [
        config("parquet", str(allowed / "people.parquet")),
        config("csv", str(allowed / "people.csv"), "SELECT * FROM source WHERE k <> '9'"),
        config("parquet", str(allowed / "parts" / "a*.parquet")),
        config("parquet", str(allowed / "parts" / ".." / "people.parquet")),
        config("rdbms", f"sqlite:///{allowed}/ok.db", "SELECT k, name FROM people"),
        config("rdbms", f"duckdb:///{allowed}/ok.duckdb", "SELECT k, name FROM people"),
    ]
    for cfg in inside:
        assert read(cfg).sort("k").equals(ROWS), cfg.location_config.name
    # A root reached through a link is the same root once resolved.
    os.symlink(allowed, tree["outside"] / "alias")
    monkeypatch.setenv(ROOTS_VARIABLE, str(tree["outside"] / "alias"))
    assert read(config("parquet", str(allowed / "people.parquet"))).height == 3


def test_duckdb_cannot_read_other_files_while_roots_are_set(tree: dict[str, Path]) -> None:
    allowed, outside = tree["allowed"], tree["outside"]
    sneaky = config(
        "rdbms",
        f"duckdb:///{allowed}/ok.duckdb",
        f"SELECT k, name FROM read_parquet('{outside / 'secret.parquet'}')",
    )
    assert read(sneaky).get_column("name").to_list() == ["secret"] * 3  # no roots: allowed
    with pytest.raises(duckdb.Error):
        read(sneaky, roots=[allowed])


def test_without_roots_any_path_reads(tree: dict[str, Path], monkeypatch) -> None:
    monkeypatch.delenv(ROOTS_VARIABLE, raising=False)
    assert location_roots() == []
    cfg = escapes(tree)["symlink to a file"]
    assert read(cfg).get_column("name").to_list() == ["secret"] * 3
