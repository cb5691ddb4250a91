"""Hrana over HTTP (``POST /v2/pipeline``): JSON requests, responses and SQL values; pure code.

Values travel as ``{"type": "null" | "integer" | "float" | "text" | "blob", ...}`` with 64-bit
integers as decimal strings and blobs as standard base64 (padding optional on input, omitted on
output, as Turso's clients do).  Unknown object keys are ignored, so newer clients keep working;
anything structurally wrong raises ProtocolError naming the JSON path at fault.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from ..errors import ProtocolError

SqlValue: TypeAlias = int | float | str | bytes | None

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1

#: Conditions nest (not/and/or); deeper than this is an attack, not a batch.
MAX_COND_DEPTH = 64

_INT_RE = re.compile(r"-?[0-9]{1,20}")


# --- values -------------------------------------------------------------------------------------


def encode_value(value: SqlValue) -> dict[str, Any]:
    """The Hrana JSON object for an SQLite value."""
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):  # bool is an int subclass; SQLite has no booleans
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        if math.isnan(value):
            return {"type": "null"}  # SQLite turns NaN into NULL; JSON has no NaN either
        return {"type": "float", "value": value}  # infinities: see encode_json
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode("ascii").rstrip("=")}
    raise TypeError(f"not an SQLite value: {type(value).__name__}")


def decode_value(obj: Any, where: str) -> SqlValue:
    """The SQLite value of a Hrana JSON value object at JSON path ``where``."""
    obj = _object(obj, where)
    kind = obj.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        raw = obj.get("value")
        if isinstance(raw, str) and _INT_RE.fullmatch(raw):
            number = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            number = raw  # lenient: a JSON number is accepted too
        else:
            raise ProtocolError(f"{where}.value: an integer value must be a decimal string, got {raw!r:.40}")
        if not I64_MIN <= number <= I64_MAX:
            raise ProtocolError(f"{where}.value: integer {raw} does not fit in 64 bits")
        return number
    if kind == "float":
        raw = obj.get("value")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ProtocolError(f"{where}.value: a float value must be a JSON number")
        return float(raw)
    if kind == "text":
        raw = obj.get("value")
        if not isinstance(raw, str):
            raise ProtocolError(f"{where}.value: a text value must be a JSON string")
        return raw
    if kind == "blob":
        raw = obj.get("base64")
        if not isinstance(raw, str):
            raise ProtocolError(f"{where}.base64: a blob value must carry a base64 string")
        text = raw.rstrip("=")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{where}.base64: not valid base64") from None
    raise ProtocolError(f"{where}.type: unknown value type {kind!r:.40}")


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stmt:
    """One SQL statement with its arguments; ``sql_id`` names SQL stored with ``store_sql``."""

    sql: str | None = None
    sql_id: int | None = None
    args: tuple[SqlValue, ...] = ()
    named_args: tuple[tuple[str, SqlValue], ...] = ()
    want_rows: bool = True

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Stmt:
        """Decode a ``Stmt`` object."""
        obj = _object(obj, where)
        sql = _optional(obj, "sql", str, where)
        sql_id = _optional_int(obj, "sql_id", where)
        if (sql is None) == (sql_id is None):
            raise ProtocolError(f"{where}: a statement needs exactly one of sql and sql_id")
        args = tuple(decode_value(v, f"{where}.args[{i}]") for i, v in enumerate(_list(obj, "args", where)))
        named: list[tuple[str, SqlValue]] = []
        for i, item in enumerate(_list(obj, "named_args", where)):
            here = f"{where}.named_args[{i}]"
            item = _object(item, here)
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError(f"{here}.name: must be a non-empty string")
            named.append((name, decode_value(item.get("value"), f"{here}.value")))
        want_rows = _optional(obj, "want_rows", bool, where)
        return cls(sql, sql_id, args, tuple(named), True if want_rows is None else want_rows)

    def to_json(self) -> dict[str, Any]:
        """The ``Stmt`` object."""
        return {
            "sql": self.sql,
            "sql_id": self.sql_id,
            "args": [encode_value(v) for v in self.args],
            "named_args": [{"name": n, "value": encode_value(v)} for n, v in self.named_args],
            "want_rows": self.want_rows,
        }


@dataclass(frozen=True)
class OkCond:
    """True if step ``step`` ran and succeeded."""

    step: int


@dataclass(frozen=True)
class ErrorCond:
    """True if step ``step`` ran and failed."""

    step: int


@dataclass(frozen=True)
class NotCond:
    """Negation."""

    cond: Cond


@dataclass(frozen=True)
class AndCond:
    """True if every condition is (true for none)."""

    conds: tuple[Cond, ...]


@dataclass(frozen=True)
class OrCond:
    """True if any condition is (false for none)."""

    conds: tuple[Cond, ...]


@dataclass(frozen=True)
class IsAutocommitCond:
    """True if the connection is in autocommit mode (no transaction open) at this point."""


Cond: TypeAlias = OkCond | ErrorCond | NotCond | AndCond | OrCond | IsAutocommitCond


def decode_cond(obj: Any, where: str, depth: int = 0) -> Cond:
    """Decode a batch condition."""
    if depth > MAX_COND_DEPTH:
        raise ProtocolError(f"{where}: conditions nest deeper than {MAX_COND_DEPTH} levels")
    obj = _object(obj, where)
    kind = obj.get("type")
    if kind in ("ok", "error"):
        step = obj.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ProtocolError(f"{where}.step: must be a non-negative integer")
        return OkCond(step) if kind == "ok" else ErrorCond(step)
    if kind == "not":
        return NotCond(decode_cond(obj.get("cond"), f"{where}.cond", depth + 1))
    if kind in ("and", "or"):
        items = obj.get("conds")
        if not isinstance(items, list):
            raise ProtocolError(f"{where}.conds: must be a list")
        conds = tuple(decode_cond(c, f"{where}.conds[{i}]", depth + 1) for i, c in enumerate(items))
        return AndCond(conds) if kind == "and" else OrCond(conds)
    if kind == "is_autocommit":
        return IsAutocommitCond()
    raise ProtocolError(f"{where}.type: unknown condition type {kind!r:.40}")


def encode_cond(cond: Cond) -> dict[str, Any]:
    """The JSON object of a condition."""
    if isinstance(cond, OkCond):
        return {"type": "ok", "step": cond.step}
    if isinstance(cond, ErrorCond):
        return {"type": "error", "step": cond.step}
    if isinstance(cond, NotCond):
        return {"type": "not", "cond": encode_cond(cond.cond)}
    if isinstance(cond, AndCond):
        return {"type": "and", "conds": [encode_cond(c) for c in cond.conds]}
    if isinstance(cond, OrCond):
        return {"type": "or", "conds": [encode_cond(c) for c in cond.conds]}
    return {"type": "is_autocommit"}


def cond_steps(cond: Cond) -> list[int]:
    """Every step index a condition refers to."""
    if isinstance(cond, OkCond | ErrorCond):
        return [cond.step]
    if isinstance(cond, NotCond):
        return cond_steps(cond.cond)
    if isinstance(cond, AndCond | OrCond):
        return [s for c in cond.conds for s in cond_steps(c)]
    return []


@dataclass(frozen=True)
class BatchStep:
    """A statement that runs if its condition holds (always, without one)."""

    stmt: Stmt
    condition: Cond | None = None


@dataclass(frozen=True)
class ExecuteRequest:
    """Run one statement."""

    type: ClassVar[str] = "execute"
    stmt: Stmt

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "stmt": self.stmt.to_json()}


@dataclass(frozen=True)
class BatchRequest:
    """Run steps in order, each gated by its condition."""

    type: ClassVar[str] = "batch"
    steps: tuple[BatchStep, ...]

    def to_json(self) -> dict[str, Any]:
        steps = [
            {"condition": None if s.condition is None else encode_cond(s.condition), "stmt": s.stmt.to_json()}
            for s in self.steps
        ]
        return {"type": self.type, "batch": {"steps": steps}}


@dataclass(frozen=True)
class SequenceRequest:
    """Run several statements separated by semicolons, discarding their results."""

    type: ClassVar[str] = "sequence"
    sql: str | None = None
    sql_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "sql": self.sql, "sql_id": self.sql_id}


@dataclass(frozen=True)
class DescribeRequest:
    """Describe a statement (parameters, columns) without running it."""

    type: ClassVar[str] = "describe"
    sql: str | None = None
    sql_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "sql": self.sql, "sql_id": self.sql_id}


@dataclass(frozen=True)
class StoreSqlRequest:
    """Remember SQL text under ``sql_id`` for the rest of this stream."""

    type: ClassVar[str] = "store_sql"
    sql_id: int
    sql: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "sql_id": self.sql_id, "sql": self.sql}


@dataclass(frozen=True)
class CloseSqlRequest:
    """Forget stored SQL."""

    type: ClassVar[str] = "close_sql"
    sql_id: int

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "sql_id": self.sql_id}


@dataclass(frozen=True)
class CloseRequest:
    """Close the stream (an open transaction is rolled back)."""

    type: ClassVar[str] = "close"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass(frozen=True)
class GetAutocommitRequest:
    """Ask whether the connection is in autocommit mode."""

    type: ClassVar[str] = "get_autocommit"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type}


StreamRequest: TypeAlias = (
    ExecuteRequest
    | BatchRequest
    | SequenceRequest
    | DescribeRequest
    | StoreSqlRequest
    | CloseSqlRequest
    | CloseRequest
    | GetAutocommitRequest
)


def decode_request(obj: Any, where: str) -> StreamRequest:
    """Decode one entry of ``requests``."""
    obj = _object(obj, where)
    kind = obj.get("type")
    if kind == "execute":
        return ExecuteRequest(Stmt.from_json(obj.get("stmt"), f"{where}.stmt"))
    if kind == "batch":
        batch = _object(obj.get("batch"), f"{where}.batch")
        raw_steps = batch.get("steps")
        if not isinstance(raw_steps, list):
            raise ProtocolError(f"{where}.batch.steps: must be a list")
        steps = []
        for i, raw in enumerate(raw_steps):
            here = f"{where}.batch.steps[{i}]"
            raw = _object(raw, here)
            cond_obj = raw.get("condition")
            cond = None if cond_obj is None else decode_cond(cond_obj, f"{here}.condition")
            if cond is not None and any(s >= i for s in cond_steps(cond)):
                raise ProtocolError(f"{here}.condition: may only refer to earlier steps (0..{i - 1})")
            steps.append(BatchStep(Stmt.from_json(raw.get("stmt"), f"{here}.stmt"), cond))
        return BatchRequest(tuple(steps))
    if kind in ("sequence", "describe"):
        sql = _optional(obj, "sql", str, where)
        sql_id = _optional_int(obj, "sql_id", where)
        if (sql is None) == (sql_id is None):
            raise ProtocolError(f"{where}: needs exactly one of sql and sql_id")
        return SequenceRequest(sql, sql_id) if kind == "sequence" else DescribeRequest(sql, sql_id)
    if kind == "store_sql":
        sql_id = _optional_int(obj, "sql_id", where)
        sql = _optional(obj, "sql", str, where)
        if sql_id is None or sql is None:
            raise ProtocolError(f"{where}: store_sql needs sql_id and sql")
        return StoreSqlRequest(sql_id, sql)
    if kind == "close_sql":
        sql_id = _optional_int(obj, "sql_id", where)
        if sql_id is None:
            raise ProtocolError(f"{where}: close_sql needs sql_id")
        return CloseSqlRequest(sql_id)
    if kind == "close":
        return CloseRequest()
    if kind == "get_autocommit":
        return GetAutocommitRequest()
    raise ProtocolError(f"{where}.type: unknown request type {kind!r:.40}")


@dataclass(frozen=True)
class PipelineRequest:
    """The body of ``POST /v2/pipeline``."""

    requests: tuple[StreamRequest, ...]
    baton: str | None = None

    @classmethod
    def from_bytes(cls, body: bytes) -> PipelineRequest:
        """Decode and validate a request body; raises ProtocolError."""
        obj = _load_json(body, "pipeline request")
        obj = _object(obj, "$")
        baton = _optional(obj, "baton", str, "$")
        raw = obj.get("requests")
        if not isinstance(raw, list):
            raise ProtocolError("$.requests: must be a list")
        return cls(tuple(decode_request(r, f"$.requests[{i}]") for i, r in enumerate(raw)), baton)

    def to_bytes(self) -> bytes:
        """The JSON body."""
        return encode_json({"baton": self.baton, "requests": [r.to_json() for r in self.requests]})


# --- responses ----------------------------------------------------------------------------------


@dataclass
class Col:
    """A result column: its name and declared type."""

    name: str | None
    decltype: str | None = None


@dataclass
class StmtResult:
    """The result of one statement."""

    cols: list[Col] = field(default_factory=list)
    rows: list[list[SqlValue]] = field(default_factory=list)
    affected_row_count: int = 0
    last_insert_rowid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``StmtResult`` object."""
        return {
            "cols": [{"name": c.name, "decltype": c.decltype} for c in self.cols],
            "rows": [[encode_value(v) for v in row] for row in self.rows],
            "affected_row_count": self.affected_row_count,
            "last_insert_rowid": None if self.last_insert_rowid is None else str(self.last_insert_rowid),
            "replication_index": None,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> StmtResult:
        """Decode a ``StmtResult`` (the client side)."""
        obj = _object(obj, where)
        cols = [Col(c.get("name"), c.get("decltype")) for c in (_object(c, where) for c in _list(obj, "cols", where))]
        rows = [
            [decode_value(v, f"{where}.rows[{i}][{j}]") for j, v in enumerate(row)]
            for i, row in enumerate(_list(obj, "rows", where))
        ]
        count = obj.get("affected_row_count", 0)
        rowid = obj.get("last_insert_rowid")
        return cls(cols, rows, int(count), None if rowid is None else int(rowid))


@dataclass
class HranaError:
    """An error in place of a result: a message for people and a code for programs."""

    message: str
    code: str

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code}


