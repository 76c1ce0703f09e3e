"""MySQL text for the query optimizer, always through sqlglot's MySQL dialect (parse, edit the tree,
generate), never by editing strings.

It answers three questions for ``optimize.py``:

* Which AND-ed parts (conjuncts) of a ``transform.filter`` condition MySQL evaluates exactly as the
  filter does. The filter's language (``components/sql_predicate.py``) is MySQL's WHERE syntax, but
  a few meanings differ, so each conjunct gets a verdict: ``exact`` (pushed into the read, dropped
  from the filter), ``looser`` (pushed as a pre-filter that never drops a row the filter keeps, and
  still checked by the filter) or ``filter`` (left to the filter alone). The differences:
  text compares byte by byte in the filter but by the column's collation in MySQL (often
  case-insensitive and blind to trailing spaces), so only ``col = 'x'``, ``col IN ('x', ...)`` and
  ``col LIKE 'x%'`` are pushed, as looser pre-filters; ``/`` divides as float64 in the filter and as
  DECIMAL (rounded to ``div_precision_increment`` digits) in MySQL; arithmetic with a non-integer
  literal is float64 in the filter and exact DECIMAL in MySQL; an integer literal beyond 64 bits is
  a float in the filter; two bare columns compared may be text (collation again); and a backslash in
  a string means itself to the filter but is an escape to MySQL (unless NO_BACKSLASH_ESCAPES).
* Whether an extractor's query can take a condition in its own WHERE (a single-source SELECT with no
  GROUP BY, DISTINCT, LIMIT, aggregate, window function or computed column in the condition), or
  only as a derived table around it (which keeps its meaning, as filtering its rows afterwards
  does), or not at all; and likewise for selecting fewer columns.
* Which columns a query's result has, when that is knowable without the server.

Anything refused raises ``Refusal`` with a reason written for people: ``osiris-flight plan`` shows it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

DIALECT = "mysql"
WRAP_ALIAS = "_osiris_opt"  # the derived table a query is wrapped in

Verdict = Literal["exact", "looser", "filter"]

TEXT = "it compares text: the filter compares bytes, MySQL uses the column's collation"
DIVISION = "'/' divides as float64 in the filter and as rounded DECIMAL in MySQL"
NON_INTEGER = "arithmetic with a non-integer literal is float64 in the filter and DECIMAL in MySQL"
BIG_INTEGER = "an integer literal beyond 64 bits is a float in the filter"
TWO_COLUMNS = "it compares columns whose types are not known before the run (text compares by collation)"
BACKSLASH = "a backslash in a string is an escape in MySQL but not in the filter"
TEMPORAL_ARITHMETIC = "arithmetic on a date literal"

# Functions whose value differs between two evaluations: MySQL may evaluate a derived table's column
# again when it merges the derived table into the outer query, so such a query is never wrapped.
_VOLATILE = {
    "RAND",
    "UUID",
    "UUID_SHORT",
    "SYSDATE",
    "SLEEP",
    "GET_LOCK",
    "RELEASE_LOCK",
    "NEXTVAL",
    "LASTVAL",
    "SETVAL",
    "LAST_INSERT_ID",
    "FOUND_ROWS",
    "ROW_COUNT",
    "BENCHMARK",
    "RANDOM_BYTES",
}
_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.NullSafeEQ)
_TIMESTAMPS = {exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.DATETIME}


class Refusal(Exception):
    """A rewrite that would not be safe (or not possible); ``str()`` says why, for people."""


class NothingToDo(Refusal):
    """The rewrite would change nothing (the query already selects only the columns used)."""


# -- filter conditions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conjunct:
    """One AND-ed part of a filter condition and what MySQL can do with it (see the module docstring)."""

    node: exp.Expr
    verdict: Verdict
    reason: str = ""  # why it is not exact

    @property
    def columns(self) -> list[str]:
        return column_names(self.node)


def conjuncts(where: str) -> list[Conjunct]:
    """The condition's top-level conjuncts with their verdicts; a literal TRUE part is dropped.

    Raises Refusal when the text does not parse (the filter's own validation reports that first).
    """
    try:
        tree = sqlglot.parse_one(where, read=DIALECT)
    except SqlglotError as exc:
        raise Refusal(f"the condition does not parse: {_first_line(exc)}") from None
    parts = [p for p in _flatten_and(tree) if not (isinstance(p, exp.Boolean) and p.this)]
    return [_judge(p) for p in parts]


def _flatten_and(node: exp.Expr) -> list[exp.Expr]:
    node = _unparen(node)
    if isinstance(node, exp.And):
        return _flatten_and(node.this) + _flatten_and(node.expression)
    return [node]


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _judge(node: exp.Expr) -> Conjunct:
    reason = _inexact(node)
    if reason is None:
        return Conjunct(node, "exact")
    if _looser(node):
        return Conjunct(node, "looser", reason)
    return Conjunct(node, "filter", reason)


def _inexact(node: exp.Expr) -> str | None:
    """None when MySQL gives this condition the filter's truth value on every row, else why not."""
    node = _unparen(node)
    if isinstance(node, exp.And | exp.Or | exp.Xor):
        return _inexact(node.this) or _inexact(node.expression)
    if isinstance(node, exp.Not):
        return _inexact(node.this)
    if isinstance(node, _COMPARISONS):
        return _compared([node.this, node.expression])
    if isinstance(node, exp.Between):
        return _compared([node.this, node.args["low"], node.args["high"]])
    if isinstance(node, exp.In):
        return _compared([node.this, *node.expressions])
    if isinstance(node, exp.Is):
        return _value(node.this)[1]
    if isinstance(node, exp.Like | exp.Escape):
        return TEXT
    if isinstance(node, exp.Column | exp.Boolean | exp.Null):
        return None
    return f"{node.key.upper()} is not translated"  # the filter rejects anything else at validation


def _compared(operands: Sequence[exp.Expr]) -> str | None:
    kinds = []
    for operand in operands:
        kind, reason = _value(operand)
        if reason:
            return reason
        kinds.append(kind)
    return TWO_COLUMNS if kinds.count("column") > 1 else None


def _value(node: exp.Expr) -> tuple[str, str | None]:
    """(kind, why inexact) of an operand; kind is column, integer, number, null, temporal, arith, bool."""
    node = _unparen(node)
    if isinstance(node, exp.Column):
        return "column", None
    if isinstance(node, exp.Literal):
        if node.is_string:
            return "text", TEXT
        text = str(node.this)
        if re.fullmatch(r"\d+", text):
            return ("integer", None) if int(text) < 2**63 else ("number", BIG_INTEGER)
        return "number", None
    if isinstance(node, exp.Boolean):
        return "integer", None
    if isinstance(node, exp.Null):
        return "null", None
    if isinstance(node, exp.Cast):
        return "temporal", None  # DATE '...' / TIMESTAMP '...': the only casts the filter accepts
    if isinstance(node, exp.Neg):
        kind, reason = _value(node.this)
        return (kind if kind in ("integer", "number") else "arith"), reason
    if isinstance(node, exp.Div):
        return "arith", DIVISION
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Mod):
        for side in (node.this, node.expression):
            kind, reason = _value(side)
            if reason:
                return "arith", reason
            if kind == "number":
                return "arith", NON_INTEGER
            if kind == "temporal":
                return "arith", TEMPORAL_ARITHMETIC
        return "arith", None
    return "bool", _inexact(node)


