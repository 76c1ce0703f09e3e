"""Read a YAML file into plain JSON-like data, remembering the line of every key and list item.

Why not just ``yaml.safe_load``: errors must say file and line, even for problems found long after
parsing (an unknown config key in step 7), so we keep a path -> line index built from the node tree.
Dates stay strings (``2024-01-01`` is a value for a SQL query, not a ``datetime`` that JSON cannot
hold), and anything JSON cannot represent (binary, sets, NaN, non-string keys, recursive aliases) is
reported instead of crashing later when the manifest is written.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.schema_errors import format_path

YamlPath = tuple[str | int, ...]
_MAX_VALUES = 1_000_000  # alias expansion ("billion laughs") guard: values visited per document


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps (dates and times stay strings), and with YAML 1.2 keys.

    YAML 1.1 reads a bare ``on``/``off``/``yes``/``no`` as a boolean, also as a mapping key; the
    milestone's own joiner example writes ``on: ["date"]``. A plain-scalar *key* therefore stays the
    string it reads as; values keep YAML 1.1's booleans (``header: yes`` still means true).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.tag == "tag:yaml.org,2002:bool"
                and key_node.style is None
            ):
                key_node.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class YamlSource:
    """Parsed YAML plus where it came from: ``file`` as given, sha256 of the exact bytes."""

    file: str
    data: Any
    sha256: str
    lines: Mapping[YamlPath, int] = field(default_factory=dict)

    def line_of(self, path: YamlPath) -> int | None:
        """Line (1-based) of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def read_yaml(path: str | Path, what: str = "file") -> tuple[YamlSource, list[Problem]]:
    """Parse ``path``. Raises InvalidInput for unreadable files and syntax errors (nothing to go on);
    returns data problems (unsupported values, duplicate keys) for the caller to report with its own.
    """
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(Problem(f"cannot read {what}: {exc.strerror or exc}", file=file)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            Problem(f"{what} is not UTF-8 text (bad byte at offset {exc.start})", file=file)
        ) from None
    try:
        node, data = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        kind = (
            "unsupported YAML" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        )
        # The message is built from the parser's problem text only, never from the source line:
        # a connections file's syntax error must not echo a password.
        raise InvalidInput(
            Problem(
                f"{kind}: {exc.problem or 'invalid YAML'}",
                file=file,
                line=mark.line + 1 if mark else None,
                hint=exc.context or None,
            )
        ) from None
    except yaml.reader.ReaderError as exc:
        char = exc.character
        code = char if isinstance(char, int) else ord(char[:1] or " ")
        raise InvalidInput(
            Problem(f"YAML cannot contain the character #x{code:04x} (at offset {exc.position})", file=file)
        ) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        # Constructor errors without a mark (e.g. an unhashable key) and absurd nesting.
        raise InvalidInput(Problem(f"invalid YAML: {type(exc).__name__}", file=file)) from None
    problems: list[Problem] = []
    lines: dict[YamlPath, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _index_lines(node, (), lines, set(), problems, file)
    _check_plain(data, (), problems, file, lines, [0], set())
    return YamlSource(file, data, hashlib.sha256(raw).hexdigest(), lines), problems


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _Loader(text)  # checks for unprintable characters already
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _index_lines(
    node: yaml.Node,
    path: YamlPath,
    lines: dict[YamlPath, int],
    seen: set[int],
    problems: list[Problem],
    file: str,
) -> None:
    """Record the line of every mapping key and list item; report duplicate keys."""
    if id(node) in seen:  # an alias: indexed already (and this also stops recursive aliases)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line:
                problems.append(
                    Problem(
                        f"key '{key}' is given twice in the same mapping (first at line {first_line[key]})",
                        file=file,
                        field=format_path((*path, key)) or None,
                        line=line,
                        hint="YAML keeps only the last one; remove one of them",
                    )
                )
            first_line.setdefault(key, line)
            lines.setdefault((*path, key), line)
            _index_lines(value_node, (*path, key), lines, seen, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault((*path, i), item.start_mark.line + 1)
            _index_lines(item, (*path, i), lines, seen, problems, file)


def _spelled_key(lines: Mapping[YamlPath, int], path: YamlPath, key: Any) -> str | None:
    """How a non-string key was written (``on`` for True), found among the indexed key texts."""
    for candidate in lines:
        if len(candidate) == len(path) + 1 and candidate[:-1] == path and isinstance(candidate[-1], str):
            try:
                parsed = yaml.load(candidate[-1], Loader=_Loader)  # _Loader is a SafeLoader
            except yaml.YAMLError:
                continue
            if parsed == key and type(parsed) is type(key):
                return candidate[-1]
    return None


def _check_plain(
    value: Any,
    path: YamlPath,
    problems: list[Problem],
    file: str,
    lines: Mapping[YamlPath, int],
    budget: list[int],
    active: set[int],
) -> None:
    """Report values that JSON (and so a manifest) cannot hold."""
    budget[0] += 1
    if budget[0] == _MAX_VALUES:
        problems.append(Problem("document is too large (too many values after expanding aliases)", file=file))
    if budget[0] >= _MAX_VALUES:
        return

    def report(message: str, hint: str | None = None) -> None:
        line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), None)
        problems.append(Problem(message, file=file, field=format_path(path) or None, line=line, hint=hint))

    def report_key(key: Any) -> None:
        spelled = _spelled_key(lines, path, key)
        shown = f"'{spelled}'" if spelled is not None else repr(key)
        line = lines.get((*path, spelled)) if spelled is not None else None
        field = format_path(path) or None
        if isinstance(key, bool):
            message = f"key {shown} is read as the boolean {str(key).lower()}, not a string"
            hint = f'YAML reads bare yes/no/on/off as booleans: quote it, e.g. "{spelled or "on"}": ...'
        else:
            message, hint = f"key {shown} is not a string", f'quote it, e.g. "{spelled or key}": ...'
        if line is None:
            line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), None)
        problems.append(Problem(message, file=file, field=field, line=line, hint=hint))

    if isinstance(value, dict | list):
        if id(value) in active:
            report("recursive YAML alias: a value contains itself")
            return
        active.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    report_key(key)
                    continue
                _check_plain(item, (*path, key), problems, file, lines, budget, active)
        else:
            for i, item in enumerate(value):
                _check_plain(item, (*path, i), problems, file, lines, budget, active)
        active.discard(id(value))
    elif isinstance(value, float) and not math.isfinite(value):
        report("NaN and infinity are not supported values", "use a finite number or a string")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        report(
            f"values of type {type(value).__name__} are not supported",
            "use strings, numbers, booleans, lists and mappings",
        )
