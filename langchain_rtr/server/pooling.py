"""The server's pooled HTTP client for its routed backends.

A `ChatOpenAI` built from a spec talks HTTP through the `openai` SDK's own client, one per chat
model, parsing HTTP in Python. Under a gateway's load that parsing is a large share of what
the server spends per request (docs/server.md has the profile), so the server gives every
spec-built client one shared client on aiohttp's transport instead: responses parsed in C, one
connection pool (kept alive per backend host) for all of them, bound to the server's event loop
and closed with the app. Without aiohttp (`openai[aiohttp]`) the SDK's default client is kept.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_rtr.dispatch import DispatchEngine
from langchain_rtr.models import ModelRegistry

log = logging.getLogger("langchain_rtr.server")


def pooled_http_client() -> Any | None:
    """An `openai` async HTTP client on aiohttp, or None when aiohttp is not installed."""
    try:
        import aiohttp  # noqa: F401  (the transport's own dependency)
        import openai

        factory = openai.DefaultAioHttpClient
        return factory()
    except (ImportError, AttributeError, RuntimeError) as exc:
        log.info("backend calls use the openai SDK's default HTTP client: %s", exc)
        return None


def pooled_engine(engine: DispatchEngine, http_client: Any | None) -> DispatchEngine:
    """``engine`` with its spec-built clients on ``http_client``; models given in code stay."""
    if http_client is None or not isinstance(engine.models, ModelRegistry):
        return engine
    return engine.with_models(engine.models.with_client_overrides(http_async_client=http_client))
