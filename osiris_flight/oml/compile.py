"""Compile an OML file into a Manifest: load, resolve params and env, check everything, fingerprint.

Compile is the one place user input is judged, so it gathers every problem it can find (params,
substitution, dependencies, components, configs, connections) and raises a single InvalidInput.
It is deterministic: the same file, params, profile, environment and connections file give a
byte-identical ``Manifest.to_json()``. The manifest carries no secrets: connection references stay
``@family.alias`` strings and secret fields keep their ``${VAR}`` (see params.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.connections import reference_problems
from osiris_flight.oml.loader import load_oml
from osiris_flight.oml.model import Manifest, StepSpec
from osiris_flight.oml.params import resolve_params, substitute_config
from osiris_flight.oml.validate import ComponentCatalog, check_steps, resolve_dependencies


def compile_pipeline(
    path: str | Path,
    registry: ComponentCatalog,
    *,
    params: Mapping[str, str] | None = None,
    profile: str | None = None,
    connections_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Manifest:
    """The pipeline at ``path`` as a validated, secret-free Manifest.

    ``params`` are the CLI's ``--param`` strings (coerced to each param's type); ``environ``
    defaults to ``os.environ`` and exists so that tests and services can pass their own.
    """
    env = os.environ if environ is None else environ
    doc = load_oml(path)
    values, problems = resolve_params(doc, params or {}, profile)
    configs = {}
    unresolved: dict[str, set[str]] = {}
    for step in doc.steps:
        config, step_problems = substitute_config(doc, step, values, env)
        configs[step.id] = config
        if step_problems:
            unresolved[step.id] = {p.field for p in step_problems if p.field}
            problems += step_problems
    inputs, dep_problems = resolve_dependencies(doc)
    problems += dep_problems
    problems += check_steps(doc, configs, inputs, registry, unresolved=unresolved)
    manifest = Manifest(
        name=doc.name,
        oml_version=doc.oml_version,
        steps=tuple(
            StepSpec(id=s.id, component=s.component, mode=s.mode, config=configs[s.id], inputs=inputs[s.id])
            for s in doc.steps
        ),
        params={name: values[name] for name in sorted(values)},
        profile=profile,
        source_file=str(path),
        source_sha256=doc.sha256,
    )
    problems += reference_problems(manifest, connections_file, environ=env)
    if problems:
        raise InvalidInput(_dedupe(problems))
    return manifest


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """The same problem found twice (e.g. one unknown --param seen by two checks) is shown once."""
    return list(dict.fromkeys(problems))
