"""Checking a decoded message against the types its dataclass declares, compiled once per class.

protocol.py declares each message's fields with ordinary annotations, narrowed where the wire needs
more than the type (``Annotated[int, Range(...)]``, ``Match``, ``Keys``, ``Wire``); ``schema_of``
turns a message class into a tuple of small check functions, cached, so ``protocol.decode`` costs a
few microseconds more per message (docs/architecture.md, "A typed, bounded protocol"). A failed
check names the field's path and what was expected, never the value: it may be a secret.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

# Nesting levels allowed in a free-form value (a step config, an event's fields, a sink state).
MAX_NESTING = 32
MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """``Annotated[int, Range(low, high)]`` (or float): a number field's inclusive bounds."""

    low: float
    high: float


@dataclass(frozen=True)
class Wire:
    """``Annotated[T, Wire(S)]``: the field is ``T`` in code and must have the stricter shape ``S``
    on the wire (a TypedDict, ``Annotated[dict[str, Any], Keys(...)]``, containers of them)."""

    shape: Any


@dataclass(frozen=True)
class Match:
    """``Annotated[str, Match(regex)]``: a string field that must match the whole regex."""

    pattern: str


class Keys:
    """``Annotated[dict[str, Any], Keys(name=T, ...)]``: an open record, a map with string keys
    that must hold these keys with these types; other keys hold any plain data."""

    def __init__(self, **required: Any) -> None:
        self.required = required


class Mismatch(Exception):
    """A value that does not fit; ``path`` grows (innermost first) as it propagates out."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path))


Check = Callable[[Any], None]


@dataclass(frozen=True)
class Schema:
    names: frozenset[str]
    required: frozenset[str]
    checks: tuple[tuple[str, Check], ...]


_SCHEMAS: dict[type, Schema] = {}


def schema_of(cls: type) -> Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = dataclasses.fields(cls)
        schema = Schema(
            frozenset(f.name for f in fields),
            frozenset(
                f.name
                for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ),
            tuple((f.name, _compile(hints[f.name])) for f in fields),
        )
        _SCHEMAS[cls] = schema
    return schema


def _kind(value: Any) -> str:
    """What a wire value is, in msgpack's words (never the value: it may be a secret)."""
    names = {dict: "map", list: "array", str: "string", bytes: "binary", bool: "bool", float: "float"}
    if value is None:
        return "nil"
    if type(value) is int:
        return "int"
    return names.get(type(value), type(value).__name__)


def _expected(what: str, value: Any) -> Mismatch:
    return Mismatch(f"must be {what}, got {_kind(value)}")


def _compile(tp: Any) -> Check:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *meta = typing.get_args(tp)
        for item in meta:
            if isinstance(item, Wire):
                return _compile(item.shape)
            if isinstance(item, Range):
                number = _float_check if inner is float else _int_check
                return number(item.low, item.high)
            if isinstance(item, Keys):
                return _record_check(item.required)
            if isinstance(item, Match):
                return _match_check(re.compile(item.pattern))
        return _compile(inner)
    if tp is Any:
        return _plain_check
    if tp is str:
        return _type_check(str, "a string")
    if tp is bytes:
        return _type_check(bytes, "binary")
    if tp is bool:
        return _type_check(bool, "a bool")
    if tp is int:
        return _int_check(0, MAX_INT)
    if tp is float:
        return _float_check(-math.inf, math.inf)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if len(options) == 2 and type(None) in options:
            (other,) = [o for o in options if o is not type(None)]
            inner_check = _compile(other)

            def optional(value: Any) -> None:
                if value is not None:
                    inner_check(value)

            return optional
        raise TypeError(f"protocol: unsupported union {tp}")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        return _list_check(_compile(item_type))
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if key_type is not str:
            raise TypeError(f"protocol: map keys must be str, not {key_type}")
        return _map_check(_compile(value_type))
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        required = tp.__required_keys__
        return _typeddict_check({name: _compile(t) for name, t in hints.items()}, frozenset(required))
    raise TypeError(f"protocol: unsupported field type {tp}")


