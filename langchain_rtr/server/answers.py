"""Routed answers: the engine's result as OpenAI's chat completion, whole or streamed."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import Response
from langchain_core.messages import AIMessage, AIMessageChunk
from sse_starlette import EventSourceResponse, ServerSentEvent

from langchain_rtr.dispatch import (
    AllPairsFailedError,
    Attempt,
    DispatchEngine,
    RTRResult,
    routing_row,
)
from langchain_rtr.dispatch.tools import NoCapablePairError
from langchain_rtr.errors import ConfigError, UnknownPairError
from langchain_rtr.server.batching import RouteBatcher
from langchain_rtr.server.deadlines import stream_within_deadline, within_deadline
from langchain_rtr.server.errors import OpenAIError, bad_request
from langchain_rtr.server.health import BackendHealth
from langchain_rtr.server.jsonio import FastJSONResponse, dumps
from langchain_rtr.server.responses import (
    chunk_body,
    completion_body,
    finish_reason,
    tool_call_deltas,
    usage_body,
)
from langchain_rtr.server.schemas import (
    ChatCompletionRequest,
    ServerSettings,
    call_kwargs,
    refuse_unsupported,
    request_knobs,
    to_messages,
)
from langchain_rtr.server.stats import Stats

log = logging.getLogger("langchain_rtr.server")


@dataclass
class Timing:
    """Where one request's time went: routing, the backends, the rest (overhead)."""

    t0: float
    route_s: float = 0.0
    backend_s: float = 0.0
    first_byte_s: float | None = None

    def overhead_ms(self, now: float) -> float:
        """Milliseconds spent outside the backends so far."""
        return max(0.0, (now - self.t0 - self.backend_s) * 1000.0)


def rounded(x: float | None, nd: int = 6) -> float | None:
    """``x`` rounded, None where it is missing or not finite."""
    return None if x is None or not math.isfinite(x) else round(x, nd)


def rtr_field(result: RTRResult, timing: Timing, now: float) -> dict[str, Any]:
    """The `rtr` field of an answer: decision, predictions, fallbacks, timing."""
    row = result.routing
    served = None
    if result.message is not None:
        served = result.message.response_metadata.get("model_name")
    return {
        "call_id": result.call_id,
        "model": result.model,
        "strategy": result.strategy,
        "served_model": served,
        "routed_model": row.model,
        "routed_strategy": row.strategy,
        "predicted_correctness": rounded(row.predicted_correctness),
        "predicted_tokens": rounded(row.predicted_tokens, 1),
        "predicted_cost": rounded(row.predicted_cost, 9),
        "predicted_usd": rounded(row.predicted_usd, 9),
        "cost_unit": row.cost_unit,
        "policy": row.policy,
        "status": row.status,
        "answer": result.answer,
        "parse_error": result.parse_error,
        "max_tokens": result.max_tokens,
        "cost_usd": rounded(result.cost, 9),
        "fallbacks": [f.model_dump() for f in result.fallbacks],
        "continued": result.continued,
        "timing_ms": {
            "route": round(timing.route_s * 1000.0, 3),
            "backend": round(timing.backend_s * 1000.0, 3),
            "overhead": round(timing.overhead_ms(now), 3),
            "total": round((now - timing.t0) * 1000.0, 3),
        },
    }


def decision_headers(
    model: str | None,
    strategy: str | None,
    row: Any,
    n_fallbacks: int,
    timing: Timing,
) -> dict[str, str]:
    """The `x-rtr-*` headers of an answer."""
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


def failure_error(result: RTRResult, timing: Timing) -> OpenAIError:
    """No pair answered: the backend's own 4xx if it refused the request, else 502."""
    now = time.perf_counter()
    extra = {"rtr": rtr_field(result, timing, now)}
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


def attempt_config(config: Mapping[str, Any], attempt: Attempt) -> Any:
    """The chat model call's config: the request's, with the pair in its metadata."""
    return {
        **config,
        "metadata": {
            **(config.get("metadata") or {}),
            "rtr_model": attempt.pair[0],
            "rtr_strategy": attempt.pair[1],
            "rtr_attempt": attempt.index,
        },
    }


def what(attempt: Attempt) -> str:
    """The attempt's backend, as errors name it."""
    return f"backend {attempt.pair[0]!r} ({attempt.pair[1]})"


