"""The MySQL <-> Arrow type mapping: one table, used by the extractor (result metadata -> Arrow) and
the writer (Arrow -> MySQL DDL).

Types come from the result's column metadata (type code, flags, length, decimals, charset), never
from the values. The column's original MySQL type (``decimal(10,2) unsigned``, ``enum('a','b')``,
``json``, ``time(6)``, ``bit(5)``, ...) is kept in the Arrow field metadata under ``mysql.type`` so
that a table created by ``mysql.writer`` from an extracted stream gets the same column types: Arrow
alone cannot tell an ENUM from a VARCHAR, or a YEAR from a SMALLINT. Where a column comes from a
table, the exact ``COLUMN_TYPE`` is read from ``information_schema`` (the wire metadata does not
carry ENUM members, and MariaDB sends JSON as LONGTEXT); otherwise it is derived from the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import pyarrow as pa
from pymysql.charset import charset_by_id
from pymysql.constants import FIELD_TYPE, FLAG

from osiris_flight.errors import TerminalError

MYSQL_TYPE = b"mysql.type"
BINARY_CHARSET = 63  # charsetnr of binary strings: BINARY, VARBINARY, BLOB
NOT_FIXED_DEC = 31  # "decimals" of a float or an expression without a fixed scale
_MBMAXLEN = {"utf8mb4": 4, "utf8mb3": 3, "utf8": 3, "ucs2": 2, "utf16": 4, "utf32": 4, "binary": 1}
_MAX_DECIMAL128 = 38


class Kind(Enum):
    """How the decoder converts a column's text-protocol values (one converter per kind)."""

    INT = "int"
    DECIMAL = "decimal"
    FLOAT = "float"
    BIT = "bit"
    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    STRING = "string"
    BINARY = "binary"
    NULL = "null"


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a result, as the server describes it (a FieldDescriptorPacket, decoded)."""

    name: str
    type_code: int
    flags: int = 0
    length: int = 0
    decimals: int = 0
    charsetnr: int = BINARY_CHARSET
    db: str = ""
    org_table: str = ""
    org_name: str = ""

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & FLAG.UNSIGNED)

    @property
    def not_null(self) -> bool:
        return bool(self.flags & FLAG.NOT_NULL)

    @property
    def is_binary(self) -> bool:
        """Binary strings have the binary charset; the BINARY flag alone also marks *_bin collations."""
        return self.charsetnr == BINARY_CHARSET


@dataclass(frozen=True)
class ColumnPlan:
    """How one result column becomes one Arrow column."""

    name: str
    kind: Kind
    field: pa.Field

    @property
    def arrow_type(self) -> pa.DataType:
        return self.field.type


@dataclass(frozen=True)
class Layout:
    """A result's columns, the plan for each, and the Arrow schema they make."""

    columns: tuple[ColumnInfo, ...]
    plans: tuple[ColumnPlan, ...]
    schema: pa.Schema


_INT_TYPES = {
    FIELD_TYPE.TINY: ("tinyint", pa.int8(), pa.uint8()),
    FIELD_TYPE.SHORT: ("smallint", pa.int16(), pa.uint16()),
    FIELD_TYPE.INT24: ("mediumint", pa.int32(), pa.uint32()),
    FIELD_TYPE.LONG: ("int", pa.int32(), pa.uint32()),
    FIELD_TYPE.LONGLONG: ("bigint", pa.int64(), pa.uint64()),
}
_TEXT_TYPES = {
    FIELD_TYPE.VARCHAR,
    FIELD_TYPE.VAR_STRING,
    FIELD_TYPE.STRING,
    FIELD_TYPE.TINY_BLOB,
    FIELD_TYPE.MEDIUM_BLOB,
    FIELD_TYPE.LONG_BLOB,
    FIELD_TYPE.BLOB,
    FIELD_TYPE.ENUM,
    FIELD_TYPE.SET,
}


