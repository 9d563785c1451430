"""An OpenAI-compatible HTTP endpoint for RTR: `POST /v1/chat/completions`, `GET /v1/models`.

Any OpenAI client (the `openai` package, `ChatOpenAI`, curl) talks to it unchanged. The request's
`model` decides what happens:

- `rtr` (the route name) routes the last user message with the `RTRRunnable`, optionally with
  knobs in the name (`rtr:lambda=0.7`, `rtr:max_tokens=600,floor=0.6`) or in an `rtr` object in
  the body (`{"rtr": {"lambda": 0.7}}`, the body wins). The answer is the chosen model's full
  message; the decision, the predictions, the parsed answer and the fallbacks come back in an
  extra `rtr` field and in `x-rtr-*` headers. `usage` is the backend's own. A stream whose
  backend breaks off mid-answer is continued on another model by the runnable's engine (one
  stream, `rtr.continued`); one that cannot be continued ends with an error event and `[DONE]`.
- a backend model's name (a models-file entry with a `base_url`, by router name or served name)
  is passed through: the body goes to that server unchanged (only `model` is rewritten to the
  served name) and its answer, streamed or not, comes back unchanged.
- anything else is a 404 `model_not_found`.

Bad input never reaches the router and never makes a 500: every rejection is OpenAI's error body
`{"error": {"message", "type", "param", "code"}}` with a 4xx status (docs/server.md has the
table). The body is read with a size cap and a time limit *before* it is parsed, so a 10 MB body
costs nothing and a client that stops sending cannot hold a connection forever.

Everything runs on the event loop except the router's encoder and MLPs, which run in one worker
thread that routes whatever requests are waiting as one batch (`_RouteBatcher`). Timing headers
split each answer's time into the backend's part (the chat model calls, failed ones included)
and the router's (`x-rtr-overhead-ms`: parsing, routing, prompt rendering, answer parsing):
what the benchmark reports as the time RTR adds.

Why this uses the runnable's engine (`_prepare`, `_route`, `_route_many`, `_aexecute`,
`_aexecute_stream`) and not `ainvoke`: the request's sampling fields (`max_tokens`,
`temperature`, `stop`, ...) must reach the chosen model, the backend's time must be measured per
call, and concurrent requests are routed in batches. `RTRChatModel` uses the same engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from langchain_rtr.errors import ConfigError, UnknownPairError
from langchain_rtr.runnable import AllPairsFailedError, RTRResult, RTRRunnable, routing_row
from langchain_rtr.specs import ModelSpec

if TYPE_CHECKING:
    from langchain_rtr.runnable import _Attempt

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_QUESTION_CHARS",
    "RTR_KNOBS",
    "ChatCompletionRequest",
    "OpenAIError",
    "ServerSettings",
    "build_runnable",
    "create_app",
    "parse_rtr_model",
    "run_server",
]

log = logging.getLogger("langchain_rtr.server")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read (413 above): room for long chat histories, not for abuse."""

DEFAULT_MAX_QUESTION_CHARS = 100_000
"""Longest routed question (400 above): about 25k tokens, past any small model's context."""

KEEP_ALIVE_S = 75
"""Seconds an idle client connection is kept open. Longer than the clients' own idle expiry
(httpx and `openai`: 5 s), so the client always closes first: with uvicorn's default, also 5 s,
a request sent on a connection just as the server closes it is lost (a client `ReadError`)."""

RTR_KNOBS: dict[str, str] = {
    "lambda": "accuracy/cost trade-off in [0, 1] (1: accuracy only)",
    "max_tokens": "per-question output token budget (routes within it and caps the answer)",
    "floor": "accuracy floor in [0, 1]: the cheapest pair predicted to reach it",
    "pairs": "allowed pairs, 'model/strategy' joined by '|' (in the body: a list)",
}
"""The routing knobs a request may set, in the model name or in the body's `rtr` object."""

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# --------------------------------------------------------------------------- errors
class OpenAIError(Exception):
    """An error answered with OpenAI's error body and an HTTP status.

    Attributes:
        status: The HTTP status code.
        message: What went wrong, for the client.
        type: OpenAI's error type (`invalid_request_error`, `authentication_error`, ...).
        param: The request field at fault, if any.
        code: A machine-readable code (`model_not_found`, `request_too_large`, ...).
        extra: More top-level fields of the error body (e.g. `rtr` with the fallbacks).
        headers: Response headers to add.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}` plus any extra fields."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            },
            **self.extra,
        }

    def response(self) -> JSONResponse:
        """The error as a response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


