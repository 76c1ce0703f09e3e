"""The query optimizer: a compiled Manifest rewritten so that MySQL sends only what the pipeline uses.

It runs after compile and before planning (``plan``, ``run``, ``compile --optimized``; off with
``engine.optimize: false`` or ``--no-optimize``). It is a pure function of the manifest and the
component registry -- it never asks the server anything -- so the same inputs give the same
rewritten manifest, byte for byte. For every ``mysql.extractor`` it tries, in this order:

1. **Predicate pushdown.** The ``transform.filter`` steps right after the read (each the only
   consumer of the step before it) hand the parts of their ``where`` that MySQL evaluates exactly as
   they do to the read: into the query (its own WHERE, or a derived table around it) or, for a
   ``table`` read, into the extractor's ``where``. A filter keeps the parts MySQL cannot judge
   exactly (text compared by collation, ``/``, ...; see ``mysql_rewrite``); its ``where`` becomes
   ``TRUE`` when nothing is left, and the filter then passes batches on untouched. The filter step
   stays in the manifest: step ids, the plan's fused chains, events, metrics and the journal stay
   what the pipeline file says, and its ``columns`` projection (if any) still applies.
2. **Projection pushdown.** The columns the steps downstream read (as their components declare it;
   a component that declares nothing -- a join, a writer, duckdb, a plugin -- reads every column)
   become the read's select list (``table``: its ``columns``).
3. **Partition pruning.** With explicit ``partition.bounds``, ranges the pushed condition excludes
   are dropped, so fewer tasks run; ranges computed at run time (``partitions: N``) are cut between
   MIN and MAX of the rows the condition keeps, since the extractor applies it to that query too.

There is no limit pushdown: no component produces a limit downstream of a read (the extractor's
own ``limit`` already goes into its SQL), and a read with ``limit`` refuses predicate pushdown,
since filtering before the limit would change which rows it reads.

Every decision, applied or not, is a ``Rewrite`` with a reason for people; the optimized manifest
carries them as its ``optimizations`` list, and ``osiris-flight plan`` shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from jsonschema import Draft202012Validator
from sqlglot import exp

from osiris_flight.oml import mysql_rewrite as sql
from osiris_flight.oml.model import Manifest, StepSpec
from osiris_flight.oml.validate import ComponentCatalog

EXTRACTOR = "mysql.extractor"
FILTER = "transform.filter"

Rule = Literal["predicate", "projection", "partitions"]


@dataclass(frozen=True)
class Rewrite:
    """One decision about one read: ``rule`` applied (``detail`` says what) or not (``detail`` says
    why). ``before``/``after``: the read's SQL before and after it; ``steps``: other steps changed."""

    step: str
    rule: Rule
    applied: bool
    detail: str
    before: str
    after: str
    steps: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rule": self.rule,
            "applied": self.applied,
            ("detail" if self.applied else "reason"): self.detail,
            "before": self.before,
            "after": self.after,
            "changed_steps": list(self.steps),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rewrite:
        applied = bool(data["applied"])
        return cls(
            step=str(data["step"]),
            rule=data["rule"],
            applied=applied,
            detail=str(data["detail" if applied else "reason"]),
            before=str(data["before"]),
            after=str(data["after"]),
            steps=tuple(data.get("changed_steps") or ()),
        )


def optimize(manifest: Manifest, registry: ComponentCatalog) -> tuple[Manifest, list[Rewrite]]:
    """The manifest with every MySQL read rewritten as far as is safe, and the decisions taken."""
    state = _Optimizer(manifest, registry)
    rewrites: list[Rewrite] = []
    for step in manifest.steps:
        if step.component == EXTRACTOR:
            rewrites += state.read(step)
    steps = tuple(replace(s, config=state.configs[s.id]) for s in manifest.steps)
    optimized = replace(manifest, steps=steps, optimizations=tuple(r.to_dict() for r in rewrites))
    return optimized, rewrites


def read_sql(config: Mapping[str, Any]) -> str:
    """What a mysql.extractor config reads, as one SQL text (a query as written)."""
    if config.get("query") is not None:
        return str(config["query"])
    return sql.table_read(config)


