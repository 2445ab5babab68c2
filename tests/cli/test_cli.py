"""``matchbox-dagster``: demo, check (the CI gate), runs, promote and query, in process."""

import getpass
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from matchbox_dagster.cli import main
from matchbox_dagster.cli.base import load_defs
from matchbox_dagster.common.settings import MatchboxSettings
from matchbox_dagster.dagster.partitions import add_run_partition, next_run_label, partitions_name
from matchbox_dagster.dagster.resources import PREFLIGHT_TAG
from matchbox_dagster.store.postgres import MatchboxPostgres

STRICT = """
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec

defs = build_collection_defs(
    febrl4_spec(collection="cli_strict", min_precision=0.99999, min_recall=0.99999)
)
"""
LENIENT = STRICT.replace("cli_strict", "cli_lenient").replace("0.99999", "0.9")


@pytest.fixture
def cli_env(settings: MatchboxSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI pointed at the session's store schema and a throwaway Dagster home."""
    assert settings.postgres_uri is not None
    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", settings.postgres_uri.get_secret_value())
    monkeypatch.setenv("MATCHBOX_POSTGRES_SCHEMA", settings.postgres_schema)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "strict.py").write_text(STRICT)
    (tmp_path / "lenient.py").write_text(LENIENT)
    return tmp_path