def _looser(node: exp.Expr) -> bool:
    """``col = 'x'``, ``col IN ('x', ...)`` or ``col LIKE 'x%'`` (not negated, no backslash).

    Equal bytes are equal under every collation and a byte-wise LIKE match is a match under every
    collation, so MySQL keeps every row the filter keeps (and maybe more, which the filter removes).
    """
    node = _unparen(node)
    if isinstance(node, exp.EQ):
        sides = [_unparen(node.this), _unparen(node.expression)]
        return any(isinstance(s, exp.Column) for s in sides) and any(_plain_text(s) for s in sides)
    if isinstance(node, exp.In):
        items = node.expressions
        return (
            isinstance(_unparen(node.this), exp.Column)
            and not node.args.get("query")
            and any(_plain_text(i) for i in items)
            and all(_plain_text(i) or isinstance(i, exp.Null) for i in items)
        )
    if isinstance(node, exp.Like):
        return (
            not node.args.get("negate")
            and isinstance(_unparen(node.this), exp.Column)
            and _plain_text(node.expression)
        )
    return False


def _plain_text(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and node.is_string and "\\" not in str(node.this)


def column_names(node: exp.Expr) -> list[str]:
    """The column names a condition reads, in order of appearance, once each."""
    return list(dict.fromkeys(c.name for c in node.find_all(exp.Column)))


def for_mysql(parts: Sequence[exp.Expr]) -> exp.Expr:
    """The conjuncts AND-ed into one condition MySQL reads as the filter does.

    ``TIMESTAMP '...'`` becomes ``CAST('...' AS DATETIME(6))`` (sqlglot would write the TIMESTAMP()
    function, which the filter's parser rejects) and every NOT gets parentheses, so the sql_mode
    HIGH_NOT_PRECEDENCE cannot regroup it.
    """

    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Cast) and node.to.this in _TIMESTAMPS:
            return exp.Cast(this=node.this.copy(), to=exp.DataType.build("DATETIME(6)", dialect=DIALECT))
        if isinstance(node, exp.Not) and not isinstance(node.this, exp.Paren | exp.Column):
            return exp.Not(this=exp.Paren(this=node.this.copy()))
        return node

    fixed = [p.copy().transform(fix) for p in parts]
    return fixed[0] if len(fixed) == 1 else exp.and_(*fixed)


