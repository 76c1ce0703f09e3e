"""Plan a Manifest into stages: fused chains of steps that run as N partition tasks.

Fusion keeps batches in-process wherever the DAG is a straight line; exchanges (Flight) sit only
where it fans out, fans in, or where a step cannot run per partition of its input. The rule, for a
step S with input P: S joins P's stage iff S has exactly one input, P has exactly one consumer (S),
S is not a source, and P's stage has one partition or S is partition-wise. Stages are numbered in a
stable topological order (ties broken by file order), so the same manifest always gives the same plan.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.model import Manifest, OutputKind, Plan, Stage, StepSpec
from osiris_flight.oml.validate import ComponentCatalog, ComponentInfo


def topological_order(manifest: Manifest) -> list[StepSpec]:
    """Steps with every step after its inputs; among ready steps the earliest in the file first."""
    position = {s.id: i for i, s in enumerate(manifest.steps)}
    waiting = {s.id: len(set(s.inputs)) for s in manifest.steps}
    consumers: dict[str, list[str]] = {s.id: [] for s in manifest.steps}
    for step in manifest.steps:
        for dep in dict.fromkeys(step.inputs):
            if dep not in position:
                raise InvalidInput(
                    Problem(
                        f"depends on unknown step '{dep}'",
                        file=manifest.source_file,
                        step=step.id,
                        field="inputs",
                    )
                )
            consumers[dep].append(step.id)
    ready = [position[s] for s, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[StepSpec] = []
    while ready:
        step = manifest.steps[heapq.heappop(ready)]
        order.append(step)
        for consumer in consumers[step.id]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, position[consumer])
    if len(order) != len(manifest.steps):
        stuck = [s.id for s in manifest.steps if waiting[s.id] > 0]
        raise InvalidInput(
            Problem(
                "the manifest has a dependency cycle among: " + ", ".join(stuck), file=manifest.source_file
            )
        )
    return order


# The longest fused chain a task runs: a fused chain nests its steps' generators on one thread's
# stack, and a worker sizes its task threads for this many (runtime/deep_chains.py). Longer chains
# are refused at plan time (so by validate), naming the limit.
MAX_FUSED_STEPS = 2000


@dataclass
class _Building:
    steps: list[str]
    partitions: int
    inputs: tuple[str, ...]
    index: int
    consumers: list[str] = field(default_factory=list)


def plan_manifest(manifest: Manifest, registry: ComponentCatalog) -> Plan:
    """The physical plan of a compiled manifest (see the module docstring for the fusion rule)."""
    specs: dict[str, ComponentInfo] = {}
    for step in manifest.steps:
        spec = registry.get(step.component)
        if spec is None:
            raise InvalidInput(
                Problem(
                    f"unknown component '{step.component}'",
                    file=manifest.source_file,
                    step=step.id,
                    field="component",
                )
            )
        specs[step.id] = spec
    stage_of: dict[str, _Building] = {}
    stages: list[_Building] = []
    for step in topological_order(manifest):
        spec = specs[step.id]
        if len(step.inputs) == 1 and spec.role != "source":
            producer = step.inputs[0]
            target = stage_of[producer]
            if manifest.consumers(producer) == [step.id] and (target.partitions == 1 or spec.partitionwise):
                if len(target.steps) >= MAX_FUSED_STEPS:
                    raise InvalidInput(
                        Problem(
                            f"the straight chain from step '{target.steps[0]}' to here would run as one "
                            f"fused task of more than {MAX_FUSED_STEPS} steps, the limit",
                            file=manifest.source_file,
                            step=step.id,
                            hint="merge steps (filters into one where), or write an intermediate result",
                        )
                    )
                if target.partitions > 1 and spec.single_task is not None:
                    problem = spec.single_task(step.config)
                    if problem is not None:
                        raise InvalidInput(
                            replace(
                                problem,
                                message=f"{problem.message} ('{target.steps[0]}', {target.partitions} "
                                "partitions)",
                                file=manifest.source_file,
                                step=step.id,
                            )
                        )
                target.steps.append(step.id)
                stage_of[step.id] = target
                continue
        partitions = _partitions(manifest, step, spec) if spec.role == "source" else 1
        stage = _Building(
            [step.id], partitions, tuple(f"s{stage_of[d].index}" for d in step.inputs), len(stages)
        )
        stages.append(stage)
        stage_of[step.id] = stage
    for stage in stages:
        for producer in dict.fromkeys(stage.inputs):
            stages[int(producer[1:])].consumers.append(f"s{stage.index}")
    return Plan(
        tuple(
            Stage(
                id=f"s{b.index}",
                steps=tuple(b.steps),
                partitions=b.partitions,
                inputs=b.inputs,
                consumers=tuple(b.consumers),
                output=_output(manifest, specs, b),
            )
            for b in stages
        )
    )


def _partitions(manifest: Manifest, step: StepSpec, spec: ComponentInfo) -> int:
    count = spec.partitions(step.config)
    if not isinstance(count, int) or count < 1:
        raise InvalidInput(
            Problem(
                f"component '{spec.name}' asks for {count!r} partitions; at least 1 is needed",
                file=manifest.source_file,
                step=step.id,
                field="config",
            )
        )
    return count


def _output(manifest: Manifest, specs: dict[str, ComponentInfo], stage: _Building) -> OutputKind:
    last = stage.steps[-1]
    if specs[last].role == "sink":
        return "sink"
    return "exchange" if manifest.consumers(last) else "discard"


def describe_plan(plan: Plan, manifest: Manifest) -> str:
    """The plan for people: one block per stage (fused chain, tasks, inputs, output), then exchanges."""
    tasks = sum(s.partitions for s in plan.stages)
    lines = [
        f"pipeline '{manifest.name}' (OML {manifest.oml_version}): {len(manifest.steps)} "
        f"step{_s(len(manifest.steps))} in {len(plan.stages)} stage{_s(len(plan.stages))}, "
        f"{tasks} task{_s(tasks)}"
    ]
    for stage in plan.stages:
        chain = " -> ".join(f"{s} ({manifest.step(s).component})" for s in stage.steps)
        lines.append(f"  {stage.id}: {chain}")
        task_ids = stage.task_ids()
        shown = ", ".join(task_ids) if len(task_ids) <= 4 else f"{task_ids[0]} .. {task_ids[-1]}"
        details = [f"{stage.partitions} task{_s(stage.partitions)} ({shown})"]
        if stage.inputs:
            details.append("reads " + ", ".join(stage.inputs))
        target = " to " + ", ".join(stage.consumers) if stage.output == "exchange" else ""
        details.append(f"output: {stage.output}{target}")
        lines.append("      " + "; ".join(details))
    exchanges = plan.exchanges()
    if not exchanges:
        lines.append("exchanges: none")
        return "\n".join(lines) + "\n"
    lines.append("exchanges:")
    for producer, consumer in exchanges:
        notes = []
        fan_out = len(plan.stage(producer).consumers)
        fan_in = len(set(plan.stage(consumer).inputs))
        if fan_out > 1:
            notes.append(f"fan-out to {fan_out}")
        if fan_in > 1:
            notes.append(f"fan-in of {fan_in}")
        if plan.stage(producer).partitions > 1:
            notes.append(f"{plan.stage(producer).partitions} partitions -> {plan.stage(consumer).partitions}")
        lines.append(f"  {producer} => {consumer}" + (f" ({', '.join(notes)})" if notes else ""))
    return "\n".join(lines) + "\n"


def _s(count: int) -> str:
    return "" if count == 1 else "s"
