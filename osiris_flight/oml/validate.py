"""Semantic checks of a loaded pipeline: dependencies, cycles, components, modes, inputs, configs.

The oml layer sits below components, so it sees them only through two small protocols that
``components.registry.Registry`` and ``ComponentSpec`` satisfy. Every check returns Problems rather
than raising, so compile can report everything wrong with a pipeline at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from osiris_flight.errors import Problem
from osiris_flight.oml.loader import OmlDocument, RawStep
from osiris_flight.oml.schema_errors import schema_problems, valid_choices_hint

# A config property whose schema carries this keyword is accepted (Osiris pipelines set it) but has no
# effect here; its value says why. validate and run name each one a pipeline sets.
IGNORED_KEYWORD = "x-osiris-ignored"

# Osiris's components for hosted services this engine has no component for, and the service.
OSIRIS_SERVICE_COMPONENTS = {
    "supabase.extractor": "Supabase (a hosted service)",
    "supabase.writer": "Supabase (a hosted service)",
    "posthog.extractor": "the PostHog API",
    "graphql.extractor": "a GraphQL API",
}


@dataclass(frozen=True)
class ColumnUse:
    """Which input columns a step reads, as its component declares it for the query optimizer.

    ``reads``: the columns the step itself uses, by name. ``passes_through``: the step hands every
    other input column on unchanged (a filter without ``columns``), so what its own consumers read
    counts as well. A component that declares nothing (a join, a writer, SQL over its inputs, a
    plugin) is taken to read every column: the optimizer then projects nothing away.
    """

    reads: tuple[str, ...]
    passes_through: bool = False


class ComponentInfo(Protocol):
    """What the oml layer needs to know about a component (see ``components.base.ComponentSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def min_inputs(self) -> int: ...
    @property
    def max_inputs(self) -> int: ...
    @property
    def partitionwise(self) -> bool: ...
    @property
    def config_schema(self) -> Mapping[str, Any]: ...
    @property
    def check(self) -> Callable[[Mapping[str, Any]], list[Problem]]: ...
    @property
    def partitions(self) -> Callable[[Mapping[str, Any]], int]: ...
    @property
    def columns_used(self) -> Callable[[Mapping[str, Any]], ColumnUse | None] | None: ...
    @property
    def single_task(self) -> Callable[[Mapping[str, Any]], Problem | None] | None: ...


class ComponentCatalog(Protocol):
    """Component lookup by name (``components.registry.Registry``)."""

    def get(self, name: str) -> ComponentInfo | None: ...
    def names(self) -> list[str]: ...


def resolve_dependencies(doc: OmlDocument) -> tuple[dict[str, tuple[str, ...]], list[Problem]]:
    """Each step's inputs by the ROOT RULE, plus problems: unknown ids, self-dependencies, cycles.

    OML 0.2.0: ``depends_on``/``needs`` give the inputs; a step with neither is a root.
    OML 0.1.0: ``needs`` gives the inputs; without it a ``read`` step is a root and any other step
    consumes the step listed before it (Osiris runs 0.1.0 steps in file order; treating reads as
    roots gives the same results with more parallelism).
    Returned inputs keep only known, non-self ids, so the graph is safe to walk.
    """
    known = [s.id for s in doc.steps]
    known_set = set(known)
    inputs: dict[str, tuple[str, ...]] = {}
    problems: list[Problem] = []
    for position, step in enumerate(doc.steps):
        if step.deps is not None:
            deps = step.deps
        elif doc.oml_version == "0.1.0" and step.mode != "read" and position > 0:
            deps = (doc.steps[position - 1].id,)
        else:
            deps = ()
        kept = []
        for dep in deps:
            if dep == step.id:
                problems.append(
                    _dep_problem(
                        doc,
                        step,
                        f"step '{step.id}' depends on itself",
                        f"remove '{dep}' from {step.deps_key}",
                    )
                )
            elif dep not in known_set:
                problems.append(
                    _dep_problem(
                        doc,
                        step,
                        f"depends on unknown step '{dep}'",
                        valid_choices_hint(dep, known, "steps in this pipeline"),
                    )
                )
            else:
                kept.append(dep)
        inputs[step.id] = tuple(kept)
    problems += _cycle_problems(doc, inputs)
    return inputs, problems


def _dep_problem(doc: OmlDocument, step: RawStep, message: str, hint: str) -> Problem:
    return Problem(
        message,
        file=doc.file,
        step=step.id,
        field=step.deps_key,
        hint=hint,
        line=doc.step_line(step, step.deps_key),
    )


def _cycle_problems(doc: OmlDocument, inputs: Mapping[str, Sequence[str]]) -> list[Problem]:
    """One problem per cycle (strongly connected component), naming it in data-flow order."""
    order = {s.id: i for i, s in enumerate(doc.steps)}
    consumers: dict[str, list[str]] = {s.id: [] for s in doc.steps}
    for step in doc.steps:
        for dep in inputs[step.id]:
            consumers[dep].append(step.id)
    problems = []
    for component in strongly_connected(list(order), consumers):
        if len(component) < 2:
            continue
        members = set(component)
        start = min(component, key=order.__getitem__)
        path = _shortest_cycle(start, consumers, members)
        step = doc.steps[order[start]]
        implicit = doc.oml_version == "0.1.0" and any(doc.steps[order[m]].deps is None for m in members)
        hint = "a pipeline must be acyclic: remove one of these dependencies"
        if implicit:
            hint += "; in OML 0.1.0 a non-read step without 'needs' consumes the step before it"
        problems.append(_dep_problem(doc, step, "dependency cycle: " + " -> ".join(path), hint))
    return problems


def strongly_connected(nodes: Sequence[str], edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (pipelines may be deep enough to exhaust recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
    return result


def _shortest_cycle(start: str, edges: Mapping[str, Sequence[str]], members: set[str]) -> list[str]:
    """Breadth-first from ``start`` back to itself inside one strongly connected component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in edges[node]:
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]  # unreachable for a component of two or more


def check_steps(
    doc: OmlDocument,
    configs: Mapping[str, dict[str, Any]],
    inputs: Mapping[str, Sequence[str]],
    registry: ComponentCatalog,
    *,
    unresolved: Mapping[str, set[str]] | None = None,
) -> list[Problem]:
    """Component, mode, input count and config problems of every step, in file order.

    ``unresolved`` maps step id -> config fields whose references could not be filled (already
    reported): schema complaints about those fields would only repeat them, misleadingly.
    """
    problems: list[Problem] = []
    validators: dict[str, Draft202012Validator] = {}
    for step in doc.steps:
        spec = registry.get(step.component)
        if spec is None and step.component in OSIRIS_SERVICE_COMPONENTS:
            problems.append(
                _at(
                    doc,
                    step,
                    f"component '{step.component}' is not available here: it is an Osiris component "
                    f"that needs {OSIRIS_SERVICE_COMPONENTS[step.component]}, which this engine does not "
                    "connect to",
                    "component",
                    "run this pipeline with Osiris, or plug Osiris's driver in as a component "
                    "(docs/osiris-compat.md, Osiris drivers)",
                )
            )
            continue
        if spec is None:
            problems.append(
                _at(
                    doc,
                    step,
                    f"unknown component '{step.component}'",
                    "component",
                    valid_choices_hint(step.component, registry.names(), "known components"),
                )
            )
            continue
        if spec.name not in validators:
            validators[spec.name] = Draft202012Validator(spec.config_schema)
        skip = (unresolved or {}).get(step.id, set())
        problems += _check_step(
            doc, step, spec, list(inputs.get(step.id, ())), configs[step.id], validators[spec.name], skip
        )
    return problems


def _check_step(
    doc: OmlDocument,
    step: RawStep,
    spec: ComponentInfo,
    step_inputs: list[str],
    config: dict[str, Any],
    validator: Draft202012Validator,
    skip_fields: set[str],
) -> list[Problem]:
    problems = []
    if step.mode != spec.mode:
        problems.append(
            _at(
                doc,
                step,
                f"component '{spec.name}' is a {spec.role}: mode must be '{spec.mode}', not '{step.mode}'",
                "mode",
                f"set mode: {spec.mode}",
            )
        )
    problems += [_at(doc, step, m, step.deps_key, h) for m, h in _input_count(doc, spec, step_inputs)]
    modes = {s.id: s.mode for s in doc.steps}
    for dep in step_inputs:
        if modes.get(dep) == "write":
            hint = "depend on the step that produces the rows instead"
            if step.deps is None:
                hint = (
                    "in OML 0.1.0 a step without 'needs' consumes the step before it; "
                    "add 'needs' to name its input"
                )
            problems.append(
                _at(
                    doc,
                    step,
                    f"depends on '{dep}', a write step, which produces no rows",
                    step.deps_key,
                    hint,
                )
            )
    config_problems = schema_problems(
        validator,
        config,
        file=doc.file,
        step=step.id,
        prefix=("config",),
        line_prefix=("steps", step.index, "config"),
        line_of=doc.source.line_of if doc.source else None,
    )
    config_problems = [p for p in config_problems if p.field not in skip_fields]
    if not config_problems and not skip_fields:
        # Semantic checks assume a schema-valid config.
        config_problems = [_locate(p, doc, step) for p in spec.check(config)]
    return problems + config_problems


def _at(doc: OmlDocument, step: RawStep, message: str, key: str, hint: str | None = None) -> Problem:
    return Problem(message, file=doc.file, step=step.id, field=key, hint=hint, line=doc.step_line(step, key))


def _input_count(doc: OmlDocument, spec: ComponentInfo, step_inputs: list[str]) -> list[tuple[str, str]]:
    count, low, high = len(step_inputs), spec.min_inputs, spec.max_inputs
    key = "needs" if doc.oml_version == "0.1.0" else "depends_on"
    if high == 0 and count:
        consumed = ", ".join(f"'{i}'" for i in step_inputs)
        return [
            (
                f"component '{spec.name}' is a {spec.role} and takes no inputs, but this step consumes "
                f"{consumed}",
                "remove the dependency",
            )
        ]
    if low <= count <= high:
        return []
    bound = low if count < low else high
    wanted = "exactly" if low == high else ("at least" if count < low else "at most")
    return [
        (
            f"component '{spec.name}' needs {wanted} {bound} input{'' if bound == 1 else 's'}, "
            f"but this step has {count}",
            f"list the upstream step ids in '{key}'",
        )
    ]


def _locate(problem: Problem, doc: OmlDocument, step: RawStep) -> Problem:
    """A component's check() problem, completed with file, step, ``config.`` field and line."""
    field = problem.field
    if field and not (field == "config" or field.startswith(("config.", "config["))):
        field = "config." + field
    line = problem.line
    if line is None and doc.source is not None:
        line = doc.step_line(step, "config", *(field or "config").split(".")[1:])
    return replace(
        problem,
        file=problem.file or doc.file,
        step=problem.step or step.id,
        field=field or "config",
        line=line,
    )


def ignored_config(steps: Sequence[Any], catalog: ComponentCatalog) -> list[str]:
    """A note for each config key a step sets that its component accepts and ignores.

    ``steps``: objects with ``id``, ``component`` and ``config`` (the manifest's StepSpecs).
    """
    notes = []
    for step in steps:
        spec = catalog.get(step.component)
        properties = spec.config_schema.get("properties", {}) if spec is not None else {}
        for key in step.config:
            why = properties.get(key, {}).get(IGNORED_KEYWORD)
            if why:
                notes.append(f"step '{step.id}': config.{key} has no effect here ({why})")
    return notes
