"""The dispatch engine: plan a routed call, run it with fallback, stream it with continuation.

Every front end (`RTRRunnable`, `RTRChatModel`, the server, the LangGraph node through the
runnable) drives this one engine and brings only its own way of calling a chat model (a
`call(attempt)` that invokes, awaits or streams it with the front end's config). The rules live
here once:

- **plan**: the router's first choice, then its ranking, restricted to the pairs this call may
  use (`DispatchEngine.plan`); each attempt's ``max_tokens`` is the smallest of the model's own
  limit, the call's budget and what the caller asked (`DispatchEngine.attempt`);
- **fallback**: an endpoint failure (connection, timeout, 5xx, 408, 429) moves to the next pair,
  skipping pairs on a model that already failed, up to ``max_attempts`` pairs; any other error
  stops the call, because another model would hide a configuration error;
- **continuation**: a stream cut after its first token is continued by another model (vLLM's
  ``continue_final_message``) with the same prompt plus the partial answer, ``max_tokens``
  lowered by what was streamed; the strategy stays the one that shaped the partial answer.

A `CallRun` holds one call's state: `CallRun.next_attempt` is the one place where the next
attempt is planned, `CallRun.finish` the one place where the call's outcome is known (what a
traffic log or a metrics hook would observe). The loop over attempts is written once, as a
generator of steps, and `execute`, `aexecute`, `execute_stream` and `aexecute_stream` are its
four drivers (`langchain_rtr.dispatch.steps`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_rtr.dispatch import steps
from langchain_rtr.dispatch.calls import (
    AsyncCall,
    AsyncStreamCall,
    Attempt,
    CallRequest,
    CallRun,
    Streamed,
    SyncCall,
    SyncStreamCall,
)
from langchain_rtr.dispatch.messages import (
    RTRInput,
    count_tokens,
    merge_messages,
    split_input,
)
from langchain_rtr.dispatch.results import (
    FailedAttempt,
    RTRResult,
    Usage,
    routing_row,
    usage_of,
)
from langchain_rtr.dispatch.tools import bind_call_tools, capable_pairs
from langchain_rtr.errors import ConfigError, UnknownPairError
from langchain_rtr.knobs import (
    Knobs,
    check_tokens,
    parse_knobs,
    parse_pairs,
    policy_budget,
    smallest_cap,
)
from langchain_rtr.models import ModelRegistry
from langchain_rtr.specs import ModelSpec
from langchain_rtr.traffic import TrafficLog

Pair = tuple[str, str]

CONTINUE_BODY: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM's chat request fields that make the model continue the final assistant message."""


