"""Tools and structured output through `RTRChatModel`, on fakes (no network).

The fakes (`test_runnable_fakes`): pairs big/small x cot/direct, the router prefers big/cot;
only `small` declares `tools: true` and only `direct` supports tools.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.dispatch.tools import NoCapablePairError
from langchain_rtr.errors import RTRError
from langchain_rtr.runnable import AllPairsFailedError, RTRRunnable
from langchain_rtr.specs import ModelSpec
from tests.unit.test_runnable_fakes import (
    FakeChat,
    FakeRouter,
    connection_error,
    make_models,
    make_strategies,
)


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: str
    punchline: str


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


JOKE = {
    "setup": "Why did the cat sit on the computer?",
    "punchline": "To keep an eye on the mouse.",
}


def build(
    router: FakeRouter | None = None, **models: FakeChat
) -> tuple[RTRChatModel, FakeRouter, dict[str, FakeChat]]:
    router = router or FakeRouter()
    chats = {**make_models(), **models}
    rtr = RTRRunnable(router=router, models=chats, strategies=make_strategies())
    return RTRChatModel(runnable=rtr), router, chats


def weather_models() -> dict[str, FakeChat]:
    return {
        "small": FakeChat(served="small-served", tool_args={"location": "Paris"}),
        "big": FakeChat(served="big-served", tool_args={"location": "Rome"}),
    }


def test_bind_tools_routes_to_tool_pairs_and_the_chosen_model_binds_them() -> None:
    chat, router, models = build(**weather_models())
    msg = chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
    assert router.calls[0]["allowed"] == frozenset({("small", "direct")})
    assert msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"] == {"location": "Paris"}
    assert msg.response_metadata["rtr"]["answered_by"] == ["small", "direct"]
    sent = models["small"].calls[0]["kwargs"]
    # the chosen model's own bind_tools translated "any"; the tools are OpenAI-format dicts
    assert sent["tool_choice"] == "required"
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert models["big"].calls == []


def test_named_tool_choice_reaches_the_model_as_its_own_format() -> None:
    chat, _, models = build(**weather_models())
    chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather?")
    sent = models["small"].calls[0]["kwargs"]["tool_choice"]
    assert sent == {"type": "function", "function": {"name": "get_weather"}}


def test_no_tool_model_is_refused_at_bind_time_with_the_reason() -> None:
    router = FakeRouter()
    router.models = {n: s.model_copy(update={"tools": False}) for n, s in router.models.items()}
    chat, _, _ = build(router)
    with pytest.raises(NoCapablePairError, match="tools: true") as info:
        chat.bind_tools([get_weather])
    assert isinstance(info.value, RTRError)
    # structured output by JSON schema needs no tool model: it still routes
    assert chat.with_structured_output(Joke) is not None


def test_per_call_pairs_without_a_tool_pair_fail_clearly() -> None:
    chat, _, _ = build(**weather_models())
    bound = chat.bind_tools([get_weather])
    with pytest.raises(NoCapablePairError, match="supports_tools"):
        bound.invoke("q", config={"configurable": {"rtr_allowed_pairs": ["small/cot"]}})


def test_tool_results_turn_is_routed_on_the_question_and_history_round_trips() -> None:
    chat, router, models = build(**weather_models())
    bound = chat.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    first = bound.invoke([SystemMessage("Be brief."), question])
    call = first.tool_calls[0]
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage)
    models["small"].reply = "It is sunny in Paris."
    models["small"].tool_args = {}
    second = bound.invoke([SystemMessage("Be brief."), question, first, result], tool_choice="none")
    assert second.text == "It is sunny in Paris."
    assert [c["question"] for c in router.calls] == [question.text, question.text]
    sent = models["small"].calls[-1]["messages"]
    assert [type(m).__name__ for m in sent] == [
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
    ]
    assert sent[2].tool_calls == first.tool_calls
    assert sent[3].tool_call_id == call["id"] and sent[3].text == "It's sunny."


def test_streamed_tool_call_aggregates_to_a_whole_call() -> None:
    chat, _, _ = build(**weather_models())
    chunks = list(chat.bind_tools([get_weather], tool_choice="any").stream("Weather?"))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    [call] = full.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"location": "Paris"})
    assert call["id"]
    assert full.response_metadata["rtr"]["model"] == "small"


async def test_async_tool_call() -> None:
    chat, _, _ = build(**weather_models())
    msg = await chat.bind_tools([get_weather], tool_choice="any").ainvoke("Weather?")
    assert msg.tool_calls[0]["args"] == {"location": "Paris"}
    chunks = [c async for c in chat.bind_tools([get_weather], tool_choice="any").astream("W?")]
    assert sum(len(c.tool_call_chunks) for c in chunks) == 3


def test_half_streamed_tool_call_is_not_continued_elsewhere() -> None:
    small = FakeChat(served="small-served", tool_args={"location": "Paris"}, cut_after=2)
    router = FakeRouter(order=[("small", "direct"), ("big", "direct")])
    router.models["big"] = router.models["big"].model_copy(update={"tools": True})
    chat, _, models = build(router, small=small)
    with pytest.raises(AllPairsFailedError):
        list(chat.bind_tools([get_weather], tool_choice="any").stream("Weather?"))
    assert models["big"].calls == []


def test_tool_call_before_any_chunk_falls_back_to_the_next_tool_pair() -> None:
    router = FakeRouter(order=[("small", "direct"), ("big", "direct")])
    router.models["big"] = router.models["big"].model_copy(update={"tools": True})
    chat, _, models = build(
        router,
        small=FakeChat(served="small-served", fail=connection_error()),
        big=FakeChat(served="big-served", tool_args={"location": "Rome"}),
    )
    msg = chat.bind_tools([get_weather], tool_choice="any").invoke("Weather?")
    assert msg.tool_calls[0]["args"] == {"location": "Rome"}
    assert msg.response_metadata["rtr"]["fallbacks"][0]["model"] == "small"


def test_output_answer_keeps_the_tool_call_message() -> None:
    chat, _, _ = build(**weather_models())
    chat = chat.model_copy(update={"output": "answer"})
    msg = chat.bind_tools([get_weather], tool_choice="any").invoke("Weather?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"


# -- structured output ---------------------------------------------------------------------
def joke_models() -> dict[str, FakeChat]:
    reply = json.dumps(JOKE)
    return {
        "big": FakeChat(served="big-served", reply=reply, tool_args=JOKE),
        "small": FakeChat(served="small-served", reply=reply, tool_args=JOKE),
    }


@pytest.mark.parametrize("schema", [Joke, JokeDict, Joke.model_json_schema()])
def test_json_schema_method_sends_the_schema_and_parses(schema: Any) -> None:
    chat, router, models = build(**joke_models())
    out = chat.with_structured_output(schema).invoke("Tell me a joke about cats.")
    if schema is Joke:
        assert out == Joke(**JOKE)
    else:
        assert out == JOKE
    # any model, but only strategies whose answer is the message itself
    assert router.calls[0]["allowed"] == frozenset({("big", "direct"), ("small", "direct")})
    fmt = models["big"].calls[0]["kwargs"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] in ("Joke", "JokeDict")
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"setup", "punchline"}


def test_function_calling_method_forces_the_schema_tool() -> None:
    chat, router, models = build(**joke_models())
    out = chat.with_structured_output(Joke, method="function_calling").invoke("A joke?")
    assert out == Joke(**JOKE)
    assert router.calls[0]["allowed"] == frozenset({("small", "direct")})
    sent = models["small"].calls[0]["kwargs"]["tool_choice"]
    assert sent == {"type": "function", "function": {"name": "Joke"}}


def test_json_mode_and_include_raw_report_a_parse_failure() -> None:
    chat, _, models = build(**joke_models())
    models["big"].reply = "not json at all"
    out = chat.with_structured_output(Joke, method="json_mode", include_raw=True).invoke("A joke?")
    assert models["big"].calls[0]["kwargs"]["response_format"] == {"type": "json_object"}
    assert isinstance(out["raw"], AIMessage) and out["raw"].text == "not json at all"
    assert out["parsed"] is None and out["parsing_error"] is not None
    models["big"].reply = json.dumps(JOKE)
    ok = chat.with_structured_output(Joke, include_raw=True).invoke("A joke?")
    assert ok["parsed"] == Joke(**JOKE) and ok["parsing_error"] is None


def test_structured_stream_yields_the_parsed_object() -> None:
    chat, _, _ = build(**joke_models())
    chunks = list(chat.with_structured_output(Joke).stream("A joke?"))
    assert chunks and chunks[-1] == Joke(**JOKE)


def test_structured_output_bad_arguments() -> None:
    chat, _, _ = build()
    with pytest.raises(ValueError, match="method"):
        chat.with_structured_output(Joke, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a schema"):
        chat.with_structured_output(None)
    with pytest.raises(ValueError, match="unsupported arguments"):
        chat.with_structured_output(Joke, tools=[get_weather])


def test_structured_output_without_a_direct_strategy_fails_clearly() -> None:
    router = FakeRouter()
    router.pairs = [("big", "cot"), ("small", "cot")]
    router.order = list(router.pairs)
    strategies = {"cot": make_strategies()["cot"]}
    rtr = RTRRunnable(router=router, models=make_models(), strategies=strategies)
    chat = RTRChatModel(runnable=rtr)
    with pytest.raises(NoCapablePairError, match="response_format"):
        chat.with_structured_output(Joke)


def test_models_spec_defaults_to_no_tools() -> None:
    assert ModelSpec(name="m").tools is False