@dataclass
class BatchResult:
    """Per step: a result if it ran and succeeded, an error if it ran and failed, else neither."""

    step_results: list[StmtResult | None]
    step_errors: list[HranaError | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "step_results": [None if r is None else r.to_json() for r in self.step_results],
            "step_errors": [None if e is None else e.to_json() for e in self.step_errors],
            "replication_index": None,
        }


@dataclass
class DescribeResult:
    """What ``describe`` reports about a statement."""

    params: list[str | None]
    cols: list[Col]
    is_explain: bool
    is_readonly: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "params": [{"name": p} for p in self.params],
            "cols": [{"name": c.name, "decltype": c.decltype} for c in self.cols],
            "is_explain": self.is_explain,
            "is_readonly": self.is_readonly,
        }


@dataclass
class StreamResponse:
    """A successful answer to one request: its type and the type-specific fields."""

    type: str
    result: StmtResult | BatchResult | DescribeResult | None = None
    is_autocommit: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.result is not None:
            out["result"] = self.result.to_json()
        if self.is_autocommit is not None:
            out["is_autocommit"] = self.is_autocommit
        return out


StreamResult: TypeAlias = StreamResponse | HranaError


def encode_pipeline_response(results: list[StreamResult], baton: str | None = None) -> bytes:
    """The JSON body answering a pipeline: one result per request, in order."""
    out = []
    for res in results:
        if isinstance(res, HranaError):
            out.append({"type": "error", "error": res.to_json()})
        else:
            out.append({"type": "ok", "response": res.to_json()})
    return encode_json({"baton": baton, "base_url": None, "results": out})


