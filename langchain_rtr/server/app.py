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

Why this drives the runnable's dispatch engine (`langchain_rtr.dispatch`) and not `ainvoke`:
the request's sampling fields (`max_tokens`, `temperature`, `stop`, ...) must reach the chosen
model, the backend's time must be measured per call, and concurrent requests are routed in
batches. `RTRChatModel` uses the same engine; knobs go through the one knob parser.

Parts: `app` (this app and `run_server`), `schemas` (request models, knobs, messages),
`responses` (the bodies, in the `openai` package's shapes), `errors` (OpenAI's error body),
`auth` (the API key), `passthrough`, `answers` (routed answers, whole and streamed), `batching`
(routing concurrent requests together), `stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from langchain_rtr.errors import ConfigError
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.server.answers import RoutedAnswers, Timing
from langchain_rtr.server.auth import api_key_check
from langchain_rtr.server.batching import RouteBatcher
from langchain_rtr.server.errors import OpenAIError, bad_request, validation_error
from langchain_rtr.server.passthrough import passthrough
from langchain_rtr.server.pooling import pooled_engine, pooled_http_client
from langchain_rtr.server.responses import model_card, model_list
from langchain_rtr.server.schemas import ChatCompletionRequest, ServerSettings, parse_rtr_model
from langchain_rtr.server.stats import CountingMiddleware, Stats
from langchain_rtr.specs import ModelSpec
from langchain_rtr.traffic import TrafficLogError

log = logging.getLogger("langchain_rtr.server")


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
    from langchain_rtr.routing.persistence import trained_models

    specs: dict[str, ModelSpec] = {}
    if models_file is not None:
        from langchain_rtr.config import load_models_file

        specs = load_models_file(models_file).specs
    root = Path(router_dir)
    known = trained_models(root)  # the others are pass-through backends only
    # No on-disk embedding cache: a gateway sees mostly new questions, so the cache would
    # write a row per request and evict as often as it hits (docs/server.md).
    router = RTRRouter.load(
        root, models={n: s for n, s in specs.items() if n in known}, cache_embeddings=False
    )
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
    cfg = ServerSettings.merged(settings, **setting_overrides)
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
    stats = Stats()
    backend_client = pooled_http_client()
    engine = pooled_engine(runnable.engine, backend_client)
    answers = RoutedAnswers(engine, RouteBatcher(engine, cfg.max_route_batch), stats, cfg)
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
            if backend_client is not None:
                await backend_client.aclose()

    app = FastAPI(
        title="langchain-rtr",
        description="OpenAI-compatible Route-To-Reason endpoint (docs/server.md).",
        lifespan=lifespan,
    )
    app.state.stats = stats
    app.state.engine = engine  # the runnable's engine on the pooled client
    app.state.settings = cfg
    app.add_middleware(CountingMiddleware, stats=stats)

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
        return bad_request(str(exc.errors()[:1]), None, "invalid_request").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id")
        log.exception("unexpected error on %s (request %s)", request.url.path, rid)
        stats.faults += 1
        return OpenAIError(
            500,
            f"internal error: {type(exc).__name__} (request {rid})",
            type="server_error",
            code="internal_error",
        ).response()

    # ---------------------------------------------------------------- helpers
    check_key = api_key_check(cfg.api_key)
    guarded = [Depends(check_key)]

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
                raise bad_request(
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

    def parse_json_object(raw: bytes) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request(
                f"the request body is not valid UTF-8 (byte {exc.start})", None, "invalid_encoding"
            ) from None
        if not text.strip():
            raise bad_request(
                "the request body is empty; expected a JSON object", None, "invalid_json"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise bad_request(
                f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}",
                None,
                "invalid_json",
            ) from None
        except RecursionError:
            raise bad_request(
                "the request body is nested too deeply", None, "invalid_json"
            ) from None
        except ValueError as exc:  # a number past what Python converts (e.g. 5,000 digits)
            raise bad_request(
                f"the request body holds a number that cannot be read: {exc}", None, "invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise bad_request(
                f"the request body must be a JSON object, got {type(data).__name__}",
                None,
                "invalid_type",
            )
        return data

    def parse_body(raw: bytes) -> tuple[dict[str, Any], ChatCompletionRequest]:
        data = parse_json_object(raw)
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return data, req

    # ---------------------------------------------------------------- routes
    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def model_cards() -> list[dict[str, Any]]:
        cards = [model_card(cfg.route_name, created, "langchain-rtr")]
        if cfg.passthrough:
            cards += [model_card(n, created, "backend") for n in sorted(backends or {})]
        return cards

    @app.get("/v1/models", dependencies=guarded)
    async def list_models(request: Request) -> dict[str, Any]:
        return model_list(model_cards())

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        for card in model_cards():
            if card["id"] == model_id:
                return card
        raise OpenAIError(
            404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
        )

    if cfg.stats:

        @app.get("/rtr/stats", include_in_schema=False, dependencies=guarded)
        async def get_stats(request: Request) -> dict[str, Any]:
            return stats.to_dict()

    @app.post("/rtr/feedback", dependencies=guarded)
    async def post_feedback(request: Request) -> dict[str, Any]:
        """A score in [0, 1] for a routed call (its `rtr.call_id`), kept in the traffic log."""
        log_ = engine.traffic_log
        if log_ is None:
            raise OpenAIError(
                404,
                "this server keeps no traffic log (start it with --traffic-log)",
                code="no_traffic_log",
            )
        data = parse_json_object(await read_body(request))
        call_id, score = data.get("call_id"), data.get("score")
        try:  # record_feedback checks both and says what is wrong
            queued = log_.record_feedback(cast("str", call_id), cast("float", score))
        except TrafficLogError as exc:
            raise bad_request(str(exc), exc.field) from None
        if not queued:
            raise OpenAIError(503, "the traffic log is full; retry later", code="log_full")
        return {"call_id": call_id, "score": score, "queued": True}

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        dependencies=guarded,
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
        timing = Timing(time.perf_counter())
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
            return await passthrough(client, spec, raw, data, bool(req.stream), cfg)
        stats.routed += 1
        return await answers.answer(req, knobs, timing, rid)

    return app
