"""RTR inside `langchain.agents.create_agent`: as a tool, and as middleware that routes each call.

Two ways in, sharing one budget kept in the agent's state (`RTRAgentState`):

- `RTRMiddleware` routes **every model call** of the agent to a (model, strategy) pair, like
  langchain's `ModelRouterMiddleware` routes to a model, but per call and with a strategy: the
  strategy's prompt is applied to the latest human message (its system part merged into the
  system message), its model kwargs (e.g. the thinking toggle) and a `max_tokens` capped by what
  is left of the budget (and by the request's own `max_tokens`) go into `model_settings`. The
  agent's tools and tool calls pass through untouched; strategies that run programs (PAL) are
  not used, since an agent turn is not a final answer.
- `create_rtr_tool` / `RTRToolMiddleware`: RTR as a tool the agent's own model can call to
  answer a self-contained question. Tool calls of one model turn run in parallel, so each takes
  an even share of what is left, split among the turn's calls to the tool.

Budget: `rtr_budget` in the state (set from the middleware's `budget` when absent) and every
booked call in `rtr_results` (merged by call id). What is left is the budget minus the sum of
the booked spends, so with a checkpointer an interrupted and resumed run, whose finished steps
LangGraph does not run again, sees exactly what was spent. Add `RTRAgentState` keys to your
own `state_schema`, or use either middleware (they declare them).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, NotRequired, cast

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain.agents.middleware.types import ExtendedModelResponse, hook_config
from langchain.tools import ToolRuntime
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.runtime import Runtime
from langgraph.types import Command

from langchain_rtr.dispatch import Call, Fallback, Steps, adrive, drive, merge_system
from langchain_rtr.errors import ConfigError
from langchain_rtr.graph.budget import (
    Allotment,
    Budget,
    BudgetSpec,
    book,
    input_token_bound,
    split,
)
from langchain_rtr.graph.node import RTRNode, merge_results
from langchain_rtr.graph.planner import (
    CallTask,
    OnExhausted,
    SubtaskItem,
    SubtaskResult,
    plan_call,
    subtask_result,
)
from langchain_rtr.knobs import smallest_cap

__all__ = [
    "RTRAgentState",
    "RTRMiddleware",
    "RTRToolMiddleware",
    "budget_left",
    "create_rtr_tool",
]

DEFAULT_TOOL_NAME = "ask_reasoner"
DEFAULT_TOOL_DESCRIPTION = (
    "Answer a self-contained question (math, science, a fact) with the best model and reasoning "
    "strategy for it. Give the full question; the reply is the final answer."
)


class RTRAgentState(AgentState[Any]):
    """Agent state with the RTR budget.

    Attributes:
        rtr_budget: ``{"tokens": int | None, "usd": float | None}`` for the run (thread).
        rtr_results: Every routed call (model calls and tool calls) by call id, with its pair,
            cap and booked spend (a `SubtaskResult`; reducer: merge by id).
    """

    rtr_budget: NotRequired[BudgetSpec]
    rtr_results: NotRequired[Annotated[dict[str, SubtaskResult], merge_results]]


def _records(state: Mapping[str, Any]) -> dict[str, SubtaskResult]:
    return dict(state.get("rtr_results") or {})


def budget_left(state: Mapping[str, Any], default: Budget | None = None) -> BudgetSpec:
    """What is left of the state's RTR budget (``None`` fields: unbounded)."""
    budget = _state_budget(state, default or Budget())
    return budget.left(r["spend"] for r in _records(state).values()).to_spec()


def _state_budget(state: Mapping[str, Any], default: Budget) -> Budget:
    raw = state.get("rtr_budget")
    return default if raw is None else Budget.coerce(raw, "state['rtr_budget']")


