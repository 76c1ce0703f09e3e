"""Component lookup by name: the built-ins plus plugin modules.

A plugin is an importable module with a ``COMPONENTS`` list of ComponentSpec. Plugins are named in
``osiris.yaml`` (``plugins: [pkg.module]``) or in ``OSIRIS_FLIGHT_PLUGINS`` (comma-separated); the
coordinator-side compiler and every worker load the same list, so a plugin must be importable on
every node.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

from osiris_flight.components.base import ComponentSpec
from osiris_flight.errors import InvalidInput, Problem

PLUGINS_ENV = "OSIRIS_FLIGHT_PLUGINS"
BUILTIN_MODULES = (
    "osiris_flight.components.csv_files",
    "osiris_flight.components.parquet_files",
    "osiris_flight.components.filter",
    "osiris_flight.components.aggregator",
    "osiris_flight.components.joiner",
    "osiris_flight.components.duckdb_processor",
    "osiris_flight.components.mysql",
)


class Registry:
    def __init__(self, specs: Iterable[ComponentSpec] = ()) -> None:
        self._specs: dict[str, ComponentSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ComponentSpec) -> None:
        if spec.name in self._specs and self._specs[spec.name] is not spec:
            raise ValueError(f"component {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ComponentSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def load_module(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInput(
                Problem(f"cannot import plugin module {module_name!r}: {exc}", field="plugins")
            ) from None
        specs = getattr(module, "COMPONENTS", None)
        if not isinstance(specs, list | tuple):
            raise InvalidInput(
                Problem(f"plugin module {module_name!r} has no COMPONENTS list", field="plugins")
            )
        for spec in specs:
            self.add(spec)


def plugin_modules(configured: Iterable[str] = ()) -> list[str]:
    """Plugin module names from config plus the environment, de-duplicated, in order."""
    names = list(configured)
    names += [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def build_registry(plugins: Iterable[str] = ()) -> Registry:
    registry = Registry()
    for module_name in (*BUILTIN_MODULES, *plugin_modules(plugins)):
        registry.load_module(module_name)
    return registry