def decode_pipeline_response(body: bytes) -> list[dict[str, Any]]:
    """The ``results`` of a pipeline response, as JSON objects (the client side)."""
    return _results(_object(_load_json(body, "pipeline response"), "$"))


def decode_pipeline_reply(body: bytes) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``baton`` and ``results`` of a pipeline response (the client side of a stream).

    A baton is what the next request of the same stream must send; null means the server ended
    the stream (closed, or it keeps no stream between requests).
    """
    obj = _object(_load_json(body, "pipeline response"), "$")
    baton = _optional(obj, "baton", str, "$")
    return baton, _results(obj)


def _results(obj: dict[str, Any]) -> list[dict[str, Any]]:
    results = obj.get("results")
    if not isinstance(results, list):
        raise ProtocolError("$.results: must be a list")
    return [_object(r, f"$.results[{i}]") for i, r in enumerate(results)]


# --- JSON helpers -------------------------------------------------------------------------------

_INFINITY = re.compile(r'"value":(-?)Infinity')


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; an infinite float is written as ``1e999`` (valid JSON, parses to inf).

    The substitution cannot touch string contents: inside a JSON string every ``"`` is escaped.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
    if "Infinity" in text:
        text = _INFINITY.sub(r'"value":\g<1>1e999', text)
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"JSON constant {name} is not allowed")


def _load_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def _object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected a JSON object")
    return obj


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"{where}.{key}: must be a list")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"{where}.{key}: must be a {kind.__name__} or null")
    return value


def _optional_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not I64_MIN <= value <= I64_MAX:
        raise ProtocolError(f"{where}.{key}: must be an integer or null")
    return value
