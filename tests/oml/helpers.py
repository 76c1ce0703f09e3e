"""Assertions on InvalidInput: the located problems, not just the text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from osiris_flight.errors import InvalidInput, Problem


def problems_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    assert info.value.problems, "InvalidInput without problems"
    return info.value.problems


def find(problems: list[Problem], fragment: str) -> Problem:
    """The one problem whose message contains ``fragment``."""
    matches = [p for p in problems if fragment in p.message]
    assert matches, f"no problem mentions {fragment!r}; got:\n" + "\n".join(p.render() for p in problems)
    return matches[0]
