"""Every body the server writes is one of the `openai` package's types, field for field.

The server writes dicts (server/responses.py says why); these tests validate what the app
answers, whole and streamed, with and without tool calls, against `ChatCompletion`,
`ChatCompletionChunk`, `Model` and `ErrorObject`, and require the validated object to dump back
to the very body: a field openai would coerce (a string `created`), rename or refuse fails here.
The request side: the fields the request model reads are openai's request fields (plus RTR's
`rtr`), and its roles are openai's message roles.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from openai.types.chat.chat_completion_message_param import ChatCompletionMessageParam
from openai.types.shared import ErrorObject
from pydantic import BaseModel

from langchain_rtr.server.schemas import ChatCompletionRequest, ChatMessage
from tests.unit.test_server import HELLO, Env, post, sse_events
from tests.unit.test_server_tools import WEATHER


def same_after_openai(kind: type[BaseModel], body: dict[str, Any]) -> None:
    """``body`` validates as ``kind`` and dumps back unchanged (RTR's extras included)."""
    parsed = kind.model_validate(body)
    assert parsed.model_dump(mode="json", exclude_unset=True) == body


def test_the_round_trip_check_catches_a_coerced_field() -> None:
    good = {"id": "m", "object": "model", "created": 1, "owned_by": "x"}
    same_after_openai(Model, good)
    with pytest.raises(AssertionError):
        same_after_openai(Model, {**good, "created": "1"})  # openai would make it an int
    with pytest.raises(ValueError):
        same_after_openai(Model, {**good, "object": "models"})


@pytest.mark.parametrize("tools", [False, True])
async def test_whole_answers_are_chat_completions(tools: bool) -> None:
    env = Env()
    body: dict[str, Any] = {"model": "rtr", "messages": HELLO}
    if tools:
        env.small.tool_args = {"location": "Paris"}
        body |= {"tools": [WEATHER], "tool_choice": "required"}
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert ("tool_calls" in out["choices"][0]["message"]) is tools
    same_after_openai(ChatCompletion, out)


@pytest.mark.parametrize("tools", [False, True])
async def test_every_streamed_chunk_is_a_chat_completion_chunk(tools: bool) -> None:
    env = Env()
    body: dict[str, Any] = {
        "model": "rtr",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        env.small.tool_args = {"location": "Paris"}
        body |= {"tools": [WEATHER], "tool_choice": "required"}
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert any(not c["choices"] for c in chunks)  # the usage chunk is there too
    assert any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c["choices"]) is tools
    for chunk in chunks:
        same_after_openai(ChatCompletionChunk, chunk)


async def test_the_model_list_and_cards_are_openai_models() -> None:
    env = Env()
    async with env.client() as c:
        listing = (await c.get("/v1/models")).json()
        card = (await c.get("/v1/models/rtr")).json()
    assert listing["object"] == "list" and len(listing["data"]) >= 2
    for entry in [*listing["data"], card]:
        same_after_openai(Model, entry)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "rtr"},  # missing messages
        {"model": "rtr:lambda=2", "messages": HELLO},  # a knob out of range
        {"model": "nope", "messages": HELLO},  # 404
    ],
)
async def test_error_bodies_hold_openai_error_objects(body: dict[str, Any]) -> None:
    resp = await post(Env(), body)
    assert resp.status_code in (400, 404), resp.text
    same_after_openai(ErrorObject, resp.json()["error"])


def test_the_request_model_reads_only_openai_request_fields() -> None:
    openai_fields = set(
        typing.get_type_hints(completion_create_params.CompletionCreateParamsStreaming)
    )  # the base's fields and `stream`
    ours = set(ChatCompletionRequest.model_fields) - {"rtr"}  # RTR's own extension
    assert ours - openai_fields == set()


def test_the_message_roles_are_openais() -> None:
    roles: set[str] = set()
    for param in typing.get_args(ChatCompletionMessageParam):
        roles.update(typing.get_args(typing.get_type_hints(param)["role"]))
    ours = set(typing.get_args(ChatMessage.model_fields["role"].annotation))
    assert ours == roles
