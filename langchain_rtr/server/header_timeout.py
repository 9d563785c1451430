"""A bound on reading a request's headers, which uvicorn does not have.

uvicorn times out an idle keep-alive connection and (through the app) a slow body, but a client
that opens a connection and sends its request line and headers a byte at a time, or not at all
(slowloris), holds the connection, and a slot of ``limit_concurrency``, for as long as it likes.
These protocols are uvicorn's own with one timer: armed when a connection is made and when the
first byte of each further request arrives, cancelled once the request's headers are complete,
closing the connection when it fires. The wait between requests stays the keep-alive timeout's.

`header_timeout_protocol` is what `run_server` gives uvicorn as its ``http`` protocol.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Literal, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("langchain_rtr.server")


class HeaderDeadline:
    """Closes a connection whose request headers are not complete within ``seconds``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.seconds = seconds
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, transport: asyncio.Transport) -> None:
        """Start the clock, unless it is already running for this request."""
        if self.handle is None:
            self.handle = self.loop.call_later(self.seconds, self.expire, transport)

    def cancel(self) -> None:
        """The headers are complete (or the connection is gone): stop the clock."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def expire(self, transport: asyncio.Transport) -> None:
        """Time is up: close the connection (uvicorn then drops it as any closed one)."""
        self.handle = None
        if not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log.info("closing %s: request headers not complete in %g s", peer, self.seconds)
            transport.close()


class HeaderTimeout(asyncio.Protocol):
    """The timer's part of both protocols below (first in their bases, before uvicorn's)."""

    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # uvicorn's protocol, next in the bases
        self.header_deadline = HeaderDeadline(self.loop, header_timeout_s)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: its first request's headers are due within the bound."""
        super().connection_made(transport)
        self.header_deadline.arm(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: nothing left to time."""
        self.header_deadline.cancel()
        super().connection_lost(exc)


class H11HeaderTimeout(HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with a header-read timeout (h11 has no headers callback)."""

    def data_received(self, data: bytes) -> None:
        """Bytes after a finished response start a request; a new cycle means its headers."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.header_deadline.arm(self.transport)
        super().data_received(data)
        if self.cycle is not cycle:
            self.header_deadline.cancel()


class HttpToolsHeaderTimeout(HeaderTimeout, HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-read timeout."""

    def on_message_begin(self) -> None:
        """A request's first byte (the first request's clock already runs from the connect)."""
        super().on_message_begin()
        self.header_deadline.arm(self.transport)

    def on_headers_complete(self) -> None:
        """The headers are in: the body has its own bound (`ServerSettings.body_timeout_s`)."""
        self.header_deadline.cancel()
        super().on_headers_complete()


def header_timeout_protocol(
    seconds: float, parser: Literal["httptools", "h11"] = "httptools"
) -> type[asyncio.Protocol]:
    """The ``http`` protocol for uvicorn: its ``parser``'s own, with the header-read bound.

    httptools is a dependency and what uvicorn picks when it is installed. This is a partial
    of a module-level class, not a class made here: uvicorn only calls it (with keywords), and
    pickles it into each ``--workers`` process, which a partial survives.
    """
    base = HttpToolsHeaderTimeout if parser == "httptools" else H11HeaderTimeout
    return cast("type[asyncio.Protocol]", functools.partial(base, header_timeout_s=seconds))