class _Optimizer:
    """The configs as they are rewritten; the DAG itself never changes."""

    def __init__(self, manifest: Manifest, registry: ComponentCatalog) -> None:
        self.manifest = manifest
        self.registry = registry
        self.configs: dict[str, dict[str, Any]] = {s.id: dict(s.config) for s in manifest.steps}

    def read(self, step: StepSpec) -> list[Rewrite]:
        try:
            pushed, predicate = self._predicate(step)
        except sql.Refusal as exc:  # a step the rules did not foresee: recorded, never fatal
            pushed, predicate = [], self._refusal(step, "predicate", str(exc))
        rewrites = [predicate, self._guarded(step, "projection", self._projection)]
        if self.configs[step.id].get("partition"):
            rewrites.append(self._guarded(step, "partitions", lambda s: self._partitions(s, pushed)))
        return rewrites

    def _guarded(self, step: StepSpec, rule: Rule, apply: Callable[[StepSpec], Rewrite]) -> Rewrite:
        try:
            return apply(step)
        except sql.Refusal as exc:
            return self._refusal(step, rule, str(exc))

    def _refusal(self, step: StepSpec, rule: Rule, reason: str) -> Rewrite:
        before = read_sql(self.configs[step.id])
        return Rewrite(step.id, rule, False, reason, before, before)

    # -- 1. predicate --------------------------------------------------------------------------
    def _predicate(self, step: StepSpec) -> tuple[list[exp.Expr], Rewrite]:
        config = self.configs[step.id]
        before = read_sql(config)

        def refused(reason: str) -> tuple[list[exp.Expr], Rewrite]:
            return [], Rewrite(step.id, "predicate", False, reason, before, before)

        chain, why = self._filter_chain(step.id)
        if not chain:
            return refused(why)
        if config.get("limit") is not None:
            return refused("the read has a limit: filtering before it would change which rows it reads")
        visible: set[str] | None = set(config["columns"]) if config.get("columns") else None
        pushed: list[exp.Expr] = []
        sources: list[str] = []
        residuals: dict[str, str] = {}
        notes: list[str] = []
        applied = sql.applied_conditions(config)
        for filter_step in chain:
            where = str(self.configs[filter_step.id]["where"])
            try:
                parts = sql.conjuncts(where)
            except sql.Refusal as exc:
                notes.append(f"'{filter_step.id}': {exc}")
                break
            # A pre-filter the read already applies (pushed by an earlier optimization, or written
            # in the query) is not pushed twice: the optimizer is idempotent.
            parts = [p for p in parts if not (p.verdict == "looser" and _text(p.node) in applied)]
            unseen = [c for p in parts for c in p.columns if visible is not None and c not in visible]
            if unseen:
                notes.append(f"'{filter_step.id}' reads '{unseen[0]}', which the steps before it drop")
                break
            taken = [p for p in parts if p.verdict != "filter"]
            kept = [p for p in parts if p.verdict != "exact"]
            for part in parts:
                if part.verdict != "exact":
                    how = "is also kept in" if part.verdict == "looser" else "stays in"
                    text = sql.render(sql.for_mysql([part.node]))
                    notes.append(f"{text} {how} '{filter_step.id}' ({part.reason})")
            if taken:
                pushed += [p.node for p in taken]
                sources.append(f"'{filter_step.id}'")
                if len(kept) < len(parts):
                    residuals[filter_step.id] = (
                        sql.render(sql.for_mysql([p.node for p in kept])) if kept else "TRUE"
                    )
            kept_columns = self.configs[filter_step.id].get("columns")
            if kept_columns:
                visible = set(kept_columns) if visible is None else visible & set(kept_columns)
        if not pushed:
            if not notes:
                return refused("the read already applies everything its filters could hand it")
            return refused(
                "nothing in the filter condition can be evaluated by MySQL with the same result: "
                + "; ".join(notes)
            )
        condition = sql.for_mysql(pushed)
        new_config = dict(config)
        try:
            if config.get("query") is not None:
                new_config["query"] = sql.add_condition(
                    str(config["query"]), condition, ordered_read=_ordered_read(config)
                )
            else:
                new_config["where"] = sql.and_condition(config.get("where"), condition)
        except sql.Refusal as exc:
            return refused(str(exc))
        changes = {step.id: new_config}
        for filter_id, residual in residuals.items():
            changes[filter_id] = {**self.configs[filter_id], "where": residual}
        invalid = self._invalid(changes)
        if invalid:
            return refused(invalid)
        self.configs.update(changes)
        detail = f"pushed {sql.render(condition)} from {', '.join(sources)}"
        emptied = [f for f, r in residuals.items() if r == "TRUE"]
        if emptied:
            detail += (
                "; "
                + ", ".join(f"'{f}'" for f in emptied)
                + (" now keeps" if len(emptied) == 1 else " now keep")
                + " every row (where: TRUE)"
            )
        if notes:
            detail += "; " + "; ".join(notes)
        after = read_sql(new_config)
        return [p.copy() for p in pushed], Rewrite(
            step.id, "predicate", True, detail, before, after, tuple(residuals)
        )

    def _filter_chain(self, step_id: str) -> tuple[list[StepSpec], str]:
        """The filters right after the read, each the only consumer of the step before it."""
        chain: list[StepSpec] = []
        current = step_id
        while True:
            consumers = self.manifest.consumers(current)
            if len(consumers) != 1:
                break
            candidate = self.manifest.step(consumers[0])
            if candidate.component != FILTER or candidate.inputs != (current,):
                break
            chain.append(candidate)
            current = candidate.id
        if chain:
            return chain, ""
        consumers = self.manifest.consumers(step_id)
        if not consumers:
            return [], "no step reads it"
        if len(consumers) > 1:
            return [], (
                f"it feeds {len(consumers)} steps ({', '.join(consumers)}): a filter is pushed only "
                "into a read it alone consumes"
            )
        consumer = self.manifest.step(consumers[0])
        return [], f"no transform.filter follows it ('{consumer.id}' is a {consumer.component})"

    # -- 2. projection -------------------------------------------------------------------------
    def _projection(self, step: StepSpec) -> Rewrite:
        config = self.configs[step.id]
        before = read_sql(config)

        def refused(reason: str) -> Rewrite:
            return Rewrite(step.id, "projection", False, reason, before, before)

        needed, who = self._needed(step.id)
        if needed is None:
            return refused(f"{who} reads every column")
        if not needed:
            return refused("no step after it reads a column by name")
        new_config = dict(config)
        if config.get("query") is not None:
            partition = (config.get("partition") or {}).get("column")
            extra = [c for c in (config.get("key"), partition) if c and c not in needed]
            try:
                new_config["query"] = sql.project(
                    str(config["query"]), [*needed, *extra], ordered_read=_ordered_read(config)
                )
            except sql.Refusal as exc:
                return refused(str(exc))
            kept = [*needed, *extra]
        else:
            current = [str(c) for c in config.get("columns") or []]
            missing = [c for c in needed if current and c not in current]
            if missing:
                return refused(f"'{missing[0]}' is used downstream but not in the extractor's columns")
            kept = [c for c in current if c in needed] if current else needed
            if kept == current:
                return refused("it already reads only the columns used")
            new_config["columns"] = kept
        invalid = self._invalid({step.id: new_config})
        if invalid:
            return refused(invalid)
        self.configs[step.id] = new_config
        detail = f"reads {len(kept)} column{'' if len(kept) == 1 else 's'}: {', '.join(kept)}"
        return Rewrite(step.id, "projection", True, detail, before, read_sql(new_config))

    def _needed(self, step_id: str) -> tuple[list[str] | None, str]:
        """The columns of ``step_id``'s output its consumers read, or None and the one reading all."""
        needed: list[str] = []
        for consumer_id in self.manifest.consumers(step_id):
            consumer = self.manifest.step(consumer_id)
            spec = self.registry.get(consumer.component)
            declare = spec.columns_used if spec is not None else None
            use = declare(self.configs[consumer_id]) if declare is not None else None
            if use is None:
                return None, f"'{consumer_id}' ({consumer.component})"
            needed += use.reads
            if use.passes_through:
                more, who = self._needed(consumer_id)
                if more is None:
                    return None, who
                needed += more
        return list(dict.fromkeys(needed)), ""

    # -- 3. partitions -------------------------------------------------------------------------
    def _partitions(self, step: StepSpec, pushed: list[exp.Expr]) -> Rewrite:
        config = self.configs[step.id]
        before = read_sql(config)
        spec = dict(config["partition"])
        column = str(spec.get("column"))

        def refused(reason: str) -> Rewrite:
            return Rewrite(step.id, "partitions", False, reason, before, before)

        if not pushed:
            return refused("no condition was pushed into the read")
        bounds = spec.get("bounds")
        if not isinstance(bounds, list):
            return refused(
                "ranges are cut at run time between MIN and MAX of the rows the pushed condition keeps"
            )
        span = _column_range(pushed, column)
        if span is None:
            return refused(f"the pushed condition does not bound '{column}' by numbers")
        cuts = [_number(b) for b in bounds]
        if any(c is None for c in cuts):
            return refused("the partition bounds are not all numbers")
        keep = [i for i in range(len(bounds) + 1) if _overlaps(span, cuts, i)]
        if len(keep) == len(bounds) + 1:
            return refused(f"the pushed condition's range of '{column}' overlaps every partition")
        first, last = (keep[0], keep[-1]) if keep else (0, 0)
        new_config = dict(config)
        if first == last:
            if config.get("query") is None:
                del new_config["partition"]  # a table read stays keyed, ordered and exact without it
            else:  # keeps the query wrapped by the extractor (exact FLOAT reads), in one task
                new_config["partition"] = {"column": column, "partitions": 1}
        else:
            new_config["partition"] = {**spec, "bounds": bounds[first:last]}
        invalid = self._invalid({step.id: new_config})
        if invalid:
            return refused(invalid)
        self.configs[step.id] = new_config
        tasks = last - first + 1
        now = f"bounds {bounds[first:last]}" if first != last else "one range"
        detail = (
            f"{len(bounds) + 1 - tasks} of {len(bounds) + 1} ranges of '{column}' hold no row the pushed "
            f"condition keeps: bounds {bounds} -> {now}, {tasks} task{'' if tasks == 1 else 's'}"
        )
        return Rewrite(step.id, "partitions", True, detail, before, read_sql(new_config))

    # -- safety net ----------------------------------------------------------------------------
    def _invalid(self, changes: Mapping[str, dict[str, Any]]) -> str:
        """'' when every changed config still passes its component's schema and checks, else why not
        (a rewrite must never turn a valid pipeline into an invalid one)."""
        for step_id, config in changes.items():
            spec = self.registry.get(self.manifest.step(step_id).component)
            if spec is None:
                continue
            for error in Draft202012Validator(spec.config_schema).iter_errors(config):
                return f"the rewritten config of '{step_id}' would be invalid: {error.message}"
            for problem in spec.check(config):
                return f"the rewritten config of '{step_id}' would be invalid: {problem.message}"
        return ""