# --------------------------------------------------------------------------- request models
class _Lenient(BaseModel):
    """OpenAI's objects grow new optional fields often: keep them, type-check the known ones."""

    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Lenient):
    """One message of a chat completion request."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Lenient):
    """`stream_options`: only `include_usage` is used."""

    include_usage: bool = False


class RTRKnobsBody(BaseModel):
    """The body's `rtr` object; unknown keys are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    lambda_: float | None = Field(default=None, alias="lambda", ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0)
    floor: float | None = Field(default=None, ge=0.0, le=1.0)
    pairs: list[str] | str | None = None


class ChatCompletionRequest(_Lenient):
    """The fields of OpenAI's chat completion request this server reads; others are kept."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    rtr: RTRKnobsBody | None = None


def _validation_error(exc: ValidationError) -> OpenAIError:
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _TYPE_TAGS)]
    param = ".".join(str(p) for p in loc) or None
    kind = err["type"]
    if kind == "missing":
        return _bad_request(
            f"missing required parameter: {param!r}", param, "missing_required_parameter"
        )
    if kind == "extra_forbidden":
        knobs = ", ".join(RTR_KNOBS)
        return _bad_request(
            f"unknown RTR knob {param!r}; known knobs: {knobs}", param, "unknown_rtr_knob"
        )
    if kind in ("too_short",) and param == "messages":
        return _bad_request("'messages' must contain at least one message", param, "empty_array")
    shown = err.get("input")
    shown_text = repr(shown)
    if len(shown_text) > 80:
        shown_text = shown_text[:77] + "..."
    return _bad_request(
        f"invalid value for {param!r}: {err['msg']} (got {shown_text})", param, "invalid_type"
    )


_TYPE_TAGS = {"str", "list[dict[str,any]]", "list[str]", "function-after", "int", "float", "bool"}


# --------------------------------------------------------------------------- knobs
def parse_rtr_model(model: str, route_name: str = "rtr") -> dict[str, str] | None:
    """Split `rtr:lambda=0.7,max_tokens=600` into its knobs (raw text values).

    Returns:
        None if `model` does not name the router; else the knobs (empty for plain `rtr`).

    Raises:
        OpenAIError: 400 for a malformed or unknown knob (the message names it).
    """
    if model == route_name:
        return {}
    prefix = route_name + ":"
    if not model.startswith(prefix):
        return None
    knobs: dict[str, str] = {}
    for part in model[len(prefix) :].split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in RTR_KNOBS:
            known = ", ".join(RTR_KNOBS)
            raise _bad_request(
                f"unknown RTR knob {key!r} in model {model!r}; known knobs: {known}",
                "model",
                "unknown_rtr_knob",
            )
        if not sep or not value:
            raise _bad_request(
                f"RTR knob {key!r} in model {model!r} needs a value ({key}=...)",
                "model",
                "invalid_rtr_knob",
            )
        if key in knobs:
            raise _bad_request(
                f"RTR knob {key!r} is given twice in {model!r}", "model", "invalid_rtr_knob"
            )
        knobs[key] = value
    return knobs


def _knob_number(key: str, value: str, kind: type[int] | type[float], lo: float, hi: float) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise _bad_request(
            f"RTR knob {key!r}: expected {'an integer' if kind is int else 'a number'}, "
            f"got {value!r}",
            "model",
            "invalid_rtr_knob",
        ) from None
    if not (lo <= number <= hi) or (kind is float and not math.isfinite(number)):
        raise _bad_request(
            f"RTR knob {key!r}: expected a value in [{lo:g}, {hi:g}], got {value!r}",
            "model",
            "invalid_rtr_knob",
        )
    return number


def _configurable(name_knobs: Mapping[str, str], body: RTRKnobsBody | None) -> dict[str, Any]:
    """The runnable's `configurable` keys from the model-name knobs and the body (body wins)."""
    lam: float | None = None
    budget: int | None = None
    floor: float | None = None
    pairs: list[str] | None = None
    if "lambda" in name_knobs:
        lam = _knob_number("lambda", name_knobs["lambda"], float, 0.0, 1.0)
    if "max_tokens" in name_knobs:
        budget = _knob_number("max_tokens", name_knobs["max_tokens"], int, 1, 10**9)
    if "floor" in name_knobs:
        floor = _knob_number("floor", name_knobs["floor"], float, 0.0, 1.0)
    if "pairs" in name_knobs:
        pairs = [p for p in name_knobs["pairs"].split("|") if p]
    if body is not None:
        lam = body.lambda_ if body.lambda_ is not None else lam
        budget = body.max_tokens if body.max_tokens is not None else budget
        floor = body.floor if body.floor is not None else floor
        if body.pairs is not None:
            pairs = (
                [p for p in body.pairs.split("|") if p]
                if isinstance(body.pairs, str)
                else body.pairs
            )
    if lam is not None and floor is not None:
        raise _bad_request(
            "RTR knobs 'lambda' and 'floor' choose different policies; give one of them",
            "model",
            "invalid_rtr_knob",
        )
    out: dict[str, Any] = {}
    if lam is not None:
        out["rtr_lambda"] = float(lam)
    if budget is not None:
        out["rtr_max_tokens"] = int(budget)
    if floor is not None:
        from langchain_rtr.routing import AccuracyFloor

        out["rtr_policy"] = AccuracyFloor(floor=float(floor))
    if pairs is not None:
        if not pairs:
            raise _bad_request("RTR knob 'pairs' names no pair", "model", "invalid_rtr_knob")
        out["rtr_allowed_pairs"] = pairs
    return out


