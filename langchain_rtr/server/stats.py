"""Request counts for `GET /rtr/stats`, and the middleware that keeps them."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass
class Stats:
    """Counts since the app started (`GET /rtr/stats`)."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    routed: int = 0
    passthrough: int = 0
    fallbacks: int = 0
    answered_after_fallback: int = 0
    continued_streams: int = 0
    faults: int = 0
    """Requests answered 500 by the catch-all handler (a bug: each is logged with its id)."""
    by_model: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "worker": os.getpid(),  # with --workers N, each process counts its own requests
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
            "faults": self.faults,
            "by_model": dict(self.by_model),
        }


class CountingMiddleware:
    """Counts requests and response statuses; echoes (or assigns) `x-request-id`.

    Pure ASGI (no `BaseHTTPMiddleware`), so streaming responses pass through untouched.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """Count the request, tag it with its id, and pass it on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                text = value.decode("latin-1")
                rid = text if REQUEST_ID_RE.match(text) else None
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