def _latest_human(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    msg = "RTRMiddleware needs a HumanMessage in the agent's messages to route on"
    raise ValueError(msg)


class _Planner:
    """Shared by the tool and the middleware: an `RTRNode` used one call at a time."""

    def __init__(
        self,
        rtr: Any,
        *,
        budget: Budget | Mapping[str, Any] | None,
        on_exhausted: OnExhausted,
        policy: Any,
        min_call_tokens: int,
        exclude_programs: bool,
    ) -> None:
        self.node = RTRNode(
            rtr,
            budget=budget,
            on_exhausted=on_exhausted,
            policy=policy,
            min_call_tokens=min_call_tokens,
        )
        if exclude_programs:
            for j, (_, s) in enumerate(self.node.pairs):
                strategy = rtr.strategies.get(s)
                if strategy is not None and getattr(strategy, "is_program", False):
                    self.node.usable[j] = False
            if not self.node.usable.any():
                raise ConfigError("no pair left once program (PAL) strategies are excluded")
        self.rtr = rtr
        self.budget = self.node.budget

    def plan(
        self,
        state: Mapping[str, Any],
        question: str,
        call_id: str,
        *,
        share_of: tuple[int, int] = (0, 1),
        bounds: Mapping[str, int] | None = None,
    ) -> CallTask:
        """Route one call within its share of what is left (`share_of`: (index, siblings))."""
        records = _records(state)
        budget = _state_budget(state, self.budget)
        left: Allotment = budget.left(r["spend"] for r in records.values())
        index, siblings = share_of
        share = split(left, [1.0] * siblings, siblings)[index]
        tables = self.node.router.tables([question])
        item = SubtaskItem(call_id, len(records), question, None)
        if bounds is None:
            bounds = self.node.prompt_bounds(question)
        return plan_call(self.node.settings, item, share, tables, 0, left, bounds)


# --------------------------------------------------------------------------- the tool
def create_rtr_tool(
    rtr: Any,
    *,
    budget: Budget | Mapping[str, Any] | None = None,
    name: str = DEFAULT_TOOL_NAME,
    description: str = DEFAULT_TOOL_DESCRIPTION,
    on_exhausted: OnExhausted = "cheapest",
    policy: Any = None,
    min_call_tokens: int = 16,
) -> BaseTool:
    """RTR as a tool for `create_agent`: routes the question, answers it, books the spend.

    The tool returns a `Command` that adds the `ToolMessage` (the parsed answer; the record as
    its artifact) and books the call in `rtr_results`, so the agent's state schema needs the
    `RTRAgentState` keys (`create_agent(state_schema=RTRAgentState)`, or use
    `RTRToolMiddleware`, which adds both the tool and the keys).

    Args:
        rtr: The `RTRRunnable`.
        budget: Default budget when the state has no `rtr_budget`.
        name: The tool's name.
        description: What the agent's model is told the tool does.
        on_exhausted: ``"cheapest"``, ``"skip"`` (the tool says the budget is exhausted) or
            ``"raise"`` (`BudgetExhaustedError`).
        policy: Routing policy (default: the router's).
        min_call_tokens: Smallest `max_tokens` a call is made with.
    """
    planner = _Planner(
        rtr,
        budget=budget,
        on_exhausted=on_exhausted,
        policy=policy,
        min_call_tokens=min_call_tokens,
        exclude_programs=False,
    )

    def share_of(runtime: ToolRuntime) -> tuple[int, int]:
        messages = (runtime.state or {}).get("messages") or []
        for message in reversed(messages):
            if isinstance(message, AIMessage) and message.tool_calls:
                ids = [c.get("id") for c in message.tool_calls if c.get("name") == name]
                if runtime.tool_call_id in ids:
                    return ids.index(runtime.tool_call_id), len(ids)
                break
        return 0, 1

    def finish(runtime: ToolRuntime, update: dict[str, Any]) -> Command[Any]:
        record: SubtaskResult = next(iter(update["results"].values()))
        if record["status"] == "skipped":
            content = "Not answered: the reasoning budget is exhausted."
        elif record["status"] == "error":
            content = f"Error: {record['error']}"
        else:
            content = record["answer"] or ""
        message = ToolMessage(
            content=content,
            tool_call_id=runtime.tool_call_id or "",
            name=name,
            artifact=record,
            status="error" if record["status"] == "error" else "success",
        )
        return Command(update={"messages": [message], "rtr_results": update["results"]})

    def call_id(runtime: ToolRuntime) -> str:
        return f"tool:{runtime.tool_call_id or uuid.uuid4().hex}"

    def ask(question: str, runtime: ToolRuntime) -> Command[Any]:
        cid = call_id(runtime)
        task = planner.plan(runtime.state or {}, question, cid, share_of=share_of(runtime))
        if task["status"] == "skipped":
            return finish(runtime, {"results": {cid: subtask_result(task, "skipped")}})
        return finish(runtime, planner.node.call(task, runtime.config))

    async def aask(question: str, runtime: ToolRuntime) -> Command[Any]:
        cid = call_id(runtime)
        task = planner.plan(runtime.state or {}, question, cid, share_of=share_of(runtime))
        if task["status"] == "skipped":
            return finish(runtime, {"results": {cid: subtask_result(task, "skipped")}})
        return finish(runtime, await planner.node.acall(task, runtime.config))

    return StructuredTool.from_function(
        func=ask, coroutine=aask, name=name, description=description
    )


class _BudgetDefaultMiddleware(AgentMiddleware[RTRAgentState, Any, Any]):
    """The RTR state keys, with the default budget put in unless the caller gave one."""

    state_schema = RTRAgentState
    budget: Budget

    def before_agent(self, state: RTRAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Put the default budget in the state unless the caller gave one."""
        if state.get("rtr_budget") is None and not self.budget.total.unbounded:
            return {"rtr_budget": self.budget.to_spec()}
        return None

    async def abefore_agent(
        self, state: RTRAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_agent`."""
        return self.before_agent(state, runtime)


class RTRToolMiddleware(_BudgetDefaultMiddleware):
    """Adds the RTR tool (`create_rtr_tool`) and the `RTRAgentState` keys to an agent."""

    def __init__(
        self,
        rtr: Any,
        *,
        budget: Budget | Mapping[str, Any] | None = None,
        name: str = DEFAULT_TOOL_NAME,
        description: str = DEFAULT_TOOL_DESCRIPTION,
        on_exhausted: OnExhausted = "cheapest",
        policy: Any = None,
        min_call_tokens: int = 16,
    ) -> None:
        """See `create_rtr_tool` for the arguments."""
        super().__init__()
        self.budget = Budget.coerce(budget, "RTRToolMiddleware(budget=...)")
        self.tools = [
            create_rtr_tool(
                rtr,
                budget=self.budget,
                name=name,
                description=description,
                on_exhausted=on_exhausted,
                policy=policy,
                min_call_tokens=min_call_tokens,
            )
        ]


def _exhausted_message() -> AIMessage:
    return AIMessage(
        content="Stopped: the reasoning budget for this run is exhausted.",
        response_metadata={"rtr": {"status": "skipped"}},
    )


def _described(fallback: Fallback) -> list[str]:
    return [
        f"{f.model}/{f.strategy}: {f.error_type.rpartition('.')[2]}: {f.error}"
        for f in fallback.failures
    ]


# --------------------------------------------------------------------------- middleware
class RTRMiddleware(_BudgetDefaultMiddleware):
    """Route each model call of an agent to a (model, strategy) pair within a budget.

    Per call: the latest human message is routed among the pairs whose strategy is not a
    program and whose worst case fits what is left of the budget (the whole prompt, history
    and tool schemas included, bounds the input); the chosen model gets the strategy's
    rendering of that message and `max_tokens` capped by what is left; the measured usage is
    booked in `rtr_results`; the decision is in the answer's `response_metadata["rtr"]`. An
    endpoint failure falls back to the next affordable pair of the ranking.

    Args:
        rtr: The `RTRRunnable` (its router, chat models and strategies are used).
        budget: Default budget when the state has no `rtr_budget`.
        on_exhausted: ``"cheapest"``; ``"skip"``: the agent gets an `AIMessage` saying the
            budget is exhausted (no tool calls, so the agent stops); ``"raise"``:
            `BudgetExhaustedError`.
        policy: Routing policy (default: the router's).
        min_call_tokens: Smallest `max_tokens` a call is made with.
        input_tokens: Upper bound on a prompt's tokens (default: UTF-8 bytes + overhead).
    """

    def __init__(
        self,
        rtr: Any,
        *,
        budget: Budget | Mapping[str, Any] | None = None,
        on_exhausted: OnExhausted = "cheapest",
        policy: Any = None,
        min_call_tokens: int = 16,
        input_tokens: Callable[[list[BaseMessage]], int] | None = None,
    ) -> None:
        """Build the middleware (see the class doc)."""
        super().__init__()
        self.planner = _Planner(
            rtr,
            budget=budget,
            on_exhausted=on_exhausted,
            policy=policy,
            min_call_tokens=min_call_tokens,
            exclude_programs=True,
        )
        self.rtr = rtr
        self.budget = self.planner.budget
        self.input_tokens = input_tokens

    # ----------------------------------------------------------------- ending
    @hook_config(can_jump_to=["end"])
    def before_model(self, state: RTRAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the agent when what is left of the budget pays for no call.

        The way langchain's own `ModelCallLimitMiddleware` ends a run: ``jump_to: "end"``
        with an `AIMessage` saying why, and the skipped call booked in `rtr_results`. The
        prompt bound here is the question's alone (the call's real prompt is longer), so a
        call that passes may still be refused by `wrap_model_call` once tools are counted.
        """
        left = _state_budget(state, self.budget).left(r["spend"] for r in _records(state).values())
        if left.unbounded:
            return None
        messages = state.get("messages") or []
        try:
            question = messages[_latest_human(messages)].text
        except ValueError:
            return None  # wrap_model_call says what is wrong
        cid = f"model:{uuid.uuid4().hex}"
        task = self.planner.plan(state, question, cid)
        if task["status"] != "skipped" and task["allowed"]:
            return None
        record = subtask_result(task, "skipped", error="budget exhausted")
        return {"jump_to": "end", "messages": [_exhausted_message()], "rtr_results": {cid: record}}

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: RTRAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_model`."""
        return self.before_model(state, runtime)

    # ----------------------------------------------------------------- planning
    def _apply(self, request: ModelRequest[Any], strategy_name: str) -> ModelRequest[Any]:
        """The request with the strategy applied to the latest human message."""
        messages = list(request.messages)
        i = _latest_human(messages)
        rendered = self.rtr.strategies[strategy_name].render(messages[i].text)
        system = [m for m in rendered if isinstance(m, SystemMessage)]
        rest = cast(list[AnyMessage], [m for m in rendered if not isinstance(m, SystemMessage)])
        return request.override(
            messages=messages[:i] + rest + messages[i + 1 :],
            system_message=merge_system(
                [request.system_message, *system] if request.system_message is not None else system
            ),
        )

    def _bounds(self, request: ModelRequest[Any]) -> dict[str, int]:
        tools = [convert_to_openai_tool(t) for t in request.tools]
        out: dict[str, int] = {}
        for _, s in self.planner.node.pairs:
            if s in out or s not in self.rtr.strategies:
                continue
            applied = self._apply(request, s)
            msgs: list[BaseMessage] = list(applied.messages)
            if applied.system_message is not None:
                msgs.insert(0, applied.system_message)
            if self.input_tokens is not None:
                out[s] = int(self.input_tokens(msgs)) + input_token_bound([], tools=tools)
            else:
                out[s] = input_token_bound(msgs, tools=tools)
        return out

    def _plan(self, request: ModelRequest[Any]) -> tuple[str, CallTask]:
        messages = request.messages
        question = messages[_latest_human(messages)].text
        cid = f"model:{uuid.uuid4().hex}"
        task = self.planner.plan(request.state, question, cid, bounds=self._bounds(request))
        return cid, task

    def _requests(self, request: ModelRequest[Any], task: CallTask) -> list[Any]:
        out = []
        for model, strategy in task["allowed"]:
            settings = {**request.model_settings}
            settings.update(self.rtr.strategies[strategy].model_kwargs() or {})
            spec = self.planner.node.settings.spec(model)
            max_tokens = smallest_cap(
                task["max_tokens"], spec.max_tokens, request.model_settings.get("max_tokens")
            )
            if max_tokens is not None:
                settings["max_tokens"] = max_tokens
            applied = self._apply(request, strategy).override(
                model=self.rtr.models[model], model_settings=settings
            )
            out.append(((model, strategy), applied, settings.get("max_tokens")))
        return out

    def _skipped(self, cid: str, task: CallTask) -> ExtendedModelResponse[Any]:
        record = subtask_result(task, "skipped", error="budget exhausted")
        message = _exhausted_message()
        return ExtendedModelResponse(
            model_response=ModelResponse(result=[message]),
            command=Command(update={"rtr_results": {cid: record}}),
        )

    def _booked(
        self,
        cid: str,
        task: CallTask,
        pair: tuple[str, str],
        max_tokens: int | None,
        response: ModelResponse[Any],
        failures: list[str],
    ) -> ExtendedModelResponse[Any]:
        result = list(response.result)
        k = next((i for i, m in enumerate(result) if isinstance(m, AIMessage)), None)
        usage = cast(AIMessage, result[k]).usage_metadata if k is not None else None
        spend = book(
            self.planner.node.settings.spec(pair[0]),
            None if usage is None else usage.get("input_tokens"),
            None if usage is None else usage.get("output_tokens"),
            input_bound=task["input_bounds"].get(f"{pair[0]}/{pair[1]}", 0),
            max_tokens=max_tokens,
        )
        record = subtask_result(
            task,
            task["status"],
            spend=spend,
            model=pair[0],
            strategy=pair[1],
            max_tokens=max_tokens,
            fallbacks=failures,
        )
        if k is not None:
            message = cast(AIMessage, result[k])
            meta = {
                **message.response_metadata,
                "rtr": {
                    "model": pair[0],
                    "strategy": pair[1],
                    "status": task["status"],
                    "max_tokens": max_tokens,
                    "predicted_tokens": task["predicted_tokens"],
                    "predicted_correctness": task["predicted_correctness"],
                },
            }
            result[k] = message.model_copy(update={"response_metadata": meta})
        return ExtendedModelResponse(
            model_response=ModelResponse(
                result=result, structured_response=response.structured_response
            ),
            command=Command(update={"rtr_results": {cid: record}}),
        )

    def _steps(
        self, request: ModelRequest[Any]
    ) -> Steps[ModelResponse[Any] | ExtendedModelResponse[Any]]:
        """This model call's loop, once for both drivers: plan, skip or fall back, book.

        An endpoint failure moves to the next allowed pair not on a model that already failed,
        up to the engine's ``max_attempts``; any other failure, or the last one, is raised.
        """
        cid, task = self._plan(request)
        if task["status"] == "skipped" or not task["allowed"]:
            return self._skipped(cid, task)
        last: Exception | None = None
        fallback = Fallback(self.rtr.engine.max_attempts)
        for pair, routed, max_tokens in self._requests(request, task):
            if not fallback.allows(pair):
                continue
            try:
                response = yield Call(routed)
            except Exception as exc:
                if fallback.failed(pair, exc).retryable:
                    last = exc
                    continue
                raise
            return self._booked(cid, task, pair, max_tokens, response, _described(fallback))
        raise cast(Exception, last)  # the plan is never empty: some pair was tried

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Route this model call, cap it by the budget left, book its measured usage."""
        return drive(self._steps(request), handler)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Async `wrap_model_call`."""
        return await adrive(self._steps(request), handler)
