"""Tools and response formats through the OpenAI-compatible endpoint, on fakes (no sockets).

The fakes (`test_runnable_fakes`): only `small` declares tools, only `direct` carries them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.unit.test_server import BASE, HELLO, Env, assert_openai_error, post, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather at a location.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


class Joke(BaseModel):
    setup: str
    punchline: str


@pytest.fixture
def env() -> Env:
    e = Env()
    e.small.tool_args = {"location": "Paris"}
    return e


async def test_tools_route_to_a_tool_pair_and_come_back_in_openai_shape(env: Env) -> None:
    body = {"model": "rtr", "messages": HELLO, "tools": [WEATHER], "tool_choice": "required"}
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["rtr"]["model"], out["rtr"]["strategy"]) == ("small", "direct")
    assert env.router.calls[-1]["allowed"] == frozenset({("small", "direct")})
    message = out["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}
    sent = env.small.calls[-1]["kwargs"]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required"
    assert not env.big.calls


async def test_streamed_tool_call_deltas_rebuild_the_call(env: Env) -> None:
    body = {"model": "rtr", "messages": HELLO, "tools": [WEATHER], "stream": True}
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    events = [e for e in sse_events(resp.text) if e != "[DONE]"]
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"] and deltas[0]["type"] == "function"
    assert deltas[0]["function"]["name"] == "get_weather"
    assert {d["index"] for d in deltas} == {0}
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {"location": "Paris"}
    assert all("name" not in d["function"] for d in deltas[1:])  # the name comes once


async def test_tool_history_is_routed_on_the_user_question(env: Env) -> None:
    env.small.reply = "Sunny."
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "It's sunny."},
    ]
    body = {"model": "rtr", "messages": messages, "tools": [WEATHER], "tool_choice": "none"}
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"] == {"role": "assistant", "content": "Sunny."}
    assert env.router.calls[-1]["question"] == HELLO[0]["content"]
    sent = env.small.calls[-1]["messages"]
    assert [m.type for m in sent[-3:]] == ["human", "ai", "tool"]
    assert sent[-2].tool_calls[0]["args"] == {"location": "Paris"}
    assert sent[-1].tool_call_id == "c1"


async def test_response_format_reaches_the_model_and_restricts_the_strategy(env: Env) -> None:
    env.big.reply = '{"setup": "a", "punchline": "b"}'
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "Joke", "schema": Joke.model_json_schema()},
    }
    resp = await post(env, {"model": "rtr", "messages": HELLO, "response_format": fmt})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["rtr"]["model"], out["rtr"]["strategy"]) == ("big", "direct")
    assert json.loads(out["choices"][0]["message"]["content"]) == {"setup": "a", "punchline": "b"}
    assert env.big.calls[-1]["kwargs"]["response_format"] == fmt
    text = {"model": "rtr", "messages": HELLO, "response_format": {"type": "text"}}
    assert (await post(env, text)).json()["rtr"]["strategy"] == "cot"  # text: no restriction


async def test_tools_nothing_can_carry_is_a_400_naming_why(env: Env) -> None:
    body = {"model": "rtr:pairs=big/direct", "messages": HELLO, "tools": [WEATHER]}
    err = assert_openai_error(await post(env, body), 400, "no_capable_pair")
    assert err["param"] == "tools" and "tools: true" in err["message"]
    assert not env.big.calls and not env.small.calls


async def test_chat_openai_binds_tools_and_structured_output_against_the_server(
    env: Env,
) -> None:
    env.big.reply = '{"setup": "a", "punchline": "b"}'
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app))
    llm = ChatOpenAI(model="rtr", base_url=f"{BASE}/v1", api_key="x", http_async_client=http)
    msg = await llm.bind_tools([get_weather], tool_choice="get_weather").ainvoke("Weather?")
    assert msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"] == {"location": "Paris"}
    full: Any = None
    async for chunk in llm.bind_tools([get_weather], tool_choice="any").astream("Weather?"):
        full = chunk if full is None else full + chunk
    assert full.tool_calls[0]["args"] == {"location": "Paris"}
    joke = await llm.with_structured_output(Joke, method="json_schema").ainvoke(
        [HumanMessage("A joke?")]
    )
    assert joke == Joke(setup="a", punchline="b")
