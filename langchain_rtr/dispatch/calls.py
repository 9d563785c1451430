"""One routed call: its request, its attempts, and the run that drives its fallback."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from langchain_rtr.dispatch.messages import count_tokens, join_chunks
from langchain_rtr.dispatch.results import (
    AllPairsFailedError,
    FailedAttempt,
    RTRResult,
    Usage,
    is_endpoint_failure,
    usage_of,
)

if TYPE_CHECKING:
    from langchain_rtr.dispatch.engine import DispatchEngine

Pair = tuple[str, str]


class StrategyLike(Protocol):
    """What the engine needs from a strategy (`langchain_rtr.strategies.Strategy`)."""

    name: str

    def render(self, question: str) -> list[BaseMessage]:
        """The prompt for ``question``."""
        ...

    def parse(self, output: str | BaseMessage) -> Any:
        """The answer in the model's output (``.answer``, ``.error``, ``.program_output``)."""
        ...

    async def aparse(self, output: str | BaseMessage) -> Any:
        """Async `parse`."""
        ...

    def model_kwargs(self) -> dict[str, Any]:
        """Extra chat model kwargs (e.g. a thinking toggle)."""
        ...


@dataclass
class CallRequest:
    """One call, ready to route: the question, its context and its validated knobs."""

    question: str
    before: list[BaseMessage] = field(default_factory=list)
    after: list[BaseMessage] = field(default_factory=list)
    policy: Any = None
    allowed: frozenset[Pair] | None = None
    budget: int | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    # Pairs kept out of routing but tried after the plan's own, before the call gives up
    # (the server's cooled-down models: a failure of the others must not fail the call).
    last_resort: frozenset[Pair] = frozenset()

    def routing_key(self) -> tuple[Any, frozenset[Pair] | None]:
        """Requests with equal keys can share one `route_batch` call."""
        try:
            hash(self.policy)
            key: Any = self.policy
        except TypeError:
            key = id(self.policy)
        return (key, self.allowed)


@dataclass
class Attempt:
    """One try of one pair: the chat model, the rendered prompt and the call's kwargs."""

    pair: Pair
    index: int
    model: BaseChatModel
    strategy: StrategyLike
    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    max_tokens: int | None


Streamed = list[tuple[Attempt, list[AIMessageChunk]]]
"""The attempts whose text reached the caller, in order, with their chunks."""

SyncCall = Callable[[Attempt], AIMessage]
AsyncCall = Callable[[Attempt], Awaitable[AIMessage]]
SyncStreamCall = Callable[[Attempt], Iterator[AIMessageChunk]]
AsyncStreamCall = Callable[[Attempt], AsyncIterator[AIMessageChunk]]


def failed_attempt(pair: Pair, exc: BaseException, streamed_tokens: int = 0) -> FailedAttempt:
    """The record of a failed try of ``pair`` (retryable when the endpoint was unavailable)."""
    text = str(exc) or type(exc).__name__
    return FailedAttempt(
        model=pair[0],
        strategy=pair[1],
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        error=text if len(text) <= 500 else text[:497] + "...",
        retryable=is_endpoint_failure(exc),
        streamed_tokens=streamed_tokens,
    )


class Fallback:
    """The fallback rule, in one place: which pair may be tried next, and after what.

    An endpoint failure allows the next pair, except pairs on a model that already failed
    that way, up to ``max_attempts`` tries; any other failure ends the call.
    """

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.failures: list[FailedAttempt] = []

    @property
    def exhausted(self) -> bool:
        """Whether no further try is allowed."""
        return len(self.failures) >= self.max_attempts

    def allows(self, pair: Pair) -> bool:
        """Whether ``pair`` may be tried now."""
        down = {f.model for f in self.failures if f.retryable}
        return not self.exhausted and pair[0] not in down

    def failed(self, pair: Pair, exc: BaseException, streamed_tokens: int = 0) -> FailedAttempt:
        """Record a failed try; its ``retryable`` says whether the call may go on."""
        record = failed_attempt(pair, exc, streamed_tokens)
        self.failures.append(record)
        return record


