"""How Osiris names a step's input tables: ``df_<sanitized upstream step id>``.

Osiris (``osiris/core/step_naming.py``) hands a step's upstream DataFrames to its driver under
``df_<id>`` keys, and ``duckdb.processor`` registers them under the same names, so a query says
``FROM df_extract_orders``. The rules are copied here exactly, because a pipeline's SQL depends on
them: every character that is not ``[0-9A-Za-z_]`` becomes ``_``; an id starting with a digit gets a
``_`` prefix; when two upstream ids of one step sanitize to the same name, each key gets the first
8 hex digits of the sha256 of its original id as a suffix.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable

_NOT_SQL_SAFE = re.compile(r"[^0-9a-zA-Z_]")


def sanitize_step_id(step_id: str) -> str:
    """``extract-movies`` -> ``extract_movies``; ``123movies`` -> ``_123movies``."""
    sanitized = _NOT_SQL_SAFE.sub("_", step_id)
    if sanitized and sanitized[0].isdigit():
        sanitized = "_" + sanitized
    return sanitized


def dataframe_keys(step_ids: Iterable[str]) -> dict[str, str]:
    """Upstream step id -> its ``df_`` key, in the order given, collisions disambiguated."""
    ids = list(dict.fromkeys(step_ids))
    sanitized = {step_id: sanitize_step_id(step_id) for step_id in ids}
    counts = Counter(sanitized.values())
    keys: dict[str, str] = {}
    for step_id, name in sanitized.items():
        if counts[name] == 1:
            keys[step_id] = f"df_{name}"
        else:
            keys[step_id] = f"df_{name}_{hashlib.sha256(step_id.encode()).hexdigest()[:8]}"
    return keys
