"""Tools and structured output through the router, on the real vLLM CPU servers.

The servers run with vLLM's Hermes tool-call parser, a SmolLM2 chat template that renders
tools, ``--tool-strict-level parameter`` (a forced call follows the tool's argument schema) and
JSON without free whitespace (examples/models.cpu.yaml, read by conftest). The router is fitted
here on planted records that send every question to ``smol-b/cot``, so a call with tools or a
response format must be rerouted to a ``direct`` pair: what is checked is that rerouting, the
round trip of tool calls and tool messages, guided JSON, and `langchain-tests`' standard
integration suite. SmolLM2-135M cannot decide on its own to call a tool, so tool calls are
forced (``tool_choice``) wherever the check needs one; each test that needs more of the model
than that says so in its xfail.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel, Field

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.models import ModelRegistry
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.server import create_app
from tests.integration.conftest import planted_router

if TYPE_CHECKING:
    from tests.integration.conftest import SmolServers

MODELS = ("smol-a", "smol-b")
STRATEGIES = ("direct", "cot")
#: Every spec's cap: answers stay short, a forced tool call still fits (RTR_TOOLS_MAX_TOKENS
#: raises it, e.g. to run the xfailed joke tests with --runxfail).
MAX_TOKENS = int(os.environ.get("RTR_TOOLS_MAX_TOKENS", "48"))
#: A tool call with many tools is slow to start on a busy CPU (its grammar is compiled first).
FIRST_BYTE_S = 120.0
QUESTIONS = [f"Question {i}: what is {i} plus {i}?" for i in range(8)]

SMALL_MODEL = "SmolLM2-135M cannot decide on its own to call a tool (tool_choice='auto')"
LONG_JOKES = (
    "not run (each costs a full-cap generation): SmolLM2-135M did not end the joke's strings, so "
    "its guided JSON runs past the cap (openai.LengthFinishReasonError, measured at 48, 64 and "
    "192 tokens with test_structured_output[pydantic]); guided JSON is exercised for real by "
    "test_structured_output_uses_guided_json and, through a forced tool call, by "
    "test_structured_few_shot_examples"
)


@pytest.fixture(scope="module")
def router(smol_servers: SmolServers) -> RTRRouter:
    """A router that prefers ``smol-b/cot`` for everything (accuracy-only policy)."""
    from langchain_rtr.data.records import RoutingRecord
    from langchain_rtr.predictor import TrainConfig

    specs = {
        name: spec.model_copy(
            update={"max_tokens": MAX_TOKENS, "first_byte_timeout_s": FIRST_BYTE_S}
        )
        for name, spec in smol_servers.specs.items()
    }
    records = [
        RoutingRecord(
            question=q,
            source="synthetic",
            model=m,
            strategy=s,
            score=1.0 if (m, s) == ("smol-b", "cot") else 0.5 if s == "direct" else 0.0,
            output_tokens=8,
        )
        for q in QUESTIONS
        for m in MODELS
        for s in STRATEGIES
    ]
    config = TrainConfig(
        hidden=16,
        learnable_dim=4,
        lr=1e-2,
        batch_size=8,
        max_epochs=40,
        seed=0,
        validation_fraction=0.0,
        ensemble=1,
    )
    return planted_router(specs, records, STRATEGIES, config)


def make_runnable(router: RTRRouter) -> RTRRunnable:
    # Greedy decoding; no client retries (fallback is the router's job).
    models = ModelRegistry.from_specs(router.models, temperature=0, max_retries=0)
    return RTRRunnable(router=router, models=models)


def make_chat(router: RTRRouter, **params: Any) -> RTRChatModel:
    return RTRChatModel(runnable=make_runnable(router), **params)


@tool
def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the person's first name")
    age: int = Field(description="the person's age in years")


def test_router_prefers_a_pair_that_cannot_carry_tools(router: RTRRouter) -> None:
    assert (router.route(QUESTIONS[0]).model, router.route(QUESTIONS[0]).strategy) == (
        "smol-b",
        "cot",
    )


def test_forced_tool_call_is_rerouted_to_a_direct_pair_and_round_trips(
    router: RTRRouter,
) -> None:
    chat = make_chat(router).bind_tools([magic_function], tool_choice="magic_function")
    question = HumanMessage("What is the value of magic_function(3)? Use the tool.")
    first = chat.invoke([question])
    assert isinstance(first, AIMessage)
    assert first.response_metadata["rtr"]["strategy"] == "direct"
    [call] = first.tool_calls
    assert call["name"] == "magic_function" and isinstance(call["args"]["input"], int)
    result = magic_function.invoke(call)
    assert isinstance(result, ToolMessage)
    # the turn after the tool result: routed on the question, the history reaches vLLM whole
    second = make_chat(router).bind_tools([magic_function]).invoke([question, first, result])
    assert isinstance(second, AIMessage) and second.response_metadata["rtr"]["strategy"] == (
        "direct"
    )
    assert second.usage_metadata and second.usage_metadata["input_tokens"] > (
        first.usage_metadata or {}
    ).get("input_tokens", 0)


def test_structured_output_uses_guided_json(router: RTRRouter) -> None:
    structured = make_chat(router).with_structured_output(Person, include_raw=True)
    out = structured.invoke("Alice is 30 years old. Who is she?")
    assert out["parsing_error"] is None, out["raw"].text
    assert isinstance(out["parsed"], Person)
    assert out["raw"].response_metadata["rtr"]["strategy"] == "direct"


async def test_server_streams_a_forced_tool_call_from_vllm(router: RTRRouter) -> None:
    app = create_app(make_chat(router).runnable)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=120)
    llm = ChatOpenAI(
        model="rtr", base_url="http://rtr.test/v1", api_key="x", http_async_client=http
    )
    full: Any = None
    stream = llm.bind_tools([magic_function], tool_choice="any").astream("magic_function(3)?")
    async for chunk in stream:
        full = chunk if full is None else full + chunk
    assert full is not None and full.tool_calls, full
    assert full.tool_calls[0]["name"] == "magic_function"
    assert isinstance(full.tool_calls[0]["args"]["input"], int)
    await http.aclose()


def test_create_agent_with_one_tool_runs_end_to_end(router: RTRRouter) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelRequest, wrap_model_call

    @wrap_model_call
    def call_the_tool_first(request: ModelRequest, handler: Any) -> Any:
        # SmolLM2-135M never chooses a tool itself: force the first call, leave the rest free.
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            request = request.override(tool_choice="any")
        return handler(request)

    agent = create_agent(
        model=make_chat(router), tools=[magic_function], middleware=[call_the_tool_first]
    )
    question = "What is the value of magic_function(3)?"
    out = agent.invoke({"messages": [HumanMessage(question)]})
    messages = out["messages"]
    kinds = [type(m).__name__ for m in messages]
    assert kinds[:3] == ["HumanMessage", "AIMessage", "ToolMessage"], kinds
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    assert messages[2].content == str(magic_function.invoke(messages[1].tool_calls[0]["args"]))
    assert all(
        m.response_metadata["rtr"]["strategy"] == "direct"
        for m in messages
        if isinstance(m, AIMessage)
    )


class TestRTRChatModelIntegration(ChatModelIntegrationTests):
    """langchain-tests' integration suite for RTRChatModel over the two local servers."""

    @property
    def chat_model_class(self) -> type[RTRChatModel]:
        return RTRChatModel

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest, router: RTRRouter) -> RTRChatModel:
        # test_stop_sequence builds a second model from chat_model_params
        self._params = {"runnable": make_runnable(router)}
        return RTRChatModel(**self._params, **(getattr(request, "param", None) or {}))

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return getattr(self, "_params", {})

    # Declared honestly: what RTR over these servers can do.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # the router routes text (images are refused with a clear error)

    @property
    def supports_model_override(self) -> bool:
        return False  # the router picks the model; `model=` is not a per-call knob

    @pytest.mark.xfail(reason=SMALL_MODEL + ": the agent loop's first call must be a tool call")
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=LONG_JOKES, run=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=LONG_JOKES, run=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=LONG_JOKES, run=False)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=LONG_JOKES, run=False)
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(
        reason="json_object mode constrains the reply to JSON, not its keys or length: "
        "SmolLM2-135M's object runs past the cap (openai.LengthFinishReasonError, measured at "
        "48 and 192 tokens)"
    )
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
