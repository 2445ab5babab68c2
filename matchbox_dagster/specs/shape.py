"""The shape of a collection's graph, checked as a whole: every problem found in one pass.

:func:`graph_problems` checks what single spec models cannot — unique step names, inputs that
exist, thresholds and excludes naming models, ``final_resolver`` naming a resolver, no cycles,
explicit input sources upstream of the resolver read, no model silently left out of a resolver —
and returns *every* problem, each with its place in the spec (:data:`Where`: keys and indices as
written under a component's ``attributes``), so a ``defs.yaml`` user gets one error naming each
file line to fix (:func:`~matchbox_dagster.specs.yaml_lines.locate`). :class:`SpecError` carries
the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matchbox_dagster.common.errors import MatchboxInvalidData
from matchbox_dagster.specs.models import CollectionSpec, ResolverSpec
from matchbox_dagster.specs.yaml_lines import locate

Where = tuple[str | int, ...]
"""A place in the spec, as keys and indices under ``attributes`` (e.g. sources, 0, key_field)."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing to fix in a spec: where, what, and the YAML file and line when known."""

    where: Where
    message: str
    file: Path | None = None
    line: int | None = None

    @property
    def place(self) -> str:
        """``models[2].left.step`` (``collection`` for the spec as a whole)."""
        text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in self.where)
        return text.replace(".[", "[") or "collection"

    def located(self, yaml_path: Path | None) -> SpecProblem:
        """The same problem with the line of its place in ``yaml_path`` (unchanged without one)."""
        if yaml_path is None:
            return self
        line = locate(yaml_path, self.where)
        return SpecProblem(self.where, self.message, yaml_path if line else None, line)

    def __str__(self) -> str:
        prefix = f"{self.file}:{self.line}: " if self.file and self.line else ""
        return f"{prefix}{self.place}: {self.message}"


class SpecError(MatchboxInvalidData):
    """A spec that cannot be built; ``argument`` names the part to fix, ``problems`` lists all."""

    def __init__(self, argument: str, message: str, problems: Sequence[SpecProblem] = ()) -> None:
        super().__init__(message)
        self.argument = argument
        self.problems = list(problems)

    @classmethod
    def of(cls, problems: Sequence[SpecProblem], yaml_path: Path | None = None) -> SpecError:
        """One error listing every problem (with file and line when ``yaml_path`` is given)."""
        found = [p.located(yaml_path) for p in problems]
        if len(found) == 1:
            return cls("spec", str(found[0]) if found[0].line else found[0].message, found)
        lines = "\n".join(f"  - {p}" for p in found)
        return cls("spec", f"{len(found)} problems in the collection's graph:\n{lines}", found)


def _inputs(spec: CollectionSpec, i: int) -> list[tuple[str, str, list[str] | None]]:
    m = spec.models[i]
    sides = [("left", m.left)] + ([("right", m.right)] if m.right else [])
    return [(side, s.step, s.sources) for side, s in sides]


def _names_and_refs(spec: CollectionSpec) -> list[SpecProblem]:
    """Unique names; inputs, thresholds, excludes and ``final_resolver`` naming real steps."""
    found: list[SpecProblem] = []
    first: dict[str, str] = {}
    for kind in ("sources", "models", "resolvers"):
        for i, step in enumerate(getattr(spec, kind)):
            here = f"{kind}[{i}]"
            if step.name in first:
                found.append(
                    SpecProblem(
                        (kind, i, "name"),
                        f"step names must be unique; repeated: [{step.name!r}] (first as "
                        f"{first[step.name]})",
                    )
                )
            else:
                first[step.name] = here
    sources = {s.name for s in spec.sources}
    models = {m.name for m in spec.models}
    resolvers = {r.name for r in spec.resolvers}
    for i, m in enumerate(spec.models):
        for side, step, _ in _inputs(spec, i):
            if step not in sources | resolvers:
                found.append(
                    SpecProblem(
                        ("models", i, side, "step"),
                        f"model {m.name!r} reads {step!r}, which is neither a source nor a "
                        f"resolver of the collection (sources {sorted(sources)}, resolvers "
                        f"{sorted(resolvers)})",
                    )
                )
    for i, r in enumerate(spec.resolvers):
        for name in r.thresholds:
            if name not in models:
                found.append(
                    SpecProblem(
                        ("resolvers", i, "thresholds", name),
                        f"resolver {r.name!r} has thresholds for [{name!r}], which are not "
                        f"models ({sorted(models)})",
                    )
                )
        for j, name in enumerate(r.exclude):
            if name not in models:
                found.append(
                    SpecProblem(
                        ("resolvers", i, "exclude", j),
                        f"resolver {r.name!r} excludes [{name!r}], which are not models",
                    )
                )
    if spec.final_resolver is not None and spec.final_resolver not in resolvers:
        found.append(
            SpecProblem(
                ("final_resolver",),
                f"final_resolver {spec.final_resolver!r} is not a resolver ({sorted(resolvers)})",
            )
        )
    return found


