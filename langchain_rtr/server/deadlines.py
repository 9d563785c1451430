"""A total deadline on one backend call, which its HTTP client does not have.

httpx and aiohttp bound each wait for the next bytes (the backends' first-byte timeout), not a
call as a whole: a backend that sends one byte every few seconds (an SSE comment, a space)
and never finishes holds the call forever. These bound the whole call instead; what they
raise is a `TimeoutError`, which the dispatch engine counts as an endpoint failure, so a
routed call falls back (`ServerSettings.backend_deadline_s`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from langchain_rtr.errors import RTRError

T = TypeVar("T")


class BackendDeadlineError(RTRError, TimeoutError):
    """A backend call ran past its total deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not finish within its {seconds:g} s deadline")


async def within_deadline(call: Awaitable[T], seconds: float, what: str) -> T:
    """``call``'s result, or `BackendDeadlineError` once ``seconds`` have passed."""
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await call
    except TimeoutError:
        if not scope.expired():  # the call's own timeout, not this deadline
            raise
        raise BackendDeadlineError(what, seconds) from None


async def stream_within_deadline(
    stream: AsyncIterator[T], seconds: float, what: str
) -> AsyncIterator[T]:
    """``stream``'s items until ``seconds`` after the first was asked for; then the error.

    The deadline is applied to each wait for the next item (with what is left of it), never
    across a ``yield``: the consumer's own time between items counts, but a timeout never
    fires in the consumer's code.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    iterator = aiter(stream)
    try:
        while True:
            scope = asyncio.timeout_at(deadline)
            try:
                async with scope:
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not scope.expired():
                    raise
                raise BackendDeadlineError(what, seconds) from None
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