# --------------------------------------------------------------------------- messages
def _text_of(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _bad_request(
                f"messages[{i}].content[{j}]: the rtr model routes text; got a "
                f"{part.get('type')!r} part (call a backend model directly for other content)",
                f"messages.{i}.content.{j}",
                "unsupported_content",
            )
        parts.append(part["text"])
    return "".join(parts)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad_request(
            f"{where}: the text is not valid Unicode (a lone surrogate escape)",
            where.replace("[", ".").replace("]", ""),
            "invalid_encoding",
        ) from None


def _to_messages(messages: list[ChatMessage], max_question_chars: int) -> list[BaseMessage]:
    """LangChain messages for the runnable; the last user message is the routed question."""
    out: list[BaseMessage] = []
    last_user = -1
    for i, m in enumerate(messages):
        text = _text_of(m, i)
        _check_text(text, f"messages[{i}].content")
        if m.role in ("system", "developer"):
            out.append(SystemMessage(content=text))
        elif m.role == "user":
            out.append(HumanMessage(content=text))
            last_user = i
        elif m.role == "assistant":
            out.append(AIMessage(content=text))
        else:
            raise _bad_request(
                f"messages[{i}]: the rtr model routes plain chat; {m.role!r} messages are not "
                "supported (call a backend model directly for tool use)",
                f"messages.{i}.role",
                "unsupported_role",
            )
    if last_user < 0:
        raise _bad_request(
            "'messages' has no user message: the rtr model routes the last user message",
            "messages",
            "missing_user_message",
        )
    question = cast("str", out[last_user].content)
    if not question.strip():
        raise _bad_request(
            f"messages[{last_user}]: the user message to route is empty",
            f"messages.{last_user}.content",
            "empty_question",
        )
    if len(question) > max_question_chars:
        raise _bad_request(
            f"messages[{last_user}]: the question has {len(question):,} characters; this "
            f"server routes questions of at most {max_question_chars:,}",
            f"messages.{last_user}.content",
            "question_too_long",
        )
    return out


def _call_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    """The request's sampling fields that go to the chosen model."""
    kwargs: dict[str, Any] = {}
    cap = req.max_completion_tokens or req.max_tokens
    if cap is not None:
        kwargs["max_tokens"] = cap  # the runnable lowers it to the model's cap and the budget
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    if req.stop:
        kwargs["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return kwargs


def _refuse_unsupported(req: ChatCompletionRequest) -> None:
    if req.n not in (None, 1):
        raise _bad_request(
            "the rtr model answers with one choice; 'n' must be 1", "n", "unsupported_parameter"
        )
    if req.tools or req.functions:
        param = "tools" if req.tools else "functions"
        raise _bad_request(
            "the rtr model routes free-text answers and does not call tools; call a backend "
            "model directly for tool use",
            param,
            "unsupported_parameter",
        )
    fmt = getattr(req, "response_format", None)
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise _bad_request(
            "the rtr model's strategies shape the answer's format; 'response_format' must be text",
            "response_format",
            "unsupported_parameter",
        )


# --------------------------------------------------------------------------- settings/state
class ServerSettings(BaseModel):
    """How the endpoint behaves; every field has a safe default.

    Attributes:
        api_key: Clients must send `Authorization: Bearer <api_key>`; None: no check.
        route_name: The model name that selects RTR (`rtr`, `rtr:<knobs>`).
        max_body_bytes: Largest request body; larger ones get 413 before being read.
        max_question_chars: Longest routed question; longer ones get 400.
        body_timeout_s: Seconds a client may take to send its body (408 after).
        passthrough: Whether requests naming a backend model go to it directly.
        passthrough_timeout_s: Read timeout of pass-through calls.
        stats: Serve `GET /rtr/stats` (request and response counts; guarded by the key).
        max_route_batch: Most questions routed in one `route_batch` call under load.
    """

    model_config = ConfigDict(frozen=True)

    api_key: str | None = None
    route_name: str = Field(default="rtr", min_length=1, pattern=r"^[^:,\s]+$")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    max_question_chars: int = Field(default=DEFAULT_MAX_QUESTION_CHARS, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    passthrough: bool = True
    passthrough_timeout_s: float = Field(default=300.0, gt=0)
    stats: bool = True
    max_route_batch: int = Field(default=64, ge=1)


@dataclass
class _Stats:
    started: float = field(default_factory=time.time)
    requests: int = 0
    in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    routed: int = 0
    passthrough: int = 0
    fallbacks: int = 0
    answered_after_fallback: int = 0
    continued_streams: int = 0
    by_model: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": self.requests,
            "in_flight": self.in_flight,
            "responses": sum(self.statuses.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "routed": self.routed,
            "passthrough": self.passthrough,
            "fallbacks": self.fallbacks,
            "answered_after_fallback": self.answered_after_fallback,
            "continued_streams": self.continued_streams,
            "by_model": dict(self.by_model),
        }


class _CountingMiddleware:
    """Counts requests and response statuses; echoes (or assigns) `x-request-id`.

    Pure ASGI (no `BaseHTTPMiddleware`), so streaming responses pass through untouched.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], stats: _Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                text = value.decode("latin-1")
                rid = text if _REQUEST_ID_RE.match(text) else None
                break
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        started = False

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                stats.statuses[int(message["status"])] += 1
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            stats.in_flight -= 1


# --------------------------------------------------------------------------- routing
class _RouteBatcher:
    """Routes concurrent requests together, in one worker thread, one batch at a time.

    Under load, one `route_batch` of everything queued encodes many questions per encoder call
    (MiniLM: about 144 questions/s batched against about 96 one by one on 2 cores), and one
    routing thread keeps the encoder's own threads from fighting each other. Nothing waits
    for a batch to fill: a request that arrives when the router is idle is routed at once.
    """

    def __init__(self, runnable: RTRRunnable, max_batch: int) -> None:
        self.runnable = runnable
        self.max_batch = max_batch
        self.queue: list[tuple[Any, asyncio.Future[Any]]] = []
        self.busy = False
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak one

    async def route(self, req: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((req, future))
        if not self.busy:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
                reqs = [r for r, _ in batch]
                try:
                    decisions = await asyncio.to_thread(self._route, reqs)
                except Exception as exc:  # a bug: fail this batch, keep serving
                    decisions = [exc] * len(batch)
                for (_, future), decision in zip(batch, decisions, strict=True):
                    if future.done():
                        continue
                    if isinstance(decision, BaseException):
                        future.set_exception(decision)
                    else:
                        future.set_result(decision)
        finally:
            self.busy = False

    def _route(self, reqs: list[Any]) -> list[Any]:
        rtr = self.runnable
        decisions: list[Any] = rtr._route_many(reqs) if len(reqs) > 1 else [None]
        out: list[Any] = []
        for req, decision in zip(reqs, decisions, strict=True):
            if decision is None:  # alone, or its group failed: route it alone for its error
                try:
                    decision = rtr._route(req)
                except Exception as exc:
                    decision = exc
            out.append(decision)
        return out


# --------------------------------------------------------------------------- the app
@dataclass
class _Timing:
    t0: float
    route_s: float = 0.0
    backend_s: float = 0.0
    first_byte_s: float | None = None

    def overhead_ms(self, now: float) -> float:
        return max(0.0, (now - self.t0 - self.backend_s) * 1000.0)


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def _openai_usage(result: RTRResult) -> dict[str, int] | None:
    if result.usage is None:
        return None
    return {
        "prompt_tokens": result.usage.input_tokens,
        "completion_tokens": result.usage.output_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def _rtr_field(result: RTRResult, timing: _Timing, now: float) -> dict[str, Any]:
    row = result.routing
    served = None
    if result.message is not None:
        served = result.message.response_metadata.get("model_name")
    return {
        "model": result.model,
        "strategy": result.strategy,
        "served_model": served,
        "routed_model": row.model,
        "routed_strategy": row.strategy,
        "predicted_correctness": _round(row.predicted_correctness),
        "predicted_tokens": _round(row.predicted_tokens, 1),
        "predicted_cost": _round(row.predicted_cost, 9),
        "predicted_usd": _round(row.predicted_usd, 9),
        "cost_unit": row.cost_unit,
        "policy": row.policy,
        "status": row.status,
        "answer": result.answer,
        "parse_error": result.parse_error,
        "max_tokens": result.max_tokens,
        "cost_usd": _round(result.cost, 9),
        "fallbacks": [f.model_dump() for f in result.fallbacks],
        "continued": result.continued,
        "timing_ms": {
            "route": round(timing.route_s * 1000.0, 3),
            "backend": round(timing.backend_s * 1000.0, 3),
            "overhead": round(timing.overhead_ms(now), 3),
            "total": round((now - timing.t0) * 1000.0, 3),
        },
    }


def _decision_headers(
    model: str | None,
    strategy: str | None,
    row: Any,
    n_fallbacks: int,
    timing: _Timing,
) -> dict[str, str]:
    headers = {
        "x-rtr-model": model or "",
        "x-rtr-strategy": strategy or "",
        "x-rtr-fallbacks": str(n_fallbacks),
        "x-rtr-route-ms": f"{timing.route_s * 1000.0:.3f}",
    }
    for key, value in (
        ("predicted-correctness", row.predicted_correctness),
        ("predicted-tokens", row.predicted_tokens),
        ("predicted-cost", row.predicted_cost),
    ):
        if value is not None and math.isfinite(value):
            headers[f"x-rtr-{key}"] = f"{value:.6g}"
    return headers


def _failure_error(result: RTRResult, timing: _Timing) -> OpenAIError:
    """No pair answered: the backend's own 4xx if it refused the request, else 502."""
    now = time.perf_counter()
    extra = {"rtr": _rtr_field(result, timing, now)}
    exc = result.exception
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return OpenAIError(
            status,
            f"the chosen backend refused the request: {result.error}",
            code="backend_rejected",
            extra=extra,
        )
    return OpenAIError(
        502,
        result.error or "no backend answered",
        type="api_error",
        code="backend_unavailable",
        extra=extra,
    )


def build_runnable(
    router_dir: str | os.PathLike[str],
    models_file: str | os.PathLike[str] | None = None,
    **runnable_kwargs: Any,
) -> tuple[RTRRunnable, dict[str, ModelSpec]]:
    """Load a saved router and the models file into a runnable and the pass-through backends.

    Args:
        router_dir: A directory written by `RTRRouter.save`.
        models_file: The models file whose endpoints (base_url, served_name, api_key) replace
            the saved specs; its models the router was not trained on are served as
            pass-through backends only.
        **runnable_kwargs: `RTRRunnable` options (`max_attempts`, `policy`, ...).

    Returns:
        The runnable and every model with an endpoint, by name (the pass-through backends).
    """
    from langchain_rtr.routing import RTRRouter

    specs: dict[str, ModelSpec] = {}
    if models_file is not None:
        from langchain_rtr.config import load_models_file

        specs = load_models_file(models_file).specs
    try:
        saved = json.loads((Path(router_dir) / "router.json").read_text(encoding="utf-8"))
        known = {str(p[0]) for p in saved.get("pairs", [])}
    except (OSError, ValueError, TypeError, IndexError):
        known = set(specs)  # RTRRouter.load says what is wrong with the directory
    router = RTRRouter.load(Path(router_dir), models={n: s for n, s in specs.items() if n in known})
    runnable = RTRRunnable(router=router, **runnable_kwargs)
    backends = {n: s for n, s in {**router.models, **specs}.items() if s.base_url}
    return runnable, backends


def create_app(
    runnable: RTRRunnable,
    *,
    backends: Mapping[str, ModelSpec] | None = None,
    settings: ServerSettings | None = None,
    http_client: httpx.AsyncClient | None = None,
    **setting_overrides: Any,
) -> FastAPI:
    """The ASGI app: `POST /v1/chat/completions`, `GET /v1/models[/{id}]`, `GET /health`.

    Args:
        runnable: Routes, calls and parses (its models' clients are used for routed answers).
        backends: Models callable by name (pass-through), by router name; default: the specs of
            `runnable.router.models` that have a `base_url`.
        settings: Limits, API key, route name (see `ServerSettings`).
        http_client: The client for pass-through calls (tests give one with a mock transport);
            default: one made and closed with the app.
        **setting_overrides: Fields of `ServerSettings` (e.g. `api_key="..."`).

    Returns:
        A FastAPI app; serve it with uvicorn (or `run_server`).
    """
    cfg = (settings or ServerSettings()).model_copy(update=setting_overrides)
    cfg = ServerSettings.model_validate(cfg.model_dump())
    if backends is None:
        backends = {n: s for n, s in getattr(runnable.router, "models", {}).items() if s.base_url}
    by_name: dict[str, ModelSpec] = {}
    for name, spec in backends.items():
        by_name[name] = spec
    for spec in list(by_name.values()):
        if spec.served_name and spec.served_name not in by_name:
            by_name[spec.served_name] = spec
    if cfg.route_name in by_name:
        raise ConfigError(f"route name {cfg.route_name!r} is also a backend model's name")
    stats = _Stats()
    batcher = _RouteBatcher(runnable, cfg.max_route_batch)
    created = int(time.time())
    own_client = http_client is None
    client = http_client or httpx.AsyncClient(
        timeout=httpx.Timeout(cfg.passthrough_timeout_s, connect=10.0, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if own_client:
                await client.aclose()

    app = FastAPI(
        title="langchain-rtr",
        description="OpenAI-compatible Route-To-Reason endpoint (docs/server.md).",
        lifespan=lifespan,
    )
    app.state.stats = stats
    app.state.settings = cfg
    app.add_middleware(_CountingMiddleware, stats=stats)

    # ---------------------------------------------------------------- error handlers
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return OpenAIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _bad_request(str(exc.errors()[:1]), None, "invalid_request").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return OpenAIError(
            500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error"
        ).response()

    # ---------------------------------------------------------------- helpers
    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = request.headers.get("api-key", "")
        if not token:
            raise OpenAIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        if not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise OpenAIError(
                401,
                "incorrect API key",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        too_large = OpenAIError(
            413,
            f"request body is larger than this server's limit of {limit:,} bytes",
            code="request_too_large",
            headers={"connection": "close"},
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise too_large
            except ValueError:
                raise _bad_request(
                    "invalid Content-Length header", None, "invalid_request"
                ) from None
        chunks: list[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), timeout=cfg.body_timeout_s)
        except TimeoutError:
            raise OpenAIError(
                408,
                f"the request body did not arrive within {cfg.body_timeout_s:g} s",
                code="request_timeout",
                headers={"connection": "close"},
            ) from None
        return b"".join(chunks)

    def parse_body(raw: bytes) -> tuple[dict[str, Any], ChatCompletionRequest]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_request(
                f"the request body is not valid UTF-8 (byte {exc.start})", None, "invalid_encoding"
            ) from None
        if not text.strip():
            raise _bad_request(
                "the request body is empty; expected a JSON object", None, "invalid_json"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad_request(
                f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}",
                None,
                "invalid_json",
            ) from None
        except RecursionError:
            raise _bad_request(
                "the request body is nested too deeply", None, "invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise _bad_request(
                f"the request body must be a JSON object, got {type(data).__name__}",
                None,
                "invalid_type",
            )
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        return data, req

    # ---------------------------------------------------------------- routes
    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def model_card(name: str, owner: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": owner}

    def model_list() -> list[dict[str, Any]]:
        cards = [model_card(cfg.route_name, "langchain-rtr")]
        if cfg.passthrough:
            cards += [model_card(n, "backend") for n in sorted(backends or {})]
        return cards

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": model_list()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        check_key(request)
        for card in model_list():
            if card["id"] == model_id:
                return card
        raise OpenAIError(
            404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
        )

    if cfg.stats:

        @app.get("/rtr/stats", include_in_schema=False)
        async def get_stats(request: Request) -> dict[str, Any]:
            check_key(request)
            return stats.to_dict()

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ChatCompletionRequest.model_json_schema()}
                },
            }
        },
    )
    async def chat_completions(request: Request) -> Response:
        timing = _Timing(time.perf_counter())
        check_key(request)
        raw = await read_body(request)
        data, req = parse_body(raw)
        rid = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        knobs = parse_rtr_model(req.model, cfg.route_name)
        if knobs is None:
            spec = by_name.get(req.model) if cfg.passthrough else None
            if spec is None:
                raise OpenAIError(
                    404,
                    f"the model {req.model!r} does not exist; use {cfg.route_name!r} (routed) "
                    f"or one of {sorted(backends or {}) if cfg.passthrough else []}",
                    param="model",
                    code="model_not_found",
                )
            stats.passthrough += 1
            return await passthrough(spec, raw, data, bool(req.stream))
        stats.routed += 1
        return await routed(req, knobs, timing, rid)

    # ---------------------------------------------------------------- pass-through
    async def passthrough(
        spec: ModelSpec, raw: bytes, data: dict[str, Any], stream: bool
    ) -> Response:
        assert spec.base_url is not None
        served = spec.served_name or spec.name
        content = raw
        if data.get("model") != served:
            content = json.dumps({**data, "model": served}, ensure_ascii=False).encode()
        headers = {"content-type": "application/json"}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        url = spec.base_url.rstrip("/") + "/chat/completions"
        rtr_headers = {"x-rtr-model": spec.name, "x-rtr-strategy": "passthrough"}
        try:
            upstream = await client.send(
                client.build_request("POST", url, content=content, headers=headers),
                stream=True,
            )
        except httpx.TimeoutException as exc:
            raise OpenAIError(
                504,
                f"backend {spec.name!r} timed out: {exc!r}",
                type="api_error",
                code="backend_timeout",
                headers=rtr_headers,
            ) from None
        except httpx.HTTPError as exc:
            raise OpenAIError(
                502,
                f"backend {spec.name!r} is unreachable: {exc!r}",
                type="api_error",
                code="backend_unavailable",
                headers=rtr_headers,
            ) from None
        status = upstream.status_code if upstream.status_code < 500 else 502
        media = upstream.headers.get("content-type", "application/json")
        if stream and upstream.status_code == 200:
            return StreamingResponse(
                _relay(upstream),
                status_code=status,
                media_type=media,
                headers=rtr_headers,
                background=BackgroundTask(upstream.aclose),
            )
        try:
            body = await upstream.aread()
        except httpx.HTTPError as exc:
            raise OpenAIError(
                502,
                f"backend {spec.name!r} broke off its answer: {exc!r}",
                type="api_error",
                code="backend_unavailable",
                headers=rtr_headers,
            ) from None
        finally:
            await upstream.aclose()
        return Response(body, status_code=status, media_type=media, headers=rtr_headers)

    # ---------------------------------------------------------------- routed
    async def routed(
        req: ChatCompletionRequest, knobs: dict[str, str], timing: _Timing, rid: str
    ) -> Response:
        _refuse_unsupported(req)
        configurable = _configurable(knobs, req.rtr)
        messages = _to_messages(req.messages, cfg.max_question_chars)
        try:
            lreq = runnable._prepare(messages, configurable)
        except (ConfigError, UnknownPairError, ValueError, TypeError) as exc:
            raise _bad_request(str(exc), "model", "invalid_rtr_knob") from None
        lreq.call_kwargs = _call_kwargs(req)
        config: dict[str, Any] = {"metadata": {"rtr_request_id": rid}}
        t = time.perf_counter()
        try:
            decision = await batcher.route(lreq)
        except (ConfigError, UnknownPairError, ValueError, TypeError) as exc:
            raise _bad_request(
                f"cannot route this request: {exc}", "model", "routing_error"
            ) from None
        timing.route_s = time.perf_counter() - t
        completion_id = f"chatcmpl-{rid}" if len(rid) <= 64 else f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await routed_stream(lreq, decision, timing, completion_id, include_usage, config)
        current: list[_Attempt] = []

        async def call(attempt: _Attempt) -> AIMessage:
            current.append(attempt)
            t_call = time.perf_counter()
            try:
                return await attempt.model.ainvoke(
                    attempt.messages, _attempt_config(config, attempt), **attempt.kwargs
                )
            finally:
                timing.backend_s += time.perf_counter() - t_call

        try:
            result = await runnable._aexecute(lreq, decision, call)
        except AllPairsFailedError as exc:
            result = exc.result
        record(result)
        if result.message is None:
            raise _failure_error(result, timing)
        now = time.perf_counter()
        rtr = _rtr_field(result, timing, now)
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.message.text},
                    "logprobs": None,
                    "finish_reason": _finish_reason(result.message),
                }
            ],
            "usage": _openai_usage(result),
            "rtr": rtr,
        }
        headers = _decision_headers(
            result.model, result.strategy, result.routing, len(result.fallbacks), timing
        )
        headers["x-rtr-backend-ms"] = f"{timing.backend_s * 1000.0:.3f}"
        headers["x-rtr-overhead-ms"] = f"{rtr['timing_ms']['overhead']:.3f}"
        return JSONResponse(body, headers=headers)

    def record(result: RTRResult) -> None:
        stats.fallbacks += len(result.fallbacks)
        if result.message is not None:
            stats.by_model[f"{result.model}/{result.strategy}"] += 1
            if result.fallbacks:
                stats.answered_after_fallback += 1
            if result.continued:
                stats.continued_streams += 1

    async def routed_stream(
        lreq: Any,
        decision: Any,
        timing: _Timing,
        completion_id: str,
        include_usage: bool,
        config: dict[str, Any],
    ) -> Response:
        current: list[_Attempt] = []

        async def call(attempt: _Attempt) -> AsyncIterator[AIMessageChunk]:
            current.append(attempt)
            t_call = time.perf_counter()
            try:
                async for chunk in attempt.model.astream(
                    attempt.messages, _attempt_config(config, attempt), **attempt.kwargs
                ):
                    timing.backend_s += time.perf_counter() - t_call
                    yield chunk
                    t_call = time.perf_counter()
            finally:
                timing.backend_s += time.perf_counter() - t_call

        engine = cast(
            "AsyncGenerator[AIMessageChunk | RTRResult, None]",
            runnable._aexecute_stream(lreq, decision, call),
        )

        async def next_item() -> AIMessageChunk | RTRResult:
            try:
                return await engine.__anext__()
            except AllPairsFailedError as exc:
                return exc.result

        # Pull the first item before answering: a request every backend refuses gets a
        # proper status code, not a 200 stream that ends in an error.
        first = await next_item()
        if isinstance(first, RTRResult) and first.message is None:
            await engine.aclose()
            record(first)
            raise _failure_error(first, timing)
        attempt = current[-1] if current else None
        model = attempt.pair[0] if attempt else None
        strategy = attempt.pair[1] if attempt else None
        row = routing_row(decision)
        headers = _decision_headers(model, strategy, row, len(current) - 1, timing)
        created_at = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created_at,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            body.update(extra)
            return json.dumps(body, ensure_ascii=False)

        def error_events(err: OpenAIError) -> list[ServerSentEvent]:
            """OpenAI's way to end a stream that failed after its headers: error, [DONE]."""
            body = json.dumps(err.body(), ensure_ascii=False)
            return [ServerSentEvent(body), ServerSentEvent("[DONE]")]

        async def events() -> AsyncIterator[ServerSentEvent]:
            # The engine continues a broken-off answer on another model (RTRRunnable's
            # docstring), so the deltas below may come from two backends, as one answer.
            item: AIMessageChunk | RTRResult = first
            try:
                yield ServerSentEvent(chunk({"role": "assistant", "content": ""}))
                while not isinstance(item, RTRResult):
                    text = item.text
                    if text:
                        yield ServerSentEvent(chunk({"content": text}))
                    item = await next_item()
                result = item
                record(result)
                if result.message is None:  # no model could finish it: what was sent stays
                    for event in error_events(_failure_error(result, timing)):
                        yield event
                    return
                rtr = _rtr_field(result, timing, time.perf_counter())
                yield ServerSentEvent(chunk({}, _finish_reason(result.message), rtr=rtr))
                if include_usage:
                    usage_chunk = json.loads(chunk({}))
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _openai_usage(result)
                    usage_chunk["rtr"] = rtr
                    yield ServerSentEvent(json.dumps(usage_chunk, ensure_ascii=False))
                yield ServerSentEvent("[DONE]")
            except Exception as exc:  # a bug, not a backend: still end the stream cleanly
                log.exception("routed stream %s failed", completion_id)
                err = OpenAIError(
                    500,
                    f"internal error: {type(exc).__name__}",
                    type="server_error",
                    code="internal_error",
                )
                for event in error_events(err):
                    yield event
            finally:
                await engine.aclose()

        return EventSourceResponse(events(), headers=headers, sep="\n", ping=15)

    return app


