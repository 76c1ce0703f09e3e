"""Every built-in component has the shared shape: a Draft 2020-12 schema, strict keys, documented
defaults, and a registry entry; plus the shared helpers they stand on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from osiris_flight.components._common import rebatch
from osiris_flight.components.registry import BUILTIN_MODULES, build_registry

EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "filesystem.csv_extractor": ("source", {"path": "in.csv"}),
    "filesystem.csv_writer": ("sink", {"path": "out.csv", "write_mode": "append", "newline": "\r\n"}),
    "filesystem.parquet_extractor": ("source", {"path": "data/*.parquet", "partitions": 4}),
    "filesystem.parquet_writer": ("sink", {"path": "out.parquet", "compression": "zstd"}),
    "transform.filter": ("transform", {"where": "amount > 0"}),
    "transform.aggregator": ("transform", {"group_by": ["user_id"], "aggregations": {"n": "count"}}),
    "transform.joiner": ("transform", {"join_type": "inner", "on": ["date"]}),
    "duckdb.processor": ("transform", {"query": "SELECT a, count(*) FROM df_extract_x GROUP BY a"}),
    "mysql.extractor": (
        "source",
        {"connection": "@mysql.db", "table": "t", "partition": {"column": "id", "partitions": 4}},
    ),
    "mysql.writer": (
        "sink",
        {"connection": "@mysql.db", "table": "t", "mode": "upsert", "upsert_keys": ["id"]},
    ),
}


def test_registry_holds_every_builtin() -> None:
    registry = build_registry()
    assert registry.names() == sorted(EXPECTED)
    assert len(BUILTIN_MODULES) == 7


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_shape(name: str) -> None:
    spec = build_registry().get(name)
    assert spec is not None
    role, example = EXPECTED[name]
    assert spec.role == role
    schema = spec.config_schema
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema.get("required", [])) <= set(schema["properties"])
    for key, prop in schema["properties"].items():
        assert prop.get("description"), f"{name}.{key} has no description"
        if "default" in prop:
            assert "default" in prop["description"].lower(), f"{name}.{key}: default not documented"
    validator = Draft202012Validator(schema)
    assert not list(validator.iter_errors(example))
    assert list(validator.iter_errors({**example, "unknown_key": 1}))
    assert spec.check(example) == []
    if role == "source":
        assert (spec.min_inputs, spec.max_inputs) == (0, 0)
    if role == "sink":
        assert (spec.min_inputs, spec.max_inputs) == (1, 1)


def test_rebatch_cuts_and_joins_batches() -> None:
    batches = [
        pa.record_batch({"x": list(range(start, start + n))})
        for start, n in [(0, 3), (3, 0), (3, 7), (10, 1)]
    ]
    out = list(rebatch(batches, 4))
    assert [b.num_rows for b in out] == [4, 4, 3]
    assert pa.Table.from_batches(out).column("x").to_pylist() == list(range(11))
    same = pa.record_batch({"x": [1, 2]})
    assert next(rebatch([same], 2)) is same
    assert list(rebatch([], 5)) == []


def test_the_component_reference_in_the_docs_is_the_generated_one() -> None:
    """docs/components.md embeds scripts/component_docs.py's output: a schema change without
    regenerating it would leave the page describing keys that are not there (or missing new ones)."""
    repo = Path(__file__).resolve().parents[2]
    generated = subprocess.run(
        [sys.executable, str(repo / "scripts/component_docs.py")], capture_output=True, text=True, check=True
    ).stdout
    assert generated.strip() in (repo / "docs/components.md").read_text(encoding="utf-8"), (
        "regenerate the reference: .venv/bin/python scripts/component_docs.py"
    )
