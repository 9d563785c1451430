"""A fallback loop written once, as a generator of steps, and run by a sync or an async driver.

A loop that calls models yields what it needs done (`Call` a model, `Stream` one, `Parse` an
answer) and is sent the result back, or has the step's exception thrown in at its ``yield``:

    try:
        message = yield Call(attempt)
    except Exception as exc:
        ...  # fall back, or stop

so it reads like a plain loop, while whether the call is made, awaited or streamed is the
driver's (`drive`, `adrive`, `drive_stream`, `adrive_stream`). What the generator returns is
the driver's result; an exception the generator lets out is the driver's exception. This way
the engine and the agent middleware each keep one loop for their sync and async paths, as
LiteLLM keeps its whole fallback loop in one function.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from langchain_core.messages import AIMessage

from langchain_rtr.dispatch.calls import StrategyLike

__all__ = [
    "Call",
    "Parse",
    "Step",
    "Steps",
    "Stream",
    "adrive",
    "adrive_stream",
    "drive",
    "drive_stream",
]

T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C")


class Step(Protocol):
    """Something a loop needs done, which can do itself with the driver's call."""

    def run(self, call: Callable[[Any], Any]) -> Any:
        """Do it now; what comes back is sent to the loop."""
        ...

    async def arun(self, acall: Callable[[Any], Any]) -> Any:
        """Do it on the event loop."""
        ...


Steps = Generator[Step, Any, R]
"""A loop of steps whose return value is ``R``."""


@dataclass
class Call(Generic[T]):
    """Call the driver's function on ``request``; the loop is sent what it returns."""

    request: T
    chunks: list[Any] = field(default_factory=list)
    """What the call streamed before it ended, failed or not (a `Stream` fills it)."""

    def run(self, call: Callable[[T], Any]) -> Any:
        """``call(request)``."""
        return call(self.request)

    async def arun(self, acall: Callable[[T], Awaitable[Any]]) -> Any:
        """``await acall(request)``."""
        return await acall(self.request)


@dataclass
class Stream(Call[T]):
    """A `Call` whose chunks a stream driver yields outward as they come.

    The loop is sent `chunks` once the stream ends; on a failure they stay in `chunks`, so the
    loop knows what reached the caller.
    """


@dataclass(frozen=True)
class Parse:
    """Parse ``message`` with ``strategy`` (its `aparse` under an async driver)."""

    strategy: StrategyLike
    message: AIMessage

    def run(self, call: Callable[[Any], Any]) -> Any:
        """The strategy's parse of the message."""
        return self.strategy.parse(self.message)

    async def arun(self, acall: Callable[[Any], Any]) -> Any:
        """The strategy's async parse of the message."""
        return await self.strategy.aparse(self.message)


@dataclass(frozen=True)
class _Outcome:
    """What one step gave: a value, or the exception to throw into the loop."""

    value: Any = None
    error: Exception | None = None


@dataclass(frozen=True)
class _Done(Generic[R]):
    result: R


def _advance(steps: Steps[R], outcome: _Outcome) -> Step | _Done[R]:
    """Hand the loop the last step's outcome: its next step, or its result once it returns."""
    try:
        if outcome.error is not None:
            return steps.throw(outcome.error)
        return steps.send(outcome.value)
    except StopIteration as stop:
        return _Done(stop.value)


def _settle(run: Callable[[T], Any], call: T) -> _Outcome:
    try:
        return _Outcome(run(call))
    except Exception as exc:  # thrown into the loop, which decides
        return _Outcome(error=exc)


async def _asettle(running: Awaitable[Any]) -> _Outcome:
    try:
        return _Outcome(await running)
    except Exception as exc:  # thrown into the loop, which decides
        return _Outcome(error=exc)


def _relay(step: Stream[Any], call: Callable[[Any], Iterable[C]]) -> Generator[C, None, _Outcome]:
    """Yield the stream's chunks outward, keeping them in ``step.chunks``."""
    try:
        for chunk in call(step.request):
            step.chunks.append(chunk)
            yield chunk
    except Exception as exc:  # thrown into the loop, which decides
        return _Outcome(error=exc)
    return _Outcome(step.chunks)


def drive(steps: Steps[R], call: Callable[[Any], Any]) -> R:
    """Run the loop, calling ``call`` for each `Call` step; its result."""
    step = _advance(steps, _Outcome())
    while not isinstance(step, _Done):
        step = _advance(steps, _settle(step.run, call))
    return step.result


async def adrive(steps: Steps[R], acall: Callable[[Any], Awaitable[Any]]) -> R:
    """Run the loop, awaiting ``acall`` for each `Call` step; its result.

    Each outcome lives only until the loop has it: a failed call's exception, and through its
    traceback every frame of the client that raised it, must not stay alive while the next
    pair is awaited (under a burst of failures that is a copy per request in flight).
    """
    step = _advance(steps, _Outcome())
    while not isinstance(step, _Done):
        step = _advance(steps, await _asettle(step.arun(acall)))
    return step.result


def drive_stream(steps: Steps[R], call: Callable[[Any], Iterable[C]]) -> Iterator[C | R]:
    """Run the loop, yielding each `Stream` step's chunks from ``call``, then its result."""
    step = _advance(steps, _Outcome())
    while not isinstance(step, _Done):
        if isinstance(step, Stream):
            step = _advance(steps, (yield from _relay(step, call)))
        else:
            step = _advance(steps, _settle(step.run, call))
    yield step.result


async def adrive_stream(
    steps: Steps[R], acall: Callable[[Any], AsyncIterable[C]]
) -> AsyncIterator[C | R]:
    """Async `drive_stream`: the chunks come from ``acall``'s async iterator (see `adrive`)."""
    step = _advance(steps, _Outcome())
    while not isinstance(step, _Done):
        if not isinstance(step, Stream):
            step = _advance(steps, await _asettle(step.arun(acall)))
            continue
        try:
            async for chunk in acall(step.request):
                step.chunks.append(chunk)
                yield chunk
        except Exception as exc:  # thrown into the loop, which decides
            outcome = _Outcome(error=exc)
        else:
            outcome = _Outcome(step.chunks)
        step = _advance(steps, outcome)  # outside the except: no implicit exception chaining
        del outcome
    yield step.result
