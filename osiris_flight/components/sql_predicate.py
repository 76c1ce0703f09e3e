"""SQL WHERE-clause conditions (MySQL dialect) as pyarrow compute expressions.

Osiris users already write SQL, so a filter condition is written the way it would appear after
``WHERE`` in MySQL, and the same text can later be pushed down into a MySQL extractor's query. The
text is parsed by sqlglot (a real SQL parser, not string editing) and translated node by node into a
``pyarrow.compute.Expression``. Only a subset is supported, one that has the same meaning in Arrow as
in SQL:

* columns, plain or `backquoted` (no ``table.column``);
* literals: numbers, 'strings' (or "strings", as MySQL reads them), TRUE/FALSE, NULL,
  DATE '2024-01-31' and TIMESTAMP '2024-01-31 12:00:00';
* comparisons ``= != <> < <= > >=`` and the null-safe ``<=>``;
* ``AND OR XOR NOT`` (also ``&& ||``), parentheses;
* ``[NOT] IN (list)``, ``[NOT] BETWEEN a AND b``, ``IS [NOT] NULL``, ``IS [NOT] TRUE/FALSE``,
  ``[NOT] LIKE 'pattern'`` (``%`` any run, ``_`` one character, ``\\`` escapes);
* arithmetic ``+ - * / %`` and unary minus.

Semantics are SQL's: three-valued logic (a comparison with NULL is NULL, and a row whose condition
is NULL is dropped, as in WHERE); ``x IN (1, NULL)`` is NULL unless x = 1; ``/`` always divides as
float64 and, like ``%``, gives NULL for a zero divisor (MySQL's default); ``%`` takes the sign of the
dividend; integer overflow in ``+ - *`` is an error, not a wrap-around. String comparison and LIKE are
case-sensitive (a binary collation), which differs from MySQL's default case-insensitive collations.
A string literal compared with a date or timestamp column is read as a date or timestamp.
Functions, subqueries, CASE, CAST and the like are rejected at validation time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

SUPPORTED = (
    "columns, literals (numbers, 'strings', TRUE/FALSE, NULL, DATE '...', TIMESTAMP '...'), "
    "= != <> < <= > >= <=>, AND OR XOR NOT, IN (list), BETWEEN, IS [NOT] NULL, IS [NOT] TRUE/FALSE, "
    "LIKE, + - * / %, parentheses"
)
_TYPED_LITERALS = {
    exp.DataType.Type.DATE: pa.date32(),
    exp.DataType.Type.DATETIME: pa.timestamp("us"),
    exp.DataType.Type.TIMESTAMP: pa.timestamp("us"),
    exp.DataType.Type.TIMESTAMPTZ: pa.timestamp("us"),  # how sqlglot reads MySQL's TIMESTAMP '...'
    exp.DataType.Type.TIME: pa.time64("us"),
}
_COMPARISONS: dict[type[exp.Expression], Callable[[Any, Any], pc.Expression]] = {
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
}
_ARITHMETIC: dict[type[exp.Expression], Callable[[Any, Any], pc.Expression]] = {
    exp.Add: pc.add_checked,
    exp.Sub: pc.subtract_checked,
    exp.Mul: pc.multiply_checked,
}


class PredicateError(ValueError):
    """The text is not a supported SQL condition. ``construct`` names what was not understood."""

    def __init__(self, message: str, construct: str = "") -> None:
        super().__init__(message)
        self.construct = construct


@dataclass(frozen=True)
class _Term:
    """A translated sub-expression. ``kind``: bool (a condition), value, column, literal, null."""

    expr: pc.Expression
    kind: str
    value: Any = None  # a literal's Python value, as written (before any typing to a column)
    scalar: pa.Scalar | None = None  # a literal's Arrow value
    column: str | None = None


@dataclass(frozen=True)
class Predicate:
    """A parsed, validated condition. ``columns``: the column names it reads, in order of appearance."""

    text: str
    tree: exp.Expression
    columns: tuple[str, ...]

    def to_arrow(self, schema: pa.Schema | None = None) -> pc.Expression:
        """The condition as an Arrow expression; with ``schema``, literals are typed to match columns.

        Raises PredicateError when a literal cannot be read as its column's type (for instance
        'yesterday' compared with a date column).
        """
        return _Translator(schema).condition(self.tree)


@functools.lru_cache(maxsize=1024)
def parse_predicate(text: str) -> Predicate:
    """Parse and validate ``text``; raises PredicateError saying what is wrong and what is supported.

    Cached: validation, the optimizer and every task of a step parse the same text, and a parse
    costs about a millisecond. The Predicate is only read afterwards, so tasks may share it.
    """
    if not text.strip():
        raise PredicateError("the condition is empty")
    try:
        statements = [s for s in sqlglot.parse(text, read="mysql") if isinstance(s, exp.Expression)]
    except sqlglot.errors.SqlglotError as exc:
        first = _strip_ansi(str(exc).splitlines()[0])
        first = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", first)
        raise PredicateError(f"not valid SQL: {first}", "syntax") from None
    if len(statements) != 1:
        raise PredicateError("expected one condition, found several statements", "';'")
    translator = _Translator(None)
    translator.condition(statements[0])
    return Predicate(text, statements[0], tuple(translator.columns))


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _describe(node: exp.Expression) -> str:
    """A short name for a construct, for error messages: ``function UPPER()``, ``subquery``, ``CASE``."""
    if isinstance(node, exp.Subquery | exp.Select | exp.Query):
        return "subquery"
    if isinstance(node, exp.Case | exp.If):
        return "CASE/IF"
    if isinstance(node, exp.Placeholder):
        return "parameter placeholder"
    if isinstance(node, exp.Anonymous):
        return f"function {str(node.this).upper()}()"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().upper()}()"
    return node.key.upper()


class _Translator:
    def __init__(self, schema: pa.Schema | None) -> None:
        self.schema = schema
        self.columns: list[str] = []

    def condition(self, node: exp.Expression) -> pc.Expression:
        term = self.term(node)
        if term.kind == "null":  # WHERE NULL: no row passes
            return pc.scalar(pa.scalar(None, pa.bool_()))
        if term.kind in ("value", "literal"):
            raise PredicateError(
                f"the condition must be true/false, but {node.sql(dialect='mysql')!r} is a value "
                "(write a comparison such as amount > 0)",
                "non-boolean expression",
            )
        return term.expr

    def term(self, node: exp.Expression) -> _Term:
        if isinstance(node, exp.Paren):
            return self.term(node.this)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal | exp.Boolean | exp.Null | exp.Cast | exp.Neg):
            literal = self._literal(node)
            if literal is not None:
                return literal
        if isinstance(node, exp.Neg):
            return _Term(pc.negate_checked(self.term(node.this).expr), "value")
        if type(node) in _COMPARISONS:
            left, right = self._pair(node.this, node.expression)
            return _Term(_COMPARISONS[type(node)](left.expr, right.expr), "bool")
        if isinstance(node, exp.NullSafeEQ):
            left, right = self._pair(node.this, node.expression)
            a, b = left.expr, right.expr
            either = a.is_null() | b.is_null()
            return _Term(pc.if_else(either, a.is_null() & b.is_null(), a == b), "bool")
        if isinstance(node, exp.And | exp.Or | exp.Xor):
            a, b = self._bool(node.this, node).expr, self._bool(node.expression, node).expr
            if isinstance(node, exp.And):
                return _Term(a & b, "bool")
            if isinstance(node, exp.Or):
                return _Term(a | b, "bool")
            return _Term((a | b) & ~(a & b), "bool")
        if isinstance(node, exp.Not):
            return _Term(~self._bool(node.this, node).expr, "bool")
        if isinstance(node, exp.Between):
            value = self.term(node.this)
            low = self._coerce(value, self.term(node.args["low"]))
            high = self._coerce(value, self.term(node.args["high"]))
            return _Term((value.expr >= low.expr) & (value.expr <= high.expr), "bool")
        if isinstance(node, exp.In):
            return self._in(node)
        if isinstance(node, exp.Is):
            return self._is(node)
        if isinstance(node, exp.Like):
            return self._like(node, escape=None)
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            return self._like(node.this, escape=node.expression)
        if type(node) in _ARITHMETIC:
            left, right = self._pair(node.this, node.expression)
            return _Term(_ARITHMETIC[type(node)](left.expr, right.expr), "value")
        if isinstance(node, exp.Div | exp.Mod):
            return self._divide(node)
        raise PredicateError(
            f"{_describe(node)} is not supported in a filter condition (in {node.sql(dialect='mysql')!r})",
            _describe(node),
        )

    # -- leaves ----------------------------------------------------------------------------------
    def _column(self, node: exp.Column) -> _Term:
        if node.table or isinstance(node.this, exp.Star):
            raise PredicateError(
                f"{node.sql(dialect='mysql')!r}: write a plain column name (no table prefix, no *)",
                "qualified column",
            )
        name = node.name
        if name not in self.columns:
            self.columns.append(name)
        kind = "value"
        if self.schema is not None and name in self.schema.names:
            kind = "column" if pa.types.is_boolean(self.schema.field(name).type) else "value"
        elif self.schema is None:
            kind = "column"  # may be a boolean column: known only when the schema is
        return _Term(pc.field(name), kind, column=name)

    def _literal(self, node: exp.Expression) -> _Term | None:
        """A literal's term, or None when ``node`` is not a literal (a negated column, a CAST of one)."""
        if isinstance(node, exp.Null):
            return _Term(pc.scalar(pa.scalar(None)), "null")
        if isinstance(node, exp.Boolean):
            return _Term(pc.scalar(bool(node.this)), "bool", value=bool(node.this))
        if isinstance(node, exp.Neg):
            inner = self._literal(node.this)
            if inner is None or not isinstance(inner.value, int | float) or isinstance(inner.value, bool):
                return None
            return self._untyped(-inner.value)
        if isinstance(node, exp.Cast):
            target = _TYPED_LITERALS.get(node.to.this)
            if target is None or not (isinstance(node.this, exp.Literal) and node.this.is_string):
                raise PredicateError(
                    f"CAST is not supported (in {node.sql(dialect='mysql')!r}); only DATE '...' and "
                    "TIMESTAMP '...' literals are",
                    "CAST",
                )
            return self._typed(self._cast_text(node.this.this, target))
        if isinstance(node, exp.Literal):
            if node.is_string:
                return self._untyped(str(node.this))
            text = str(node.this)
            number: int | float = int(text) if re.fullmatch(r"\d+", text) else float(text)
            if isinstance(number, int) and number >= 2**63:
                number = float(number)
            return self._untyped(number)
        return None

    @staticmethod
    def _untyped(value: Any) -> _Term:
        scalar = pa.scalar(value)
        return _Term(pc.scalar(scalar), "literal", value=value, scalar=scalar)

    @staticmethod
    def _typed(scalar: pa.Scalar) -> _Term:
        return _Term(pc.scalar(scalar), "literal", scalar=scalar)

    @staticmethod
    def _cast_text(text: str, target: pa.DataType) -> pa.Scalar:
        try:
            return pa.scalar(text).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise PredicateError(f"{text!r} is not a valid {target} value", "literal") from None

    # -- helpers ---------------------------------------------------------------------------------
    def _bool(self, node: exp.Expression, parent: exp.Expression) -> _Term:
        term = self.term(node)
        if term.kind in ("value", "literal"):
            raise PredicateError(
                f"{parent.key.upper()} needs conditions, but {node.sql(dialect='mysql')!r} is a value",
                "non-boolean operand",
            )
        return term

    def _pair(self, left_node: exp.Expression, right_node: exp.Expression) -> tuple[_Term, _Term]:
        left, right = self.term(left_node), self.term(right_node)
        return self._coerce(right, left), self._coerce(left, right)

    def _coerce(self, other: _Term, term: _Term) -> _Term:
        """Type a string or temporal literal compared with a temporal column as that column's type.

        ``day > '2024-01-31'`` compares dates, and ``ts >= DATE '2024-01-31'`` compares timestamps
        (midnight), as in MySQL.
        """
        if term.kind != "literal" or other.column is None or term.scalar is None:
            return term
        if self.schema is None or other.column not in self.schema.names:
            return term
        target = self.schema.field(other.column).type
        if not pa.types.is_temporal(target) or term.scalar.type == target:
            return term
        if isinstance(term.value, str):
            return self._typed(self._cast_text(term.value, target))
        if pa.types.is_temporal(term.scalar.type):
            try:
                return self._typed(term.scalar.cast(target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return term  # left to Arrow, which reports the type mismatch
        return term

    def _in(self, node: exp.In) -> _Term:
        if node.args.get("query") is not None or node.args.get("unnest") or node.args.get("field"):
            raise PredicateError("IN (subquery) is not supported; list the values", "subquery")
        value = self.term(node.this)
        items = [self._coerce(value, self.term(item)) for item in node.expressions]
        value_set = self._value_set(value, [i for i in items if i.kind == "literal"])
        if value_set is None or len(value_set) < len([i for i in items if i.kind != "null"]):
            # Not all literals, or literals that do not fit the column's type: compare one by one.
            result = value.expr == items[0].expr
            for item in items[1:]:
                result = result | (value.expr == item.expr)
            return _Term(result, "bool")
        # A value set. SQL: NULL IN (...) is NULL; no match when a NULL is listed is NULL.
        null_bool = pc.scalar(pa.scalar(None, pa.bool_()))
        miss = null_bool if any(i.kind == "null" for i in items) else pc.scalar(False)
        found = pc.if_else(value.expr.isin(value_set), pc.scalar(True), miss)
        return _Term(pc.if_else(value.expr.is_null(), null_bool, found), "bool")

    def _value_set(self, value: _Term, literals: list[_Term]) -> pa.Array | None:
        """The IN list's literals as one array (typed as the column when known), None if impossible."""
        try:
            array = pa.array([t.scalar.as_py() for t in literals if t.scalar is not None])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise PredicateError("the IN list mixes types (numbers and strings?)", "mixed IN list") from None
        if self.schema is not None and value.column in self.schema.names:
            try:
                array = array.cast(self.schema.field(value.column).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None
        return array

    def _is(self, node: exp.Is) -> _Term:
        target = node.expression
        value = self.term(node.this)
        if isinstance(target, exp.Null):
            return _Term(value.expr.is_null(), "bool")
        if isinstance(target, exp.Boolean):
            truth = value.expr if target.this else ~value.expr
            return _Term(pc.if_else(value.expr.is_null(), pc.scalar(False), truth), "bool")
        raise PredicateError("IS takes NULL, TRUE or FALSE", "IS")

    def _like(self, node: exp.Like, escape: exp.Expression | None) -> _Term:
        if escape is not None and not (isinstance(escape, exp.Literal) and escape.this == "\\"):
            raise PredicateError("LIKE ... ESCAPE is not supported; escape with a backslash", "ESCAPE")
        value = self.term(node.this)
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise PredicateError("the LIKE pattern must be a 'string' literal", "LIKE with a non-literal")
        matched = pc.match_like(value.expr, pattern=str(pattern.this))
        return _Term(~matched if node.args.get("negate") else matched, "bool")

    def _divide(self, node: exp.Div | exp.Mod) -> _Term:
        """``/`` (float64) and ``%`` (sign of the dividend), both NULL when the divisor is zero."""
        left, right = self._pair(node.this, node.expression)
        divisor = pc.if_else(right.expr == pc.scalar(0), pc.scalar(pa.scalar(None)), right.expr)
        if isinstance(node, exp.Div):
            float64 = pa.float64()
            quotient = pc.divide(left.expr.cast(float64), divisor.cast(float64))
            return _Term(quotient, "value")
        # Arrow's modulo is floored (sign of the divisor); MySQL's is truncated (sign of the dividend).
        floored = pc.modulo(left.expr, divisor)
        signs_differ = (floored != pc.scalar(0)) & ((floored < pc.scalar(0)) != (left.expr < pc.scalar(0)))
        fixed = pc.subtract(floored, divisor)
        return _Term(pc.if_else(signs_differ, fixed, floored), "value")
