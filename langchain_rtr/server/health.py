"""Routing around a backend that just failed, for a while (what gateways call outlier ejection).

Falling back bounds one request's wait on a hung backend by its timeouts, but every request
routed to it still pays them, and under load those waits, and the failed calls' own work,
queue up everything else behind them. So once a model's call fails the way that makes the
engine fall back (an endpoint failure: timeout, connection, 5xx), the server routes the next
requests among the other models for ``cooldown_s``; after that one request may use it again
(a probe: the others keep off it for one more cooldown), and an answer from it clears it.
Meanwhile it stays those requests' last resort: if the others fail, or break off a stream,
it is tried rather than the request failed. The router's own choice is unchanged whenever
every model is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from langchain_rtr.dispatch import CallRequest, DispatchEngine, RTRResult


class BackendHealth:
    """Which models to route around now; fed with every routed call's result."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.down_until: dict[str, float] = {}

    def skipped(self) -> frozenset[str]:
        """The models this request must not use.

        A model whose cooldown is over is left to this request (the probe) and skipped by
        the others for one more cooldown, the probe's time.
        """
        now = self.clock()
        skip = frozenset(m for m, until in self.down_until.items() if now < until)
        for model in self.down_until.keys() - skip:
            self.down_until[model] = now + self.cooldown_s
        return skip

    def observe(self, result: RTRResult) -> None:
        """A routed call ended: models that failed as endpoints cool down, the answerer is up."""
        now = self.clock()
        for failure in result.fallbacks:
            if failure.retryable:
                self.down_until[failure.model] = now + self.cooldown_s
        if result.message is not None and result.model is not None:
            self.down_until.pop(result.model, None)

    def restrict(self, engine: DispatchEngine, req: CallRequest) -> CallRequest:
        """``req`` routed off the skipped models, which stay its last resort.

        Unchanged if no other model is left.
        """
        if self.cooldown_s <= 0:
            return req
        skip = self.skipped()
        if not skip:
            return req
        usable = req.allowed if req.allowed is not None else engine.servable
        kept = frozenset(p for p in usable if p[0] not in skip)
        return replace(req, allowed=kept, last_resort=usable - kept) if kept else req