def _type_check(kind: type, what: str) -> Check:
    def check(value: Any) -> None:
        if type(value) is not kind:
            raise _expected(what, value)

    return check


def _match_check(pattern: re.Pattern[str]) -> Check:
    def check(value: Any) -> None:
        if type(value) is not str:
            raise _expected("a string", value)
        if pattern.fullmatch(value) is None:
            raise Mismatch(f"must match {pattern.pattern}")

    return check


def _int_check(low: float, high: float) -> Check:
    def check(value: Any) -> None:
        if type(value) is not int:
            raise _expected("an int", value)
        if not low <= value <= high:
            raise Mismatch(f"must be an int in {low}..{high}")

    return check


def _float_check(low: float, high: float) -> Check:
    bounded = math.isfinite(low) or math.isfinite(high)

    def check(value: Any) -> None:
        kind = type(value)
        if kind is not float and kind is not int:
            raise _expected("a number", value)
        if bounded and not low <= value <= high:
            raise Mismatch(f"must be a number in {low}..{high}")

    return check


def _list_check(item: Check) -> Check:
    def check(value: Any) -> None:
        if type(value) is not list:
            raise _expected("an array", value)
        for index, element in enumerate(value):
            try:
                item(element)
            except Mismatch as exc:
                exc.path.append(f"[{index}]")
                raise

    return check


def _map_check(item: Check) -> Check:
    def check(value: Any) -> None:
        if type(value) is not dict:
            raise _expected("a map", value)
        for key, element in value.items():
            if type(key) is not str:
                raise Mismatch(f"must be a map with string keys, got a {_kind(key)} key")
            try:
                item(element)
            except Mismatch as exc:
                exc.path.append(f"[{key[:40]!r}]")
                raise

    return check


def _typeddict_check(fields: dict[str, Check], required: frozenset[str]) -> Check:
    def check(value: Any) -> None:
        if type(value) is not dict:
            raise _expected("a map", value)
        if not required <= value.keys():
            raise Mismatch(f"is missing keys {sorted(required - value.keys())}")
        for key, element in value.items():
            field_check = fields.get(key) if type(key) is str else None
            if field_check is None:
                raise Mismatch(f"has an unknown key {str(key)[:40]!r}")
            try:
                field_check(element)
            except Mismatch as exc:
                exc.path.append(f"[{key!r}]")
                raise

    return check


def _record_check(required: dict[str, Any]) -> Check:
    fields = {name: _compile(tp) for name, tp in required.items()}

    def check(value: Any) -> None:
        if type(value) is not dict:
            raise _expected("a map", value)
        for key in fields:
            if key not in value:
                raise Mismatch(f"is missing key {key!r}")
        for key, element in value.items():
            field_check = fields.get(key) if type(key) is str else None
            try:
                if field_check is not None:
                    field_check(element)
                else:
                    if type(key) is not str:
                        raise Mismatch(f"must be a map with string keys, got a {_kind(key)} key")
                    _plain(element, 1)
            except Mismatch as exc:
                exc.path.append(f"[{str(key)[:40]!r}]")
                raise

    return check


_SCALARS = (str, int, float, bool, bytes, type(None))


def _plain_check(value: Any) -> None:
    _plain(value, 0)


def _plain(value: Any, depth: int) -> None:
    """Plain data: scalars, arrays and string-keyed maps, at most MAX_NESTING levels deep."""
    kind = type(value)
    if kind in _SCALARS:
        return
    if depth >= MAX_NESTING:
        raise Mismatch(f"is nested deeper than {MAX_NESTING} levels")
    if kind is list:
        for element in value:
            if type(element) not in _SCALARS:
                _plain(element, depth + 1)
        return
    if kind is dict:
        for key, element in value.items():
            if type(key) is not str:
                raise Mismatch(f"must be a map with string keys, got a {_kind(key)} key")
            if type(element) not in _SCALARS:
                _plain(element, depth + 1)
        return
    raise Mismatch(f"must be plain data, got {_kind(value)}")
