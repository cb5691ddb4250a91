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
from collections.abc import Sequence
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
        return _integer(obj.get("value"), f"{where}.value")
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


def _integer(raw: Any, where: str) -> int:
    """A 64-bit integer sent as a decimal string (or, leniently, a JSON number)."""
    if isinstance(raw, str) and _INT_RE.fullmatch(raw):
        number = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        number = raw  # lenient: a JSON number is accepted too
    else:
        raise ProtocolError(f"{where}: an integer value must be a decimal string, got {raw!r:.40}")
    if not I64_MIN <= number <= I64_MAX:
        raise ProtocolError(f"{where}: integer {raw} does not fit in 64 bits")
    return number


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
        """The ``Stmt`` object, with only the fields that differ from Hrana's defaults (fewer bytes)."""
        out: dict[str, Any] = {}
        if self.sql is not None:
            out["sql"] = self.sql
        if self.sql_id is not None:
            out["sql_id"] = self.sql_id
        if self.args:
            out["args"] = [encode_value(v) for v in self.args]
        if self.named_args:
            out["named_args"] = [{"name": n, "value": encode_value(v)} for n, v in self.named_args]
        if not self.want_rows:
            out["want_rows"] = False
        return out


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

    @classmethod
    def from_json(cls, obj: Any, where: str) -> BatchStep:
        """Decode one step of a batch (which steps its condition may name is the batch's check)."""
        obj = _object(obj, where)
        cond_obj = obj.get("condition")
        cond = None if cond_obj is None else decode_cond(cond_obj, f"{where}.condition")
        return cls(Stmt.from_json(obj.get("stmt"), f"{where}.stmt"), cond)

    def to_json(self) -> dict[str, Any]:
        """The step's object: the statement, and the condition only if there is one."""
        out: dict[str, Any] = {"stmt": self.stmt.to_json()}
        if self.condition is not None:
            out["condition"] = encode_cond(self.condition)
        return out


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
        return {"type": self.type, "batch": {"steps": [s.to_json() for s in self.steps]}}


@dataclass(frozen=True)
class SequenceRequest:
    """Run several statements separated by semicolons, discarding their results."""

    type: ClassVar[str] = "sequence"
    sql: str | None = None
    sql_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _sql_or_id({"type": self.type}, self.sql, self.sql_id)


@dataclass(frozen=True)
class DescribeRequest:
    """Describe a statement (parameters, columns) without running it."""

    type: ClassVar[str] = "describe"
    sql: str | None = None
    sql_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _sql_or_id({"type": self.type}, self.sql, self.sql_id)


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
            step = BatchStep.from_json(raw, here)
            if step.condition is not None and any(s >= i for s in cond_steps(step.condition)):
                raise ProtocolError(f"{here}.condition: may only refer to earlier steps (0..{i - 1})")
            steps.append(step)
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

    def to_json(self) -> dict[str, Any]:
        """The column's object."""
        return {"name": self.name, "decltype": self.decltype}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Col:
        """Decode a column object."""
        obj = _object(obj, where)
        return cls(_optional(obj, "name", str, where), _optional(obj, "decltype", str, where))


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
            "cols": [c.to_json() for c in self.cols],
            "rows": [[encode_value(v) for v in row] for row in self.rows],
            "affected_row_count": self.affected_row_count,
            "last_insert_rowid": None if self.last_insert_rowid is None else str(self.last_insert_rowid),
            "replication_index": None,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> StmtResult:
        """Decode a ``StmtResult`` (the client side); missing lists and counts take Hrana's defaults."""
        obj = _object(obj, where)
        cols = [Col.from_json(c, f"{where}.cols[{i}]") for i, c in enumerate(_list(obj, "cols", where))]
        rows = []
        for i, row in enumerate(_list(obj, "rows", where)):
            if not isinstance(row, list):
                raise ProtocolError(f"{where}.rows[{i}]: a row must be a list")
            rows.append([decode_value(v, f"{where}.rows[{i}][{j}]") for j, v in enumerate(row)])
        count = _optional_int(obj, "affected_row_count", where)
        rowid = obj.get("last_insert_rowid")
        return cls(cols, rows, count or 0, None if rowid is None else _integer(rowid, f"{where}.last_insert_rowid"))


