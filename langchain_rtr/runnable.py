"""`RTRRunnable`: route a question to a (model, strategy) pair, call it, parse the answer.

One call = one question: the router picks the pair, the strategy renders the prompt, the chosen
chat model answers, the strategy parses the answer. What comes back is an `RTRResult` with the
answer, the model's raw `AIMessage` (its `usage_metadata` and `response_metadata["model_name"]`
as the backend reported them, so `get_usage_metadata_callback()` totals spend per model), the
routing row, measured usage, cost and latency, and the pairs that failed before the answer.

Per-call knobs, read from `config["configurable"]` (declared in `config_specs`) and parsed by
`langchain_rtr.knobs.parse_knobs`, the one parser every front end uses:

- `rtr_lambda` (float in [0, 1]): trade-off policy `Tradeoff(lam)` for this call;
- `rtr_max_tokens` (int > 0): per-question token budget. It caps the model's `max_tokens`, and
  when no other policy is asked for in the same call, routes with `TokenBudget(rtr_max_tokens)`
  (which still answers when nothing is predicted to fit); `rtr_confidence` goes with it, or
  `rtr_budget_rule="best_bet"` routes with `BestBet(rtr_max_tokens)` instead;
- `rtr_floor` (float in [0, 1]): `AccuracyFloor(floor)`;
- `rtr_allowed_pairs` (list of `(model, strategy)` or `"model/strategy"`): the pairs this call
  may use; a pair the router was not trained on is refused with `UnknownPairError`;
- `rtr_policy` (a routing policy object): used as is. At most one of `rtr_lambda`, `rtr_floor`
  and `rtr_policy` may be given.

The routing, fallback and continuation rules are the dispatch engine's
(`langchain_rtr.dispatch`); this runnable is the LangChain front end over it.

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
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import (
    get_config_list,
    get_executor_for_config,
    run_in_executor,
)
from langchain_core.runnables.utils import ConfigurableFieldSpec, gather_with_concurrency
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_rtr.dispatch import (
    CONTINUE_BODY,
    AllPairsFailedError,
    Attempt,
    CallRequest,
    DispatchEngine,
    FailedAttempt,
    RoutingRow,
    RTRInput,
    RTRResult,
    Usage,
    is_endpoint_failure,
    routing_row,
)
from langchain_rtr.dispatch.messages import last_item
from langchain_rtr.knobs import CONFIG_KEYS as KNOB_CONFIG_KEYS
from langchain_rtr.knobs import config_label, knobs_from_config, parse_knobs
from langchain_rtr.models import ModelRegistry
from langchain_rtr.traffic import open_traffic_log

__all__ = [
    "CONFIG_KEYS",
    "CONTINUE_BODY",
    "DECISION_EVENT",
    "AllPairsFailedError",
    "FailedAttempt",
    "RTRInput",
    "RTRResult",
    "RTRRunnable",
    "RoutingRow",
    "Usage",
    "is_endpoint_failure",
    "routing_row",
]

Pair = tuple[str, str]
Routed = tuple[CallRequest, Any]
"""A call's request and its decision (None where routing it is still to do)."""

CONFIG_KEYS = tuple(KNOB_CONFIG_KEYS)
"""The `config["configurable"]` keys read per call."""

