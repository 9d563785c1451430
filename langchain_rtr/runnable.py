"""`RTRRunnable`: route a question to a (model, strategy) pair, call it, parse the answer.

One call = one question: the router picks the pair, the strategy renders the prompt, the chosen
chat model answers, the strategy parses the answer. What comes back is an `RTRResult` with the
answer, the model's raw `AIMessage` (its `usage_metadata` and `response_metadata["model_name"]`
as the backend reported them, so `get_usage_metadata_callback()` totals spend per model), the
routing row, measured usage, cost and latency, and the pairs that failed before the answer.

Per-call knobs, read from `config["configurable"]` (declared in `config_specs`):

- `rtr_lambda` (float in [0, 1]): trade-off policy `Tradeoff(lam)` for this call;
- `rtr_max_tokens` (int > 0): per-question token budget. It caps the model's `max_tokens`, and
  when no other policy is asked for in the same call, routes with `TokenBudget(rtr_max_tokens)`;
- `rtr_allowed_pairs` (list of `(model, strategy)` or `"model/strategy"`): the pairs this call
  may use; a pair the router was not trained on is refused with `UnknownPairError`;
- `rtr_policy` (a routing policy object): used as is; wins over `rtr_lambda`.

Failures. An endpoint that is down (connection refused, timeout, HTTP 5xx, 429) makes the call
fall back to the next pair of the decision's ranking, skipping pairs on a model that already
failed; every failed pair is listed in `RTRResult.fallbacks`. Any other error from the model
(a 4xx: bad request, unknown model, auth) is not retried elsewhere, because another model would
hide a configuration error. When no pair answers, the result has `error` set (or, with
`raise_on_failure=True`, `AllPairsFailedError` is raised, carrying the result). Bad input and
unknown pairs always raise. In `batch`/`abatch` an item that fails does so alone: endpoint
failures become that item's `error`, and input errors follow `return_exceptions`.

Messages input: the text of the last human message is the question (routing sees only it). The
other messages are kept as context, in their places; the last human message is replaced by the
strategy's rendering, and all system messages (the context's first, then the strategy's) are
merged into one leading system message, which every chat template accepts.

Run metadata: the decision is dispatched as the custom event `"rtr_decision"` on the runnable's
run (`on_custom_event` in handlers, `astream_events`), and the chat model's child run carries
`rtr_model`, `rtr_strategy`, `rtr_attempt`, `rtr_predicted_*` in its metadata.

Streaming: `stream`/`astream` yield the chosen model's `AIMessageChunk`s as they arrive, then one
final `RTRResult`. A pair that fails before its first token falls back silently (listed in the
result). What was streamed cannot be taken back, so an endpoint that fails mid-answer is not
restarted: another model *continues* the answer. It gets the same rendered prompt plus the
partial answer as a final assistant message, with vLLM's `continue_final_message: true` and
`add_generation_prompt: false`, and `max_tokens` lowered by the tokens already streamed; its
chunks follow the ones already yielded. The strategy stays the one that shaped the partial
answer; the model is the next-best one with a pair of that strategy, else the next-best one at
all, among `continuable_models`. The cut pair is listed in `fallbacks` with `streamed_tokens`
set, and the result's usage is the sum of both attempts (see `_stream_answer`). When no model
can continue, or the continuation fails too, the call ends with `error` set.
"""

from __future__ import annotations

import functools
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Union, cast

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
    message_chunk_to_message,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import (
    get_config_list,
    get_executor_for_config,
    run_in_executor,
)
from langchain_core.runnables.utils import ConfigurableFieldSpec, gather_with_concurrency
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_rtr.errors import ConfigError, RTRError, UnknownPairError
from langchain_rtr.models import ModelRegistry
from langchain_rtr.specs import ModelSpec

__all__ = [
    "CONFIG_KEYS",
    "CONTINUE_BODY",
    "AllPairsFailedError",
    "FailedAttempt",
    "RTRInput",
    "RTRResult",
    "RTRRunnable",
    "RoutingRow",
    "Usage",
    "is_endpoint_failure",
]

Pair = tuple[str, str]
RTRInput = Union[str, Mapping[str, Any], Sequence[BaseMessage], PromptValue]  # noqa: UP007
"""A question string, `{"question": ...}`, a list of messages, or a chat prompt value."""

CONFIG_KEYS = ("rtr_lambda", "rtr_max_tokens", "rtr_allowed_pairs", "rtr_policy")
"""The `config["configurable"]` keys read per call."""

DECISION_EVENT = "rtr_decision"
"""Name of the custom event carrying the routing decision."""

CONTINUE_BODY: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM's chat request fields that make the model continue the final assistant message."""


# --------------------------------------------------------------------------- interfaces
class _Strategy(Protocol):
    """What the runnable needs from a strategy (`langchain_rtr.strategies.Strategy`)."""

    name: str

    def render(self, question: str) -> list[BaseMessage]: ...
    def parse(self, output: str | BaseMessage) -> Any: ...
    async def aparse(self, output: str | BaseMessage) -> Any: ...
    def model_kwargs(self) -> dict[str, Any]: ...


