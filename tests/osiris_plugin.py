"""Osiris-style drivers for the tests, written the way Osiris drivers are written (plain classes with
``run(*, step_id, config, inputs, ctx) -> dict``, pandas in and out, standard logging), and
registered through the adapter. Loaded with ``OSIRIS_FLIGHT_PLUGINS=tests.osiris_plugin``.

* ``demo.enrich`` (transform): adds ``total = qty * price``, writes a summary artifact into
  ``ctx.output_dir`` and logs the ``rows_enriched`` metric.
* ``demo.match`` (transform, two inputs): joins the ``df_`` inputs on ``config.on``; fails unless
  it finds exactly the ``df_<sanitized id>`` keys Osiris would pass.
* ``demo.numbers`` (extract): ``config.count`` rows generated from nothing.
* ``demo.csv_writer`` (write): an Osiris writer, finds the first ``df_`` input and writes a CSV.
* ``demo.config_echo`` (transform): one row describing the config and the inputs it received.
* ``demo.spec_enrich``: the enrich driver declared by an Osiris spec directory
  (``tests/osiris_components/demo.spec_enrich/spec.yaml``, ``x-runtime.driver``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from osiris_flight.components.osiris_driver import load_osiris_components, osiris_component

logger = logging.getLogger(__name__)


def _first_df(step_id: str, inputs: dict[str, Any] | None) -> tuple[str, pd.DataFrame]:
    for key, value in (inputs or {}).items():
        if key.startswith("df_") and isinstance(value, pd.DataFrame):
            return key, value
    raise ValueError(f"Step {step_id}: expected a df_* input, got {sorted(inputs or {})}")


class EnrichDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: dict[str, Any] | None, ctx: Any) -> dict:
        _, df = _first_df(step_id, inputs)
        column = config.get("column", "total")
        result = df.copy()
        result[column] = result["qty"] * result["price"]
        (ctx.output_dir / "summary.json").write_text(
            json.dumps({"step": step_id, "rows": len(result), "column": column})
        )
        ctx.log_metric("rows_enriched", len(result), step=step_id)
        logger.info("Step %s: enriched %d rows", step_id, len(result))
        return {"df": result}


class MatchDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: dict[str, Any] | None, ctx: Any) -> dict:
        expected = config["expect_keys"]
        frames = {
            k: v for k, v in (inputs or {}).items() if k.startswith("df_") and isinstance(v, pd.DataFrame)
        }
        if sorted(frames) != sorted(expected):
            raise ValueError(f"Step {step_id}: got input keys {sorted(frames)}, expected {sorted(expected)}")
        left, right = (frames[k] for k in expected)
        ctx.log_metric("inputs", len(frames))
        return {"df": left.merge(right, on=config["on"], how="inner").sort_values(config["on"])}


class NumbersDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: dict[str, Any] | None, ctx: Any) -> dict:
        if inputs is not None:
            raise ValueError(f"Step {step_id}: an extractor gets inputs=None, got {inputs!r}")
        count = int(config["count"])
        return {"df": pd.DataFrame({"n": range(count), "square": [i * i for i in range(count)]})}


class CsvWriterDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: dict[str, Any] | None, ctx: Any) -> dict:
        _, df = _first_df(step_id, inputs)
        path = Path(config["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        ctx.log_metric("rows_written", len(df))
        return {}


class ConfigEchoDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: dict[str, Any] | None, ctx: Any) -> dict:
        if config.get("fail_with"):
            raise RuntimeError(f"{config['fail_with']} (connection: {config.get('resolved_connection')})")
        return {
            "df": pd.DataFrame(
                {
                    "step_id": [step_id],
                    "config": [json.dumps(config, sort_keys=True, default=str)],
                    "inputs": [json.dumps(sorted(inputs or {}))],
                    "output_dir": [str(ctx.output_dir)],
                }
            )
        }


_ANY = {"type": "object"}
COMPONENTS = [
    osiris_component(
        "demo.enrich",
        driver=EnrichDriver,
        mode="transform",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"column": {"type": "string", "minLength": 1}},
        },
        max_inputs=1,
    ),
    osiris_component(
        "demo.match",
        driver=MatchDriver,
        mode="transform",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["on", "expect_keys"],
            "properties": {
                "on": {"type": "string"},
                "expect_keys": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            },
        },
        min_inputs=2,
        max_inputs=2,
    ),
    osiris_component(
        "demo.numbers",
        driver="tests.osiris_plugin.NumbersDriver",
        mode="extract",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["count"],
            "properties": {"count": {"type": "integer", "minimum": 0}},
        },
    ),
    osiris_component(
        "demo.csv_writer",
        driver=CsvWriterDriver,
        mode="write",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {"path": {"type": "string"}},
        },
    ),
    osiris_component(
        "demo.config_echo",
        driver=ConfigEchoDriver,
        mode="transform",
        config_schema={
            "type": "object",
            "required": ["host", "user"],
            "properties": {
                "host": {"type": "string"},
                "user": {"type": "string"},
                "fail_with": {"type": "string"},
            },
        },
        connection_fields=("host", "user"),
        min_inputs=0,
    ),
    *load_osiris_components(Path(__file__).parent / "osiris_components"),
]
