from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from osiris_flight.components.registry import Registry
from tests.oml.components import make_registry


@pytest.fixture
def registry() -> Registry:
    return make_registry()


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(text, name="pipeline.yaml") -> path of a dedented file in tmp_path."""

    def _write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return _write