DECISION_EVENT = "rtr_decision"
"""Name of the custom event carrying the routing decision."""


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

    traffic_log: Any = None
    """A `TrafficLog` (or a path for one) every routed call is written to; None: off."""

    _engine: DispatchEngine = PrivateAttr()

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
                `route_in_thread`, `continuable_models`, `traffic_log` (a `TrafficLog` or a
                path; its embeddings come from the router's encoder unless it has one).

        Raises:
            UnknownPairError: A model, strategy or allowed pair the router was not trained on.
            ConfigError: No pair of the router can be served, or a bad option.
        """
        engine = DispatchEngine(
            router,
            models,
            strategies,
            policy=kwargs.get("policy"),
            allowed_pairs=kwargs.get("allowed_pairs"),
            max_attempts=kwargs.get("max_attempts", 3),
            raise_on_failure=kwargs.get("raise_on_failure", False),
            continuable_models=kwargs.get("continuable_models"),
            traffic_log=open_traffic_log(kwargs.get("traffic_log"), router),
        )
        kwargs["traffic_log"] = engine.traffic_log
        super().__init__(  # type: ignore[call-arg]
            router=router, models=engine.models, strategies=engine.strategies, **kwargs
        )
        self._engine = engine

    # ----------------------------------------------------------------- configuration
    @property
    def engine(self) -> DispatchEngine:
        """The dispatch engine behind this runnable (shared by the chat model and server)."""
        return self._engine

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        """The per-call routing knobs, so `with_config`/LangGraph/LangServe can list them."""
        specs = [
            ("rtr_lambda", float | None, "RTR lambda", "Accuracy/length trade-off in [0, 1]."),
            (
                "rtr_max_tokens",
                int | None,
                "RTR token budget",
                "Per-question output token budget; caps the model's max_tokens.",
            ),
            (
                "rtr_confidence",
                float | None,
                "RTR budget confidence",
                "With rtr_max_tokens: probability in (0, 1) that the answer fits.",
            ),
            (
                "rtr_budget_rule",
                str | None,
                "RTR budget rule",
                "With rtr_max_tokens: 'fit' (default) or 'best_bet' (P(correct) x P(fits)).",
            ),
            ("rtr_floor", float | None, "RTR accuracy floor", "Cheapest pair reaching it."),
            (
                "rtr_allowed_pairs",
                list[Any] | None,
                "RTR allowed pairs",
                "(model, strategy) pairs this call may use.",
            ),
            (
                "rtr_policy",
                Any,
                "RTR policy",
                "A routing policy object (Tradeoff, TokenBudget, ...).",
            ),
        ]
        return [
            ConfigurableFieldSpec(
                id=key, annotation=annotation, name=name, description=text, default=None
            )
            for key, annotation, name, text in specs
        ]

    @property
    def servable_pairs(self) -> frozenset[Pair]:
        """Router pairs that have both a chat model and a strategy here."""
        return self._engine.servable

    def request(
        self,
        input: RTRInput,
        configurable: Mapping[str, Any] | None = None,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> CallRequest:
        """The engine's request for ``input`` with the `rtr_*` knobs of ``configurable``."""
        knobs = parse_knobs(knobs_from_config(configurable or {}), config_label)
        return self._engine.request(input, knobs, call_kwargs, pairs_label=config_label("pairs"))

    async def aroute(self, req: CallRequest, config: RunnableConfig) -> Any:
        """Route in a worker thread (with `route_in_thread`), so the event loop stays free."""
        if self.route_in_thread:
            return await run_in_executor(config, self._engine.route, req)
        return self._engine.route(req)

    # ----------------------------------------------------------------- traced callers
    @staticmethod
    def attempt_config(config: RunnableConfig, attempt: Attempt, decision: Any) -> RunnableConfig:
        """The chat model's child run config: the pair and the predictions in its metadata."""
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

    def _prepared(self, input: RTRInput, config: RunnableConfig) -> CallRequest:
        return self.request(input, config.get("configurable") or {})

    def _invoke_one(
        self, input: RTRInput, config: RunnableConfig, *, routed: Routed | None = None
    ) -> RTRResult:
        """One routed call; `batch` gives each item its ``routed`` request and decision."""
        engine = self._engine
        req, decision = routed or (self._prepared(input, config), None)
        if decision is None:  # not routed yet, or the batch's routing failed on this one
            decision = engine.route(req)
        dispatch_custom_event(DECISION_EVENT, routing_row(decision).model_dump(), config=config)

        def call(attempt: Attempt) -> AIMessage:
            cfg = self.attempt_config(config, attempt, decision)
            return attempt.model.invoke(attempt.messages, cfg, **attempt.kwargs)

        return engine.execute(req, decision, call)

    async def _ainvoke_one(
        self, input: RTRInput, config: RunnableConfig, *, routed: Routed | None = None
    ) -> RTRResult:
        """Async `_invoke_one`."""
        engine = self._engine
        req, decision = routed or (self._prepared(input, config), None)
        if decision is None:
            decision = await self.aroute(req, config)
        data = routing_row(decision).model_dump()
        await adispatch_custom_event(DECISION_EVENT, data, config=config)

        async def call(attempt: Attempt) -> AIMessage:
            cfg = self.attempt_config(config, attempt, decision)
            return await attempt.model.ainvoke(attempt.messages, cfg, **attempt.kwargs)

        return await engine.aexecute(req, decision, call)

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
        self, inputs: list[RTRInput], configs: list[RunnableConfig], return_exceptions: bool
    ) -> tuple[list[CallRequest | None], list[Exception | None]]:
        reqs: list[CallRequest | None] = []
        errors: list[Exception | None] = []
        for inp, cfg in zip(inputs, configs, strict=True):
            try:
                reqs.append(self._prepared(inp, cfg))
                errors.append(None)
            except Exception as exc:
                if not return_exceptions:
                    raise
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
        reqs, errors = self._prepare_batch(inputs, configs, return_exceptions)
        decisions = self._engine.route_many(reqs)

        def one(i: int) -> RTRResult | Exception:
            if errors[i] is not None:
                return cast("Exception", errors[i])
            func = functools.partial(
                self._invoke_one, routed=(cast("CallRequest", reqs[i]), decisions[i])
            )
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
        reqs, errors = self._prepare_batch(inputs, configs, return_exceptions)
        if self.route_in_thread:
            decisions = await run_in_executor(configs[0], self._engine.route_many, reqs)
        else:
            decisions = self._engine.route_many(reqs)

        async def one(i: int) -> RTRResult | Exception:
            if errors[i] is not None:
                return cast("Exception", errors[i])
            func = functools.partial(
                self._ainvoke_one, routed=(cast("CallRequest", reqs[i]), decisions[i])
            )
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
        req = self._prepared(last_item(inputs), config)
        decision = self._engine.route(req)
        dispatch_custom_event(DECISION_EVENT, routing_row(decision).model_dump(), config=config)

        def call(attempt: Attempt) -> Iterator[AIMessageChunk]:
            cfg = self.attempt_config(config, attempt, decision)
            yield from attempt.model.stream(attempt.messages, cfg, **attempt.kwargs)

        yield from self._engine.execute_stream(req, decision, call)

    async def _astream_one(
        self, inputs: AsyncIterator[RTRInput], config: RunnableConfig
    ) -> AsyncIterator[AIMessageChunk | RTRResult]:
        input = None
        async for item in inputs:
            input = item
        req = self._prepared(cast("RTRInput", input), config)
        decision = await self.aroute(req, config)
        data = routing_row(decision).model_dump()
        await adispatch_custom_event(DECISION_EVENT, data, config=config)

        async def call(attempt: Attempt) -> AsyncIterator[AIMessageChunk]:
            cfg = self.attempt_config(config, attempt, decision)
            async for chunk in attempt.model.astream(attempt.messages, cfg, **attempt.kwargs):
                yield chunk

        async for out in self._engine.aexecute_stream(req, decision, call):
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
