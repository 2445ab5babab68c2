"""Preflight: every problem the data reveals cheaply, found before a run writes anything.

Each kind of problem is launched the way the Dagster UI launches a run (the run partition added
to the instance only, then the graph job) and must fail in the preflight with nothing in the
store: no collection, hence no run and no step. The CLI's ``validate`` and ``check`` report all
problems of a YAML project at once, with file and line, and write nothing either.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from matchbox_dagster.common.dtos import LocationType
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.dagster.partitions import partitions_name
from matchbox_dagster.dagster.resources import MatchboxResource
from matchbox_dagster.specs import (
    CollectionSpec,
    InputSpec,
    ModelSpec,
    ResolverChecksSpec,
    ResolverSpec,
)
from matchbox_dagster.specs.preflight import PreflightError, preflight, preflight_problems
from matchbox_dagster.store.postgres import MatchboxPostgres
from tests.cli_runner import Cli
from tests.factories import source_spec

CSV = """\
id,name,dob,postcode,person
1,Ann,2000-01-01,A1,x
2,Ann,2000-01-01,A1,x
3,Bob,1999-02-02,B2,y
"""


def _spec(csv: Path, **change: object) -> CollectionSpec:
    """A collection that passes preflight; ``change`` breaks one thing."""
    source = source_spec(
        "people",
        LocationType.CSV,
        str(change.get("path", csv)),
        index_fields=change.get("index_fields", ["name", "dob", "postcode"]),  # type: ignore[arg-type]
    )
    weighted = ModelSpec(
        name="dedupe",
        left=InputSpec(step="people", cleaning=change.get("cleaning")),  # type: ignore[arg-type]
        model_class="WeightedRules",
        settings={"weights": change.get("weights", {"name": 2, "dob": 2}), "threshold": 0.5},
    )
    rules = ModelSpec(
        name="rules",
        left="people",
        model_class="DeterministicRules",
        settings={"rules": [{"fields": ["name", "dob"], "score": 0.9}]},
    )
    return CollectionSpec(
        collection=f"pf_{uuid.uuid4().hex[:10]}",
        sources=[source],
        models=[weighted, rules],
        resolvers=[
            ResolverSpec(
                name="entities",
                thresholds={"dedupe": 0.5, "rules": change.get("threshold", 0.9)},  # type: ignore[dict-item]
                checks=ResolverChecksSpec(truth={"people": change.get("truth", "person")}),  # type: ignore[dict-item]
            )
        ],
    )


CASES = {
    "wrong index field": (
        {"index_fields": ["name", "dob", "postcod"]},
        ("sources", 0, "index_fields", 2),
        "no column 'postcod'",
    ),
    "wrong file path": ({"path": "nowhere/people.csv"}, ("sources", 0, "location"), "no such file"),
    "weight on a missing column": (
        {"weights": {"name": 2, "email": 1}},
        ("models", 0, "settings"),
        "reads ['email']",
    ),
    "bad cleaning expression": (
        {"cleaning": {"name": "upper(nmae)"}},
        ("models", 0, "left", "cleaning", "name"),
        "nmae",
    ),
    "truth column not present": (
        {"truth": "persn"},
        ("resolvers", 0, "checks", "truth", "people"),
        "persn",
    ),
    "bad threshold": (
        {"threshold": 0.95},
        ("resolvers", 0, "thresholds", "rules"),
        "keeps none of its edges",
    ),
}


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    return path


def test_a_sound_collection_passes(csv: Path) -> None:
    assert preflight_problems(_spec(csv)) == []
    preflight(_spec(csv))


@pytest.mark.parametrize("case", CASES)
def test_each_problem_is_found_before_any_write(
    case: str,
    csv: Path,
    mb_resource: MatchboxResource,
    mb_store: MatchboxPostgres,
) -> None:
    change, where, message = CASES[case]
    spec = _spec(csv, **change)
    problems = preflight_problems(spec)
    assert [p.where for p in problems] == [where], problems
    assert message in problems[0].message

    # Launched as from the UI: the partition exists in Dagster only, then the graph job runs.
    defs = build_collection_defs(spec, resource=mb_resource)
    job = defs.resolve_job_def(f"{spec.collection}_graph")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(partitions_name(spec.collection), ["run-1"])
        result = job.execute_in_process(
            instance=instance, partition_key="run-1", raise_on_error=False
        )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures
    for event in failures:
        error = event.event_specific_data.error
        text = str(error.cause or error) if error else ""
        assert "PreflightError" in text and message in text, text
    assert spec.collection not in mb_store.list_collections()  # no collection, run or step


def test_one_error_lists_every_problem(csv: Path) -> None:
    spec = _spec(csv, index_fields=["name", "dob", "postcod"], truth="persn", threshold=0.95)
    with pytest.raises(PreflightError) as caught:
        preflight(spec)
    assert len(caught.value.problems) == 3
    assert str(caught.value).count("\n  - ") == 3


def test_cli_validate_and_check_name_yaml_lines_and_write_nothing(
    cli: Cli, tmp_path: Path, store: MatchboxPostgres
) -> None:
    folder = tmp_path / f"pf_{uuid.uuid4().hex[:8]}"
    assert cli("init", folder.name, cwd=tmp_path).returncode == 0
    defs_yaml = folder / folder.name / "defs" / folder.name / "defs.yaml"
    text = defs_yaml.read_text()
    text = text.replace("index_fields: [name, dob, postcode]", "index_fields: [name, dob, zip]")
    text = text.replace("truth: {records: person}", "truth: {records: persn}")
    defs_yaml.write_text(text)
    lines = text.splitlines()
    zip_line = next(i for i, line in enumerate(lines, 1) if "zip]" in line)
    truth_line = next(i for i, line in enumerate(lines, 1) if "persn" in line)
    definitions = f"{folder.name}/definitions.py"
    for command in ("validate", "check"):
        done = cli(command, "--definitions", definitions, cwd=folder)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "3 problem(s)" in done.stderr  # zip, the weight on postcode, persn
        assert f"defs.yaml:{zip_line}: sources[0].index_fields[2]" in done.stderr
        assert f"defs.yaml:{truth_line}: resolvers[0].checks.truth.records" in done.stderr
    assert folder.name not in store.list_collections()
