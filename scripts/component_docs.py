"""Print the config reference of every built-in component as Markdown, from the ComponentSpecs.

docs/components.md embeds this output between its "generated" markers; run this after changing a
component's config schema and paste the result there, so the page never drifts from the code:

    .venv/bin/python scripts/component_docs.py > /tmp/reference.md
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from osiris_flight.components.registry import BUILTIN_MODULES, Registry


def type_of(schema: Mapping[str, Any]) -> str:
    """A JSON-schema fragment in words: ``string``, ``list of strings``, ``one of: a, b``."""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of: " + ", ".join(literal(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(type_of(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items", {})
        plural = "s" if items.get("type") in ("string", "integer") else ""
        text = "list of " + type_of(items) + plural
        bounds = (schema.get("minItems"), schema.get("maxItems"))
        if bounds[0] is not None and bounds[0] == bounds[1]:
            text += f" (exactly {bounds[0]})"
        elif bounds[0]:
            text += f" (at least {bounds[0]})"
        return text
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping) and values:
            return "map of name to " + type_of(values)
        if schema.get("properties"):
            return "map with keys " + ", ".join(f"`{k}`" for k in schema["properties"])
        return "map"
    if kind == "string" and schema.get("maxLength") == 1:
        return "one character"
    if kind == "integer" and "minimum" in schema:
        return f"integer >= {schema['minimum']}"
    return str(kind or "any")


def literal(value: Any) -> str:
    """A value as code: ``a`` for a plain string, JSON (``"\\n"``) for anything else."""
    if isinstance(value, str) and value.isprintable() and value.strip() == value and value:
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def component_markdown(spec: Any) -> str:
    schema = spec.config_schema
    required = set(schema.get("required", ()))
    inputs = (
        "no inputs"
        if spec.max_inputs == 0
        else f"{spec.min_inputs} input" + ("s" if spec.min_inputs != 1 else "")
        if spec.min_inputs == spec.max_inputs
        else f"{spec.min_inputs} to {spec.max_inputs} inputs"
    )
    lines = [
        f"### `{spec.name}`",
        "",
        spec.description,
        "",
        f"`mode: {spec.mode}` ({spec.role}), {inputs}"
        + (", partition-wise (fuses behind a partitioned source)" if spec.partitionwise else "")
        + ".",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, prop in schema.get("properties", {}).items():
        if name in required:
            default = "**required**"
        elif "default" in prop:
            default = f"`{json.dumps(prop['default'])}`"
        else:
            default = "(see meaning)"
        lines.append(
            f"| `{name}` | {cell(type_of(prop))} | {cell(default)} | {cell(prop.get('description', ''))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    registry = Registry()
    for module in BUILTIN_MODULES:
        registry.load_module(module)
    print("\n".join(component_markdown(registry.get(name)) for name in registry.names()), end="")


if __name__ == "__main__":
    main()
