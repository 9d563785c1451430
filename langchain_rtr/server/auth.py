"""The endpoint's API key: `Authorization: Bearer <key>` (or `api-key: <key>`), FastAPI's way."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBearer

from langchain_rtr.server.errors import OpenAIError

_bearer = HTTPBearer(auto_error=False)
_api_key_header = APIKeyHeader(name="api-key", auto_error=False)

KeyCheck = Callable[[Request], Awaitable[None]]


def api_key_check(api_key: str | None) -> KeyCheck:
    """A FastAPI dependency that refuses a request without ``api_key`` (none: let all in).

    The key is compared in constant time; a refusal is OpenAI's 401 body.
    """

    async def check(request: Request) -> None:
        if api_key is None:
            return
        credentials = await _bearer(request)
        token = credentials.credentials if credentials is not None else None
        token = token or await _api_key_header(request)
        if not token:
            raise OpenAIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise OpenAIError(
                401,
                "incorrect API key",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )

    return check
