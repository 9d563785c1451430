"""Pass-through: a request naming a backend model goes to it unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from langchain_rtr.models import WRITE_TIMEOUT_S, backend_bounds
from langchain_rtr.server.errors import OpenAIError
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
    whole_answer_s: float,
) -> Response:
    """Send the body to ``spec``'s server (only `model` rewritten) and relay its answer."""
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
            client.build_request(
                "POST",
                url,
                content=content,
                headers=headers,
                timeout=passthrough_timeout(spec, stream, whole_answer_s),
            ),
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
            relay(upstream),
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


async def relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The backend's bytes; an OpenAI error event if it dies mid-stream."""
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
