"""Plugin components for tests that disturb runs on purpose (loaded via OSIRIS_FLIGHT_PLUGINS).

* ``chaos.slow``: passes batches through, sleeping ``delay_s`` seconds before each, so a test can
  act (kill a worker, interrupt the CLI) while a task is certainly running.
* ``chaos.flaky``: raises a transient error on attempts below ``succeed_on_attempt``, a terminal
  error when ``terminal`` is set, else passes through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import pyarrow as pa

from osiris_flight.components.base import ComponentSpec, Transform
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError, TransientError


class Slow(Transform):
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        (stream,) = inputs.values()
        delay = float(self.config.get("delay_s", 0.1))

        def gen() -> Iterator[pa.RecordBatch]:
            for batch in stream.batches():
                time.sleep(delay)
                yield batch

        return RowStream(gen(), stream.schema, name=self.ctx.step_id)


class Flaky(Transform):
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        (stream,) = inputs.values()
        if self.config.get("terminal"):
            raise TerminalError(
                f"step '{self.ctx.step_id}': {self.config.get('message', 'terminal failure')}"
            )
        if self.ctx.attempt < int(self.config.get("succeed_on_attempt", 1)):
            raise TransientError(
                f"step '{self.ctx.step_id}': transient failure on attempt {self.ctx.attempt}"
            )
        return stream


_ANY = {"type": "object"}
COMPONENTS = [
    ComponentSpec(
        name="chaos.slow",
        role="transform",
        operator=Slow,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"delay_s": {"type": "number", "minimum": 0}},
        },
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
    ),
    ComponentSpec(
        name="chaos.flaky",
        role="transform",
        operator=Flaky,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "succeed_on_attempt": {"type": "integer"},
                "terminal": {"type": "boolean"},
                "message": {"type": "string"},
            },
        },
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
    ),
]