def _attempt_config(config: Mapping[str, Any], attempt: _Attempt) -> Any:
    return {
        **config,
        "metadata": {
            **(config.get("metadata") or {}),
            "rtr_model": attempt.pair[0],
            "rtr_strategy": attempt.pair[1],
            "rtr_attempt": attempt.index,
        },
    }


def _finish_reason(message: AIMessage) -> str:
    reason = message.response_metadata.get("finish_reason")
    return reason if isinstance(reason, str) and reason else "stop"


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for data in upstream.aiter_bytes():
            yield data
    except httpx.HTTPError as exc:  # the backend died mid-stream: end it OpenAI's way
        err = OpenAIError(
            502,
            f"backend broke off its answer: {exc!r}",
            type="api_error",
            code="backend_unavailable",
        )
        yield f"data: {json.dumps(err.body())}\n\n".encode()


def run_server(
    router_dir_or_runnable: str | os.PathLike[str] | RTRRunnable,
    models_file: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    log_level: str = "info",
    limit_concurrency: int | None = None,
    settings: ServerSettings | None = None,
    **setting_overrides: Any,
) -> None:
    """Serve the endpoint with uvicorn until Ctrl-C (the body of `rtr serve-router`).

    Args:
        router_dir_or_runnable: A saved router directory, or a ready `RTRRunnable`.
        models_file: The models file with the endpoints (needed with a router directory
            unless the saved specs already carry base URLs).
        host: Address to bind; keep 127.0.0.1 unless an `api_key` guards it.
        port: Port to bind.
        api_key: Required bearer token; None: open.
        log_level: uvicorn's log level.
        limit_concurrency: uvicorn's cap on open connections (503 beyond it); None: no cap.
        settings: Full `ServerSettings` (`api_key` and overrides win over it).
        **setting_overrides: Other `ServerSettings` fields.
    """
    import uvicorn

    if isinstance(router_dir_or_runnable, RTRRunnable):
        runnable = router_dir_or_runnable
        backends = None
        if models_file is not None:
            from langchain_rtr.config import load_models_file

            backends = {n: s for n, s in load_models_file(models_file).specs.items() if s.base_url}
    else:
        runnable, backends = build_runnable(Path(router_dir_or_runnable), models_file)
    overrides = dict(setting_overrides)
    if api_key is not None:
        overrides["api_key"] = api_key
    app = create_app(runnable, backends=backends, settings=settings, **overrides)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=10,
    )