def _mbmaxlen(charsetnr: int) -> int:
    try:
        return _MBMAXLEN.get(charset_by_id(charsetnr).name, 1)
    except KeyError:
        return 4  # an unknown (newer) collation: the session charset, utf8mb4


def time_unit(decimals: int) -> str:
    """Arrow unit for fractional-second precision ``decimals``: 0 -> s, 1-3 -> ms, 4-6 -> us."""
    if decimals == 0:
        return "s"
    return "ms" if decimals <= 3 else "us"


def _fsp_suffix(decimals: int) -> str:
    return f"({decimals})" if 0 < decimals <= 6 else ""


def decimal_precision(col: ColumnInfo) -> int:
    """DECIMAL(p, s) precision from the display length: p + (1 if s) + (1 if signed)."""
    precision = col.length - (1 if col.decimals > 0 else 0) - (0 if col.unsigned else 1)
    return min(65, max(precision, col.decimals, 1))


def _text_type(col: ColumnInfo) -> str:
    """The MySQL type of a string column as far as the wire tells (no ENUM members, no JSON)."""
    if col.flags & FLAG.ENUM or col.type_code == FIELD_TYPE.ENUM:
        return "enum"
    if col.flags & FLAG.SET or col.type_code == FIELD_TYPE.SET:
        return "set"
    chars = col.length if col.is_binary else col.length // _mbmaxlen(col.charsetnr)
    if col.type_code in (FIELD_TYPE.STRING, FIELD_TYPE.VAR_STRING, FIELD_TYPE.VARCHAR):
        base = "binary" if col.is_binary else "char"
        prefix = "" if col.type_code == FIELD_TYPE.STRING else "var"
        return f"{prefix}{base}({chars})"
    suffix = "blob" if col.is_binary else "text"
    for limit, prefix in ((255, "tiny"), (65535, ""), (16777215, "medium")):
        if chars <= limit:
            return prefix + suffix
    return "long" + suffix


def wire_type(col: ColumnInfo) -> str:
    """The MySQL column type derived from the wire metadata alone."""
    code = col.type_code
    unsigned = " unsigned" if col.unsigned else ""
    if code in _INT_TYPES:
        return _INT_TYPES[code][0] + unsigned
    if code in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL):
        return f"decimal({decimal_precision(col)},{min(col.decimals, 30)}){unsigned}"
    simple = {
        FIELD_TYPE.FLOAT: "float",
        FIELD_TYPE.DOUBLE: "double",
        FIELD_TYPE.YEAR: "year",
        FIELD_TYPE.DATE: "date",
        FIELD_TYPE.NEWDATE: "date",
        FIELD_TYPE.JSON: "json",
        FIELD_TYPE.GEOMETRY: "geometry",
        FIELD_TYPE.NULL: "null",
    }
    if code in simple:
        return simple[code]
    if code == FIELD_TYPE.BIT:
        return f"bit({max(1, col.length)})"
    if code in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIME):
        name = {FIELD_TYPE.DATETIME: "datetime", FIELD_TYPE.TIMESTAMP: "timestamp"}.get(code, "time")
        return name + _fsp_suffix(col.decimals)
    if code in _TEXT_TYPES:
        return _text_type(col)
    raise TerminalError(f"column '{col.name}': MySQL type code {code} is not supported")


