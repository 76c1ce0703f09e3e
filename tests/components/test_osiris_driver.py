"""The Osiris driver adapter, in process: what a driver receives (config, inputs, ctx), what its
result becomes, how its errors are classed, and Osiris spec files. The drivers are real classes
(tests/osiris_plugin.py); the whole-cluster runs are in tests/cluster/test_osiris_compat_cluster.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from osiris_flight.components.base import Sink, Source, Transform
from osiris_flight.components.osiris_driver import load_osiris_spec, osiris_component
from osiris_flight.errors import InvalidInput, TerminalError, TransientError
from tests import osiris_plugin
from tests.components.helpers import collect, make_ctx, stream_of

ITEMS = pa.table({"sku": ["a", "b", "c"], "qty": [1, 2, 3], "price": [2.5, 1.0, 4.0]})
CONN = {"@mysql.prod": {"host": "db.example", "user": "etl", "password": "s3cr3t-pa55"}}


def spec(name: str) -> Any:
    return next(s for s in osiris_plugin.COMPONENTS if s.name == name)


def test_a_transform_driver_gets_osiris_inputs_and_its_df_becomes_the_stream(tmp_path: Path) -> None:
    metrics: list[tuple[str, float, dict[str, Any]]] = []
    ctx = make_ctx(
        tmp_path,
        {"column": "value"},
        step_id="enrich-items",
        batch_rows=2,
        log_metric=lambda n, v, **t: metrics.append((n, v, t)),
    )
    operator = spec("demo.enrich").operator(ctx)
    assert isinstance(operator, Transform)
    stream = operator.apply({"extract-items": stream_of(ITEMS)})
    assert [b.num_rows for b in stream.batches()] == [2, 1]
    out = collect(operator.apply({"extract-items": stream_of(ITEMS)}))
    assert out.column("value").to_pylist() == [2.5, 2.0, 12.0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {"step": "enrich-items", "rows": 3, "column": "value"}
    assert ("rows_enriched", 3.0, {"step": "enrich-items"}) in metrics


def test_inputs_config_and_ctx_are_what_osiris_passes(tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path, {"connection": "@mysql.prod", "host": "override"}, step_id="echo", connections=CONN
    )
    out = collect(
        spec("demo.config_echo").operator(ctx).apply({"extract-a": stream_of(ITEMS), "2b": stream_of(ITEMS)})
    ).to_pylist()[0]
    config = json.loads(out["config"])
    assert config == {
        "mode": "transform",
        "host": "override",
        "resolved_connection": {"host": "db.example", "user": "etl", "password": "s3cr3t-pa55"},
    }
    assert json.loads(out["inputs"]) == ["2b", "df__2b", "df_extract_a", "extract-a"]
    assert out["output_dir"] == str(tmp_path / "out")


def test_a_config_mode_wins_over_the_component_mode(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"mode": "replace", "host": "h", "user": "u"}, step_id="echo")
    out = collect(spec("demo.config_echo").operator(ctx).apply({}))
    assert json.loads(out.column("config")[0].as_py())["mode"] == "replace"


def test_an_extractor_driver_gets_no_inputs(tmp_path: Path) -> None:
    operator = spec("demo.numbers").operator(make_ctx(tmp_path, {"count": 4}))
    assert isinstance(operator, Source)
    assert collect(operator.open()).to_pydict() == {"n": [0, 1, 2, 3], "square": [0, 1, 4, 9]}


def test_a_writer_driver_writes_and_reports_rows(tmp_path: Path) -> None:
    target = tmp_path / "written" / "items.csv"
    metrics: list[str] = []
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = make_ctx(
        tmp_path,
        {"path": str(target)},
        step_id="w",
        log_metric=lambda n, v, **t: metrics.append(n),
        log_event=lambda n, **f: events.append((n, f)),
    )
    operator = spec("demo.csv_writer").operator(ctx)
    assert isinstance(operator, Sink)
    result = operator.write(stream_of(ITEMS))
    assert (result.rows, result.target) == (3, str(target))
    pd.testing.assert_frame_equal(pd.read_csv(target), ITEMS.to_pandas())
    # The engine reports rows_written of a write step itself: the driver's own value is an event.
    assert metrics == []
    assert events == [("driver_metric", {"metric": "rows_written", "value": 3, "step": "w"})]


def test_a_driver_error_is_terminal_and_never_shows_a_secret(tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path, {"connection": "@mysql.prod", "fail_with": "boom"}, step_id="echo", connections=CONN
    )
    with pytest.raises(TerminalError) as err:
        spec("demo.config_echo").operator(ctx).apply({})
    message = str(err.value)
    assert message.startswith(
        "step 'echo': Osiris driver tests.osiris_plugin.ConfigEchoDriver failed: RuntimeError: boom"
    )
    assert "s3cr3t-pa55" not in message and "***" in message


class FlakyNetworkDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: Any, ctx: Any) -> dict[str, Any]:
        raise ConnectionResetError("peer went away")


class NoFrameDriver:
    def run(self, *, step_id: str, config: dict[str, Any], inputs: Any, ctx: Any) -> dict[str, Any]:
        ctx.log_metric("status", "partial")
        return {"rows": 3}


def test_connection_errors_are_transient_and_a_missing_df_is_explained(tmp_path: Path) -> None:
    flaky = osiris_component("t.flaky", driver=FlakyNetworkDriver, mode="read")
    with pytest.raises(TransientError, match="ConnectionResetError: peer went away"):
        flaky.operator(make_ctx(tmp_path, {})).open()  # type: ignore[attr-defined]
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = make_ctx(tmp_path, {}, step_id="nf", log_event=lambda n, **f: events.append((n, f)))
    no_frame = osiris_component("t.noframe", driver=NoFrameDriver, mode="transform")
    with pytest.raises(TerminalError, match="returned no 'df'"):
        no_frame.operator(ctx).apply({"up": stream_of(ITEMS)})  # type: ignore[attr-defined]
    assert events == [("driver_metric", {"metric": "status", "value": "partial", "step": "nf"})]


def test_a_dotted_path_driver_is_imported_when_it_runs(tmp_path: Path) -> None:
    missing = osiris_component("t.missing", driver="tests.osiris_plugin.NoSuchDriver", mode="extract")
    with pytest.raises(
        TerminalError, match=re.escape("cannot load Osiris driver tests.osiris_plugin.NoSuchDriver")
    ):
        missing.operator(make_ctx(tmp_path, {})).open()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=re.escape("not a 'package.module.Class' path")):
        osiris_component("t.bad", driver="no-dots", mode="read")
    with pytest.raises(ValueError, match="mode 'upsert'"):
        osiris_component("t.bad", driver=NoFrameDriver, mode="upsert")


# -- Osiris spec files -----------------------------------------------------------------------------
def test_an_osiris_spec_directory_becomes_a_component(tmp_path: Path) -> None:
    component = spec("demo.spec_enrich")
    assert (component.role, component.mode, component.min_inputs) == ("transform", "transform", 1)
    assert component.description.startswith("Adds a computed column")
    assert set(component.config_schema["properties"]) == {"column", "connection"}
    out = collect(component.operator(make_ctx(tmp_path, {})).apply({"x": stream_of(ITEMS)}))
    assert out.column("total").to_pylist() == [2.5, 2.0, 12.0]


MYSQL_LIKE_SPEC = """\
name: acme.extractor
version: 1.0.0
modes: [extract, discover]
capabilities: {discover: true}
configSchema:
  type: object
  properties:
    host: {type: string}
    user: {type: string}
    password: {type: string}
    query: {type: string}
  required: [host, user, password, query]
  additionalProperties: false
