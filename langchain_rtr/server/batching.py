"""Routing concurrent requests together, one batch at a time, off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_rtr.dispatch import DispatchEngine


class RouteBatcher:
    """Routes concurrent requests together, in one worker thread, one batch at a time.

    Under load, one `route_batch` of everything queued encodes many questions per encoder call
    (batched encoding is faster than one by one; docs/server.md has the measured rates), and one
    routing thread keeps the encoder's own threads from fighting each other. Nothing waits
    for a batch to fill: a request that arrives when the router is idle is routed at once.
    """

    def __init__(self, engine: DispatchEngine, max_batch: int) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.queue: list[tuple[Any, asyncio.Future[Any]]] = []
        self.busy = False
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak one

    async def route(self, req: Any) -> Any:
        """The decision for ``req``, routed in the next batch."""
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
        engine = self.engine
        decisions: list[Any] = engine.route_many(reqs) if len(reqs) > 1 else [None]
        out: list[Any] = []
        for req, decision in zip(reqs, decisions, strict=True):
            if decision is None:  # alone, or its group failed: route it alone for its error
                try:
                    decision = engine.route(req)
                except Exception as exc:
                    decision = exc
            out.append(decision)
        return out
