"""``matchbox-dagster init``: a new project that Dagster's tools and the CLI accept at once.

The from-scratch flow a data team follows, in an empty folder, through the real CLI in
subprocesses against the test PostgreSQL: init → own CSV → validate → check → promote → query.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import polars as pl
import pytest

from matchbox_dagster.cli.template import init_project, package_name
from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.cli_runner import Cli

BIN = Path(sys.executable).parent

OWN_CSV = """\
id,name,dob,postcode,person
a1,Mary Shelley,1797-08-30,BA1 1AA,m
a2,Mary Shelley,1797-08-30,BA1 1AB,m
a3,Percy Shelley,1792-08-04,BA1 1AA,p
a4,Percy Shelley,1792-08-04,BA1 1AA,p
a5,John Keats,1795-10-31,NW3 2RR,k
a6,Lord Byron,1788-01-22,NG1 5FF,b
"""


def test_init_writes_a_dg_project(tmp_path: Path) -> None:
    project = init_project(tmp_path / "My-Data")
    assert project.package == "my_data"
    pyproject = tomllib.loads((project.root / "pyproject.toml").read_text())
    assert pyproject["tool"]["dg"]["directory_type"] == "project"
    assert pyproject["tool"]["dg"]["project"]["root_module"] == "my_data"
    assert pyproject["tool"]["dg"]["project"]["defs_module"] == "my_data.defs"
    assert (project.root / "my_data" / "__init__.py").exists()
    assert "load_from_defs_folder" in project.definitions.read_text()
    text = project.defs_yaml.read_text()
    assert "type: matchbox_dagster.dagster.component.MatchboxCollectionComponent" in text
    assert text.count("\n#") + text.count("  #") >= 5  # commented for a new user


def test_init_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MatchboxInvalidData, match="not empty"):
        init_project(tmp_path)
    assert package_name(Path("2024 data")) == "p_2024_data"


def test_dagster_tools_accept_the_new_project(tmp_path: Path) -> None:
    project = init_project(tmp_path / f"p{uuid.uuid4().hex[:6]}")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for command in (["dg", "check", "yaml"], ["dagster", "definitions", "validate"]):
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "WARNING" not in done.stderr, done.stderr


def test_from_scratch_check_promote_query(
    cli: Cli, tmp_path: Path, store: MatchboxPostgres
) -> None:
    folder = tmp_path / f"team_{uuid.uuid4().hex[:8]}"
    done = cli("init", folder.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    collection = folder.name
    definitions = f"{collection}/definitions.py"
    done = cli("validate", "--definitions", definitions, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert collection not in store.list_collections()  # validate writes nothing
    # As written, on its sample, the project passes its checks at once.
    done = cli("check", "--definitions", definitions, "--label", "sample", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "precision 1.0000" in done.stdout and "recall 1.0000" in done.stdout
    # Their own data: a CSV of their making replaces the sample.
    (folder / "data" / "records.csv").write_text(OWN_CSV)

    done = cli("validate", "--definitions", definitions, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr

    done = cli("check", "--definitions", definitions, "--label", "first", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all blocking checks passed" in done.stdout

    done = cli("promote", "--definitions", definitions, "--label", "first", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    first = store.run_for_label(collection, "first", create=False).run_id
    assert store.get_collection(collection).default_run == first

    out = tmp_path / "entities.parquet"
    done = cli(
        "query",
        "--definitions",
        definitions,
        "--source",
        "records",
        "--output",
        str(out),
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entities = pl.read_parquet(out)
    groups = sorted(
        sorted(keys) for keys in entities.group_by("id").agg(pl.col("key"))["key"].to_list()
    )
    # a1/a2 agree on name and dob (score 0.8), a3/a4 are identical rows: two entities of two.
    assert groups == [["a1", "a2"], ["a3", "a4"], ["a5"], ["a6"]]