class DispatchEngine:
    """Routes, calls with fallback and streams with continuation; see the module docstring.

    Args:
        router: The trained router (`RTRRouter`): `models`, `pairs`, `route`, `route_batch`.
        models: Chat models by router model name (a `ModelRegistry`, a mapping, or None for
            `ChatOpenAI` clients built from `router.models`' specs with a `base_url`).
        strategies: Strategies by name; None for the built-in one of each name the router knows.
        policy: Default routing policy; None lets the router use its own.
        allowed_pairs: Pairs this engine may use at all (None: every servable pair).
        max_attempts: Pairs tried per call, the first choice included.
        raise_on_failure: Raise `AllPairsFailedError` instead of returning a failed result.
        continuable_models: Models that may continue a broken-off stream (None: every
            `ChatOpenAI` with a `base_url`; `[]`: none).
        traffic_log: Where every finished call is written (`langchain_rtr.traffic`); None:
            nowhere (the default).

    Raises:
        UnknownPairError: A model, strategy or allowed pair the router was not trained on.
        ConfigError: No pair of the router can be served, or a bad option.
    """

    def __init__(
        self,
        router: Any,
        models: ModelRegistry | Mapping[str, BaseChatModel] | None = None,
        strategies: Mapping[str, Any] | None = None,
        *,
        policy: Any = None,
        allowed_pairs: Any = None,
        max_attempts: int = 3,
        raise_on_failure: bool = False,
        continuable_models: Sequence[str] | None = None,
        traffic_log: TrafficLog | None = None,
    ) -> None:
        self.router = router
        self.traffic_log = traffic_log
        self.models = _registry(router, models)
        self.known: frozenset[Pair] = frozenset((m, s) for m, s in router.pairs)
        self.strategies = _strategies(self.known, strategies)
        self.servable = frozenset(
            p for p in self.known if p[0] in self.models and p[1] in self.strategies
        )
        if not self.servable:
            msg = (
                "none of the router's pairs can be served: models with a chat model: "
                f"{sorted(self.models)}, strategies: {sorted(self.strategies)}; router pairs: "
                f"{sorted(self.known)}"
            )
            raise ConfigError(msg)
        self.policy = parse_knobs({"policy": policy}, lambda _: "policy").policy
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts: expected an int >= 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.raise_on_failure = raise_on_failure
        allowed = self.servable
        if allowed_pairs is not None:
            allowed = allowed & self.check_pairs(allowed_pairs, "allowed_pairs")
        self.allowed: frozenset[Pair] | None = None if allowed == self.known else allowed
        self.continuable_models = None if continuable_models is None else list(continuable_models)
        if self.continuable_models is not None:
            unknown = sorted(set(self.continuable_models) - set(self.models))
            if unknown:
                msg = (
                    f"continuable_models: {unknown} have no chat model here "
                    f"(registered: {sorted(self.models)})"
                )
                raise ConfigError(msg)

    def with_models(self, models: ModelRegistry) -> DispatchEngine:
        """This engine, calling the same models through other clients (the server's pooled ones).

        Raises:
            ConfigError: ``models`` does not name exactly this engine's models.
        """
        if set(models) != set(self.models):
            msg = f"with_models: expected the models {sorted(self.models)}, got {sorted(models)}"
            raise ConfigError(msg)
        engine = copy.copy(self)
        engine.models = models
        return engine

    # ----------------------------------------------------------------- requests
    def check_pairs(self, items: Any, where: str) -> frozenset[Pair]:
        """Parse pairs and check that the router knows them and this engine can serve them."""
        pairs = parse_pairs(items, where)
        _refuse_unknown(f"{where}: pairs", pairs, self.known)
        unservable = sorted(pairs - self.servable)
        if unservable:
            msg = f"{where}: pairs {unservable} have no chat model or strategy registered here"
            raise UnknownPairError(msg)
        return pairs

    def request(
        self,
        input: RTRInput,
        knobs: Knobs | None = None,
        call_kwargs: Mapping[str, Any] | None = None,
        *,
        pairs_label: str = "pairs",
    ) -> CallRequest:
        """The call for ``input`` under ``knobs`` (parsed by `parse_knobs`).

        Tools or a structured output format in ``call_kwargs`` restrict the call to the pairs
        that can carry them (`langchain_rtr.dispatch.tools`).
        """
        question, before, after = split_input(input)
        call_kwargs = dict(call_kwargs or {})
        if call_kwargs.get("max_tokens") is not None:
            call_kwargs["max_tokens"] = check_tokens(call_kwargs["max_tokens"], "max_tokens")
        knobs = knobs or Knobs()
        policy = knobs.policy if knobs.policy is not None else self.policy
        budget = knobs.max_tokens
        if budget is None:
            budget = policy_budget(policy if policy is not None else self.default_policy)
        allowed = self.allowed
        if knobs.pairs is not None:
            per_call = self.check_pairs(sorted(knobs.pairs), pairs_label)
            allowed = per_call if allowed is None else allowed & per_call
            if not allowed:
                msg = f"{pairs_label}: none of {sorted(per_call)} is allowed here"
                raise ConfigError(msg)
        capable = self.capable(call_kwargs, allowed)
        if capable is not None:
            allowed = capable
        return CallRequest(
            question, before, after, policy, allowed, budget, dict(call_kwargs or {})
        )

    def capable(
        self, call_kwargs: Mapping[str, Any], allowed: frozenset[Pair] | None = None
    ) -> frozenset[Pair] | None:
        """The pairs that can carry the call's tools or format; None when it has neither.

        Args:
            call_kwargs: The call's kwargs (``tools``, ``response_format``, ...).
            allowed: The pairs the call may use (None: this engine's own allowed pairs).

        Raises:
            NoCapablePairError: It has tools or a format and no allowed pair can carry them.
        """
        if allowed is None:
            allowed = self.allowed
        usable = self.servable if allowed is None else allowed
        return capable_pairs(usable, self.strategies, self.router.models, call_kwargs)

    @property
    def default_policy(self) -> Any:
        """The policy used when a call names none."""
        return (
            self.policy if self.policy is not None else getattr(self.router, "default_policy", None)
        )

    # ----------------------------------------------------------------- routing
    def route(self, req: CallRequest) -> Any:
        """The router's decision for one call."""
        return self.router.route(req.question, policy=req.policy, allowed=req.allowed)

    def route_many(self, reqs: Sequence[CallRequest | None]) -> list[Any]:
        """Route a batch with as few `route_batch` calls as possible; None where it failed."""
        out: list[Any] = [None] * len(reqs)
        groups: dict[tuple[Any, frozenset[Pair] | None], list[int]] = {}
        for i, req in enumerate(reqs):
            if req is not None:
                groups.setdefault(req.routing_key(), []).append(i)
        for idx in groups.values():
            first = cast("CallRequest", reqs[idx[0]])
            try:
                decisions = self.router.route_batch(
                    [cast("CallRequest", reqs[i]).question for i in idx],
                    policy=first.policy,
                    allowed=first.allowed,
                )
            except Exception:  # one bad question must not sink the batch: route one by one
                continue
            for i, d in zip(idx, decisions, strict=True):
                out[i] = d
        return out

    # ----------------------------------------------------------------- planning
    def plan(self, req: CallRequest, decision: Any) -> list[Pair]:
        """The pairs to try: the first choice, the ranking (all usable), the last resorts."""
        first = (getattr(decision, "model", None), getattr(decision, "strategy", None))
        ranking = [tuple(p) for p in (getattr(decision, "ranking", None) or [])]
        usable = req.allowed if req.allowed is not None else self.servable
        plan: list[Pair] = []
        for pair in [first, *ranking]:
            if pair[0] is None or pair[1] is None:
                continue
            p = cast("Pair", pair)
            if p in usable and p not in plan:
                plan.append(p)
        plan += sorted(p for p in req.last_resort if p in self.servable and p not in plan)
        return plan

    def attempt(self, req: CallRequest, pair: Pair, index: int) -> Attempt:
        """The attempt of ``pair``: rendered prompt, strategy kwargs, capped ``max_tokens``."""
        model_name, strategy_name = pair
        strategy = self.strategies[strategy_name]
        spec = self.router.models.get(model_name)
        asked = req.call_kwargs.get("max_tokens")
        max_tokens = smallest_cap(getattr(spec, "max_tokens", None), req.budget, asked)
        kwargs = {**req.call_kwargs, **(strategy.model_kwargs() or {})}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        messages = merge_messages(req.before, strategy.render(req.question), req.after)
        model, kwargs = bind_call_tools(self.models[model_name], kwargs)
        return Attempt(pair, index, model, strategy, messages, kwargs, max_tokens)

    def can_continue(self, model: str) -> bool:
        """Whether ``model``'s server can continue a final assistant message (vLLM can)."""
        if self.continuable_models is not None:
            return model in self.continuable_models
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:  # pragma: no cover - langchain-openai is a dependency
            return False
        chat = self.models[model]
        return isinstance(chat, ChatOpenAI) and bool(chat.openai_api_base)

    def continuation(
        self, req: CallRequest, decision: Any, failures: list[FailedAttempt], streamed: Streamed
    ) -> Attempt | None:
        """The attempt that continues the streamed answer on another model, if one can.

        Models with a pair of the partial answer's strategy come first, then the rest in
        ranking order.
        """
        first = streamed[0][0]
        strategy = first.pair[1]
        failed = {f.model for f in failures}
        plan = self.plan(req, decision)
        ranked = [m for m, s in plan if s == strategy] + [m for m, _ in plan]
        model = next(
            (m for m in dict.fromkeys(ranked) if m not in failed and self.can_continue(m)), None
        )
        if model is None:
            return None
        attempt = self.attempt(req, (model, strategy), len(failures))
        partial = "".join(c.text for _, chunks in streamed for c in chunks)
        kwargs = dict(attempt.kwargs)
        if attempt.max_tokens is not None:
            done = sum(count_tokens(chunks) for _, chunks in streamed)
            kwargs["max_tokens"] = max(1, attempt.max_tokens - done)
        # A per-call extra_body replaces the client's own (ChatOpenAI), so merge all three.
        kwargs["extra_body"] = {
            **(getattr(attempt.model, "extra_body", None) or {}),
            **(kwargs.get("extra_body") or {}),
            **CONTINUE_BODY,
        }
        messages = [*first.messages, AIMessage(content=partial)]
        return replace(attempt, messages=messages, kwargs=kwargs)

    # ----------------------------------------------------------------- outcome
    def result(
        self,
        req: CallRequest,
        decision: Any,
        started: float,
        failures: list[FailedAttempt],
        attempt: Attempt | None = None,
        message: AIMessage | None = None,
        parsed: Any = None,
        exception: BaseException | None = None,
        parts: Sequence[tuple[str, Usage]] | None = None,
    ) -> RTRResult:
        """The result; `parts` is the usage per model when several wrote the answer.

        Raising on failure (``raise_on_failure``) is `CallRun.finish`'s, after the log.
        """
        usage = usage_of(message) if message is not None else None
        if parts is None:
            parts = [(attempt.pair[0], usage)] if attempt is not None and usage else []
        cost = None
        for model, spent in parts:
            spec: ModelSpec | None = self.router.models.get(model)
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
        answered = attempt is not None and message is not None
        result = RTRResult(
            question=req.question,
            answer=getattr(parsed, "answer", None),
            parse_error=getattr(parsed, "error", None),
            program_output=getattr(parsed, "program_output", None),
            message=message,
            model=attempt.pair[0] if answered and attempt is not None else None,
            strategy=attempt.pair[1] if answered and attempt is not None else None,
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
        return result

    # ----------------------------------------------------------------- execution
    def start(self, req: CallRequest, decision: Any) -> CallRun:
        """A fresh run of one call (what `_loop` drives)."""
        return CallRun(self, req, decision)

    def _loop(
        self, req: CallRequest, decision: Any, *, streamed: bool = False
    ) -> steps.Steps[RTRResult]:
        """The call's fallback loop, once for every driver (`langchain_rtr.dispatch.steps`).

        Streamed, a pair that fails before its first token falls back and one cut after it is
        continued (`CallRun.next_attempt`); a parse error is the caller's, as is a failure of
        the last pair with ``raise_on_failure``.
        """
        run = self.start(req, decision)
        while attempt := run.next_attempt():
            step = steps.Stream(attempt) if streamed else steps.Call(attempt)
            try:
                answer = yield step
            except Exception as exc:
                if run.failed(attempt, exc, step.chunks):
                    continue
                break
            message, parts = run.streamed_answer(attempt, answer) if streamed else (answer, None)
            parsed = yield steps.Parse(attempt.strategy, message)
            return run.finish(attempt, message, parsed, parts)
        return run.finish()

    def execute(self, req: CallRequest, decision: Any, call: SyncCall) -> RTRResult:
        """Call the plan's pairs with ``call`` until one answers."""
        return steps.drive(self._loop(req, decision), call)

    async def aexecute(self, req: CallRequest, decision: Any, call: AsyncCall) -> RTRResult:
        """Async `execute`."""
        return await steps.adrive(self._loop(req, decision), call)

    def execute_stream(
        self, req: CallRequest, decision: Any, call: SyncStreamCall
    ) -> Iterator[AIMessageChunk | RTRResult]:
        """Stream ``call``'s chunks, then one `RTRResult`.

        A pair that fails before its first token falls back; after it, a continuation follows.
        """
        return steps.drive_stream(self._loop(req, decision, streamed=True), call)

    def aexecute_stream(
        self, req: CallRequest, decision: Any, call: AsyncStreamCall
    ) -> AsyncIterator[AIMessageChunk | RTRResult]:
        """Async `execute_stream`."""
        return steps.adrive_stream(self._loop(req, decision, streamed=True), call)


def _registry(
    router: Any, models: ModelRegistry | Mapping[str, BaseChatModel] | None
) -> ModelRegistry:
    if models is None:
        registry = ModelRegistry.from_specs(router.models)
    elif isinstance(models, ModelRegistry):
        registry = models
    else:
        registry = ModelRegistry(models)
    known_models = {m for m, _ in router.pairs}
    _refuse_unknown("models", registry, known_models, "; retrain the router to add them")
    return registry


def _strategies(known: frozenset[Pair], strategies: Mapping[str, Any] | None) -> dict[str, Any]:
    known_strategies = {s for _, s in known}
    if strategies is None:
        from langchain_rtr.strategies import get_strategy

        resolved: dict[str, Any] = {}
        for name in sorted(known_strategies):
            try:
                resolved[name] = get_strategy(name)
            except (KeyError, ValueError):
                continue  # the predictor knows it, nothing here can run it
        return resolved
    resolved = dict(strategies)
    _refuse_unknown("strategies", resolved, known_strategies)
    return resolved


def _refuse_unknown(
    what: str, names: Iterable[Any], known: Collection[Any], hint: str = ""
) -> None:
    """Raise `UnknownPairError` naming those of ``names`` the router was not trained on."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        msg = f"{what} {unknown} were not in the router's training data (it knows: {sorted(known)})"
        raise UnknownPairError(msg + hint)
