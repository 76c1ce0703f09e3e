"""A submitted run's manifest and plan, parsed and checked before the coordinator acts on them.

``protocol.decode`` has already checked their shapes (SubmitRun's ``ManifestDict`` and ``PlanDict``);
this parses them with the real parsers and checks that the plan fits the manifest: every stage's
steps exist, a stage reads only stages before it, consumers are the inverse of inputs, and the run
has at most MAX_TASKS tasks. A run that fails here ends at once with ``RunFinished(failed)`` and
the reason; nothing of it reaches the scheduler, whose state machine trusts its plan.
"""

from __future__ import annotations

import json
import re
from typing import Any, get_args

from osiris_flight.oml.model import Manifest, OutputKind, Plan

# The scheduler keeps every task of an active run in memory: a plan past this is refused.
MAX_TASKS = 100_000


class InvalidSubmission(ValueError):
    pass


def parse_submission(manifest_dict: dict[str, Any], plan_dict: dict[str, Any]) -> tuple[Manifest, Plan]:
    for what, value in (("manifest", manifest_dict), ("plan", plan_dict)):
        try:  # both are written to the run directory as JSON: binary values cannot be
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidSubmission(f"invalid {what}: not JSON data ({type(exc).__name__})") from None
    try:
        manifest = Manifest.from_dict(manifest_dict)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSubmission(f"invalid manifest: {_describe(exc)}") from None
    try:
        plan = Plan.from_dict(plan_dict)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSubmission(f"invalid plan: {_describe(exc)}") from None
    check_plan(manifest, plan)
    return manifest, plan


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # protocol.SafeName: task ids must match


def check_plan(manifest: Manifest, plan: Plan) -> None:
    step_ids = [step.id for step in manifest.steps]
    if len(set(step_ids)) != len(step_ids):
        raise InvalidSubmission("invalid manifest: step ids are not unique")
    if not plan.stages:
        raise InvalidSubmission("invalid plan: no stages")
    known = set(step_ids)
    seen: set[str] = set()
    placed: set[str] = set()
    by_id = {stage.id: stage for stage in plan.stages}
    for stage in plan.stages:
        where = f"invalid plan: stage {stage.id[:64]!r}"
        if stage.id in seen:
            raise InvalidSubmission(f"{where} appears twice")
        if not stage.steps:
            raise InvalidSubmission(f"{where} has no steps")
        if unknown := [s for s in stage.steps if s not in known]:
            raise InvalidSubmission(f"{where} names steps the manifest does not have: {unknown[:5]}")
        if twice := [s for s in stage.steps if s in placed]:
            raise InvalidSubmission(f"{where} holds steps of another stage: {twice[:5]}")
        if later := [i for i in stage.inputs if i not in seen]:
            raise InvalidSubmission(f"{where} reads stages that do not come before it: {later[:5]}")
        if stage.output not in get_args(OutputKind):
            raise InvalidSubmission(f"{where} has an unknown output kind")
        if stage.partitions < 1:
            raise InvalidSubmission(f"{where} has no partitions")
        if not _SAFE_ID.fullmatch(f"{stage.id}.p{stage.partitions - 1}"):
            # Its task ids would be refused by every worker (they name scratch directories there).
            raise InvalidSubmission(f"{where}: a stage id is letters, digits, '.', '_' or '-', at most 120")
        seen.add(stage.id)
        placed.update(stage.steps)
    if (tasks := sum(stage.partitions for stage in plan.stages)) > MAX_TASKS:
        raise InvalidSubmission(f"invalid plan: {tasks} tasks, more than the limit of {MAX_TASKS}")
    for stage in plan.stages:
        readers = sorted(s.id for s in plan.stages if stage.id in s.inputs)
        if sorted(set(stage.consumers)) != readers or any(c not in by_id for c in stage.consumers):
            raise InvalidSubmission(
                f"invalid plan: stage {stage.id[:64]!r} lists consumers that are not the stages reading it"
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {str(exc)[:80]}"
    if type(exc) is ValueError:
        return str(exc)[:200]
    return f"{type(exc).__name__}: {str(exc)[:200]}"