def render(node: exp.Expr) -> str:
    """MySQL text of a tree, identifiers in backquotes; Refusal if sqlglot cannot say it in MySQL."""
    try:
        return node.sql(dialect=DIALECT, identify=True, unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise Refusal(f"sqlglot cannot write it back as MySQL: {_first_line(exc)}") from None


def and_condition(existing: str | None, condition: exp.Expr) -> str:
    """``existing AND condition`` as MySQL text (a table read's ``where`` plus a pushed condition)."""
    if not existing:
        return render(condition)
    try:
        before = sqlglot.parse_one(existing, read=DIALECT)
    except SqlglotError as exc:
        raise Refusal(f"the extractor's where does not parse: {_first_line(exc)}") from None
    return render(exp.and_(*_flatten_and(before), *_flatten_and(condition)))


def applied_conditions(config: Mapping[str, Any]) -> set[str]:
    """The conjuncts a read's own WHERE already applies (a query's outermost SELECT, or a table
    read's ``where``), as MySQL text: a condition found there need not be pushed again."""
    try:
        if config.get("query") is not None:
            tree = sqlglot.parse_one(str(config["query"]), read=DIALECT)
            where = tree.args.get("where") if isinstance(tree, exp.Select) else None
            condition = where.this if where is not None else None
        else:
            condition = sqlglot.parse_one(str(config["where"]), read=DIALECT) if config.get("where") else None
        if condition is None:
            return set()
        return {render(for_mysql([part])) for part in _flatten_and(condition)}
    except (SqlglotError, Refusal):
        return set()


# -- queries ----------------------------------------------------------------------------------------
def parse_query(text: str) -> exp.Query:
    """The query's tree, or Refusal when it is not one SELECT (or set operation) that can be rewritten."""
    try:
        statements = [s for s in sqlglot.parse(text, read=DIALECT) if s is not None]
    except SqlglotError as exc:
        raise Refusal(f"sqlglot cannot parse the query as MySQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise Refusal("the query is not a single statement")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise Refusal(f"the query is not a SELECT (it is a {tree.key.upper()})")
    if any(isinstance(n, exp.Select) and (n.args.get("locks") or n.args.get("into")) for n in tree.walk()):
        raise Refusal(
            "the query locks rows or selects INTO something (sqlglot would not keep its MySQL form)"
        )
    if any(isinstance(n, exp.Parameter | exp.Placeholder) for n in tree.walk()):
        raise Refusal(
            "the query uses variables (@name) or placeholders, whose values depend on the rows read"
        )
    try:  # identifiers as written: backquoting them all would make the trees differ
        again = sqlglot.parse_one(tree.sql(dialect=DIALECT, unsupported_level=ErrorLevel.RAISE), read=DIALECT)
    except SqlglotError:
        again = None
    if again != tree:
        raise Refusal("sqlglot does not write the query back faithfully")
    return tree


def output_names(tree: exp.Query) -> tuple[list[str], bool]:
    """The result's column names that can be read off the query, and whether that is all of them.

    A set operation's columns are named by its first SELECT; ``*`` and unaliased expressions (which
    MySQL names after their text) make the list incomplete.
    """
    select = _first_select(tree)
    names: list[str] = []
    complete = True
    for item in select.expressions:
        name = _item_name(item)
        if name is None:
            complete = False
        else:
            names.append(name)
    return names, complete


def require_columns(tree: exp.Query, needed: Sequence[str]) -> None:
    """Refusal when the result certainly lacks a needed column (the run would fail downstream anyway)."""
    names, complete = output_names(tree)
    missing = [n for n in needed if n not in names]
    if missing and complete:
        raise Refusal(
            f"column '{missing[0]}' is not in the query's result (its columns are {', '.join(names)})"
        )


def add_condition(text: str, condition: exp.Expr, *, ordered_read: bool) -> str:
    """The query with ``condition`` (on its result's column names) applied, as MySQL text.

    In its own WHERE when it is a single-source SELECT without grouping, DISTINCT, LIMIT, aggregates
    or window functions and each condition column is a plain column of it; otherwise around it, as
    ``SELECT * FROM (query) AS _osiris_opt WHERE condition``. ``ordered_read``: the extractor sends the
    query as written, so its rows come in the query's own order, which a derived table does not keep.
    """
    tree = parse_query(text)
    require_columns(tree, column_names(condition))
    if isinstance(tree, exp.Select) and _injection_blocker(tree) is None:
        mapped = _on_sources(tree, condition)
        if mapped is not None:
            where = tree.args.get("where")
            parts = _flatten_and(mapped)
            combined = exp.and_(*parts) if where is None else exp.and_(where.this.copy(), *parts)
            injected = tree.copy()
            injected.set("where", exp.Where(this=combined))
            return render(injected)
    return render(_wrap(tree, ordered_read=ordered_read).where(condition, copy=False))


def project(text: str, names: Sequence[str], *, ordered_read: bool) -> str:
    """The query selecting only ``names`` (plus what its ORDER BY refers to), as MySQL text.

    In place when it is a SELECT without DISTINCT, grouping or aggregates (``*`` becomes the names,
    unneeded items are dropped), else as ``SELECT names FROM (query) AS _osiris_opt``. NothingToDo
    when it already selects nothing else.
    """
    tree = parse_query(text)
    require_columns(tree, names)
    current, complete = output_names(tree)
    if complete and all(n in names for n in current):
        raise NothingToDo("the query already selects only the columns used")
    if isinstance(tree, exp.Select) and _projection_blocker(tree) is None:
        items = _projected_items(tree, names)
        if [i.sql() for i in items] == [i.sql() for i in tree.expressions]:
            raise NothingToDo("the query already selects only the columns used")
        projected = tree.copy()
        projected.set("expressions", items)
        return render(projected)
    columns = [exp.column(n, quoted=True) for n in names]
    return render(_wrap(tree, ordered_read=ordered_read).select(*columns, append=False, copy=False))


def table_read(config: Mapping[str, Any]) -> str:
    """The SELECT a table-mode read amounts to (without the key ranges the extractor adds)."""
    columns = config.get("columns") or []
    items: list[exp.Expr] = [exp.column(str(c), quoted=True) for c in columns] or [exp.Star()]
    query = exp.select(*items).from_(exp.table_(str(config["table"]), db=config.get("schema"), quoted=True))
    where = config.get("where")
    if where:
        try:
            query = query.where(sqlglot.parse_one(str(where), read=DIALECT))
        except SqlglotError:
            return render(query) + f" WHERE {where}"  # shown as written; the server judges it
    return render(query)


def _first_select(tree: exp.Query) -> exp.Select:
    while isinstance(tree, exp.SetOperation):
        tree = tree.this
    if isinstance(tree, exp.Subquery):
        return _first_select(tree.this)
    assert isinstance(tree, exp.Select)
    return tree


def _is_star(item: exp.Expr) -> bool:
    return isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star))