def plan_column(col: ColumnInfo, column_type: str | None = None) -> ColumnPlan:
    """The Arrow field (type from the wire metadata, ``mysql.type`` metadata) for one column.

    ``column_type`` is the exact ``information_schema.COLUMNS.COLUMN_TYPE`` when the column comes
    from a table (or ``json`` for a MariaDB JSON column); it only refines the metadata, never the
    Arrow type, so a table read and a query read of the same column give the same Arrow type.
    """
    code = col.type_code
    kind: Kind
    arrow: pa.DataType
    if code in _INT_TYPES:
        _, signed, unsigned = _INT_TYPES[code]
        kind, arrow = Kind.INT, unsigned if col.unsigned else signed
    elif code == FIELD_TYPE.YEAR:
        kind, arrow = Kind.INT, pa.int16()
    elif code in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL):
        precision, scale = decimal_precision(col), min(col.decimals, 30)
        make = pa.decimal128 if precision <= _MAX_DECIMAL128 else pa.decimal256
        kind, arrow = Kind.DECIMAL, make(precision, scale)
    elif code == FIELD_TYPE.FLOAT:
        kind, arrow = Kind.FLOAT, pa.float32()
    elif code == FIELD_TYPE.DOUBLE:
        kind, arrow = Kind.FLOAT, pa.float64()
    elif code == FIELD_TYPE.BIT:
        kind, arrow = Kind.BIT, pa.uint64()
    elif code in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        kind, arrow = Kind.DATE, pa.date32()
    elif code == FIELD_TYPE.DATETIME:
        kind, arrow = Kind.DATETIME, pa.timestamp(time_unit(min(col.decimals, 6)))
    elif code == FIELD_TYPE.TIMESTAMP:
        # The session runs with time_zone '+00:00', so TIMESTAMP values arrive in UTC.
        kind, arrow = Kind.DATETIME, pa.timestamp(time_unit(min(col.decimals, 6)), tz="UTC")
    elif code == FIELD_TYPE.TIME:
        kind, arrow = Kind.TIME, pa.duration("us")
    elif code == FIELD_TYPE.JSON:
        kind, arrow = Kind.STRING, pa.string()
    elif code == FIELD_TYPE.GEOMETRY:
        kind, arrow = Kind.BINARY, pa.binary()
    elif code == FIELD_TYPE.NULL:
        kind, arrow = Kind.NULL, pa.null()
    elif code in _TEXT_TYPES:
        is_text = not col.is_binary or col.flags & (FLAG.ENUM | FLAG.SET)
        kind, arrow = (Kind.STRING, pa.string()) if is_text else (Kind.BINARY, pa.binary())
    else:
        raise TerminalError(f"column '{col.name}': MySQL type code {code} is not supported")
    mysql_type = column_type.lower() if column_type else wire_type(col)
    field = pa.field(col.name, arrow, nullable=not col.not_null, metadata={MYSQL_TYPE: mysql_type})
    return ColumnPlan(col.name, kind, field)


def layout_of(columns: list[ColumnInfo], column_types: dict[tuple[str, str, str], str]) -> Layout:
    """Plan every column; ``column_types`` maps (db, table, column) to an exact COLUMN_TYPE."""
    plans = tuple(
        plan_column(col, column_types.get((col.db, col.org_table, col.org_name))) for col in columns
    )
    return Layout(tuple(columns), plans, pa.schema([plan.field for plan in plans]))


# -- Arrow -> MySQL DDL ----------------------------------------------------------------------------

# A column type we accept from metadata into DDL: a known type name, optional (args), optional
# attributes. ENUM/SET members are quoted strings. Anything else falls back to the Arrow mapping,
# so metadata can never smuggle SQL into a CREATE TABLE.
_TYPE_SYNTAX = re.compile(
    r"^(?P<base>[a-z]+)(?:\((?P<args>(?:\d+(?:,\d+)?)|(?:'(?:[^'\\]|''|\\.)*'(?:,'(?:[^'\\]|''|\\.)*')*))\))?"
    r"(?P<attrs>(?: unsigned| zerofill| signed)*)$"
)
_FAMILIES: dict[str, str] = {
    **dict.fromkeys(["tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"], "int"),
    **dict.fromkeys(["decimal", "numeric", "dec", "fixed"], "decimal"),
    **dict.fromkeys(["float", "double", "real"], "float"),
    **dict.fromkeys(["char", "varchar", "tinytext", "text", "mediumtext", "longtext"], "string"),
    **dict.fromkeys(["enum", "set", "json"], "string"),
    **dict.fromkeys(["binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"], "binary"),
    **dict.fromkeys(["geometry", "point", "linestring", "polygon"], "binary"),
    "bit": "bit",
    "date": "date",
    "datetime": "datetime",
    "timestamp": "datetime",
    "time": "time",
}


