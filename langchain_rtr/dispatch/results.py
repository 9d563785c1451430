"""What a routed call returns: the answer, the routing row, usage, cost and the failed pairs."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict, Field

from langchain_rtr.errors import RTRError

Pair = tuple[str, str]


class RoutingRow(BaseModel):
    """The router's choice for the question and what it predicted (a `Decision`, flattened)."""

    model_config = ConfigDict(frozen=True)

    model: str | None
    strategy: str | None
    predicted_correctness: float | None = None
    predicted_tokens: float | None = None
    predicted_usd: float | None = None
    predicted_cost: float | None = None
    cost_unit: str | None = None
    policy: dict[str, Any] | None = None
    status: str | None = None
    ranking: list[Pair] = Field(default_factory=list)


class Usage(BaseModel):
    """Tokens the answering call used, as the backend reported them."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class FailedAttempt(BaseModel):
    """A pair that was tried and failed before the answer (or before giving up)."""

    model_config = ConfigDict(frozen=True)

    model: str
    strategy: str
    error_type: str
    error: str
    retryable: bool
    streamed_tokens: int = 0
    """Tokens of its answer streamed before it failed (counted as content chunks, one token
    each from vLLM); 0: it failed before answering. Above 0, the answer was handed on to
    another model to continue, where one could."""


class RTRResult(BaseModel):
    """One routed answer.

    `model`/`strategy` are the pair that answered (after any fallback); `routing` is the
    router's first choice and its predictions. `answer` is the strategy's parsed answer (PAL:
    the program's output); `message` the chat model's raw reply.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    question: str
    answer: str | None = None
    parse_error: str | None = None
    program_output: str | None = None
    message: AIMessage | None = None
    model: str | None = None
    strategy: str | None = None
    routing: RoutingRow
    max_tokens: int | None = Field(default=None, description="The max_tokens the call was given.")
    usage: Usage | None = None
    cost: float | None = Field(default=None, description="Measured $ from the model's prices.")
    latency_s: float = 0.0
    fallbacks: list[FailedAttempt] = Field(default_factory=list)
    error: str | None = None
    call_id: str | None = Field(
        default=None, description="This call's id: the traffic log's key for later feedback."
    )
    decision: Any = Field(default=None, exclude=True, repr=False)
    exception: BaseException | None = Field(default=None, exclude=True, repr=False)

    @property
    def ok(self) -> bool:
        """Whether a pair answered (the answer itself may still fail to parse)."""
        return self.error is None and self.message is not None

    @property
    def fell_back(self) -> bool:
        """Whether the answer came from a pair other than the router's first choice."""
        return bool(self.fallbacks) and self.message is not None

    @property
    def continued(self) -> bool:
        """Whether a model continued a streamed answer that another one broke off."""
        return self.message is not None and any(f.streamed_tokens for f in self.fallbacks)


class AllPairsFailedError(RTRError):
    """No pair answered; `.result` holds what was tried (with `raise_on_failure=True`)."""

    def __init__(self, result: RTRResult) -> None:
        super().__init__(result.error or "every routed pair failed")
        self.result = result


def is_endpoint_failure(exc: BaseException) -> bool:
    """Whether an error means the endpoint is unavailable, so another pair should be tried.

    True for connection errors and timeouts (openai, httpx, builtins), HTTP 5xx, 408 and 429,
    also when a stream reports them in an error event.
    """
    try:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code >= 500 or exc.status_code in (408, 429)
        if isinstance(exc, openai.APIError):
            # An error event inside a stream: vLLM sends one when its engine fails or shuts
            # down mid-answer. No HTTP status, but the event carries the server's code.
            code = int(exc.code) if exc.code is not None and str(exc.code).isdigit() else None
            return code is not None and (code >= 500 or code in (408, 429))
    except ImportError:  # pragma: no cover - openai comes with langchain-openai
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            code = exc.response.status_code
            return code >= 500 or code in (408, 429)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


def float_or_none(value: Any) -> float | None:
    """``value`` as a float, None where it is missing or not a number."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def routing_row(decision: Any) -> RoutingRow:
    """The flat, serialisable view of a router `Decision` (for results and run metadata)."""
    policy = getattr(decision, "policy", None)
    if policy is not None and not isinstance(policy, dict):
        to_dict = getattr(policy, "to_dict", None)
        policy = to_dict() if callable(to_dict) else {"name": str(policy)}
    status = getattr(decision, "status", None)
    return RoutingRow(
        model=getattr(decision, "model", None),
        strategy=getattr(decision, "strategy", None),
        predicted_correctness=float_or_none(getattr(decision, "correctness", None)),
        predicted_tokens=float_or_none(getattr(decision, "output_tokens", None)),
        predicted_usd=float_or_none(getattr(decision, "usd", None)),
        predicted_cost=float_or_none(getattr(decision, "cost", None)),
        cost_unit=getattr(decision, "cost_unit", None),
        policy=policy,
        status=None if status is None else str(status),
        ranking=[(str(m), str(s)) for m, s in (getattr(decision, "ranking", None) or ())],
    )


def usage_of(message: AIMessage) -> Usage | None:
    """The usage the backend reported on ``message``, if any."""
    um = message.usage_metadata
    if not um:
        return None
    return Usage(
        input_tokens=um.get("input_tokens", 0),
        output_tokens=um.get("output_tokens", 0),
        total_tokens=um.get("total_tokens", 0),
    )
