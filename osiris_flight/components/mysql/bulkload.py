"""Getting rows into a (staging) table fast: multi-row INSERT or LOAD DATA LOCAL INFILE, and the
CREATE TABLE of a table made from an Arrow schema.

Both paths send the text ``encode.py`` builds in C++; they differ in what the server does with it.
Measured on this machine (docs/mysql.md), LOAD DATA is the faster one, so the writer uses it and
falls back to INSERT when the server refuses LOCAL INFILE. LOAD DATA LOCAL turns data errors into
warnings (the server cannot stop the client mid-file), so any warning fails the load: a value must
never be truncated silently.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pymysql
from pymysql.connections import Connection

from osiris_flight.components.mysql import encode
from osiris_flight.components.mysql.connection import quote_ident
from osiris_flight.components.mysql.load_local import query_load_local
from osiris_flight.components.mysql.types import ddl_type

MAX_STATEMENT_BYTES = 4 * 1024 * 1024  # one INSERT (below the server's max_allowed_packet)
LOCAL_INFILE_REFUSED = frozenset({1148, 2068, 3948, 3950})  # LOCAL INFILE disabled on either side


def create_table_sql(name: str, schema: pa.Schema, keys: list[str], *, if_not_exists: bool = False) -> str:
    """CREATE TABLE from an Arrow schema (types.ddl_type; ``mysql.type`` metadata when usable).

    utf8mb4 with a binary collation: every character fits, and distinct strings stay distinct
    (a case-insensitive collation would make 'a' and 'A' collide in a key).
    """
    lines = []
    for f in schema:
        nullable = f.nullable and f.name not in keys
        column_type = ddl_type(f, key=f.name in keys)
        lines.append(f"{quote_ident(f.name)} {column_type} {'NULL' if nullable else 'NOT NULL'}")
    if keys:
        lines.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in keys)})")
    create = "CREATE TABLE IF NOT EXISTS" if if_not_exists else "CREATE TABLE"
    return f"{create} {name} ({', '.join(lines)}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def insert(conn: Connection, table: str, batch: pa.RecordBatch, *, max_rows: int) -> None:
    """Multi-row INSERTs of at most ``max_rows`` rows and MAX_STATEMENT_BYTES each."""
    columns = ", ".join(quote_ident(n) for n in batch.schema.names)
    prefix = f"INSERT INTO {table} ({columns}) VALUES ".encode()
    for values in encode.insert_values(batch, max_rows=max_rows, max_bytes=MAX_STATEMENT_BYTES):
        conn.query(prefix + values)


def load_data(
    conn: Connection,
    table: str,
    batch: pa.RecordBatch,
    *,
    max_rows: int,
    work_file: Path,
    numeric_text: set[str],
) -> None:
    """LOAD DATA LOCAL INFILE of ``max_rows`` rows at a time, through ``work_file``.

    ``numeric_text`` names BIT and YEAR columns of the table: LOAD DATA assigns a field as a string,
    and into those columns a number must arrive as a number (the string '5' would be the bits of
    the character '5'; the string '0' is the year 2000, the number 0 the year 0000). Binary
    columns travel as hex and are decoded with UNHEX().
    """
    targets, sets = [], []
    for i, f in enumerate(batch.schema):
        if encode.needs_unhex(f):
            targets.append(f"@v{i}")
            sets.append(f"{quote_ident(f.name)} = UNHEX(@v{i})")
        elif f.name in numeric_text:
            targets.append(f"@v{i}")
            sets.append(f"{quote_ident(f.name)} = CAST(@v{i} AS UNSIGNED)")
        else:
            targets.append(quote_ident(f.name))
    statement = (
        f"LOAD DATA LOCAL INFILE {conn.escape(str(work_file))} INTO TABLE {table} CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        f"({', '.join(targets)})" + (f" SET {', '.join(sets)}" if sets else "")
    )
    work_file.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, batch.num_rows, max_rows):
        work_file.write_bytes(encode.load_data_lines(batch.slice(start, max_rows)))
        try:
            query_load_local(conn, statement, str(work_file))
        finally:
            work_file.unlink(missing_ok=True)
        if conn._result is not None and conn._result.warning_count:
            _raise_warnings(conn)


def _raise_warnings(conn: Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SHOW WARNINGS LIMIT 5")
        shown = [w for w in cur.fetchall() if str(w[0]) != "Note"]
    if shown:
        level, code, message = shown[0][:3]
        raise pymysql.err.DataError(int(str(code)), f"{message} ({level} during LOAD DATA)")
