"""MySQL / MariaDB: ``mysql.extractor`` (a ChunkedSource) and ``mysql.writer`` (a ChunkedSink).

Modules: ``connection`` (sessions, error classes), ``types`` (the MySQL <-> Arrow mapping),
``wire`` (unbuffered raw row packets), ``decode`` (THE row decoder: packets -> RecordBatch),
``readplan`` (keyset/partition SQL, checkpoint tokens), ``catalog`` (information_schema),
``extractor``, ``encode`` (Arrow -> SQL text), ``writer``, ``config`` (schemas and checks).
See docs/mysql.md.
"""

from __future__ import annotations

from osiris_flight.components.base import ComponentSpec
from osiris_flight.components.mysql.config import (
    EXTRACTOR_SCHEMA,
    WRITER_SCHEMA,
    check_extractor,
    check_writer,
    replace_needs_one_task,
)
from osiris_flight.components.mysql.extractor import MySQLExtractor, partitions_of
from osiris_flight.components.mysql.writer import MySQLWriter

COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="mysql.extractor",
        role="source",
        operator=MySQLExtractor,
        config_schema=EXTRACTOR_SCHEMA,
        description="Stream a MySQL table or query as Arrow batches, in resumable keyset chunks.",
        check=check_extractor,
        partitions=partitions_of,
    ),
    ComponentSpec(
        name="mysql.writer",
        role="sink",
        operator=MySQLWriter,
        config_schema=WRITER_SCHEMA,
        description="Load a stream into a MySQL table exactly once (staging table, atomic publish).",
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
        check=check_writer,
        single_task=replace_needs_one_task,
    ),
]
