"""A budget-aware RTR node for LangGraph: route each subtask, call it, book what it cost.

`create_rtr_node(rtr, budget=...)` returns a compiled subgraph that drops into any
`StateGraph` whose state has the `RTRState` keys (subclass `RTRState` or copy its
annotations)::

    builder = StateGraph(MyState)            # MyState(RTRState): + your own keys
    builder.add_node("plan", plan)           # writes state["subtasks"]
    builder.add_node("rtr", create_rtr_node(rtr, budget=Budget(tokens=2_000)))
    builder.add_node("combine", combine)     # reads state["answers"]

How it runs (one *wave* per loop, at most `max_concurrency` subtasks)::

    dispatch ──Send(call) x wave──► call ──► dispatch ──► ... ──► (no subtask left) END

`dispatch` computes what is left of the budget from the results already in the state, gives
each subtask of the wave its share (an even share of what is left, or a share weighted by
predicted output tokens), routes it among the pairs that fit its share, and sends it to `call`
with its `max_tokens` capped by that share. `call` asks `RTRRunnable` and books the measured
usage. The next wave splits whatever the last one did not use.

Why waves with pre-split shares (and not a shared counter): each branch owns its share, and the
shares of a wave sum to at most what was left (:func:`~langchain_rtr.graph.budget.split`
floors), so parallel branches cannot overspend by construction, without locks; and everything
the budget depends on is in the checkpointed state, so a resumed run sees exactly what was
booked. Results are merged by subtask id (an idempotent reducer), so parallel writes, and a
subgraph handing its state back to its parent, never double count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict, cast

import numpy as np
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from langchain_rtr.errors import ConfigError
from langchain_rtr.graph.budget import (
    Budget,
    BudgetSpec,
    Spend,
    book,
    input_token_bound,
    split,
    total_spend,
)
from langchain_rtr.graph.planner import (
    CallTask,
    OnExhausted,
    Pair,
    PlanSettings,
    SubtaskItem,
    SubtaskResult,
    SubtaskStatus,
    budget_tokens,
    finite_or_none,
    pair_key,
    plan_call,
    subtask_result,
)
from langchain_rtr.specs import ModelSpec

__all__ = [
    "OnExhausted",
    "RTRNode",
    "RTRState",
    "SubtaskInput",
    "SubtaskResult",
    "SubtaskStatus",
    "create_rtr_node",
    "merge_results",
]

AllotmentMode = Literal["even", "weighted"]


class SubtaskInput(TypedDict, total=False):
    """One subtask given as a mapping (a plain string is a subtask too).

    Attributes:
        question: The text to route and answer.
        id: A stable id (default: its position and a hash of its text). Results are keyed on
            it; a subtask whose id already has a result in the state is not asked again.
        weight: Its share of the budget in ``allotment="weighted"`` mode (default: the
            router's predicted output tokens).
    """

    question: str
    id: str
    weight: float


def merge_results(
    left: Mapping[str, SubtaskResult] | None, right: Mapping[str, SubtaskResult] | None
) -> dict[str, SubtaskResult]:
    """Reducer of `RTRState.results`: merge by subtask id (later writes win).

    Idempotent and order-free for distinct ids, so parallel branches and a subgraph returning
    its whole state to its parent cannot lose or double count a result.
    """
    merged = dict(left or {})
    merged.update(right or {})
    return merged


class RTRState(TypedDict, total=False):
    """The state keys the RTR node reads and writes.

    Inputs:
        question: One question (used when `subtasks` is absent or empty).
        subtasks: Questions to answer, each a string or a `SubtaskInput`.
        budget: ``{"tokens": int | None, "usd": float | None}`` for the whole run; overrides
            the node's `budget`. Every result already in `results` counts against it.

    Outputs:
        results: Every subtask result by id; the only key parallel branches write (reducer:
            `merge_results`).
        answers: This invocation's results in the order of its subtasks.
        spent: Total booked spend of all `results`.
        budget_left: What is left of the budget (``None`` fields: unbounded).
    """

    question: str
    subtasks: list[str | SubtaskInput]
    budget: BudgetSpec
    results: Annotated[dict[str, SubtaskResult], merge_results]
    answers: list[SubtaskResult]
    spent: Spend
    budget_left: BudgetSpec


class _Input(TypedDict, total=False):
    question: str
    subtasks: list[str | SubtaskInput]
    budget: BudgetSpec
    results: Annotated[dict[str, SubtaskResult], merge_results]


class _Output(TypedDict, total=False):
    results: Annotated[dict[str, SubtaskResult], merge_results]
    answers: list[SubtaskResult]
    spent: Spend
    budget_left: BudgetSpec


class _NodeState(RTRState, total=False):
    rtr_wave: list[CallTask]
    rtr_more: bool


def _default_id(index: int, question: str) -> str:
    digest = hashlib.sha1(question.encode("utf-8"), usedforsecurity=False).hexdigest()[:10]
    return f"{index}:{digest}"


def _items(state: Mapping[str, Any]) -> list[SubtaskItem]:
    raw = state.get("subtasks") or []
    if not raw and state.get("question"):
        raw = [state["question"]]
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        msg = f"state['subtasks']: expected a list of questions, got {type(raw).__name__}"
        raise ConfigError(msg)
    items: list[SubtaskItem] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        weight: float | None = None
        if isinstance(entry, str):
            question, sid = entry, None
        elif isinstance(entry, Mapping) and isinstance(entry.get("question"), str):
            question = entry["question"]
            sid = entry.get("id")
            weight = entry.get("weight")
            if weight is not None and not isinstance(weight, int | float):
                msg = f"state['subtasks'][{i}]['weight']: expected a number, got {weight!r}"
                raise ConfigError(msg)
        else:
            msg = (
                f"state['subtasks'][{i}]: expected a question string or "
                f"{{'question': str, 'id'?: str, 'weight'?: float}}, got {entry!r}"
            )
            raise ConfigError(msg)
        if not question.strip():
            raise ConfigError(f"state['subtasks'][{i}]: the question is empty")
        sid = str(sid) if sid is not None else _default_id(i, question)
        if sid in seen:
            raise ConfigError(f"state['subtasks'][{i}]: duplicate subtask id {sid!r}")
        seen.add(sid)
        items.append(SubtaskItem(sid, i, question, None if weight is None else float(weight)))
    return items


class RTRNode:
    """The node's logic; `compile()` (or `create_rtr_node`) makes the subgraph.

    Args:
        rtr: The `RTRRunnable` that answers (its router must be an `RTRRouter`: `tables`,
            `decide`, `pairs`, `models`, `default_policy`).
        budget: The run's budget when the state has none (default: unbounded).
        allotment: ``"even"``: each subtask of a wave gets ``left / pending``; ``"weighted"``:
            ``left x w / sum(w over pending)``, w the subtask's `weight` or the predicted
            output tokens of the pair the router would pick without a budget.
        on_exhausted: When no pair is predicted to finish within a subtask's share:
            ``"cheapest"`` answers with the cheapest pair that can still be called within it;
            ``"skip"`` records status ``skipped``; ``"raise"`` raises `BudgetExhaustedError`.
        max_concurrency: Subtasks per wave (the fan-out width).
        policy: Routing policy (default: the router's `default_policy`).
        min_call_tokens: A pair is only called with at least this many `max_tokens`.
        input_tokens: Upper bound on a rendered prompt's tokens (default:
            `input_token_bound`: UTF-8 bytes + template overhead).
        confidence: When set, a pair fits a share only if its `confidence`-quantile of output
            tokens does (the router's length quantiles), and weighted shares use that
            quantile: fewer answers are cut off at their share's `max_tokens`.
    """

    def __init__(
        self,
        rtr: Any,
        *,
        budget: Budget | Mapping[str, Any] | None = None,
        allotment: AllotmentMode = "even",
        on_exhausted: OnExhausted = "cheapest",
        max_concurrency: int = 4,
        policy: Any = None,
        min_call_tokens: int = 16,
        input_tokens: Callable[[list[BaseMessage]], int] | None = None,
        confidence: float | None = None,
    ) -> None:
        router: Any = getattr(rtr, "router", None)
        for attr in ("tables", "decide", "pairs", "models"):
            if not hasattr(router, attr):
                msg = (
                    f"create_rtr_node: rtr.router must be an RTRRouter (it has no {attr!r}); "
                    f"got {type(router).__name__}"
                )
                raise ConfigError(msg)
        if allotment not in ("even", "weighted"):
            raise ConfigError(f"allotment: expected 'even' or 'weighted', got {allotment!r}")
        if on_exhausted not in ("cheapest", "skip", "raise"):
            msg = f"on_exhausted: expected 'cheapest', 'skip' or 'raise', got {on_exhausted!r}"
            raise ConfigError(msg)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ConfigError(f"max_concurrency: expected an int >= 1, got {max_concurrency!r}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency: expected an int >= 1, got {max_concurrency!r}")
        if min_call_tokens < 1:
            raise ConfigError(f"min_call_tokens: expected an int >= 1, got {min_call_tokens!r}")
        if confidence is not None and not 0.0 < float(confidence) < 1.0:
            raise ConfigError(f"confidence: expected a number in (0, 1), got {confidence!r}")
        self.confidence = confidence
        self.rtr = rtr
        self.router = router
        self.budget = Budget.coerce(budget, "create_rtr_node(budget=...)")
        self.allotment: AllotmentMode = allotment
        self.on_exhausted: OnExhausted = on_exhausted
        self.max_concurrency = max_concurrency
        self.policy = policy if policy is not None else getattr(router, "default_policy", None)
        self.min_call_tokens = int(min_call_tokens)
        self.input_tokens = input_tokens or (lambda msgs: input_token_bound(msgs))
        servable = set(rtr.servable_pairs)
        if getattr(rtr, "allowed_pairs", None):
            servable &= {(m, s) for m, s in rtr.allowed_pairs}
        self.pairs: list[Pair] = [(m, s) for m, s in router.pairs]
        self.usable = np.array([p in servable for p in self.pairs], dtype=bool)
        if not self.usable.any():
            raise ConfigError("create_rtr_node: the runnable can serve none of the router's pairs")

    # ------------------------------------------------------------------ helpers
    @property
    def settings(self) -> PlanSettings:
        """What `plan_call` needs from this node."""
        return PlanSettings(
            router=self.router,
            pairs=self.pairs,
            usable=self.usable,
            policy=self.policy,
            min_call_tokens=self.min_call_tokens,
            on_exhausted=self.on_exhausted,
            confidence=self.confidence,
        )

    def _spec(self, model: str) -> ModelSpec:
        return cast(ModelSpec, self.router.models[model])

    def _budget(self, state: Mapping[str, Any]) -> Budget:
        if state.get("budget") is not None:
            return Budget.coerce(state["budget"], "state['budget']")
        return self.budget

    def prompt_bounds(self, question: str) -> dict[str, int]:
        """Prompt-token bound per strategy (it depends on the strategy's prompt only)."""
        out: dict[str, int] = {}
        for _, s in self.pairs:
            if s not in out and s in self.rtr.strategies:
                out[s] = int(self.input_tokens(list(self.rtr.strategies[s].render(question))))
        return out

    @staticmethod
    def _summary(budget: Budget, results: Mapping[str, SubtaskResult]) -> tuple[Spend, BudgetSpec]:
        spends = [r["spend"] for r in results.values()]
        return total_spend(spends), budget.left(spends).to_spec()

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, state: _NodeState) -> dict[str, Any]:
        """Plan the next wave: shares, routing, caps; or finish when nothing is pending."""
        items = _items(state)
        results: dict[str, SubtaskResult] = dict(state.get("results") or {})
        budget = self._budget(state)
        pending = [it for it in items if it.id not in results]
        if not pending:
            spent, left_spec = self._summary(budget, results)
            return {
                "answers": [results[it.id] for it in items],
                "spent": spent,
                "budget_left": left_spec,
                "rtr_wave": [],
                "rtr_more": False,
            }
        left = budget.left(r["spend"] for r in results.values())
        wave = pending[: self.max_concurrency]
        need_all = self.allotment == "weighted" and any(it.weight is None for it in pending)
        planned = pending if need_all else wave
        tables = self.router.tables([it.question for it in planned])
        if self.allotment == "weighted":
            weights = self._weights(pending, tables if need_all else None)
        else:
            weights = [1.0] * len(pending)
        shares = split(left, weights, len(wave))
        tasks: list[CallTask] = []
        skipped: dict[str, SubtaskResult] = {}
        for k, (item, share) in enumerate(zip(wave, shares, strict=True)):
            task = plan_call(
                self.settings, item, share, tables, k, left, self.prompt_bounds(item.question)
            )
            if task["status"] == "skipped":
                skipped[item.id] = subtask_result(
                    task,
                    "skipped",
                    error="budget exhausted: no pair can be called within this subtask's share",
                )
            else:
                tasks.append(task)
        update: dict[str, Any] = {
            "rtr_wave": tasks,
            "rtr_more": True,  # the next dispatch plans the rest or writes the answers
            "budget_left": left.to_spec(),
        }
        if skipped:
            update["results"] = skipped
        return update

    def _tokens(self, tables: Any) -> np.ndarray | None:
        """``[n, P]`` tokens budgets are checked on: the point estimate or its quantile."""
        return budget_tokens(tables, self.confidence)

    def _weights(self, pending: list[SubtaskItem], tables: Any) -> list[float]:
        predicted: list[float | None] = [None] * len(pending)
        if tables is not None and tables.output_tokens is not None:
            mask = np.broadcast_to(self.usable, (len(pending), len(self.pairs)))
            tokens = self._tokens(tables)
            for i, d in enumerate(self.router.decide(tables, self.policy, mask)):
                if d.pair is not None and tokens is not None:
                    predicted[i] = finite_or_none(tokens[i, self.pairs.index(d.pair)])
        out: list[float] = []
        for item, pred in zip(pending, predicted, strict=True):
            w = item.weight if item.weight is not None else pred
            out.append(1.0 if w is None else max(float(w), 1.0))
        return out

    @staticmethod
    def fan_out(state: Mapping[str, Any]) -> list[Send] | str:
        """Conditional edge after `dispatch`: one `Send` per planned call, or loop, or end."""
        wave = state.get("rtr_wave") or []
        if wave:
            return [Send("call", task) for task in wave]
        return "dispatch" if state.get("rtr_more") else END

    # ------------------------------------------------------------------ call
    def _config(self, task: CallTask, config: RunnableConfig | None) -> RunnableConfig:
        configurable = dict((config or {}).get("configurable") or {})
        configurable.update(
            {
                "rtr_allowed_pairs": [tuple(p) for p in task["allowed"]],
                "rtr_policy": self.policy,
                # the node's own policy routes: no other policy knob may compete with it
                "rtr_lambda": None,
                "rtr_floor": None,
                "rtr_confidence": None,
                "rtr_budget_rule": None,
            }
        )
        if task["max_tokens"] is not None:
            configurable["rtr_max_tokens"] = int(task["max_tokens"])
        else:
            configurable.pop("rtr_max_tokens", None)
        out = cast(RunnableConfig, {**(config or {}), "configurable": configurable})
        metadata = {**(out.get("metadata") or {}), "rtr_subtask": task["id"]}
        out["metadata"] = metadata
        return out

    def _finish(self, task: CallTask, result: Any) -> dict[str, Any]:
        fallbacks = [f"{f.model}/{f.strategy}: {f.error}" for f in (result.fallbacks or [])]
        if result.message is None:
            out = subtask_result(
                task, "error", max_tokens=result.max_tokens, fallbacks=fallbacks, error=result.error
            )
            return {"results": {task["id"]: out}}
        pair = (result.model, result.strategy)
        usage = result.usage
        spend = book(
            self._spec(pair[0]),
            None if usage is None else usage.input_tokens,
            None if usage is None else usage.output_tokens,
            input_bound=task["input_bounds"].get(pair_key(pair), 0),
            max_tokens=result.max_tokens,
        )
        out = subtask_result(
            task,
            task["status"],
            spend=spend,
            answer=result.answer,
            model=pair[0],
            strategy=pair[1],
            max_tokens=result.max_tokens,
            fallbacks=fallbacks,
            error=result.parse_error,
        )
        return {"results": {task["id"]: out}}

    def _failed(self, task: CallTask, exc: Exception) -> dict[str, Any]:
        error = f"{type(exc).__name__}: {exc}"
        return {"results": {task["id"]: subtask_result(task, "error", error=error)}}

    def call(self, task: CallTask, config: RunnableConfig) -> dict[str, Any]:
        """Answer one subtask within its share (a failure is recorded, never raised)."""
        if not task["allowed"]:
            return {"results": {task["id"]: subtask_result(task, "skipped", error="no pair fits")}}
        try:
            result = self.rtr.invoke(task["question"], self._config(task, config))
        except Exception as exc:
            return self._failed(task, exc)
        return self._finish(task, result)

    async def acall(self, task: CallTask, config: RunnableConfig) -> dict[str, Any]:
        """Async `call`."""
        if not task["allowed"]:
            return {"results": {task["id"]: subtask_result(task, "skipped", error="no pair fits")}}
        try:
            result = await self.rtr.ainvoke(task["question"], self._config(task, config))
        except Exception as exc:
            return self._failed(task, exc)
        return self._finish(task, result)

    # ------------------------------------------------------------------ graph
    def builder(self) -> StateGraph[Any, Any, Any, Any]:
        """The uncompiled subgraph (to compile with your own options)."""
        graph: StateGraph[Any, Any, Any, Any] = StateGraph(
            _NodeState, input_schema=_Input, output_schema=_Output
        )
        graph.add_node("dispatch", self.dispatch)
        graph.add_node(
            "call",
            RunnableLambda(self.call, afunc=self.acall, name="rtr_call"),
            input_schema=CallTask,
        )
        graph.add_edge(START, "dispatch")
        graph.add_conditional_edges("dispatch", self.fan_out, ["call", "dispatch", END])
        graph.add_edge("call", "dispatch")
        return graph

    def compile(self, name: str = "rtr") -> CompiledStateGraph[Any, Any, Any, Any]:
        """The subgraph for `builder.add_node(name, ...)`; it uses the parent's checkpointer."""
        return self.builder().compile(name=name)


def create_rtr_node(
    rtr: Any,
    *,
    budget: Budget | Mapping[str, Any] | None = None,
    allotment: AllotmentMode = "even",
    on_exhausted: OnExhausted = "cheapest",
    max_concurrency: int = 4,
    policy: Any = None,
    min_call_tokens: int = 16,
    input_tokens: Callable[[list[BaseMessage]], int] | None = None,
    name: str = "rtr",
    confidence: float | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A budget-aware RTR node for a `StateGraph` whose state has the `RTRState` keys.

    See `RTRNode` for the arguments. The node answers `state["subtasks"]` (or
    `state["question"]`) and writes `results`, `answers` (in subtask order), `spent` and
    `budget_left`.

    Example:
        ```python
        rtr_node = create_rtr_node(rtr, budget=Budget(tokens=1_000, usd=0.01),
                                   allotment="weighted", max_concurrency=4)
        builder.add_node("rtr", rtr_node)
        ```
    """
    node = RTRNode(
        rtr,
        budget=budget,
        allotment=allotment,
        on_exhausted=on_exhausted,
        max_concurrency=max_concurrency,
        policy=policy,
        min_call_tokens=min_call_tokens,
        input_tokens=input_tokens,
        confidence=confidence,
    )
    return node.compile(name=name)