def _sources_under(spec: CollectionSpec, found: list[SpecProblem]) -> dict[str, list[str]]:
    """For each model and resolver, the sources upstream of it; cycles and stray inputs found.

    Names that do not exist were reported by :func:`_names_and_refs` and give no sources here.
    """
    source_names = [s.name for s in spec.sources]
    models = {m.name: i for i, m in enumerate(spec.models)}
    resolvers = {r.name: i for i, r in enumerate(spec.resolvers)}
    under: dict[str, list[str]] = {}
    cycles: set[frozenset[str]] = set()

    def of(step: str, trail: tuple[str, ...]) -> list[str]:
        if step in trail:
            loop = trail[trail.index(step) :]
            if frozenset(loop) not in cycles:
                cycles.add(frozenset(loop))
                start, after = loop[0], (loop[1] if len(loop) > 1 else step)
                where: Where = ("resolvers", resolvers.get(start, 0), "thresholds", after)
                if start in models:
                    side = next(s for s, read, _ in _inputs(spec, models[start]) if read == after)
                    where = ("models", models[start], side, "step")
                found.append(SpecProblem(where, f"cycle through {' → '.join([*loop, step])}"))
            return []
        if step in source_names:
            return [step]
        if step in under:
            return under[step]
        collected: list[str] = []
        if step in models:
            i = models[step]
            for side, read, chosen in _inputs(spec, i):
                reachable = of(read, (*trail, step))
                if chosen is not None:
                    found.extend(_chosen_sources(spec, i, side, chosen, reachable))
                collected += [s for s in chosen if s in reachable] if chosen else reachable
        elif step in resolvers:
            for model in spec.resolvers[resolvers[step]].thresholds:
                collected += of(model, (*trail, step))
        under[step] = [s for s in source_names if s in set(collected)]
        return under[step]

    for name in [*models, *resolvers]:
        of(name, ())
    return under


def _chosen_sources(
    spec: CollectionSpec, i: int, side: str, chosen: list[str], reachable: list[str]
) -> list[SpecProblem]:
    """Problems with a model input's explicit ``sources`` (only a resolver input has them)."""
    model = spec.models[i]
    read = model.left.step if side == "left" else model.right.step  # type: ignore[union-attr]
    where: Where = ("models", i, side, "sources")
    if read in {s.name for s in spec.sources}:
        message = (
            f"model {model.name!r} reads source {read!r}; 'sources' only applies to a "
            "resolver input"
        )
        return [SpecProblem(where, message)]
    stray = sorted(set(chosen) - set(reachable))
    if stray or not chosen:
        message = (
            f"model {model.name!r} reads sources {stray or '[]'} through resolver {read!r}, "
            f"which resolves only {reachable}"
        )
        return [SpecProblem(where, message)]
    return []


def _models_upstream(spec: CollectionSpec, resolver: ResolverSpec) -> set[str]:
    """The models a resolver reads, directly or through the resolvers its models read."""
    models = {m.name: m for m in spec.models}
    resolvers = {r.name: r for r in spec.resolvers}
    seen: set[str] = set()
    stack = list(resolver.thresholds)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        if name in models:
            seen.add(name)
            m = models[name]
            stack += [i.step for i in [m.left, *([m.right] if m.right else [])]]
        elif name in resolvers:
            seen.add(name)
            stack += list(resolvers[name].thresholds)
    return seen & set(models)


def omitted_models(
    spec: CollectionSpec, resolver: ResolverSpec, under: Mapping[str, Sequence[str]]
) -> list[str]:
    """Models scoring only this resolver's sources that it neither reads nor excludes."""
    upstream = _models_upstream(spec, resolver)
    mine = set(under.get(resolver.name, []))
    return [
        m.name
        for m in spec.models
        if m.name not in upstream
        and m.name not in resolver.exclude
        and set(under.get(m.name, [])) <= mine
    ]


def _omissions(spec: CollectionSpec, under: Mapping[str, Sequence[str]]) -> list[SpecProblem]:
    found = []
    for i, r in enumerate(spec.resolvers):
        omitted = omitted_models(spec, r, under)
        if omitted:
            listed = ", ".join(f"{m}: {r.thresholds[m]}" for m in r.thresholds)
            missing = ", ".join(f"{m}: 1.0" for m in omitted)
            found.append(
                SpecProblem(
                    ("resolvers", i, "thresholds"),
                    f"resolver {r.name!r} resolves sources {list(under[r.name])} but its "
                    f"thresholds omit model(s) {omitted}, which score those sources: their "
                    f"edges would be dropped. Give each a threshold (thresholds: {{{listed}, "
                    f"{missing}}}; 0 keeps every edge) or leave them out on purpose with "
                    f"exclude: {omitted}.",
                )
            )
    return found


def graph_problems(spec: CollectionSpec) -> tuple[list[SpecProblem], dict[str, list[str]]]:
    """Every problem of the graph's shape, and the sources upstream of each model and resolver.

    The omission check (a model silently left out of a resolver) runs only on an otherwise
    sound graph: with steps missing or in a cycle, what a resolver resolves is not known.
    """
    found = _names_and_refs(spec)
    under = _sources_under(spec, found)
    if not found:
        found += _omissions(spec, under)
    return found, under


def upstream_sources(spec: CollectionSpec) -> dict[str, list[str]]:
    """For each model and resolver, the sources upstream of it (:class:`SpecError` if unsound)."""
    problems, under = graph_problems(spec)
    if problems:
        raise SpecError.of(problems)
    return under
