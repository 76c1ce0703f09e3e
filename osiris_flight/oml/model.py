"""The compiled forms of a pipeline: the Manifest (logical, deterministic, secret-free) and the
Plan (physical: stages of partition tasks, fused chains, exchanges). Both are plain frozen data with
``to_dict``/``from_dict`` so they travel in protocol messages and sit in the run directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

MANIFEST_VERSION = 2  # 2: config keys keep their order (1 sorted them)
PLAN_VERSION = 1


def canonical_json(value: Any) -> str:
    """Byte-stable JSON: keys in the order the pipeline gives them, no whitespace, UTF-8 kept as is.

    Keys are deliberately not sorted: their order can mean something (an aggregator's outputs come
    out in the order its ``aggregations`` are written), and the order is already deterministic, since
    it follows the OML file.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True)
class StepSpec:
    """One OML step after params are substituted. ``inputs`` are upstream step ids, in order.

    ``config`` still holds ``@family.alias`` connection references: connections (and their secrets)
    are resolved at run time, never written into a manifest.
    """

    id: str
    component: str
    mode: str
    config: dict[str, Any]
    inputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "component": self.component,
            "mode": self.mode,
            "config": self.config,
            "inputs": list(self.inputs),
            "fingerprint": sha256_of([self.component, self.mode, self.config, list(self.inputs)]),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepSpec:
        return cls(
            id=data["id"],
            component=data["component"],
            mode=data["mode"],
            config=dict(data["config"]),
            inputs=tuple(data.get("inputs", ())),
        )


@dataclass(frozen=True)
class Manifest:
    """A compiled pipeline. ``optimizations`` lists what the query optimizer did to ``steps`` (and
    what it declined, with why): empty for a manifest as compiled, so that one's bytes never change.
    It is an optional key, so a manifest without it is still version 2."""

    name: str
    oml_version: str
    steps: tuple[StepSpec, ...]
    params: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    source_file: str = ""
    source_sha256: str = ""
    optimizations: tuple[dict[str, Any], ...] = ()

    def step(self, step_id: str) -> StepSpec:
        return self._steps_by_id[step_id]

    @functools.cached_property
    def _steps_by_id(self) -> dict[str, StepSpec]:
        return {s.id: s for s in self.steps}

    def consumers(self, step_id: str) -> list[str]:
        return [s.id for s in self.steps if step_id in s.inputs]

    def to_dict(self) -> dict[str, Any]:
        steps = [s.to_dict() for s in self.steps]
        body: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "pipeline": {"name": self.name, "oml_version": self.oml_version},
            "source": {"file": self.source_file, "sha256": self.source_sha256},
            "profile": self.profile,
            "params": self.params,
            "steps": steps,
        }
        if self.optimizations:
            body["optimizations"] = list(self.optimizations)
        body["fingerprints"] = {
            "manifest": sha256_of(body),
            "steps": {s["id"]: s["fingerprint"] for s in steps},
        }
        return body

    def fingerprint(self) -> str:
        return str(self.to_dict()["fingerprints"]["manifest"])

    def to_json(self) -> str:
        """The manifest file's exact bytes (same inputs give the same bytes)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version!r} is not supported (expected {MANIFEST_VERSION})")
        return cls(
            name=data["pipeline"]["name"],
            oml_version=data["pipeline"]["oml_version"],
            steps=tuple(StepSpec.from_dict(s) for s in data["steps"]),
            params=dict(data.get("params") or {}),
            profile=data.get("profile"),
            source_file=data.get("source", {}).get("file", ""),
            source_sha256=data.get("source", {}).get("sha256", ""),
            optimizations=tuple(dict(o) for o in data.get("optimizations") or ()),
        )


OutputKind = Literal["exchange", "sink", "discard"]


@dataclass(frozen=True)
class Stage:
    """A fused chain of steps run as ``partitions`` parallel tasks.

    Only the first step may have inputs from other stages (``inputs``: producer stage ids, in the
    order of the first step's dependencies, each read from all of its partitions). Every later step
    consumes the step before it, in-process. ``output`` says what happens to the last step's rows:
    ``exchange`` (kept in the worker's batch store and served over Flight to ``consumers``), ``sink``
    (the last step is a writer) or ``discard`` (a transform nobody consumes; drained and counted).
    """

    id: str
    steps: tuple[str, ...]
    partitions: int = 1
    inputs: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    output: OutputKind = "exchange"

    @property
    def last_step(self) -> str:
        return self.steps[-1]

    def task_ids(self) -> list[str]:
        return [task_id(self.id, p) for p in range(self.partitions)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "steps": list(self.steps),
            "partitions": self.partitions,
            "inputs": list(self.inputs),
            "consumers": list(self.consumers),
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        return cls(
            id=data["id"],
            steps=tuple(data["steps"]),
            partitions=int(data["partitions"]),
            inputs=tuple(data["inputs"]),
            consumers=tuple(data["consumers"]),
            output=data["output"],
        )


def task_id(stage_id: str, partition: int) -> str:
    return f"{stage_id}.p{partition}"


def parse_task_id(value: str) -> tuple[str, int]:
    stage, _, part = value.rpartition(".p")
    return stage, int(part)


@dataclass(frozen=True)
class Plan:
    """Stages in a topological order (every stage after the stages it reads)."""

    stages: tuple[Stage, ...]

    def stage(self, stage_id: str) -> Stage:
        return self._stages_by_id[stage_id]

    @functools.cached_property
    def _stages_by_id(self) -> dict[str, Stage]:
        return {s.id: s for s in self.stages}

    def stage_of_step(self, step_id: str) -> Stage:
        for stage in self.stages:
            if step_id in stage.steps:
                return stage
        raise KeyError(step_id)

    def exchanges(self) -> list[tuple[str, str]]:
        """(producer stage, consumer stage) pairs: where batches cross a process boundary."""
        return [(src, stage.id) for stage in self.stages for src in stage.inputs]

    def to_dict(self) -> dict[str, Any]:
        return {"plan_version": PLAN_VERSION, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("plan_version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('plan_version')!r} is not supported")
        return cls(stages=tuple(Stage.from_dict(s) for s in data["stages"]))