def _text(node: exp.Expr) -> str:
    return sql.render(sql.for_mysql([node]))


def _ordered_read(config: Mapping[str, Any]) -> bool:
    """The extractor sends the query as written (no key, no partition): its ORDER BY is the order."""
    return config.get("key") is None and config.get("partition") is None


_Bound = tuple[Decimal | None, bool, Decimal | None, bool]  # low, low inclusive, high, high inclusive


def _number(value: object) -> Decimal | None:
    """A numeric partition bound, exactly; None for anything else (a string may be a date or text,
    whose order is the column's business: not compared here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = Decimal(str(value))
    return number if number.is_finite() else None


def _literal_number(node: exp.Expr) -> Decimal | None:
    negative = isinstance(node, exp.Neg)
    inner = node.this if negative else node
    if not (isinstance(inner, exp.Literal) and not inner.is_string):
        return None
    try:
        number = Decimal(str(inner.this))
    except InvalidOperation:
        return None
    return -number if negative else number


def _column_range(parts: list[exp.Expr], column: str) -> _Bound | None:
    """The range of ``column`` the AND of ``parts`` allows (comparisons with number literals,
    BETWEEN, IN), or None when no part bounds it."""
    low: Decimal | None = None
    low_in = True
    high: Decimal | None = None
    high_in = True
    found = False

    def raise_low(value: Decimal, inclusive: bool) -> None:
        nonlocal low, low_in, found
        found = True
        if low is None or value > low or (value == low and not inclusive):
            low, low_in = value, inclusive

    def lower_high(value: Decimal, inclusive: bool) -> None:
        nonlocal high, high_in, found
        found = True
        if high is None or value < high or (value == high and not inclusive):
            high, high_in = value, inclusive

    flip = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}
    for raw in parts:
        part = raw.unnest()
        if isinstance(part, exp.Between):
            low_n, high_n = _literal_number(part.args["low"]), _literal_number(part.args["high"])
            if _is_column(part.this, column) and low_n is not None and high_n is not None:
                raise_low(low_n, True)
                lower_high(high_n, True)
            continue
        if isinstance(part, exp.In):
            values = [_literal_number(v) for v in part.expressions]
            if _is_column(part.this, column) and values and all(v is not None for v in values):
                numbers = [v for v in values if v is not None]
                raise_low(min(numbers), True)
                lower_high(max(numbers), True)
            continue
        kind = type(part)
        if kind not in flip:
            continue
        left, right = part.this.unnest(), part.expression.unnest()
        if _is_column(right, column):
            left, right, kind = right, left, flip[kind]
        value = _literal_number(right)
        if not _is_column(left, column) or value is None:
            continue
        if kind in (exp.GT, exp.GTE, exp.EQ):
            raise_low(value, kind is not exp.GT)
        if kind in (exp.LT, exp.LTE, exp.EQ):
            lower_high(value, kind is not exp.LT)
    return (low, low_in, high, high_in) if found else None


def _is_column(node: exp.Expr, name: str) -> bool:
    return isinstance(node, exp.Column) and not node.table and node.name == name


def _overlaps(span: _Bound, cuts: list[Decimal | None], index: int) -> bool:
    """May partition ``index`` (``cuts[index-1] <= c < cuts[index]``) hold a row in ``span``?
    Conservative: kept whenever unsure."""
    low, low_in, high, high_in = span
    start = cuts[index - 1] if index > 0 else None
    end = cuts[index] if index < len(cuts) else None
    if low is not None and high is not None and (low > high or (low == high and not (low_in and high_in))):
        return index == 0  # nothing passes: keep one (empty) task
    if end is not None and low is not None and low >= end:
        return False
    return not (start is not None and high is not None and (high < start or (high == start and not high_in)))


def describe_rewrites(rewrites: list[Rewrite], *, enabled: bool = True) -> str:
    """The optimizer's part of ``osiris-flight plan``: per MySQL read, original and rewritten SQL."""
    if not enabled:
        return "query optimizer: off (engine.optimize: false or --no-optimize)\n"
    by_step: dict[str, list[Rewrite]] = {}
    for rewrite in rewrites:
        by_step.setdefault(rewrite.step, []).append(rewrite)
    if not by_step:
        return "query optimizer: no MySQL reads\n"
    lines = ["query optimizer:"]
    for step, records in by_step.items():
        lines.append(f"  {step} (mysql.extractor)")
        lines.append(f"      original:  {records[0].before}")
        applied = [r for r in records if r.applied]
        if applied:
            lines.append(f"      rewritten: {applied[-1].after}")
            for record in records:
                state = record.detail if record.applied else f"not applied: {record.detail}"
                lines.append(f"      - {record.rule}: {state}")
        else:
            reasons = "; ".join(f"{r.rule}: {r.detail}" for r in records)
            lines.append(f"      not rewritten: {reasons}")
    return "\n".join(lines) + "\n"


def read_summaries(rewrites: list[Rewrite]) -> list[dict[str, Any]]:
    """Per MySQL read: original SQL, rewritten SQL (None when unchanged) and the reasons why not."""
    summaries: dict[str, dict[str, Any]] = {}
    for rewrite in rewrites:
        entry = summaries.setdefault(
            rewrite.step,
            {"step": rewrite.step, "original": rewrite.before, "rewritten": None, "not_rewritten": []},
        )
        if rewrite.applied:
            entry["rewritten"] = rewrite.after
        else:
            entry["not_rewritten"].append(f"{rewrite.rule}: {rewrite.detail}")
    return list(summaries.values())