@dataclass
class HranaError:
    """An error in place of a result: a message for people and a code for programs."""

    message: str
    code: str

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> HranaError:
        """Decode an error object; a server that sends no code gets ``""``."""
        obj = _object(obj, where)
        message = obj.get("message")
        if not isinstance(message, str):
            raise ProtocolError(f"{where}.message: an error needs a message string")
        return cls(message, _optional(obj, "code", str, where) or "")


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

    @classmethod
    def from_json(cls, obj: Any, where: str) -> BatchResult:
        """Decode a batch result: both lists present, one entry per step in each."""
        obj = _object(obj, where)
        results, errors = obj.get("step_results"), obj.get("step_errors")
        if not isinstance(results, list) or not isinstance(errors, list):
            raise ProtocolError(f"{where}: step_results and step_errors must be lists")
        if len(results) != len(errors):
            raise ProtocolError(f"{where}: {len(results)} step results but {len(errors)} step errors")
        return cls(
            [
                None if r is None else StmtResult.from_json(r, f"{where}.step_results[{i}]")
                for i, r in enumerate(results)
            ],
            [None if e is None else HranaError.from_json(e, f"{where}.step_errors[{i}]") for i, e in enumerate(errors)],
        )


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
            "cols": [c.to_json() for c in self.cols],
            "is_explain": self.is_explain,
            "is_readonly": self.is_readonly,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> DescribeResult:
        """Decode a describe result."""
        obj = _object(obj, where)
        params = [
            _optional(_object(p, f"{where}.params[{i}]"), "name", str, f"{where}.params[{i}]")
            for i, p in enumerate(_list(obj, "params", where))
        ]
        cols = [Col.from_json(c, f"{where}.cols[{i}]") for i, c in enumerate(_list(obj, "cols", where))]
        return cls(
            params,
            cols,
            bool(_optional(obj, "is_explain", bool, where)),
            bool(_optional(obj, "is_readonly", bool, where)),
        )


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

    @classmethod
    def from_json(cls, obj: Any, where: str, asked: str | None = None) -> StreamResponse:
        """Decode a response (the client side); a type this codec does not know keeps no fields.

        ``asked`` is the type of the request it answers, when the caller knows it: a response
        without a type is read as that type, and one of another type is a ProtocolError.
        """
        obj = _object(obj, where)
        kind = obj.get("type", asked)
        if not isinstance(kind, str):
            raise ProtocolError(f"{where}.type: a response needs a type string")
        if asked is not None and kind != asked:
            raise ProtocolError(f"{where}.type: a {kind!r:.40} response answers a {asked!r} request")
        here = f"{where}.result"
        if kind == "execute":
            return cls(kind, StmtResult.from_json(obj.get("result"), here))
        if kind == "batch":
            return cls(kind, BatchResult.from_json(obj.get("result"), here))
        if kind == "describe":
            return cls(kind, DescribeResult.from_json(obj.get("result"), here))
        if kind == "get_autocommit":
            autocommit = obj.get("is_autocommit")
            if not isinstance(autocommit, bool):
                raise ProtocolError(f"{where}.is_autocommit: must be a boolean")
            return cls(kind, is_autocommit=autocommit)
        return cls(kind)


StreamResult: TypeAlias = StreamResponse | HranaError


def decode_stream_result(obj: Any, where: str, asked: str | None = None) -> StreamResult:
    """Decode one entry of ``results``: a response, or the error that took its place (``asked``:
    the type of the request it answers, if known; see ``StreamResponse.from_json``)."""
    obj = _object(obj, where)
    kind = obj.get("type")
    if kind == "ok":
        return StreamResponse.from_json(obj.get("response"), f"{where}.response", asked)
    if kind == "error":
        return HranaError.from_json(obj.get("error"), f"{where}.error")
    raise ProtocolError(f"{where}.type: a result is ok or error, not {kind!r:.40}")


def encode_stream_result(result: StreamResult) -> dict[str, Any]:
    """The JSON object of one entry of ``results``."""
    if isinstance(result, HranaError):
        return {"type": "error", "error": result.to_json()}
    return {"type": "ok", "response": result.to_json()}


@dataclass
class PipelineResponse:
    """The body answering ``POST /v2/pipeline``: one result per request, in order.

    ``baton`` is what the next request of the same stream must send; None means the server
    ended the stream (closed, or it keeps no stream between requests).
    """

    results: list[StreamResult]
    baton: str | None = None

    @classmethod
    def from_bytes(cls, body: bytes, asked: Sequence[str] = ()) -> PipelineResponse:
        """Decode and validate a response body (the client side); raises ProtocolError.

        ``asked``: the types of the requests sent, in order (``BatchRequest.type``, ...), so each
        response is read as the answer to its request.
        """
        obj = _object(_load_json(body, "pipeline response"), "$")
        baton = _optional(obj, "baton", str, "$")
        results = _results(obj)
        kinds = [*asked, *([None] * (len(results) - len(asked)))]
        return cls([decode_stream_result(r, f"$.results[{i}]", kinds[i]) for i, r in enumerate(results)], baton)

    def to_bytes(self) -> bytes:
        """The JSON body."""
        return encode_json(
            {"baton": self.baton, "base_url": None, "results": [encode_stream_result(r) for r in self.results]}
        )


def encode_pipeline_response(results: list[StreamResult], baton: str | None = None) -> bytes:
    """The JSON body answering a pipeline: one result per request, in order."""
    return PipelineResponse(results, baton).to_bytes()


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


def _sql_or_id(out: dict[str, Any], sql: str | None, sql_id: int | None) -> dict[str, Any]:
    """``out`` with whichever of ``sql`` and ``sql_id`` is set (Hrana wants exactly one)."""
    if sql is not None:
        out["sql"] = sql
    if sql_id is not None:
        out["sql_id"] = sql_id
    return out


def _optional_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not I64_MIN <= value <= I64_MAX:
        raise ProtocolError(f"{where}.{key}: must be an integer or null")
    return value