class RoutedAnswers:
    """Answers requests for the route name through the runnable's dispatch engine."""

    def __init__(
        self, engine: DispatchEngine, batcher: RouteBatcher, stats: Stats, cfg: ServerSettings
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.stats = stats
        self.cfg = cfg
        self.health = BackendHealth(cfg.backend_cooldown_s)

    async def answer(
        self, req: ChatCompletionRequest, knobs: dict[str, str], timing: Timing, rid: str
    ) -> Response:
        """The routed answer to ``req`` (streamed when it asks)."""
        refuse_unsupported(req)
        knob_set = request_knobs(knobs, req.rtr)
        messages = to_messages(req.messages, self.cfg.max_question_chars)
        try:
            lreq = self.engine.request(
                messages, knob_set, call_kwargs(req), pairs_label="RTR knob 'pairs'"
            )
        except NoCapablePairError as exc:
            param = "tools" if req.tools else "response_format"
            raise bad_request(str(exc), param, "no_capable_pair") from None
        except (ConfigError, UnknownPairError, ValueError, TypeError) as exc:
            raise bad_request(str(exc), "model", "invalid_rtr_knob") from None
        lreq = self.health.restrict(self.engine, lreq)
        config: dict[str, Any] = {"metadata": {"rtr_request_id": rid}}
        t = time.perf_counter()
        try:
            decision = await self.batcher.route(lreq)
        except (ConfigError, UnknownPairError, ValueError, TypeError) as exc:
            raise bad_request(
                f"cannot route this request: {exc}", "model", "routing_error"
            ) from None
        timing.route_s = time.perf_counter() - t
        completion_id = f"chatcmpl-{rid}" if len(rid) <= 64 else f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self.stream(lreq, decision, timing, completion_id, include_usage, config)
        current: list[Attempt] = []

        async def call(attempt: Attempt) -> AIMessage:
            current.append(attempt)
            t_call = time.perf_counter()
            try:
                answer = attempt.model.ainvoke(
                    attempt.messages, attempt_config(config, attempt), **attempt.kwargs
                )
                return await within_deadline(answer, self.cfg.backend_deadline_s, what(attempt))
            finally:
                timing.backend_s += time.perf_counter() - t_call

        try:
            result = await self.engine.aexecute(lreq, decision, call)
        except AllPairsFailedError as exc:
            result = exc.result
        self.record(result)
        if result.message is None:
            raise failure_error(result, timing)
        now = time.perf_counter()
        rtr = rtr_field(result, timing, now)
        body = completion_body(
            completion_id, int(time.time()), result.model, result.message, usage_body(result), rtr
        )
        headers = decision_headers(
            result.model, result.strategy, result.routing, len(result.fallbacks), timing
        )
        headers["x-rtr-backend-ms"] = f"{timing.backend_s * 1000.0:.3f}"
        headers["x-rtr-overhead-ms"] = f"{rtr['timing_ms']['overhead']:.3f}"
        return FastJSONResponse(body, headers=headers)

    def record(self, result: RTRResult) -> None:
        """Count the answer in the stats, and its failed backends in their health."""
        self.health.observe(result)
        if result.message is None:
            tried = "; ".join(f"{f.model}: {f.error_type}: {f.error}" for f in result.fallbacks)
            log.warning("routed call %s: no backend answered (%s)", result.call_id, tried)
        stats = self.stats
        stats.fallbacks += len(result.fallbacks)
        if result.message is not None:
            stats.by_model[f"{result.model}/{result.strategy}"] += 1
            if result.fallbacks:
                stats.answered_after_fallback += 1
            if result.continued:
                stats.continued_streams += 1

    async def stream(
        self,
        lreq: Any,
        decision: Any,
        timing: Timing,
        completion_id: str,
        include_usage: bool,
        config: dict[str, Any],
    ) -> Response:
        """The answer as server-sent events (the first item is pulled before answering)."""
        current: list[Attempt] = []

        async def call(attempt: Attempt) -> AsyncIterator[AIMessageChunk]:
            current.append(attempt)
            t_call = time.perf_counter()
            try:
                chunks = attempt.model.astream(
                    attempt.messages, attempt_config(config, attempt), **attempt.kwargs
                )
                deadline = self.cfg.backend_deadline_s
                async for chunk in stream_within_deadline(chunks, deadline, what(attempt)):
                    timing.backend_s += time.perf_counter() - t_call
                    yield chunk
                    t_call = time.perf_counter()
            finally:
                timing.backend_s += time.perf_counter() - t_call

        engine = cast(
            "AsyncGenerator[AIMessageChunk | RTRResult, None]",
            self.engine.aexecute_stream(lreq, decision, call),
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
            self.record(first)
            raise failure_error(first, timing)
        attempt = current[-1] if current else None
        model = attempt.pair[0] if attempt else None
        strategy = attempt.pair[1] if attempt else None
        row = routing_row(decision)
        headers = decision_headers(model, strategy, row, len(current) - 1, timing)
        created_at = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return dumps(
                chunk_body(
                    completion_id,
                    created_at,
                    model,
                    delta,
                    finish,
                    include_usage=include_usage,
                    **extra,
                )
            )

        def error_events(err: OpenAIError) -> list[ServerSentEvent]:
            """OpenAI's way to end a stream that failed after its headers: error, [DONE]."""
            body = dumps(err.body())
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
                    if item.tool_call_chunks:
                        yield ServerSentEvent(chunk({"tool_calls": tool_call_deltas(item)}))
                    item = await next_item()
                result = item
                self.record(result)
                if result.message is None:  # no model could finish it: what was sent stays
                    for event in error_events(failure_error(result, timing)):
                        yield event
                    return
                rtr = rtr_field(result, timing, time.perf_counter())
                yield ServerSentEvent(chunk({}, finish_reason(result.message), rtr=rtr))
                if include_usage:
                    usage = usage_body(result)
                    yield ServerSentEvent(chunk({}, None, choices=[], usage=usage, rtr=rtr))
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