def _item_name(item: exp.Expr) -> str | None:
    if _is_star(item):
        return None
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column):
        return item.name
    return None


def _single_source(select: exp.Select) -> bool:
    source = select.args.get("from_")
    return (
        source is not None
        and not select.args.get("joins")
        and not select.args.get("laterals")
        and isinstance(source.this, exp.Table | exp.Subquery)
    )


def _aggregates(select: exp.Select) -> bool:
    return any(
        isinstance(n, exp.AggFunc) and not _in_subquery(n, select)
        for item in select.expressions
        for n in item.walk()
    )


def _windows(select: exp.Select) -> bool:
    return any(isinstance(n, exp.Window) for item in select.expressions for n in item.walk())


def _in_subquery(node: exp.Expr, top: exp.Select) -> bool:
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select | exp.Subquery):
            return True
        parent = parent.parent
    return False


def _injection_blocker(select: exp.Select) -> str | None:
    """Why an extra WHERE condition would change the query's meaning (or its scope), or None."""
    for key, what in (
        ("group", "GROUP BY"),
        ("having", "HAVING"),
        ("distinct", "DISTINCT"),
        ("limit", "LIMIT"),
        ("offset", "OFFSET"),
    ):
        if select.args.get(key):
            return what
    if not _single_source(select):
        return "several sources"
    if _aggregates(select):
        return "aggregates"
    if _windows(select):
        return "window functions"
    return None