class _Router(Protocol):
    """What the runnable needs from the router (`langchain_rtr.routing.RTRRouter`)."""

    @property
    def models(self) -> Mapping[str, ModelSpec]: ...
    @property
    def pairs(self) -> Sequence[Pair]: ...
    def route(
        self, question: str, policy: Any = None, allowed: Collection[Pair] | None = None
    ) -> Any: ...
    def route_batch(
        self, questions: Sequence[str], policy: Any = None, allowed: Collection[Pair] | None = None
    ) -> list[Any]: ...


# --------------------------------------------------------------------------- results
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


# --------------------------------------------------------------------------- failures
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


# --------------------------------------------------------------------------- internals
@dataclass
class _Request:
    question: str
    before: list[BaseMessage] = field(default_factory=list)
    after: list[BaseMessage] = field(default_factory=list)
    policy: Any = None
    allowed: frozenset[Pair] | None = None
    budget: int | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    def routing_key(self) -> tuple[Any, frozenset[Pair] | None]:
        try:
            hash(self.policy)
            key: Any = self.policy
        except TypeError:
            key = id(self.policy)
        return (key, self.allowed)


@dataclass
class _Attempt:
    pair: Pair
    index: int
    model: BaseChatModel
    strategy: _Strategy
    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    max_tokens: int | None


def _float_or_none(value: Any) -> float | None:
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
        predicted_correctness=_float_or_none(getattr(decision, "correctness", None)),
        predicted_tokens=_float_or_none(getattr(decision, "output_tokens", None)),
        predicted_usd=_float_or_none(getattr(decision, "usd", None)),
        predicted_cost=_float_or_none(getattr(decision, "cost", None)),
        cost_unit=getattr(decision, "cost_unit", None),
        policy=policy,
        status=None if status is None else str(status),
        ranking=[(str(m), str(s)) for m, s in (getattr(decision, "ranking", None) or ())],
    )


def _parse_pair(item: Any, where: str) -> Pair:
    if isinstance(item, str):
        model, sep, strategy = item.rpartition("/")
        if sep and model and strategy:
            return (model, strategy)
    elif isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return (item[0], item[1])
    msg = f"{where}: expected a (model, strategy) pair or 'model/strategy', got {item!r}"
    raise ConfigError(msg)


def _merge_messages(
    before: list[BaseMessage], rendered: list[BaseMessage], after: list[BaseMessage]
) -> list[BaseMessage]:
    everything = [*before, *rendered, *after]
    systems = [m for m in everything if isinstance(m, SystemMessage)]
    rest = [m for m in everything if not isinstance(m, SystemMessage)]
    if not systems:
        return rest
    if len(systems) == 1:
        return [systems[0], *rest]
    merged = "\n\n".join(m.text for m in systems if m.text)
    return [SystemMessage(content=merged), *rest]