def _arrow_family(arrow: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow):
        return _arrow_family(arrow.value_type)
    if pa.types.is_integer(arrow):
        return "int"
    if pa.types.is_decimal(arrow):
        return "decimal"
    if pa.types.is_floating(arrow):
        return "float"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "string"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow):
        return "binary"
    if pa.types.is_date(arrow):
        return "date"
    if pa.types.is_timestamp(arrow):
        return "datetime"
    if pa.types.is_duration(arrow) or pa.types.is_time(arrow):
        return "time"
    return "other"


def _metadata_type(field: pa.Field) -> str | None:
    """The ``mysql.type`` metadata when it is well-formed, complete and fits the Arrow type."""
    raw = (field.metadata or {}).get(MYSQL_TYPE)
    if not raw:
        return None
    text = raw.decode("utf-8", "replace").strip().lower()
    match = _TYPE_SYNTAX.match(text)
    if match is None or match.group("base") not in _FAMILIES:
        return None
    base, family = match.group("base"), _FAMILIES[match.group("base")]
    if base in ("enum", "set") and not match.group("args"):
        return None  # members unknown (read from a query): a VARCHAR is the honest fallback
    if family == "bit" and pa.types.is_unsigned_integer(field.type):
        return text
    if base == "year" and pa.types.is_integer(field.type):
        return text
    return text if family == _arrow_family(field.type) else None


def _unit_fsp(unit: str) -> str:
    return {"s": "", "ms": "(3)"}.get(unit, "(6)")


def ddl_type(field: pa.Field, *, key: bool = False) -> str:
    """The MySQL column type for an Arrow field: its ``mysql.type`` metadata when usable, else a
    mapping that holds every value of the Arrow type exactly (``key`` columns get an indexable type).
    """
    exact = _metadata_type(field)
    if exact is not None and not (key and re.match(r"^(tiny|medium|long)?(text|blob)$", exact)):
        return exact
    arrow = field.type
    if pa.types.is_dictionary(arrow):
        return ddl_type(pa.field(field.name, arrow.value_type), key=key)
    ints = {
        pa.int8(): "tinyint",
        pa.int16(): "smallint",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.uint8(): "tinyint unsigned",
        pa.uint16(): "smallint unsigned",
        pa.uint32(): "int unsigned",
        pa.uint64(): "bigint unsigned",
    }
    if arrow in ints:
        return ints[arrow]
    if pa.types.is_boolean(arrow):
        return "tinyint(1)"
    if pa.types.is_float16(arrow) or pa.types.is_float32(arrow):
        return "float"
    if pa.types.is_float64(arrow):
        return "double"
    if pa.types.is_decimal(arrow):
        if arrow.precision > 65 or arrow.scale > 30 or arrow.scale < 0:
            raise TerminalError(
                f"column '{field.name}': {arrow} does not fit MySQL DECIMAL "
                "(precision <= 65, 0 <= scale <= 30)"
            )
        return f"decimal({arrow.precision},{arrow.scale})"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "varchar(255)" if key else "longtext"
    if pa.types.is_fixed_size_binary(arrow):
        return f"binary({arrow.byte_width})"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return "varbinary(255)" if key else "longblob"
    if pa.types.is_date(arrow):
        return "date"
    if pa.types.is_timestamp(arrow):
        return "datetime" + _unit_fsp(arrow.unit)
    if pa.types.is_duration(arrow) or pa.types.is_time(arrow):
        return "time" + _unit_fsp(arrow.unit)
    if pa.types.is_null(arrow):
        return "binary(0)"  # what MySQL itself creates for a NULL-typed column
    raise TerminalError(
        f"column '{field.name}': Arrow type {arrow} has no MySQL column type; cast it first "
        "(for example to string with transform steps upstream)"
    )