secrets: [/password]
x-connection-fields:
  - {name: host, override: allowed}
  - {name: user, override: forbidden}
x-runtime:
  driver: tests.osiris_plugin.NumbersDriver
"""


def test_connection_supplied_fields_are_not_required_in_the_step(tmp_path: Path) -> None:
    (tmp_path / "acme.extractor").mkdir()
    (tmp_path / "acme.extractor" / "spec.yaml").write_text(MYSQL_LIKE_SPEC)
    component = load_osiris_spec(tmp_path / "acme.extractor")
    assert (component.name, component.role) == ("acme.extractor", "source")
    assert component.config_schema["required"] == ["query"]
    assert "connection" in component.config_schema["properties"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("modes: [extract, discover]", "modes: [extract, write]"), "modes"),
        (("modes: [extract, discover]", "modes: [discover]"), "modes"),
        (("  driver: tests.osiris_plugin.NumbersDriver", "  driver: NumbersDriver"), "x-runtime.driver"),
        (("configSchema:\n  type: object", "configSchema: 3\nunused:\n  type: object"), "configSchema"),
    ],
)
def test_a_broken_spec_is_reported_with_file_and_field(
    tmp_path: Path, change: tuple[str, str], field: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(MYSQL_LIKE_SPEC.replace(*change))
    with pytest.raises(InvalidInput) as err:
        load_osiris_spec(path)
    assert [p.field for p in err.value.problems] == [field]
    assert err.value.problems[0].file == str(path)
