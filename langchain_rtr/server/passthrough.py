"""Pass-through: a request naming a backend model goes to it unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from langchain_rtr.models import WRITE_TIMEOUT_S, backend_bounds
from langchain_rtr.server.deadlines import (
    BackendDeadlineError,
    stream_within_deadline,
    within_deadline,
)
from langchain_rtr.server.errors import OpenAIError
from langchain_rtr.server.schemas import ServerSettings
from langchain_rtr.specs import ModelSpec


def passthrough_timeout(spec: ModelSpec, stream: bool, whole_answer_s: float) -> httpx.Timeout:
    """The backend's connect bound always; its first-byte bound between the chunks of a stream.

    A non-streamed answer's first byte comes when the whole answer is done, so its wait is
    bounded by ``whole_answer_s`` (`ServerSettings.passthrough_timeout_s`) instead.
    """
    connect, first_byte = backend_bounds(spec)
    read = first_byte if stream else whole_answer_s
    return httpx.Timeout(read, connect=connect, write=WRITE_TIMEOUT_S, pool=None)


async def passthrough(
    client: httpx.AsyncClient,
    spec: ModelSpec,
    raw: bytes,
    data: dict[str, Any],
    stream: bool,
    cfg: ServerSettings,
) -> Response:
    """Send the body to ``spec``'s server (only `model` rewritten) and relay its answer.

    A non-streamed answer must be complete within ``cfg.passthrough_timeout_s`` (504 after),
    a stream within ``cfg.backend_deadline_s`` (then it ends with an error event), however
    the backend spaces its bytes.
    """
    assert spec.base_url is not None
    served = spec.served_name or spec.name
    content = raw
    if data.get("model") != served:
        content = json.dumps({**data, "model": served}, ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}
    if spec.api_key:
        headers["authorization"] = f"Bearer {spec.api_key}"
    request = client.build_request(
        "POST",
        spec.base_url.rstrip("/") + "/chat/completions",
        content=content,
        headers=headers,
        timeout=passthrough_timeout(spec, stream, cfg.passthrough_timeout_s),
    )
    rtr_headers = {"x-rtr-model": spec.name, "x-rtr-strategy": "passthrough"}
    what = f"backend {spec.name!r}"
    try:
        if not stream:
            answer = relay_whole(client, request, what, rtr_headers)
            return await within_deadline(answer, cfg.passthrough_timeout_s, what)
        upstream = await client.send(request, stream=True)
        if upstream.status_code != 200:
            return await whole_response(upstream, what, rtr_headers)
    except (httpx.TimeoutException, BackendDeadlineError) as exc:
        raise OpenAIError(
            504,
            f"{what} timed out: {exc!r}",
            type="api_error",
            code="backend_timeout",
            headers=rtr_headers,
        ) from None
    except httpx.HTTPError as exc:
        raise unreachable(what, exc, rtr_headers) from None
    return StreamingResponse(
        relay(stream_within_deadline(upstream.aiter_bytes(), cfg.backend_deadline_s, what)),
        media_type=upstream.headers.get("content-type", "application/json"),
        headers=rtr_headers,
        background=BackgroundTask(upstream.aclose),
    )


async def relay_whole(
    client: httpx.AsyncClient, request: httpx.Request, what: str, rtr_headers: dict[str, str]
) -> Response:
    """A non-streamed answer, read whole, with its status (a 5xx becomes 502)."""
    return await whole_response(await client.send(request, stream=True), what, rtr_headers)


async def whole_response(
    upstream: httpx.Response, what: str, rtr_headers: dict[str, str]
) -> Response:
    """The backend's whole answer, read and closed."""
    try:
        body = await upstream.aread()
    except httpx.TimeoutException:
        raise  # the caller's 504
    except httpx.HTTPError as exc:
        raise unreachable(what, exc, rtr_headers, "broke off its answer") from None
    finally:
        await upstream.aclose()
    return Response(
        body,
        status_code=upstream.status_code if upstream.status_code < 500 else 502,
        media_type=upstream.headers.get("content-type", "application/json"),
        headers=rtr_headers,
    )


def unreachable(
    what: str, exc: Exception, rtr_headers: dict[str, str], how: str = "is unreachable"
) -> OpenAIError:
    """The 502 of a backend that cannot be reached, or broke off."""
    return OpenAIError(
        502,
        f"{what} {how}: {exc!r}",
        type="api_error",
        code="backend_unavailable",
        headers=rtr_headers,
    )


async def relay(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The backend's bytes, then an OpenAI error event and ``[DONE]`` if it breaks off.

    Breaking off: dying, stalling past its first-byte timeout, or running past its deadline.
    ``[DONE]`` ends it as a routed stream ends (clients stop there, not at the error).
    """
    try:
        async for data in chunks:
            yield data
    except (httpx.HTTPError, BackendDeadlineError) as exc:  # end it OpenAI's way
        err = OpenAIError(
            502,
            f"backend broke off its answer: {exc!r}",
            type="api_error",
            code="backend_unavailable",
        )
        yield f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n".encode()