def _projection_blocker(select: exp.Select) -> str | None:
    """Why dropping select items in place could change the rows (or break the query), or None."""
    for key, what in (("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT")):
        if select.args.get(key):
            return what
    if _aggregates(select):
        return "aggregates"
    if any(_is_star(i) for i in select.expressions) and not _single_source(select):
        return "* over several sources"
    order = select.args.get("order")
    if order is not None and any(isinstance(_unparen(o.this), exp.Literal) for o in order.expressions):
        return "ORDER BY position"
    return None


def _on_sources(select: exp.Select, condition: exp.Expr) -> exp.Expr | None:
    """The condition on the query's source columns (output names replaced by the columns they
    select), or None when a condition column is computed (then the query is wrapped instead)."""
    items: dict[str, exp.Expr] = {}
    for item in select.expressions:
        name = _item_name(item)
        if name is not None:
            items.setdefault(name, item)
    star = any(_is_star(i) for i in select.expressions)
    mapping: dict[str, exp.Expr] = {}
    for name in column_names(condition):
        item = items.get(name)
        if item is None:
            if not star:
                return None
            continue
        source = item.this if isinstance(item, exp.Alias) else item
        if not isinstance(source, exp.Column):
            return None
        mapping[name] = source

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table and node.name in mapping:
            return mapping[node.name].copy()
        return node

    return condition.copy().transform(swap)


def _projected_items(select: exp.Select, names: Sequence[str]) -> list[exp.Expr]:
    """The select items ``names`` need: ``*`` expanded to the names no item gives, others kept when
    needed, unnamed (MySQL names them after their text) or referred to by ORDER BY."""
    given = {n for n in (_item_name(i) for i in select.expressions) if n is not None}
    order = select.args.get("order")
    ordered = {c.name for c in order.find_all(exp.Column) if not c.table} if order is not None else set()
    items: list[exp.Expr] = []
    for item in select.expressions:
        if _is_star(item):
            items += [exp.column(n, quoted=True) for n in names if n not in given]
            given |= set(names)
            continue
        name = _item_name(item)
        if name is None or name in names or name in ordered:
            items.append(item.copy())
    return items


def _wrap(tree: exp.Query, *, ordered_read: bool) -> exp.Select:
    """``SELECT * FROM (tree) AS _osiris_opt``, or Refusal when that could change its rows."""
    if ordered_read and tree.args.get("order"):
        raise Refusal(
            "the query has an ORDER BY that a derived table around it would not keep "
            "(the read has no key or partition the extractor would order by)"
        )
    volatile = _volatile(tree)
    if volatile:
        raise Refusal(
            f"the query calls {volatile}(), which MySQL may evaluate again when it merges a derived "
            "table around it"
        )
    return exp.select(exp.Star()).from_(
        exp.Subquery(this=tree.copy(), alias=exp.TableAlias(this=exp.to_identifier(WRAP_ALIAS)))
    )


def _volatile(tree: exp.Expr) -> str | None:
    for node in tree.walk():
        if isinstance(node, exp.Func):
            name = str(node.this).upper() if isinstance(node, exp.Anonymous) else node.sql_name().upper()
            if name in _VOLATILE:
                return name
    return None


def _first_line(exc: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