def _usage_of(message: AIMessage) -> Usage | None:
    um = message.usage_metadata
    if not um:
        return None
    return Usage(
        input_tokens=um.get("input_tokens", 0),
        output_tokens=um.get("output_tokens", 0),
        total_tokens=um.get("total_tokens", 0),
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _failed(attempt: _Attempt, exc: BaseException, streamed_tokens: int = 0) -> FailedAttempt:
    return FailedAttempt(
        model=attempt.pair[0],
        strategy=attempt.pair[1],
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        error=_describe(exc),
        retryable=is_endpoint_failure(exc),
        streamed_tokens=streamed_tokens,
    )


def _count_tokens(chunks: Sequence[AIMessageChunk]) -> int:
    """Tokens in streamed chunks: vLLM sends one token per content chunk."""
    return sum(1 for c in chunks if c.text)


_Streamed = list[tuple[_Attempt, list[AIMessageChunk]]]
"""The attempts whose text reached the caller, in order, with their chunks."""


SyncCall = Callable[[_Attempt], AIMessage]
AsyncCall = Callable[[_Attempt], Awaitable[AIMessage]]
SyncStreamCall = Callable[[_Attempt], Iterator[AIMessageChunk]]
AsyncStreamCall = Callable[[_Attempt], AsyncIterator[AIMessageChunk]]


# --------------------------------------------------------------------------- the runnable
class RTRRunnable(RunnableSerializable[RTRInput, RTRResult]):
    """Route each question to the best (model, strategy) pair and answer it.

    Example:
        ```python
        from langchain_rtr.runnable import RTRRunnable

        rtr = RTRRunnable(router=router)  # models from router.models' base_urls
        result = rtr.invoke("What is 17 * 23?", config={"configurable": {"rtr_lambda": 0.9}})
        result.answer, result.model, result.strategy, result.usage
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    router: Any
    """The trained router (`RTRRouter`): `models`, `pairs`, `route`, `route_batch`."""
    models: ModelRegistry
    """Chat model per router model name. Pairs on a model without a chat model are not used."""
    strategies: dict[str, Any]
    """Strategy per name. Pairs with a strategy missing here are not used."""
    policy: Any = None
    """Default routing policy; None lets the router use its own default."""
    allowed_pairs: list[Pair] | None = None
    """Pairs this runnable may use at all (None: every servable pair)."""
    max_attempts: int = Field(default=3, ge=1)
    """Pairs tried per question, the first choice included."""
    raise_on_failure: bool = False
    """Raise `AllPairsFailedError` instead of returning a result with `error` set."""
    route_in_thread: bool = True
    """In async calls, run the router (a sentence encoder + MLP) in a worker thread."""
    continuable_models: list[str] | None = None
    """Models that may continue a stream another model broke off (their server must take
    vLLM's `continue_final_message`). None: every `ChatOpenAI` with a `base_url`, which is
    what models built from specs are (this project serves them with vLLM); `[]`: none."""

    _servable: frozenset[Pair] = PrivateAttr()
    _allowed: frozenset[Pair] | None = PrivateAttr()
    _known: frozenset[Pair] = PrivateAttr()

    def __init__(
        self,
        router: Any,
        models: ModelRegistry | Mapping[str, BaseChatModel] | None = None,
        strategies: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the runnable.

        Args:
            router: The trained `RTRRouter`.
            models: Chat models by router model name: a `ModelRegistry`, a mapping, or None for
                `ChatOpenAI` clients built from `router.models` (specs with a `base_url`).
                Models the predictor was not trained on are refused.
            strategies: Strategies by name; None for the built-in (or registered) strategy of
                each name the router knows. Strategies the predictor was not trained on are
                refused.
            **kwargs: `policy`, `allowed_pairs`, `max_attempts`, `raise_on_failure`,
                `route_in_thread`.

        Raises:
            UnknownPairError: A model, strategy or allowed pair the router was not trained on.
            ConfigError: No pair of the router can be served.
        """
        if models is None:
            registry = ModelRegistry.from_specs(router.models)
        elif isinstance(models, ModelRegistry):
            registry = models
        else:
            registry = ModelRegistry(models)
        known = frozenset((m, s) for m, s in router.pairs)
        known_models = {m for m, _ in known}
        known_strategies = {s for _, s in known}
        unknown_models = sorted(set(registry) - known_models)
        if unknown_models:
            msg = (
                f"models {unknown_models} were not in the router's training data "
                f"(it knows: {sorted(known_models)}); retrain the router to add them"
            )
            raise UnknownPairError(msg)
        if strategies is None:
            from langchain_rtr.strategies import get_strategy

            resolved: dict[str, Any] = {}
            for name in sorted(known_strategies):
                try:
                    resolved[name] = get_strategy(name)
                except (KeyError, ValueError):
                    continue  # the predictor knows it, nothing here can run it
        else:
            resolved = dict(strategies)
            unknown_strategies = sorted(set(resolved) - known_strategies)
            if unknown_strategies:
                msg = (
                    f"strategies {unknown_strategies} were not in the router's training data "
                    f"(it knows: {sorted(known_strategies)})"
                )
                raise UnknownPairError(msg)
        super().__init__(router=router, models=registry, strategies=resolved, **kwargs)  # type: ignore[call-arg]
        self._known = known
        self._servable = frozenset(p for p in known if p[0] in registry and p[1] in resolved)
        if not self._servable:
            msg = (
                "none of the router's pairs can be served: models with a chat model: "
                f"{sorted(registry)}, strategies: {sorted(resolved)}; router pairs: "
                f"{sorted(known)}"
            )
            raise ConfigError(msg)
        allowed = self._servable
        if self.allowed_pairs is not None:
            allowed = allowed & self._check_pairs(self.allowed_pairs, "allowed_pairs")
        self._allowed = None if allowed == known else allowed
        if self.continuable_models is not None:
            unknown = sorted(set(self.continuable_models) - set(registry))
            if unknown:
                msg = (
                    f"continuable_models: {unknown} have no chat model here "
                    f"(registered: {sorted(registry)})"
                )
                raise ConfigError(msg)

    # ----------------------------------------------------------------- configuration
    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        """The per-call routing knobs, so `with_config`/LangGraph/LangServe can list them."""
        return [
            ConfigurableFieldSpec(
                id="rtr_lambda",
                annotation=float | None,
                name="RTR lambda",
                description="Accuracy/length trade-off in [0, 1] (1: accuracy only).",
                default=None,
            ),
            ConfigurableFieldSpec(
                id="rtr_max_tokens",
                annotation=int | None,
                name="RTR token budget",
                description="Per-question output token budget; caps the model's max_tokens.",
                default=None,
            ),
            ConfigurableFieldSpec(
                id="rtr_allowed_pairs",
                annotation=list[Any] | None,
                name="RTR allowed pairs",
                description="(model, strategy) pairs this call may use.",
                default=None,
            ),
            ConfigurableFieldSpec(
                id="rtr_policy",
                annotation=Any,
                name="RTR policy",
                description="A routing policy object (Tradeoff, TokenBudget, ...).",
                default=None,
            ),
        ]

    @property
    def servable_pairs(self) -> frozenset[Pair]:
        """Router pairs that have both a chat model and a strategy here."""
        return self._servable

    def _check_pairs(self, items: Any, where: str) -> frozenset[Pair]:
        if isinstance(items, str) or not isinstance(items, Collection):
            msg = f"{where}: expected a list of (model, strategy) pairs, got {items!r}"
            raise ConfigError(msg)
        pairs = frozenset(_parse_pair(item, where) for item in items)
        unknown = sorted(pairs - self._known)
        if unknown:
            msg = (
                f"{where}: pairs {unknown} were not in the router's training data "
                f"(it knows: {sorted(self._known)})"
            )
            raise UnknownPairError(msg)
        unservable = sorted(pairs - self._servable)
        if unservable:
            msg = f"{where}: pairs {unservable} have no chat model or strategy registered here"
            raise UnknownPairError(msg)
        return pairs

    def _settings(
        self, configurable: Mapping[str, Any]
    ) -> tuple[Any, frozenset[Pair] | None, int | None]:
        lam = configurable.get("rtr_lambda")
        budget = configurable.get("rtr_max_tokens")
        policy = configurable.get("rtr_policy")
        if lam is not None and (
            isinstance(lam, bool) or not isinstance(lam, int | float) or not 0.0 <= lam <= 1.0
        ):
            msg = f"config['configurable']['rtr_lambda']: expected a number in [0, 1], got {lam!r}"
            raise ConfigError(msg)
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
        ):
            msg = (
                f"config['configurable']['rtr_max_tokens']: expected a positive int, got {budget!r}"
            )
            raise ConfigError(msg)
        if policy is None:
            if lam is not None:
                policy = _make_policy("Tradeoff", float(lam))
            elif budget is not None:
                policy = _make_policy("TokenBudget", budget)
            else:
                policy = self.policy
        if budget is None:
            effective = (
                policy if policy is not None else getattr(self.router, "default_policy", None)
            )
            policy_budget = getattr(effective, "max_tokens", None)
            if isinstance(policy_budget, int | float) and policy_budget >= 1:
                budget = int(policy_budget)
        allowed = self._allowed
        raw_allowed = configurable.get("rtr_allowed_pairs")
        if raw_allowed is not None:
            per_call = self._check_pairs(raw_allowed, "config['configurable']['rtr_allowed_pairs']")
            allowed = per_call if allowed is None else allowed & per_call
            if not allowed:
                msg = (
                    "config['configurable']['rtr_allowed_pairs']: none of "
                    f"{sorted(per_call)} is allowed by this runnable"
                )
                raise ConfigError(msg)
        return policy, allowed, budget

    def _prepare(self, input: RTRInput, configurable: Mapping[str, Any]) -> _Request:
        question, before, after = _split_input(input)
        policy, allowed, budget = self._settings(configurable)
        return _Request(question, before, after, policy, allowed, budget)

    # ----------------------------------------------------------------- routing
    def _route(self, req: _Request) -> Any:
        return self.router.route(req.question, policy=req.policy, allowed=req.allowed)

    def _route_many(self, reqs: list[_Request | None]) -> list[Any]:
        """Route a batch with as few `route_batch` calls as possible; None where it failed."""
        out: list[Any] = [None] * len(reqs)
        groups: dict[tuple[Any, frozenset[Pair] | None], list[int]] = {}
        for i, req in enumerate(reqs):
            if req is not None:
                groups.setdefault(req.routing_key(), []).append(i)
        for idx in groups.values():
            first = cast("_Request", reqs[idx[0]])
            try:
                decisions = self.router.route_batch(
                    [cast("_Request", reqs[i]).question for i in idx],
                    policy=first.policy,
                    allowed=first.allowed,
                )
            except Exception:  # one bad question must not sink the batch: route one by one
                continue
            for i, d in zip(idx, decisions, strict=True):
                out[i] = d
        return out

    def _plan(self, req: _Request, decision: Any) -> list[Pair]:
        first = (getattr(decision, "model", None), getattr(decision, "strategy", None))
        ranking = [tuple(p) for p in (getattr(decision, "ranking", None) or [])]
        usable = req.allowed if req.allowed is not None else self._servable
        plan: list[Pair] = []
        for pair in [first, *ranking]:
            if pair[0] is None or pair[1] is None:
                continue
            p = cast("Pair", pair)
            if p in usable and p not in plan:
                plan.append(p)
        return plan

    def _attempt(self, req: _Request, pair: Pair, index: int) -> _Attempt:
        model_name, strategy_name = pair
        strategy = self.strategies[strategy_name]
        spec = self.router.models.get(model_name)
        asked = req.call_kwargs.get("max_tokens")
        caps = [int(c) for c in (getattr(spec, "max_tokens", None), req.budget, asked) if c]
        max_tokens = min(caps) if caps else None
        kwargs = {**req.call_kwargs, **(strategy.model_kwargs() or {})}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        messages = _merge_messages(req.before, strategy.render(req.question), req.after)
        return _Attempt(
            pair, index, self.models[model_name], strategy, messages, kwargs, max_tokens
        )

    def _skip(self, pair: Pair, failures: list[FailedAttempt]) -> bool:
        return any(f.retryable and f.model == pair[0] for f in failures)

    def _result(
        self,
        req: _Request,
        decision: Any,
        started: float,
        failures: list[FailedAttempt],
        attempt: _Attempt | None = None,
        message: AIMessage | None = None,
        parsed: Any = None,
        exception: BaseException | None = None,
        parts: Sequence[tuple[str, Usage]] | None = None,
    ) -> RTRResult:
        """The result; `parts` is the usage per model when several wrote the answer."""
        usage = _usage_of(message) if message is not None else None
        if parts is None:
            parts = [(attempt.pair[0], usage)] if attempt is not None and usage else []
        cost = None
        for model, spent in parts:
            spec = self.router.models.get(model)
            if spec is not None:
                cost = (cost or 0.0) + spec.call_cost(spent.input_tokens, spent.output_tokens)
        error = None
        if message is None:
            if failures:
                tried = "; ".join(f"{f.model}/{f.strategy}: {f.error}" for f in failures)
                error = f"every routed pair failed ({tried})"
            else:
                status = getattr(decision, "status", None)
                error = f"the router chose no servable pair (status: {status})"
        result = RTRResult(
            question=req.question,
            answer=getattr(parsed, "answer", None),
            parse_error=getattr(parsed, "error", None),
            program_output=getattr(parsed, "program_output", None),
            message=message,
            model=attempt.pair[0] if attempt is not None and message is not None else None,
            strategy=attempt.pair[1] if attempt is not None and message is not None else None,
            routing=routing_row(decision),
            max_tokens=attempt.max_tokens if attempt is not None else None,
            usage=usage,
            cost=cost,
            latency_s=time.perf_counter() - started,
            fallbacks=failures,
            error=error,
            decision=decision,
            exception=exception,
        )
        if result.error is not None and self.raise_on_failure:
            raise AllPairsFailedError(result)
        return result

    # ----------------------------------------------------------------- engines
    # `_prepare`, `_route`, `_route_many`, `_aroute`, `_execute*` and `_aexecute*` are the
    # internal seam that `server.py` and `chat_model.py` build on: they bring their own `call`
    # (to time it, or to pass their own config), and every fallback rule lives here.
    def _execute(self, req: _Request, decision: Any, call: SyncCall) -> RTRResult:
        started = time.perf_counter()
        failures: list[FailedAttempt] = []
        last: _Attempt | None = None
        last_exc: BaseException | None = None
        for pair in self._plan(req, decision):
            if len(failures) >= self.max_attempts:
                break
            if self._skip(pair, failures):
                continue
            last = attempt = self._attempt(req, pair, len(failures))
            try:
                message = call(attempt)
            except Exception as exc:
                failures.append(_failed(attempt, exc))
                last_exc = exc
                if failures[-1].retryable:
                    continue
                return self._result(req, decision, started, failures, attempt, exception=exc)
            parsed = attempt.strategy.parse(message)
            return self._result(req, decision, started, failures, attempt, message, parsed)
        return self._result(req, decision, started, failures, last, exception=last_exc)

    async def _aexecute(self, req: _Request, decision: Any, call: AsyncCall) -> RTRResult:
        started = time.perf_counter()
        failures: list[FailedAttempt] = []
        last: _Attempt | None = None
        last_exc: BaseException | None = None
        for pair in self._plan(req, decision):
            if len(failures) >= self.max_attempts:
                break
            if self._skip(pair, failures):
                continue
            last = attempt = self._attempt(req, pair, len(failures))
            try:
                message = await call(attempt)
            except Exception as exc:
                failures.append(_failed(attempt, exc))
                last_exc = exc
                if failures[-1].retryable:
                    continue
                return self._result(req, decision, started, failures, attempt, exception=exc)
            parsed = await attempt.strategy.aparse(message)
            return self._result(req, decision, started, failures, attempt, message, parsed)
        return self._result(req, decision, started, failures, last, exception=last_exc)

    def _can_continue(self, model: str) -> bool:
        """Whether `model`'s server can continue a final assistant message (vLLM can)."""
        if self.continuable_models is not None:
            return model in self.continuable_models
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:  # pragma: no cover - langchain-openai is a dependency
            return False
        chat = self.models[model]
        return isinstance(chat, ChatOpenAI) and bool(chat.openai_api_base)

    def _continuation(
        self, req: _Request, decision: Any, failures: list[FailedAttempt], streamed: _Streamed
    ) -> _Attempt | None:
        """The attempt that continues the streamed answer on another model, if one can.

        The strategy stays the one that shaped the partial answer, so models with a pair of
        that strategy come first, then the rest in ranking order.
        """
        first = streamed[0][0]
        strategy = first.pair[1]
        failed = {f.model for f in failures}
        plan = self._plan(req, decision)
        ranked = [m for m, s in plan if s == strategy] + [m for m, _ in plan]
        model = next(
            (m for m in dict.fromkeys(ranked) if m not in failed and self._can_continue(m)), None
        )
        if model is None:
            return None
        attempt = self._attempt(req, (model, strategy), len(failures))
        partial = "".join(c.text for _, chunks in streamed for c in chunks)
        kwargs = dict(attempt.kwargs)
        if attempt.max_tokens is not None:
            done = sum(_count_tokens(chunks) for _, chunks in streamed)
            kwargs["max_tokens"] = max(1, attempt.max_tokens - done)
        # A per-call extra_body replaces the client's own (ChatOpenAI), so merge all three.
        kwargs["extra_body"] = {
            **(getattr(attempt.model, "extra_body", None) or {}),
            **(kwargs.get("extra_body") or {}),
            **CONTINUE_BODY,
        }
        messages = [*first.messages, AIMessage(content=partial)]
        return replace(attempt, messages=messages, kwargs=kwargs)

    def _next_stream_attempt(
        self,
        req: _Request,
        decision: Any,
        plan: Iterator[Pair],
        failures: list[FailedAttempt],
        streamed: _Streamed,
    ) -> _Attempt | None:
        """The next pair to try: from the plan until text is out, then a continuation."""
        if len(failures) >= self.max_attempts:
            return None
        if streamed:
            return self._continuation(req, decision, failures, streamed)
        for pair in plan:
            if not self._skip(pair, failures):
                return self._attempt(req, pair, len(failures))
        return None

    @staticmethod
    def _stream_answer(streamed: _Streamed) -> tuple[AIMessage, list[tuple[str, Usage]] | None]:
        """The whole streamed answer, and its usage per model when several models wrote it.

        A cut attempt rarely got its usage report (it comes last), so it is counted from the
        stream: its output is its content chunks, its input the prompt, which is the
        continuation's reported input less the partial answer it was given (exact when both
        share a tokenizer).
        """
        last = _join(streamed[-1][1])
        if len(streamed) == 1:
            return last, None
        text = "".join(c.text for _, chunks in streamed for c in chunks)
        final = _usage_of(last)
        if final is None:  # the backend reports no usage: nothing to add up
            return last.model_copy(update={"content": text}), None
        counts = [_count_tokens(chunks) for _, chunks in streamed[:-1]]
        prompt = max(0, final.input_tokens - sum(counts))
        parts: list[tuple[str, Usage]] = []
        for i, (attempt, chunks) in enumerate(streamed[:-1]):
            spent_in = prompt + sum(counts[:i])
            counted = Usage(
                input_tokens=spent_in, output_tokens=counts[i], total_tokens=spent_in + counts[i]
            )
            parts.append((attempt.pair[0], _usage_of(_join(chunks)) or counted))
        parts.append((streamed[-1][0].pair[0], final))
        total_in = sum(u.input_tokens for _, u in parts)
        total_out = sum(u.output_tokens for _, u in parts)
        usage = {
            "input_tokens": total_in,
            "output_tokens": total_out,
            "total_tokens": total_in + total_out,
        }
        return last.model_copy(update={"content": text, "usage_metadata": usage}), parts

    def _execute_stream(
        self, req: _Request, decision: Any, call: SyncStreamCall
    ) -> Iterator[AIMessageChunk | RTRResult]:
        started = time.perf_counter()
        failures: list[FailedAttempt] = []
        streamed: _Streamed = []
        plan = iter(self._plan(req, decision))
        last: _Attempt | None = None
        last_exc: BaseException | None = None
        while attempt := self._next_stream_attempt(req, decision, plan, failures, streamed):
            last = attempt
            chunks: list[AIMessageChunk] = []
            try:
                for chunk in call(attempt):
                    chunks.append(chunk)
                    yield chunk
            except Exception as exc:
                last_exc = exc
                failures.append(_failed(attempt, exc, _count_tokens(chunks)))
                if failures[-1].streamed_tokens:
                    streamed.append((attempt, chunks))
                if failures[-1].retryable:
                    continue
                yield self._result(req, decision, started, failures, attempt, exception=exc)
                return
            streamed.append((attempt, chunks))
            message, parts = self._stream_answer(streamed)
            parsed = attempt.strategy.parse(message)
            yield self._result(
                req, decision, started, failures, attempt, message, parsed, parts=parts
            )
            return
        yield self._result(req, decision, started, failures, last, exception=last_exc)

    async def _aexecute_stream(
        self, req: _Request, decision: Any, call: AsyncStreamCall
    ) -> AsyncIterator[AIMessageChunk | RTRResult]:
        """Stream `call`'s chunks, falling back before the first token and continuing after it.

        The engine behind `astream`, `RTRChatModel._astream` and the server's streamed answers:
        chunks as they come, then one `RTRResult`.
        """
        started = time.perf_counter()
        failures: list[FailedAttempt] = []
        streamed: _Streamed = []
        plan = iter(self._plan(req, decision))
        last: _Attempt | None = None
        last_exc: BaseException | None = None
        while attempt := self._next_stream_attempt(req, decision, plan, failures, streamed):
            last = attempt
            chunks: list[AIMessageChunk] = []
            try:
                async for chunk in call(attempt):
                    chunks.append(chunk)
                    yield chunk
            except Exception as exc:
                last_exc = exc
                failures.append(_failed(attempt, exc, _count_tokens(chunks)))
                if failures[-1].streamed_tokens:
                    streamed.append((attempt, chunks))
                if failures[-1].retryable:
                    continue
                yield self._result(req, decision, started, failures, attempt, exception=exc)
                return
            streamed.append((attempt, chunks))
            message, parts = self._stream_answer(streamed)
            parsed = await attempt.strategy.aparse(message)
            yield self._result(
                req, decision, started, failures, attempt, message, parsed, parts=parts
            )
            return
        yield self._result(req, decision, started, failures, last, exception=last_exc)

    # ----------------------------------------------------------------- traced callers
    @staticmethod
    def _child_config(config: RunnableConfig, attempt: _Attempt, decision: Any) -> RunnableConfig:
        row = routing_row(decision)
        metadata = {
            **(config.get("metadata") or {}),
            "rtr_model": attempt.pair[0],
            "rtr_strategy": attempt.pair[1],
            "rtr_attempt": attempt.index,
            "rtr_predicted_correctness": row.predicted_correctness,
            "rtr_predicted_tokens": row.predicted_tokens,
            "rtr_predicted_usd": row.predicted_usd,
        }
        child = cast("RunnableConfig", {**config, "metadata": metadata})
        child.pop("run_name", None)
        child.pop("run_id", None)
        return child

    def _event(self, decision: Any) -> dict[str, Any]:
        return routing_row(decision).model_dump()

    def _invoke_one(
        self,
        input: RTRInput,
        config: RunnableConfig,
        *,
        decision: Any = None,
        req: _Request | None = None,
    ) -> RTRResult:
        if req is None:
            req = self._prepare(input, config.get("configurable") or {})
        if decision is None:
            decision = self._route(req)
        dispatch_custom_event(DECISION_EVENT, self._event(decision), config=config)

        def call(attempt: _Attempt) -> AIMessage:
            cfg = self._child_config(config, attempt, decision)
            return attempt.model.invoke(attempt.messages, cfg, **attempt.kwargs)

        return self._execute(req, decision, call)

    async def _ainvoke_one(
        self,
        input: RTRInput,
        config: RunnableConfig,
        *,
        decision: Any = None,
        req: _Request | None = None,
    ) -> RTRResult:
        if req is None:
            req = self._prepare(input, config.get("configurable") or {})
        if decision is None:
            decision = await self._aroute(req, config)
        await adispatch_custom_event(DECISION_EVENT, self._event(decision), config=config)

        async def call(attempt: _Attempt) -> AIMessage:
            cfg = self._child_config(config, attempt, decision)
            return await attempt.model.ainvoke(attempt.messages, cfg, **attempt.kwargs)

        return await self._aexecute(req, decision, call)

    async def _aroute(self, req: _Request, config: RunnableConfig) -> Any:
        if self.route_in_thread:
            return await run_in_executor(config, self._route, req)
        return self._route(req)

    # ----------------------------------------------------------------- Runnable API
    def invoke(
        self, input: RTRInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RTRResult:
        """Route, call and parse one question."""
        return self._call_with_config(
            self._invoke_one,  # type: ignore[arg-type]  # it takes config=
            input,
            config,
            run_type="chain",
            **kwargs,
        )

    async def ainvoke(
        self, input: RTRInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RTRResult:
        """Async `invoke`: the chat model's own `ainvoke`, routing in a worker thread."""
        return await self._acall_with_config(
            self._ainvoke_one,  # type: ignore[arg-type]  # it takes config=
            input,
            config,
            run_type="chain",
            **kwargs,
        )

    def _prepare_batch(
        self, inputs: list[RTRInput], configs: list[RunnableConfig]
    ) -> tuple[list[_Request | None], list[Exception | None]]:
        reqs: list[_Request | None] = []
        errors: list[Exception | None] = []
        for inp, cfg in zip(inputs, configs, strict=True):
            try:
                reqs.append(self._prepare(inp, cfg.get("configurable") or {}))
                errors.append(None)
            except Exception as exc:
                reqs.append(None)
                errors.append(exc)
        return reqs, errors

    def batch(
        self,
        inputs: list[RTRInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RTRResult]:
        """Route all questions in one `route_batch` call, then call the models in parallel.

        Each item is its own run. Endpoint failures end up in that item's `error`; an item
        whose input is bad raises, or is returned as its exception with `return_exceptions`.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        reqs, errors = self._prepare_batch(inputs, configs)
        for err in errors:
            if err is not None and not return_exceptions:
                raise err
        decisions = self._route_many(reqs)

        def one(i: int) -> RTRResult | Exception:
            if errors[i] is not None:
                return cast("Exception", errors[i])
            func = functools.partial(self._invoke_one, decision=decisions[i], req=reqs[i])
            try:
                return self._call_with_config(
                    func, inputs[i], configs[i], run_type="chain", **kwargs
                )
            except Exception as exc:
                if return_exceptions:
                    return exc
                raise

        if len(inputs) == 1:
            out = [one(0)]
        else:
            with get_executor_for_config(configs[0]) as executor:
                out = list(executor.map(one, range(len(inputs))))
        return cast("list[RTRResult]", out)

    async def abatch(
        self,
        inputs: list[RTRInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RTRResult]:
        """Async `batch`: one `route_batch` in a worker thread, then concurrent `ainvoke`s."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        reqs, errors = self._prepare_batch(inputs, configs)
        for err in errors:
            if err is not None and not return_exceptions:
                raise err
        if self.route_in_thread:
            decisions = await run_in_executor(configs[0], self._route_many, reqs)
        else:
            decisions = self._route_many(reqs)

        async def one(i: int) -> RTRResult | Exception:
            if errors[i] is not None:
                return cast("Exception", errors[i])
            func = functools.partial(self._ainvoke_one, decision=decisions[i], req=reqs[i])
            try:
                return await self._acall_with_config(
                    func, inputs[i], configs[i], run_type="chain", **kwargs
                )
            except Exception as exc:
                if return_exceptions:
                    return exc
                raise

        out = await gather_with_concurrency(
            configs[0].get("max_concurrency"), *(one(i) for i in range(len(inputs)))
        )
        return cast("list[RTRResult]", out)

    def _stream_one(
        self, inputs: Iterator[RTRInput], config: RunnableConfig
    ) -> Iterator[AIMessageChunk | RTRResult]:
        input = _last(inputs)
        req = self._prepare(input, config.get("configurable") or {})
        decision = self._route(req)
        dispatch_custom_event(DECISION_EVENT, self._event(decision), config=config)

        def call(attempt: _Attempt) -> Iterator[AIMessageChunk]:
            cfg = self._child_config(config, attempt, decision)
            yield from attempt.model.stream(attempt.messages, cfg, **attempt.kwargs)

        yield from self._execute_stream(req, decision, call)

    async def _astream_one(
        self, inputs: AsyncIterator[RTRInput], config: RunnableConfig
    ) -> AsyncIterator[AIMessageChunk | RTRResult]:
        input = None
        async for item in inputs:
            input = item
        req = self._prepare(cast("RTRInput", input), config.get("configurable") or {})
        decision = await self._aroute(req, config)
        await adispatch_custom_event(DECISION_EVENT, self._event(decision), config=config)

        async def call(attempt: _Attempt) -> AsyncIterator[AIMessageChunk]:
            cfg = self._child_config(config, attempt, decision)
            async for chunk in attempt.model.astream(attempt.messages, cfg, **attempt.kwargs):
                yield chunk

        async for out in self._aexecute_stream(req, decision, call):
            yield out

    def stream(  # type: ignore[override]
        self, input: RTRInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk | RTRResult]:
        """Yield the answer's `AIMessageChunk`s as they arrive, then the `RTRResult`."""
        yield from self._transform_stream_with_config(
            iter([input]),
            self._stream_one,  # type: ignore[arg-type]  # chunks, then the result
            config,
            run_type="chain",
            **kwargs,
        )

    async def astream(  # type: ignore[override]
        self, input: RTRInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk | RTRResult]:
        """Async `stream`, on the chat model's own `astream`."""

        async def one() -> AsyncIterator[RTRInput]:
            yield input

        async for out in self._atransform_stream_with_config(
            one(),
            self._astream_one,  # type: ignore[arg-type]  # chunks, then the result
            config,
            run_type="chain",
            **kwargs,
        ):
            yield out

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Not serialisable: it holds a trained router and live clients."""
        return False

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """The accepted input types."""
        return RTRInput

    @property
    def OutputType(self) -> type[RTRResult]:  # noqa: N802 - LangChain's name
        """The result type (streaming also yields `AIMessageChunk`s before it)."""
        return RTRResult


# --------------------------------------------------------------------------- helpers
def _make_policy(kind: str, value: Any) -> Any:
    from langchain_rtr.routing import TokenBudget, Tradeoff

    if kind == "Tradeoff":
        return Tradeoff(lam=float(value))
    # A per-call budget should still answer when no pair is predicted to fit: take the
    # shortest pair, and the max_tokens cap keeps the call within the budget.
    return TokenBudget(max_tokens=value, on_no_fit="fewest_tokens")


def _last(items: Iterator[Any]) -> Any:
    value = None
    for value in items:  # noqa: B007 - the stream carries one input
        pass
    return value


def _join(chunks: list[AIMessageChunk]) -> AIMessage:
    if not chunks:
        return AIMessage(content="")
    total = chunks[0] + chunks[1:] if len(chunks) > 1 else chunks[0]
    return cast("AIMessage", message_chunk_to_message(total))


def _split_input(input: RTRInput) -> tuple[str, list[BaseMessage], list[BaseMessage]]:
    """Question text plus the messages before and after it (see the module docstring)."""
    if isinstance(input, str):
        question = input
        before: list[BaseMessage] = []
        after: list[BaseMessage] = []
    elif isinstance(input, Mapping):
        value = input.get("question")
        if not isinstance(value, str):
            msg = (
                "RTRRunnable input: a dict needs a 'question' string, got keys "
                f"{sorted(map(str, input))}"
            )
            raise ValueError(msg)
        question, before, after = value, [], []
    elif isinstance(input, PromptValue | Sequence):
        try:
            messages = (
                input.to_messages()
                if isinstance(input, PromptValue)
                else convert_to_messages(input)
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            msg = f"RTRRunnable input: not a list of messages: {exc}"
            raise ValueError(msg) from exc
        human = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        if not human:
            msg = "RTRRunnable input: the messages contain no human message to route"
            raise ValueError(msg)
        i = human[-1]
        question, before, after = messages[i].text, messages[:i], messages[i + 1 :]
    else:
        msg = (
            "RTRRunnable input: expected a question string, {'question': str}, a list of "
            f"messages or a PromptValue, got {type(input).__name__}"
        )
        raise TypeError(msg)
    if not question.strip():
        msg = "RTRRunnable input: the question is empty"
        raise ValueError(msg)
    return question, before, after
