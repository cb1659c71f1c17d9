"""Arrow schemas of the contract tables, with Spark's physical types (what Spark reads back as
the contract's Spark SQL types)."""

from __future__ import annotations

import pyarrow as pa

from core.contract import Field

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(),
    "array<int>": pa.list_(pa.int32()),
}


def arrow_type(spark_type: str) -> pa.DataType:
    """The Arrow type written for a contract field's Spark SQL type."""
    try:
        return _ARROW_TYPES[spark_type]
    except KeyError:
        raise ValueError(f"no Arrow type for Spark type {spark_type!r}; known: {', '.join(_ARROW_TYPES)}") from None


def arrow_schema(fields: tuple[Field, ...]) -> pa.Schema:
    """Schema of a contract table. Every column is nullable, so that days with injected nulls
    have the same schema as clean days; `required` is enforced by ingest, not by the file."""
    return pa.schema([pa.field(f.name, arrow_type(f.type), nullable=True) for f in fields])
