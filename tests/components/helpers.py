"""Shared helpers for the component tests: contexts, streams and order-insensitive comparison."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from osiris_flight.components.base import StepContext
from osiris_flight.data.rowstream import RowStream


def make_ctx(
    tmp_path: Path,
    config: Mapping[str, Any],
    *,
    step_id: str = "step1",
    batch_rows: int = 1000,
    run_id: str = "run42",
    task_id: str = "stage1.p0",
    **extra: Any,
) -> StepContext:
    """A StepContext the way the task runner builds one, with scratch dirs under ``tmp_path``."""
    return StepContext(
        step_id=step_id,
        component="test",
        config=config,
        run_id=run_id,
        task_id=task_id,
        work_dir=tmp_path / "work",
        output_dir=tmp_path / "out",
        batch_rows=batch_rows,
        **extra,
    )


def stream_of(table: pa.Table, rows_per_batch: int = 1000, *, declare_schema: bool = True) -> RowStream:
    """A stream of ``table`` cut into batches of ``rows_per_batch`` rows."""
    return RowStream(table.to_batches(max_chunksize=rows_per_batch), table.schema if declare_schema else None)


def failing_stream(table: pa.Table, rows_per_batch: int, fail_after: int) -> RowStream:
    """A stream that yields ``fail_after`` batches of ``table`` and then raises, like a dying upstream."""

    def gen() -> Iterator[pa.RecordBatch]:
        for index, batch in enumerate(table.to_batches(max_chunksize=rows_per_batch)):
            if index == fail_after:
                raise ConnectionError("upstream worker died")
            yield batch
        raise ConnectionError("upstream worker died")

    return RowStream(gen(), table.schema)


def collect(stream: RowStream) -> pa.Table:
    return pa.Table.from_batches(list(stream.batches()), schema=stream.schema)


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order (for order-insensitive comparison), index reset."""
    columns = list(frame.columns)
    keyed = frame.assign(**{f"__key{i}": frame[c].astype(str) for i, c in enumerate(columns)})
    keys = [f"__key{i}" for i in range(len(columns))]
    return keyed.sort_values(keys, kind="stable").drop(columns=keys).reset_index(drop=True)


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame, **kwargs: Any) -> None:
    """Equal as multisets of rows (column order must match)."""
    assert list(actual.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(sorted_frame(actual), sorted_frame(expected), **kwargs)