class CallRun:
    """One call's fallback state, from its decision to its result."""

    def __init__(self, engine: DispatchEngine, req: CallRequest, decision: Any) -> None:
        self.engine = engine
        self.req = req
        self.decision = decision
        self.started = time.perf_counter()
        self.fallback = Fallback(engine.max_attempts)
        self.failures: list[FailedAttempt] = self.fallback.failures
        self.streamed: Streamed = []
        self._plan = iter(engine.plan(req, decision))
        self.last: Attempt | None = None
        self.last_exc: BaseException | None = None
        self.call_id = uuid.uuid4().hex

    def next_attempt(self) -> Attempt | None:
        """The next pair to try: from the plan until text is out, then a continuation."""
        if self.fallback.exhausted:
            return None
        attempt = None
        if self.streamed:
            attempt = self.engine.continuation(
                self.req, self.decision, self.failures, self.streamed
            )
        else:
            for pair in self._plan:
                if self.fallback.allows(pair):
                    attempt = self.engine.attempt(self.req, pair, len(self.failures))
                    break
        if attempt is not None:
            self.last = attempt
            self.last_exc = None  # the failure's record stays; its traceback need not
        return attempt

    def failed(
        self, attempt: Attempt, exc: BaseException, chunks: Sequence[AIMessageChunk] = ()
    ) -> bool:
        """Record a failure; whether the call goes on to another attempt."""
        self.last_exc = exc
        record = self.fallback.failed(attempt.pair, exc, count_tokens(chunks))
        if any(c.tool_call_chunks for c in chunks):
            return False  # a half-streamed tool call cannot be taken back or continued
        if record.streamed_tokens:
            self.streamed.append((attempt, list(chunks)))
        return record.retryable

    def streamed_answer(
        self, attempt: Attempt, chunks: list[AIMessageChunk]
    ) -> tuple[AIMessage, list[tuple[str, Usage]] | None]:
        """The whole streamed answer once ``attempt`` finished it (see `stream_answer`)."""
        self.streamed.append((attempt, chunks))
        return stream_answer(self.streamed)

    def finish(
        self,
        attempt: Attempt | None = None,
        message: AIMessage | None = None,
        parsed: Any = None,
        parts: Sequence[tuple[str, Usage]] | None = None,
    ) -> RTRResult:
        """The call's result: answered by ``attempt``, or failed (no ``message``).

        Where every routed call ends, so the traffic log is fed here (off the call path).
        """
        if message is None:
            attempt = self.last
        result = self.engine.result(
            self.req,
            self.decision,
            self.started,
            self.failures,
            attempt,
            message,
            parsed,
            exception=self.last_exc if message is None else None,
            parts=parts,
        )
        result.call_id = self.call_id
        if self.engine.traffic_log is not None:
            self.engine.traffic_log.submit(result)
        if result.error is not None and self.engine.raise_on_failure:
            raise AllPairsFailedError(result)
        return result


def stream_answer(streamed: Streamed) -> tuple[AIMessage, list[tuple[str, Usage]] | None]:
    """The whole streamed answer, and its usage per model when several models wrote it.

    A cut attempt rarely got its usage report (it comes last), so it is counted from the
    stream: its output is its content chunks, its input the prompt, which is the
    continuation's reported input less the partial answer it was given (exact when both share
    a tokenizer).
    """
    last = join_chunks(streamed[-1][1])
    if len(streamed) == 1:
        return last, None
    text = "".join(c.text for _, chunks in streamed for c in chunks)
    final = usage_of(last)
    if final is None:  # the backend reports no usage: nothing to add up
        return last.model_copy(update={"content": text}), None
    counts = [count_tokens(chunks) for _, chunks in streamed[:-1]]
    prompt = max(0, final.input_tokens - sum(counts))
    parts: list[tuple[str, Usage]] = []
    for i, (attempt, chunks) in enumerate(streamed[:-1]):
        spent_in = prompt + sum(counts[:i])
        counted = Usage(
            input_tokens=spent_in, output_tokens=counts[i], total_tokens=spent_in + counts[i]
        )
        parts.append((attempt.pair[0], usage_of(join_chunks(chunks)) or counted))
    parts.append((streamed[-1][0].pair[0], final))
    total_in = sum(u.input_tokens for _, u in parts)
    total_out = sum(u.output_tokens for _, u in parts)
    usage = {
        "input_tokens": total_in,
        "output_tokens": total_out,
        "total_tokens": total_in + total_out,
    }
    return last.model_copy(update={"content": text, "usage_metadata": usage}), parts
