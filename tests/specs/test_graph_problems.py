"""Every problem of a graph's shape is reported at once, each with its ``defs.yaml`` line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matchbox_dagster.specs import CollectionSpec, SpecError, graph_problems, validate_spec
from matchbox_dagster.specs.preflight import PreflightError, preflight

DEFS_YAML = """\
type: matchbox_dagster.dagster.component.MatchboxCollectionComponent
attributes:
  collection: shapes
  final_resolver: nobody                      # (final)
  sources:
    - name: a
      location: {type: csv, name: a.csv}
      key_field: id
      index_fields: [name]
    - name: b
      location: {type: csv, name: b.csv}
      key_field: id
      index_fields: [name]
  models:
    - name: dedupe_a
      left: {step: a}
      model_class: ExactMatch
      settings: {fields: [name]}
    - name: dedupe_a                          # (duplicate)
      left: {step: b}
      model_class: ExactMatch
      settings: {fields: [name]}
    - name: link
      left: {step: a}
      right: {step: nowhere}                  # (missing input)
      model_class: ExactMatch
      settings: {fields: [name]}
    - name: loop
      left: {step: round}                     # (cycle)
      model_class: ExactMatch
      settings: {fields: [name]}
  resolvers:
    - name: people
      thresholds: {dedupe_a: 1.0, ghost: 0.5}  # (ghost)
      exclude: [link, phantom]                # (phantom)
    - name: round
      thresholds: {loop: 0.5}
"""


def _line(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def _spec(path: Path) -> CollectionSpec:
    path.write_text(DEFS_YAML)
    return CollectionSpec.model_validate(yaml.safe_load(DEFS_YAML)["attributes"])


EXPECTED = {
    "(duplicate)": "step names must be unique; repeated: ['dedupe_a'] (first as models[0])",
    "(missing input)": "model 'link' reads 'nowhere', which is neither a source nor a resolver",
    "(ghost)": "resolver 'people' has thresholds for ['ghost'], which are not models",
    "(phantom)": "resolver 'people' excludes ['phantom'], which are not models",
    "(final)": "final_resolver 'nobody' is not a resolver",
    "(cycle)": "cycle through loop → round → loop",
}


def test_every_problem_is_listed_once_with_its_file_and_line(tmp_path: Path) -> None:
    defs_yaml = tmp_path / "defs.yaml"
    spec = _spec(defs_yaml)
    with pytest.raises(SpecError) as caught:
        validate_spec(spec, yaml_path=defs_yaml)
    error = caught.value
    assert error.argument == "spec"
    assert len(error.problems) == len(EXPECTED), str(error)
    message = str(error)
    assert message.startswith(f"{len(EXPECTED)} problems in the collection's graph:")
    for marker, fragment in EXPECTED.items():
        line = _line(DEFS_YAML, marker)
        (problem,) = [p for p in error.problems if fragment in p.message]
        assert (problem.file, problem.line) == (defs_yaml, line), (marker, problem)
        assert f"  - {defs_yaml}:{line}: " in message


def test_without_a_file_the_problems_name_their_place_in_the_spec(tmp_path: Path) -> None:
    problems, _ = graph_problems(_spec(tmp_path / "defs.yaml"))
    places = {p.place for p in problems}
    assert {"models[1].name", "models[2].right.step", "resolvers[0].thresholds.ghost"} <= places
    assert {"resolvers[0].exclude[1]", "final_resolver", "models[3].left.step"} <= places
    assert all(p.line is None and p.file is None for p in problems)


def test_the_preflight_reports_the_same_problems_before_reading_any_source(
    tmp_path: Path,
) -> None:
    # The sources do not exist: the graph's problems come first, and alone (nothing is read).
    defs_yaml = tmp_path / "defs.yaml"
    with pytest.raises(PreflightError) as caught:
        preflight(_spec(defs_yaml), yaml_path=defs_yaml)
    lines = sorted(p.line for p in caught.value.problems)
    assert lines == sorted(_line(DEFS_YAML, marker) for marker in EXPECTED)
    assert "no such file" not in str(caught.value)


def test_a_single_problem_keeps_its_plain_message(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "defs.yaml").model_copy(
        update={"final_resolver": None, "models": [], "resolvers": []}
    )
    spec = spec.model_copy(update={"final_resolver": "nobody"})
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert str(caught.value) == "final_resolver 'nobody' is not a resolver ([])"