def test_check_fails_on_a_failed_evaluation_and_passes_otherwise(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--definitions", str(cli_env / "strict.py"), "--label", "ci-1"]) == 1
    out = capsys.readouterr()
    assert "check cli_strict/people:evaluation" in out.out and "FAIL" in out.out
    assert "people:evaluation" in out.err
    assert store.get_collection("cli_strict").default_run is None

    assert main(["check", "--definitions", str(cli_env / "lenient.py"), "--label", "ci-1"]) == 0
    assert "all blocking checks passed" in capsys.readouterr().out


def test_demo_promotes_then_runs_promote_and_query(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    lenient = str(cli_env / "lenient.py")
    assert main(["demo", "--definitions", lenient, "--label", "first"]) == 0
    first = store.run_for_label("cli_lenient", "first", create=False).run_id
    assert store.get_collection("cli_lenient").default_run == first
    assert main(["demo", "--definitions", lenient, "--label", "second"]) == 0
    second = store.run_for_label("cli_lenient", "second", create=False).run_id
    assert store.get_collection("cli_lenient").default_run == second
    capsys.readouterr()

    assert main(["runs", "--definitions", lenient]) == 0
    listing = capsys.readouterr().out
    assert "first" in listing and "second" in listing

    # Rollback to the first run is one command.
    assert main(["promote", "--definitions", lenient, "--label", "first"]) == 0
    assert store.get_collection("cli_lenient").default_run == first

    output = cli_env / "people.parquet"
    assert (
        main(["query", "--definitions", lenient, "--source", "febrl_b", "--output", str(output)])
        == 0
    )
    frame = pl.read_parquet(output)
    assert frame.height == 5000
    assert frame.get_column("key").n_unique() == 5000


def test_promote_unknown_label_is_a_clear_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lenient = str(cli_env / "lenient.py")
    assert main(["check", "--definitions", lenient, "--label", "exists"]) == 0
    assert main(["promote", "--definitions", lenient, "--label", "nope"]) == 2
    assert "no run labelled 'nope'" in capsys.readouterr().err


# --- the run lifecycle: status, the promotion gate, protected deletes, prune ---------------

LIFE = STRICT.replace("cli_strict", "cli_life")
LIFE_LENIENT = LIFE.replace("0.99999", "0.9")
LIFE_OTHER_CONFIG = LIFE_LENIENT.replace("min_recall=0.9", "min_recall=0.9, link_threshold=0.8")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _line(listing: str, label: str) -> str:
    (line,) = [row for row in listing.splitlines() if f" {label} " in row]
    return line


def test_run_lifecycle_gate_protection_and_prune(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in [("strict", LIFE), ("lenient", LIFE_LENIENT), ("other", LIFE_OTHER_CONFIG)]:
        (cli_env / f"life_{name}.py").write_text(text)
    strict, lenient, other = (str(cli_env / f"life_{n}.py") for n in ("strict", "lenient", "other"))
    user = getpass.getuser()

    # Labels read as run numbers; a passing run passes the gate and records who promoted it.
    assert _run(capsys, "check", "--definitions", lenient)[0] == 0
    assert _run(capsys, "promote", "--definitions", lenient, "--label", "ci-0001")[0] == 0
    first = store.run_for_label("cli_life", "ci-0001", create=False).run_id
    assert store.get_collection("cli_life").default_run == first

    # A failed check: exit 1, the FAILED line names the check and why; the gate refuses it.
    code, _, err = _run(capsys, "check", "--definitions", strict)
    assert code == 1
    failed_line = err.strip().splitlines()[-1]
    assert failed_line.startswith("FAILED") and "people:evaluation (" in failed_line
    assert "precision" in failed_line
    code, _, err = _run(capsys, "promote", "--definitions", strict, "--label", "ci-0002")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot be promoted" in err and "blocking check(s) failed: people:evaluation" in err
    assert "Hint:" in err and "--force --reason" in err and "Traceback" not in err
    assert store.get_collection("cli_life").default_run == first
    code, _, err = _run(capsys, "promote", "--definitions", strict, "--label", "ci-0002", "--force")
    assert code == 2 and "--force needs --reason" in err

    # A run without its graph (nothing materialised) is refused too.
    partial = store.run_for_label("cli_life", "partial").run_id
    code, _, err = _run(capsys, "promote", "--definitions", lenient, "--run", str(partial))
    assert code == 2 and "graph is incomplete" in err and "people" in err

    # A newer passing run becomes default; then re-running the promoted ci-0001 with another
    # threshold fails at the resolver's step (the run is immutable): "failed at step people".
    assert _run(capsys, "check", "--definitions", lenient, "--label", "ci-0003")[0] == 0
    assert _run(capsys, "promote", "--definitions", lenient, "--label", "ci-0003")[0] == 0
    third = store.run_for_label("cli_life", "ci-0003", create=False).run_id
    code, _, err = _run(capsys, "check", "--definitions", other, "--label", "ci-0001")
    assert code == 1
    failed_line = err.strip().splitlines()[-1]
    assert "step people failed: MatchboxRunNotWriteable: Run " in failed_line

    code, listing, _ = _run(capsys, "runs", "--definitions", lenient)
    assert code == 0
    assert "promoted" in _line(listing, "ci-0001")
    assert "failed at step people" in _line(listing, "ci-0001")
    assert "mutable" in _line(listing, "ci-0002")
    assert "checks failed 7/8" in _line(listing, "ci-0002")
    row = _line(listing, "ci-0003")
    assert "default" in row and "checks passed 8/8" in row and user in row
    assert "empty" in _line(listing, "partial")

    # The default and an immutable run are never deleted without --force.
    for label in ("ci-0003", "ci-0001"):
        code, _, err = _run(capsys, "delete-run", "--definitions", lenient, "--label", label)
        assert code == 2 and "not deleted" in err and "--force" in err
    assert store.get_collection("cli_life").runs.count(third) == 1

    # prune: too young → nothing; then the failed mutable run goes, the immutable one stays.
    code, out, _ = _run(capsys, "prune", "--definitions", lenient, "--failed", "--older-than", "1h")
    assert code == 0 and "deleted 0 failed run(s)" in out
    code, out, _ = _run(capsys, "prune", "--definitions", lenient, "--failed", "--older-than", "0s")
    assert code == 0
    assert "deleted run" in out and "(ci-0002," in out
    assert "kept run" in out and "(ci-0001," in out and "immutable" in out
    labels = set(store.run_labels("cli_life").values())
    assert "ci-0002" not in labels and {"ci-0001", "ci-0003", "partial"} <= labels
    instance = dg.DagsterInstance.get()
    assert "ci-0002" not in instance.get_dynamic_partitions(partitions_name("cli_life"))

    # A forced promotion needs and records its reason; runs shows it.
    code, out, _ = _run(
        capsys, "promote", "--definitions", lenient, "--label", "partial",
        "--force", "--reason", "hotfix approved by the data owner",
    )  # fmt: skip
    assert code == 0 and "FORCED" in out
    (summary,) = [s for s in store.run_summaries("cli_life") if s.label == "partial"]
    assert summary.is_default and summary.promotion_forced and summary.promoted_by == user
    assert "hotfix approved by the data owner" in (summary.promotion_reason or "")
    assert "graph is incomplete" in (summary.promotion_reason or "")
    _, listing, _ = _run(capsys, "runs", "--definitions", lenient)
    assert "FORCED: hotfix approved" in _line(listing, "partial")

    # The Dagster UI is told which run is the default (text metadata on the resolver).
    observation = instance.fetch_observations(dg.AssetKey(["cli_life", "people"]), limit=1)
    meta = observation.records[0].asset_observation.metadata  # type: ignore[union-attr]
    assert meta["matchbox/default_run"] == dg.MetadataValue.text("partial")

    # With --force an immutable run can go; ci-0003 is no longer the default.
    code, _, _ = _run(
        capsys, "delete-run", "--definitions", lenient, "--label", "ci-0003", "--force"
    )
    assert code == 0 and "ci-0003" not in store.run_labels("cli_life").values()


def test_runs_with_100_runs(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """100 runs, two of them materialised: every state is right; the timing is reported."""
    hundred = str(cli_env / "hundred.py")
    (cli_env / "hundred.py").write_text(LENIENT.replace("cli_lenient", "cli_hundred"))
    assert _run(capsys, "check", "--definitions", hundred)[0] == 0
    assert _run(capsys, "promote", "--definitions", hundred, "--label", "ci-0001")[0] == 0
    instance = dg.DagsterInstance.get()
    for _ in range(98):
        add_run_partition(instance, store, "cli_hundred", next_run_label(store, "cli_hundred"))
    assert _run(capsys, "check", "--definitions", hundred)[0] == 0  # ci-0002, the 100th

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        code, listing, _ = _run(capsys, "runs", "--definitions", hundred)
        timings.append(time.perf_counter() - started)
        assert code == 0
    rows = listing.strip().splitlines()[1:]
    assert len(rows) == 100
    for label, flags in [("ci-0001", "default"), ("ci-0002", "mutable")]:
        assert flags in _line(listing, label) and "checks passed 8/8" in _line(listing, label)
    assert sum("empty" in row for row in rows) == 98
    assert [row.split()[1] for row in rows if "run-" in row][-1] == "run-0098"

    # As a new process: loading the definitions (--fresh), then with the graph from the cache.
    # Every run is settled by the store (complete with its checks recorded, or never run), so
    # the second imports no Dagster at all.
    processes, dagster = [], []
    for fresh in (["--fresh"], []):
        started = time.perf_counter()
        output, imported = _runs_in_a_new_process(hundred, *fresh)
        processes.append(time.perf_counter() - started)
        dagster.append(imported)
        assert output == listing  # every run, with the same status, either way
    assert dagster == [True, False]
    with capsys.disabled():
        print(
            f"\n[timing] `runs` with 100 runs: in process {min(timings):.2f}s warm "
            f"(first {timings[0]:.2f}s); as a new process {processes[1]:.2f}s, no Dagster "
            f"imported (loading the definitions: {processes[0]:.2f}s)"
        )


PROBE = """
import sys
from matchbox_dagster.cli import main
code = main(sys.argv[1:])
print("dagster imported" if "dagster" in sys.modules else "no dagster", file=sys.stderr)
raise SystemExit(code)
"""


def _runs_in_a_new_process(definitions: str, *more: str) -> tuple[str, bool]:
    """``runs`` in a new Python process: its listing, and whether it imported Dagster."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "runs", "--definitions", definitions, *more],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout, "dagster imported" in done.stderr


BROKEN = """
from matchbox_dagster.dagster.collection import build_collection_defs
from matchbox_dagster.examples.febrl import febrl4_spec

spec = febrl4_spec(collection="cli_unsettled", min_precision=0.9, min_recall=0.9)
unreadable = {"name": "no_such_module:table"}
sources = [
    s.model_copy(update={"location": s.location.model_copy(update=unreadable)})
    for s in spec.sources
]
defs = build_collection_defs(spec.model_copy(update={"sources": sources}))
"""
"""The unsettled collection with its sources unreadable: a run fails before storing any step."""


def test_runs_asks_dagster_only_about_the_runs_the_store_cannot_settle(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that failed before storing any step still reads "failed at step X" (Dagster is
    asked); once only settled runs remain, ``runs`` imports no Dagster.

    (A run the preflight refuses writes nothing, so it reads "empty": the Dagster UI says why.)
    """
    good, broken = str(cli_env / "good.py"), str(cli_env / "broken.py")
    (cli_env / "good.py").write_text(LENIENT.replace("cli_lenient", "cli_unsettled"))
    (cli_env / "broken.py").write_text(BROKEN)
    assert _run(capsys, "check", "--definitions", good, "--label", "good")[0] == 0
    (summary,) = [s for s in store.run_summaries("cli_unsettled") if s.label == "good"]
    assert len(summary.checks) == 8 and all(summary.checks.values())  # recorded by the checks
    instance = dg.DagsterInstance.get()
    add_run_partition(instance, store, "cli_unsettled", "idle")  # never materialised
    add_run_partition(instance, store, "cli_unsettled", "broken")
    # The preflight passed (as if the sources went away after it): the run fails extracting.
    job = load_defs(broken).resolve_job_def("cli_unsettled_graph")
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    result = job.execute_in_process(
        instance=instance,
        partition_key="broken",
        raise_on_error=False,
        run_config=quiet,
        tags={PREFLIGHT_TAG: "passed"},
    )
    assert not result.success
    (summary,) = [s for s in store.run_summaries("cli_unsettled") if s.label == "broken"]
    assert summary.steps == {} and summary.dagster_run == result.run_id  # no step stored

    code, listing, _ = _run(capsys, "runs", "--definitions", good)
    assert code == 0
    assert "checks passed 8/8" in _line(listing, "good")
    assert "empty" in _line(listing, "idle")
    assert "failed at step febrl_" in _line(listing, "broken")
    assert _runs_in_a_new_process(good) == (listing, True)  # the broken run needs Dagster

    assert _run(capsys, "delete-run", "--definitions", good, "--label", "broken")[0] == 0
    listing, dagster = _runs_in_a_new_process(good)
    assert not dagster and "broken" not in listing
    assert "checks passed 8/8" in _line(listing, "good") and "empty" in _line(listing, "idle")


def test_runs_reads_the_graph_from_the_cache_until_the_definitions_change(
    cli_env: Path, store: MatchboxPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cli_env / "cached.py"
    loud = "import sys\nprint('loading definitions', file=sys.stderr)\n"
    path.write_text(loud + LENIENT.replace("cli_lenient", "cli_cached"))
    instance = dg.DagsterInstance.get()
    for label in ("one", "two"):
        add_run_partition(instance, store, "cli_cached", label)

    code, first, err = _run(capsys, "runs", "--definitions", str(path))
    assert code == 0 and "loading definitions" in err  # nothing cached yet
    assert [row.split()[1] for row in first.splitlines()[1:]] == ["one", "two"]
    assert all("empty" in row for row in first.splitlines()[1:])
    code, again, err = _run(capsys, "runs", "--definitions", str(path))
    assert (code, again) == (0, first) and "loading definitions" not in err

    # A new run shows at once (the store is read each time; only the graph is cached).
    add_run_partition(instance, store, "cli_cached", "three")
    code, listing, err = _run(capsys, "runs", "--definitions", str(path))
    assert " three " in listing and "loading definitions" not in err

    # Changed definitions are loaded again; --fresh always loads them.
    path.write_text(path.read_text() + "# changed\n")
    assert "loading definitions" in _run(capsys, "runs", "--definitions", str(path))[2]
    assert "loading definitions" not in _run(capsys, "runs", "--definitions", str(path))[2]
    fresh = _run(capsys, "runs", "--definitions", str(path), "--fresh")
    assert fresh[0] == 0 and "loading definitions" in fresh[2]


def test_errors_are_one_line_with_a_hint_and_a_traceback_only_when_verbose(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(cli_env / "nope.py")
    code, _, err = _run(capsys, "runs", "--definitions", missing)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: definitions file") and "does not exist. Hint: " in err

    code, _, err = _run(capsys, "--verbose", "runs", "--definitions", missing)
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: definitions file")
    code, _, err = _run(capsys, "runs", "--definitions", missing, "--verbose")
    assert code == 2 and "Traceback" in err

    broken = cli_env / "broken.py"
    broken.write_text("raise RuntimeError('the definitions cannot be built')\n")
    code, _, err = _run(capsys, "runs", "--definitions", str(broken))
    assert code == 4 and len(err.strip().splitlines()) == 1
    assert "RuntimeError: the definitions cannot be built" in err and "--verbose" in err

    code, _, err = _run(capsys, "prune", "--definitions", str(cli_env / "lenient.py"),
                        "--failed", "--older-than", "soon")  # fmt: skip
    assert code == 2 and "not a duration" in err and "7d" in err

    monkeypatch.setenv("MATCHBOX_POSTGRES_URI", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("MATCHBOX_RETRIES", "0")
    code, _, err = _run(capsys, "runs", "--definitions", str(cli_env / "lenient.py"))
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert "MATCHBOX_POSTGRES_URI" in err and "Traceback" not in err


def test_importing_the_cli_imports_no_command() -> None:
    """Each command imports what it needs when it runs; the CLI module itself is light."""
    heavy = ["dagster", "polars", "pyarrow", "matchbox_dagster.store", "matchbox_dagster.dagster"]
    done = subprocess.run(
        [sys.executable, "-c", "import sys, matchbox_dagster.cli\n"
         f"print([m for m in {heavy!r} if m in sys.modules])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_the_review_strategies_are_the_sampling_strategies() -> None:
    from matchbox_dagster.cli.review import STRATEGIES
    from matchbox_dagster.evaluation.sampling import Strategy

    assert STRATEGIES == tuple(s.value for s in Strategy)


def test_every_graph_problem_of_the_definitions_is_listed(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = cli_env / "graph.py"
    broken.write_text(
        "from matchbox_dagster.dagster.collection import build_collection_defs\n"
        "from matchbox_dagster.examples.febrl import febrl4_spec\n"
        "spec = febrl4_spec(collection='cli_graph')\n"
        "models = [*spec.models, spec.models[0]]  # a name twice\n"
        "spec = spec.model_copy(update={'final_resolver': 'nobody', 'models': models})\n"
        "defs = build_collection_defs(spec)\n"
    )
    code, _, err = _run(capsys, "runs", "--definitions", str(broken))
    assert code == 2, err
    assert "2 problems in the collection's graph" in err
    assert "  - final_resolver: final_resolver 'nobody' is not a resolver" in err
    assert "  - models[3].name: step names must be unique; repeated: ['dedupe_a']" in err
    assert err.strip().splitlines()[-1].endswith("and run again.")


@pytest.mark.parametrize("given", ["envvar", "password"])
def test_the_shape_cache_keeps_no_secret(
    given: str,
    cli_env: Path,
    settings: MatchboxSettings,
    store: MatchboxPostgres,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings.postgres_uri is not None
    uri = settings.postgres_uri.get_secret_value()
    secret = "pw-not-in-the-cache"
    with_password = uri.replace("postgres@", f"postgres:{secret}@")  # trust auth: unused
    monkeypatch.setenv("MB_TEST_URI", with_password)
    value = 'dg.EnvVar("MB_TEST_URI")' if given == "envvar" else repr(with_password)
    path = cli_env / f"secret_{given}.py"
    path.write_text(
        "import sys\nimport dagster as dg\n"
        "from matchbox_dagster.dagster.collection import build_collection_defs\n"
        "from matchbox_dagster.dagster.resources import MatchboxResource\n"
        "from matchbox_dagster.examples.febrl import febrl4_spec\n"
        "print('loading definitions', file=sys.stderr)\n"
        f"resource = MatchboxResource(postgres_uri={value}, "
        f"postgres_schema={settings.postgres_schema!r})\n"
        f"defs = build_collection_defs(febrl4_spec(collection='cli_{given}'), resource=resource)\n"
    )
    add_run_partition(dg.DagsterInstance.get(), store, f"cli_{given}", "one")
    for _ in range(2):
        code, listing, err = _run(capsys, "runs", "--definitions", str(path))
        assert code == 0 and " one " in listing, err
    cache = cli_env / "dagster" / "matchbox-cli-shapes.json"
    assert secret not in (cache.read_text() if cache.exists() else "")
    # An EnvVar is kept by name (the second `runs` used the cache); a literal password is not
    # kept at all (the definitions are loaded each time).
    assert ("loading definitions" in err) == (given == "password")
