"""Printing query results: an aligned text table for people, JSON for programs."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, TextIO


def jsonable(value: Any) -> Any:
    """A column value as JSON: blobs become ``{"$base64": "..."}``, everything else stays."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def rows_as_objects(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Each row as ``{column: value}`` (JSON-ready)."""
    return [{name: jsonable(value) for name, value in zip(columns, row, strict=False)} for row in rows]


def print_json(value: Any, stream: TextIO) -> None:
    """One JSON document on one line."""
    stream.write(json.dumps(value, ensure_ascii=False) + "\n")


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray | memoryview):
        return "x'" + bytes(value).hex() + "'"
    return str(value).replace("\n", "\\n")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], stream: TextIO) -> None:
    """Columns aligned under a header, ``NULL`` for null, blobs as ``x'..'`` literals."""
    cells = [[_text(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    stream.write(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip() + "\n")
    stream.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        stream.write(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() + "\n")
