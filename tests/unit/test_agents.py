"""RTR in `create_agent`: the routing middleware, the tool, budgets, resume without double spend."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, wrap_model_call
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from pydantic import Field, PrivateAttr

from langchain_rtr.agents import RTRAgentState, RTRMiddleware, RTRToolMiddleware, budget_left
from langchain_rtr.graph import Budget, BudgetExhaustedError
from tests.unit.test_graph_fakes import make_rtr


class AgentChat(BaseChatModel):
    """Calls the `lookup` tool first, then answers; honours max_tokens; reports usage."""

    served: str = "agent"
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    answer_tokens: int = 50
    calls: list[dict[str, Any]] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "fake-agent"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def _reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        cap = kwargs.get("max_tokens")
        out = self.answer_tokens if cap is None else min(self.answer_tokens, int(cap))
        usage = {"input_tokens": 20, "output_tokens": out, "total_tokens": 20 + out}
        with self._lock:
            self.calls.append({"messages": messages, "max_tokens": cap, "output_tokens": out})
        if self.tool_calls and not any(isinstance(m, ToolMessage) for m in messages):
            return AIMessage(content="", tool_calls=self.tool_calls, usage_metadata=usage)  # type: ignore[arg-type]
        return AIMessage(content="\\boxed{7}", usage_metadata=usage)  # type: ignore[arg-type]

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:  # type: ignore[no-untyped-def]
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, kwargs))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:  # type: ignore[no-untyped-def]
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, kwargs))])


LOOKUP = [{"name": "lookup", "args": {"q": "x"}, "id": "call-1", "type": "tool_call"}]


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return "found"


@tool
def ask_human(q: str) -> str:
    """Ask a person (pauses the run)."""
    return str(interrupt({"question": q}))


def agent_models(**kw: Any) -> dict[str, AgentChat]:
    return {"big": AgentChat(served="big", **kw), "small": AgentChat(served="small", **kw)}


def calls_of(models: dict[str, AgentChat]) -> list[dict[str, Any]]:
    return [c for m in models.values() for c in m.calls]


def test_middleware_routes_each_call_and_books_spend() -> None:
    models = agent_models(tool_calls=LOOKUP)
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    mw = RTRMiddleware(rtr, budget=Budget(tokens=500))
    agent = create_agent(models["big"], tools=[lookup], middleware=[mw])
    out = agent.invoke({"messages": [HumanMessage("What is 3 + 4?")]})
    ai = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(ai) == 2 and ai[-1].content == "\\boxed{7}"
    for m in ai:
        rtr_meta = m.response_metadata["rtr"]
        assert (rtr_meta["model"], rtr_meta["strategy"]) in rtr.servable_pairs
        assert rtr_meta["max_tokens"] <= 500
    records = out["rtr_results"]
    assert len(records) == 2
    booked = sum(r["spend"]["output_tokens"] for r in records.values())
    assert booked == sum(m.usage_metadata["output_tokens"] for m in ai)  # type: ignore[index]
    assert booked == sum(c["output_tokens"] for c in calls_of(models))
    assert budget_left(out)["tokens"] == 500 - booked
    # The second call's cap is what was left after the first.
    caps = [c["max_tokens"] for c in calls_of(models)]
    assert caps[1] <= 500 - calls_of(models)[0]["output_tokens"]


def test_middleware_keeps_a_smaller_max_tokens_the_agent_asked_for() -> None:
    models = agent_models()
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]

    @wrap_model_call
    def cap_at_7(request: ModelRequest[Any], handler: Any) -> Any:
        return handler(request.override(model_settings={**request.model_settings, "max_tokens": 7}))

    mw = RTRMiddleware(rtr, budget=Budget(tokens=500))
    agent = create_agent(models["big"], middleware=[cap_at_7, mw])
    out = agent.invoke({"messages": [HumanMessage("What is 3 + 4?")]})
    assert [c["max_tokens"] for c in calls_of(models)] == [7]
    assert out["messages"][-1].response_metadata["rtr"]["max_tokens"] == 7


def test_middleware_applies_the_strategy_prompt() -> None:
    models = agent_models()
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    agent = create_agent(models["big"], tools=[], middleware=[RTRMiddleware(rtr)])
    out = agent.invoke({"messages": [HumanMessage("What is 3 + 4?")]})
    meta = [m for m in out["messages"] if isinstance(m, AIMessage)][-1].response_metadata["rtr"]
    sent = calls_of(models)[0]["messages"]
    if meta["strategy"] == "cot":
        assert "step by step" in sent[0].text
    assert sent[-1].text == "What is 3 + 4?"


def test_middleware_budget_exhausted_modes() -> None:
    models = agent_models()
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    skip = create_agent(
        models["big"], middleware=[RTRMiddleware(rtr, budget=Budget(tokens=5), on_exhausted="skip")]
    )
    out = skip.invoke({"messages": [HumanMessage("hi?")]})
    assert "budget" in out["messages"][-1].text
    assert calls_of(models) == []
    raising = create_agent(
        models["big"],
        middleware=[RTRMiddleware(rtr, budget=Budget(tokens=5), on_exhausted="raise")],
    )
    with pytest.raises(BudgetExhaustedError):
        raising.invoke({"messages": [HumanMessage("hi?")]})


async def test_middleware_async_and_state_budget() -> None:
    models = agent_models(answer_tokens=80)
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    agent = create_agent(models["big"], middleware=[RTRMiddleware(rtr, budget=Budget(tokens=900))])
    out = await agent.ainvoke({"messages": [HumanMessage("hi?")], "rtr_budget": {"tokens": 40}})
    assert out["rtr_budget"] == {"tokens": 40}
    assert calls_of(models)[0]["max_tokens"] <= 40
    assert sum(r["spend"]["output_tokens"] for r in out["rtr_results"].values()) <= 40


def test_resume_after_interrupt_does_not_spend_twice() -> None:
    models = agent_models(
        tool_calls=[{"name": "ask_human", "args": {"q": "ok?"}, "id": "c1", "type": "tool_call"}]
    )
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    agent = create_agent(
        models["big"],
        tools=[ask_human],
        middleware=[RTRMiddleware(rtr, budget=Budget(tokens=1_000))],
        checkpointer=InMemorySaver(),
    )
    cfg = {"configurable": {"thread_id": "a1"}}
    first = agent.invoke({"messages": [HumanMessage("What is 3 + 4?")]}, cfg)
    assert "__interrupt__" in first
    assert len(calls_of(models)) == 1
    out = agent.invoke(Command(resume="yes"), cfg)
    calls = calls_of(models)
    assert len(calls) == 2  # the first model call was not made again
    assert len(out["rtr_results"]) == 2
    booked = sum(r["spend"]["output_tokens"] for r in out["rtr_results"].values())
    assert booked == sum(c["output_tokens"] for c in calls)


def test_rtr_tool_splits_the_budget_among_parallel_calls() -> None:
    rtr, chat = make_rtr()
    calls = [
        {"name": "ask_reasoner", "args": {"question": f"what is {i} + {i}?"}, "id": f"t{i}"}
        for i in range(3)
    ]
    driver = AgentChat(served="driver", tool_calls=[dict(c, type="tool_call") for c in calls])
    agent = create_agent(driver, middleware=[RTRToolMiddleware(rtr, budget=Budget(tokens=300))])
    out = agent.invoke({"messages": [HumanMessage("sum three things")]})
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 3 and all(m.content == "7" for m in tool_msgs)
    records = out["rtr_results"]
    assert len(records) == 3
    for r in records.values():
        assert r["allotted"]["tokens"] == 100 and r["max_tokens"] <= 100
    answered = [c for m in chat.values() for c in m.calls]
    assert sum(c["output_tokens"] for c in answered) <= 300
    assert sum(r["spend"]["output_tokens"] for r in records.values()) == sum(
        c["output_tokens"] for c in answered
    )


def test_rtr_tool_with_state_schema() -> None:
    from langchain_rtr.agents import create_rtr_tool

    rtr, _ = make_rtr()
    driver = AgentChat(
        served="driver",
        tool_calls=[
            {"name": "ask_reasoner", "args": {"question": "2+2?"}, "id": "t", "type": "tool_call"}
        ],
    )
    agent = create_agent(driver, tools=[create_rtr_tool(rtr)], state_schema=RTRAgentState)
    out = agent.invoke({"messages": [HumanMessage("go")]})
    assert [m.content for m in out["messages"] if isinstance(m, ToolMessage)] == ["7"]


def test_middleware_ends_an_exhausted_agent_with_jump_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = agent_models()
    rtr, _ = make_rtr(models=models)  # type: ignore[arg-type]
    middleware = RTRMiddleware(rtr, budget=Budget(tokens=5), on_exhausted="skip")

    def no_model_call(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run must end before the model call")

    monkeypatch.setattr(RTRMiddleware, "wrap_model_call", no_model_call)
    ended = middleware.before_model({"messages": [HumanMessage("hi?")]}, None)  # type: ignore[arg-type]
    assert ended is not None and ended["jump_to"] == "end"
    assert "budget" in ended["messages"][0].text
    (record,) = ended["rtr_results"].values()
    assert record["status"] == "skipped"
    agent = create_agent(models["big"], middleware=[middleware])
    out = agent.invoke({"messages": [HumanMessage("hi?")]})
    assert "budget" in out["messages"][-1].text and calls_of(models) == []
    assert [r["status"] for r in out["rtr_results"].values()] == ["skipped"]
    # an unbounded budget never plans twice: nothing to end
    assert RTRMiddleware(rtr).before_model({"messages": [HumanMessage("hi?")]}, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("max_attempts", "expected_calls"), [(3, 2), (1, 1)])
def test_middleware_falls_back_by_the_engines_rule(
    max_attempts: int, expected_calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai
    from httpx import Request

    def down(self: Any, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        self.calls.append({"messages": messages, "max_tokens": kwargs.get("max_tokens")})
        raise openai.APIConnectionError(request=Request("POST", "http://127.0.0.1:9/v1"))

    models = agent_models()
    monkeypatch.setattr(type(models["big"]), "_reply", down)
    rtr, _ = make_rtr(models=models, max_attempts=max_attempts)  # type: ignore[arg-type]
    agent = create_agent(models["big"], middleware=[RTRMiddleware(rtr)])
    with pytest.raises(openai.APIConnectionError):
        agent.invoke({"messages": [HumanMessage("hi?")]})
    # each model is tried once (its other strategy is skipped), and never past max_attempts
    assert len(calls_of(models)) == expected_calls
