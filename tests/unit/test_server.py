"""The OpenAI-compatible endpoint, in process (ASGI transport, no sockets), with fake models."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from langchain_rtr.dispatch import CallRun
from langchain_rtr.routing import AccuracyFloor, BestBet, TokenBudget, Tradeoff
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.server import ServerSettings, create_app, parse_rtr_model
from langchain_rtr.specs import ModelSpec
from tests.unit.test_runnable_fakes import (
    FakeChat,
    FakeRouter,
    connection_error,
    make_strategies,
)
from tests.unit.test_runnable_fakes import (
    status_error as backend_status_error,
)

BASE = "http://rtr.test"
BACKEND_URL = "http://backend.test/v1"
KEY = "sk-test-key"
HELLO = [{"role": "user", "content": "What is 2 + 2?"}]


class Backend:
    """A mock OpenAI server for pass-through calls; records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content)
        self.requests.append(body)
        self.headers.append(request.headers)
        if body.get("stream"):
            sse = (
                b'data: {"id":"b1","object":"chat.completion.chunk","choices":[{"index":0,'
                b'"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
                b"data: [DONE]\n\n"
            )
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(
            200,
            json={
                "id": "b1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "direct answer"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )


class Env:
    def __init__(self, runnable_kw: dict[str, Any] | None = None, **settings: Any) -> None:
        settings.setdefault("backend_cooldown_s", 0.0)  # each request meets the fakes as set
        self.router = FakeRouter()
        self.big = FakeChat(served="big-served")
        self.small = FakeChat(served="small-served")
        self.runnable = RTRRunnable(
            router=self.router,
            models={"big": self.big, "small": self.small},
            strategies=make_strategies(),
            **(runnable_kw or {}),
        )
        self.backend = Backend()
        backends = {
            "big": ModelSpec(name="big", base_url=BACKEND_URL, served_name="big-served"),
            "other": ModelSpec(name="other", base_url=BACKEND_URL, api_key="sk-backend"),
        }
        self.app = create_app(
            self.runnable,
            backends=backends,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.backend.handler)),
            **settings,
        )

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE, **kw)


@pytest.fixture
def env() -> Env:
    return Env()


async def post(env: Env, body: Any = None, *, content: Any = None, **kw: Any) -> httpx.Response:
    async with env.client() as c:
        if content is not None:
            return await c.post("/v1/chat/completions", content=content, **kw)
        return await c.post("/v1/chat/completions", json=body, **kw)


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# --------------------------------------------------------------------------- happy paths
async def test_models_list_and_retrieve(env: Env) -> None:
    async with env.client() as c:
        listed = (await c.get("/v1/models")).json()
        assert listed["object"] == "list"
        ids = [m["id"] for m in listed["data"]]
        assert ids[0] == "rtr" and {"big", "other"} <= set(ids)
        assert (await c.get("/v1/models/rtr")).json()["id"] == "rtr"
        assert_openai_error(await c.get("/v1/models/nope"), 404, "model_not_found")


async def test_routed_answer_is_the_models_message_with_rtr_field_and_headers(env: Env) -> None:
    resp = await post(env, {"model": "rtr", "messages": HELLO}, headers={"x-request-id": "abc-1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-abc-1"
    assert body["model"] == "big"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": env.big.reply}
    assert choice["finish_reason"] == "stop"
    words = len(env.big.reply.split())
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": words,
        "total_tokens": 10 + words,
    }
    rtr = body["rtr"]
    assert (rtr["model"], rtr["strategy"]) == ("big", "cot")
    assert rtr["served_model"] == "big-served" and rtr["answer"] == "4"
    assert rtr["predicted_correctness"] == pytest.approx(0.8)
    assert rtr["predicted_tokens"] == pytest.approx(120.0)
    assert rtr["fallbacks"] == []
    assert rtr["timing_ms"]["total"] >= rtr["timing_ms"]["overhead"] >= 0
    h = resp.headers
    assert h["x-rtr-model"] == "big" and h["x-rtr-strategy"] == "cot"
    assert float(h["x-rtr-predicted-correctness"]) == pytest.approx(0.8)
    assert h["x-rtr-fallbacks"] == "0" and float(h["x-rtr-overhead-ms"]) >= 0
    assert h["x-request-id"] == "abc-1"
    # the question routed is the last user message, rendered by the strategy
    assert env.router.calls[-1]["question"] == "What is 2 + 2?"
    sent = env.big.calls[-1]["messages"]
    assert sent[-1].text == "What is 2 + 2?" and sent[0].type == "system"


async def test_request_fields_reach_the_chosen_model(env: Env) -> None:
    body = {
        "model": "rtr",
        "messages": [{"role": "system", "content": "Be brief."}, *HELLO],
        "max_tokens": 7,
        "temperature": 0.0,
        "stop": "\n\n",
        "seed": 1,
        "user": "someone",  # an OpenAI field this server ignores
    }
    assert (await post(env, body)).status_code == 200
    kwargs = env.big.calls[-1]["kwargs"]
    assert kwargs["max_tokens"] == 7 and kwargs["temperature"] == 0.0 and kwargs["seed"] == 1
    assert env.big.calls[-1]["stop"] == ["\n\n"] or kwargs.get("stop") == ["\n\n"]
    assert "Be brief." in env.big.calls[-1]["messages"][0].text


@pytest.mark.parametrize(
    ("model", "extra", "check"),
    [
        ("rtr:lambda=0.3", {}, lambda p, a: p == Tradeoff(0.3)),
        ("rtr:max_tokens=600", {}, lambda p, a: isinstance(p, TokenBudget) and p.max_tokens == 600),
        ("rtr:floor=0.7", {}, lambda p, a: p == AccuracyFloor(0.7)),
        ("rtr", {"rtr": {"lambda": 0.25}}, lambda p, a: p == Tradeoff(0.25)),
        ("rtr:lambda=0.9", {"rtr": {"lambda": 0.1}}, lambda p, a: p == Tradeoff(0.1)),
        (
            "rtr:pairs=small/direct|small/cot",
            {},
            lambda p, a: set(a) == {("small", "direct"), ("small", "cot")},
        ),
        ("rtr", {"rtr": {"pairs": ["small/direct"]}}, lambda p, a: set(a) == {("small", "direct")}),
        ("rtr:max_tokens=60,budget_rule=best_bet", {}, lambda p, a: p == BestBet(60)),
        (
            "rtr:max_tokens=60",
            {"rtr": {"budget_rule": "best_bet"}},
            lambda p, a: p == BestBet(60),
        ),
    ],
)
async def test_knobs_in_the_model_name_and_the_body(
    env: Env, model: str, extra: dict, check: Callable[[Any, Any], bool]
) -> None:
    resp = await post(env, {"model": model, "messages": HELLO, **extra})
    assert resp.status_code == 200, resp.text
    call = env.router.calls[-1]
    assert check(call["policy"], call["allowed"]), call


async def test_max_tokens_knob_caps_the_answer(env: Env) -> None:
    resp = await post(env, {"model": "rtr:max_tokens=40", "messages": HELLO, "max_tokens": 100})
    assert resp.json()["rtr"]["max_tokens"] == 40
    assert env.big.calls[-1]["kwargs"]["max_tokens"] == 40


def test_parse_rtr_model() -> None:
    assert parse_rtr_model("rtr") == {}
    assert parse_rtr_model("rtr:lambda=0.7, max_tokens=600") == {
        "lambda": "0.7",
        "max_tokens": "600",
    }
    assert parse_rtr_model("smol-a") is None
    assert parse_rtr_model("router:lambda=1", route_name="router") == {"lambda": "1"}


async def test_streaming_sends_openai_chunks_then_usage_and_done(env: Env) -> None:
    body = {
        "model": "rtr",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await post(env, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-rtr-model"] == "big" and resp.headers["x-rtr-strategy"] == "cot"
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == env.big.reply
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["rtr"]["answer"] == "4"
    usage = chunks[-1]
    assert usage["choices"] == []
    words = len(env.big.reply.split())
    assert usage["usage"]["completion_tokens"] == words and usage["usage"]["prompt_tokens"] == 10
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_streaming_without_include_usage_has_no_usage_chunk(env: Env) -> None:
    resp = await post(env, {"model": "rtr", "messages": HELLO, "stream": True})
    chunks = sse_events(resp.text)[:-1]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- failures
async def test_a_down_backend_falls_back(env: Env) -> None:
    env.big.fail = connection_error()
    resp = await post(env, {"model": "rtr", "messages": HELLO})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "small"
    assert [f["model"] for f in body["rtr"]["fallbacks"]] == ["big"]
    assert resp.headers["x-rtr-fallbacks"] == "1"
    stream = await post(env, {"model": "rtr", "messages": HELLO, "stream": True})
    assert stream.headers["x-rtr-model"] == "small" and stream.headers["x-rtr-fallbacks"] == "1"
    assert sse_events(stream.text)[-1] == "[DONE]"
    async with env.client() as c:
        stats = (await c.get("/rtr/stats")).json()
    assert stats["fallbacks"] == 2 and stats["answered_after_fallback"] == 2


REPLY = "Two plus two: add the units, carry nothing, so the answer is \\boxed{4}."
STREAM = {
    "model": "rtr",
    "messages": HELLO,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def cut_env(**runnable_kw: Any) -> Env:
    """`big` (the first choice) dies after 3 words of its streamed answer; `small` continues."""
    runnable_kw.setdefault("continuable_models", ["big", "small"])
    env = Env(runnable_kw)
    env.big.reply = env.small.reply = REPLY
    env.big.cut_after = 3
    return env


def stream_text(events: list[Any]) -> str:
    chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


async def test_a_stream_cut_mid_answer_is_continued_on_another_model() -> None:
    env = cut_env()
    resp = await post(env, STREAM)
    assert resp.status_code == 200
    assert resp.headers["x-rtr-model"] == "big"  # sent before the cut
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    assert stream_text(events) == REPLY  # one answer: nothing lost, nothing twice
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    [finish] = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    rtr = finish["rtr"]
    assert rtr["continued"] is True and (rtr["model"], rtr["strategy"]) == ("small", "cot")
    assert rtr["answer"] == "4"
    [cut] = rtr["fallbacks"]
    assert (cut["model"], cut["streamed_tokens"], cut["retryable"]) == ("big", 3, True)
    # usage: big read the prompt (10) and wrote 3 words, small read both and wrote the rest
    words = len(REPLY.split())
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 10 + 13,
        "completion_tokens": words,
        "total_tokens": 23 + words,
    }
    assert env.small.calls[0]["kwargs"]["extra_body"]["continue_final_message"] is True
    async with env.client() as c:
        stats = (await c.get("/rtr/stats")).json()
    assert stats["continued_streams"] == 1 and stats["fallbacks"] == 1


async def test_the_openai_client_reads_a_continued_stream_as_one_answer() -> None:
    env = cut_env()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app))
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="x", http_client=http)
    stream = await client.chat.completions.create(
        model="rtr", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    parts = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == REPLY
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == len(REPLY.split())


@pytest.mark.parametrize(
    ("case", "runnable_kw", "small_cut", "cut_error", "code"),
    [
        ("no model can continue", {"continuable_models": []}, None, None, "backend_unavailable"),
        ("the continuation dies too", {}, 2, None, "backend_unavailable"),
        ("the backend refused mid-stream", {}, None, 400, "backend_rejected"),
    ],
)
async def test_a_stream_that_cannot_be_continued_ends_with_an_error_and_done(
    case: str, runnable_kw: dict[str, Any], small_cut: int | None, cut_error: int | None, code: str
) -> None:
    env = cut_env(**runnable_kw)
    env.small.cut_after = small_cut
    env.big.cut_error = backend_status_error(cut_error) if cut_error else None
    resp = await post(env, STREAM)
    assert resp.status_code == 200, case
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]", case  # a clean end, never a cut connection
    error = events[-2]
    assert set(error) == {"error", "rtr"} and error["error"]["code"] == code, case
    assert error["rtr"]["fallbacks"][0]["streamed_tokens"] == 3
    assert REPLY.startswith(stream_text(events)) and stream_text(events) != REPLY
    assert not any("error" in e for e in events[:-2] if isinstance(e, dict))


async def test_the_openai_client_raises_the_error_event() -> None:
    env = cut_env(continuable_models=[])
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app))
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="x", http_client=http)
    stream = await client.chat.completions.create(model="rtr", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="every routed pair failed"):
        _ = [c async for c in stream]


async def test_a_bug_mid_stream_still_ends_with_an_error_and_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = cut_env()

    def boom(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(CallRun, "streamed_answer", boom)
    resp = await post(env, STREAM)
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_every_backend_down_is_a_502_not_a_stream(env: Env, stream: bool) -> None:
    env.big.fail = connection_error()
    env.small.fail = connection_error()
    resp = await post(env, {"model": "rtr", "messages": HELLO, "stream": stream})
    err = assert_openai_error(resp, 502, "backend_unavailable")
    assert err["type"] == "api_error"
    assert len(resp.json()["rtr"]["fallbacks"]) == 2


async def test_a_backend_refusing_the_request_keeps_its_4xx(env: Env) -> None:
    env.big.fail = backend_status_error(400)
    resp = await post(env, {"model": "rtr", "messages": HELLO})
    assert_openai_error(resp, 400, "backend_rejected")


# --------------------------------------------------------------------------- pass-through
async def test_passthrough_forwards_the_body_and_returns_the_answer_unchanged(env: Env) -> None:
    body = {"model": "big", "messages": HELLO, "max_tokens": 5, "logit_bias": {"50256": -100}}
    resp = await post(env, body)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "direct answer"
    assert resp.headers["x-rtr-strategy"] == "passthrough"
    sent = env.backend.requests[-1]
    assert sent == {**body, "model": "big-served"}  # only the served name differs
    assert not env.big.calls and not env.router.calls
    # by served name, and with the backend's own key (never the client's)
    resp = await post(env, {"model": "other", "messages": HELLO})
    assert resp.status_code == 200
    assert env.backend.headers[-1]["authorization"] == "Bearer sk-backend"


async def test_passthrough_streams_the_backends_sse_unchanged(env: Env) -> None:
    resp = await post(env, {"model": "big-served", "messages": HELLO, "stream": True})
    assert resp.status_code == 200
    assert resp.content.startswith(b'data: {"id":"b1"') and resp.content.endswith(b"[DONE]\n\n")


async def test_passthrough_to_a_down_backend_is_a_502(env: Env) -> None:
    env.backend.down = True
    assert_openai_error(await post(env, {"model": "big", "messages": HELLO}), 502)


# --------------------------------------------------------------------------- openai clients
async def test_openai_client_and_chat_openai_work_unchanged(env: Env) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app))
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="x", http_client=http)
    out = await client.chat.completions.create(model="rtr:lambda=0.5", messages=HELLO)
    assert out.choices[0].message.content == env.big.reply and out.model == "big"
    assert out.usage is not None and out.usage.prompt_tokens == 10
    assert out.model_extra and out.model_extra["rtr"]["strategy"] == "cot"
    stream = await client.chat.completions.create(
        model="rtr", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    parts = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == env.big.reply
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-nope", messages=HELLO)

    llm = ChatOpenAI(
        model="rtr", base_url=f"{BASE}/v1", api_key="x", http_async_client=http, stream_usage=True
    )
    msg = await llm.ainvoke("What is 2 + 2?")
    assert msg.content == env.big.reply and msg.response_metadata["model_name"] == "big"
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == 10
    chunks = [c async for c in llm.astream("What is 2 + 2?")]
    assert "".join(str(c.content) for c in chunks) == env.big.reply
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) > 0


# --------------------------------------------------------------------------- bad input
BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"model": "rtr", "messages": [', 400, "invalid_json"),
    ("empty body", b"", 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, "invalid_type"),
    (
        "a 5,000-digit integer",
        b'{"model": "rtr", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
        400,
        "invalid_json",
    ),
    ("missing messages", {"model": "rtr"}, 400, "missing_required_parameter"),
    ("missing model", {"messages": HELLO}, 400, "missing_required_parameter"),
    ("empty messages", {"model": "rtr", "messages": []}, 400, "empty_array"),
    ("messages not a list", {"model": "rtr", "messages": "hi"}, 400, "invalid_type"),
    (
        "content a number",
        {"model": "rtr", "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_type",
    ),
    (
        "unknown role",
        {"model": "rtr", "messages": [{"role": "bot", "content": "x"}]},
        400,
        "invalid_type",
    ),
    ("model not a string", {"model": 7, "messages": HELLO}, 400, "invalid_type"),
    (
        "temperature a string",
        {"model": "rtr", "messages": HELLO, "temperature": "hot"},
        400,
        "invalid_type",
    ),
    ("stream a string", {"model": "rtr", "messages": HELLO, "stream": "yes"}, 400, "invalid_type"),
    (
        "max_tokens negative",
        {"model": "rtr", "messages": HELLO, "max_tokens": -1},
        400,
        "invalid_type",
    ),
    ("unknown model", {"model": "gpt-9", "messages": HELLO}, 404, "model_not_found"),
    (
        "unknown knob in name",
        {"model": "rtr:lamda=0.5", "messages": HELLO},
        400,
        "unknown_rtr_knob",
    ),
    (
        "unknown knob in body",
        {"model": "rtr", "messages": HELLO, "rtr": {"budget": 3}},
        400,
        "unknown_rtr_knob",
    ),
    ("knob out of range", {"model": "rtr:lambda=2", "messages": HELLO}, 400, "invalid_rtr_knob"),
    (
        "knob not a number",
        {"model": "rtr:max_tokens=lots", "messages": HELLO},
        400,
        "invalid_rtr_knob",
    ),
    ("knob without value", {"model": "rtr:lambda", "messages": HELLO}, 400, "invalid_rtr_knob"),
    (
        "two policies",
        {"model": "rtr:lambda=0.5,floor=0.5", "messages": HELLO},
        400,
        "invalid_rtr_knob",
    ),
    ("unknown pair", {"model": "rtr:pairs=huge/cot", "messages": HELLO}, 400, "invalid_rtr_knob"),
    (
        "no user message",
        {"model": "rtr", "messages": [{"role": "system", "content": "x"}]},
        400,
        "missing_user_message",
    ),
    (
        "empty question",
        {"model": "rtr", "messages": [{"role": "user", "content": "  "}]},
        400,
        "empty_question",
    ),
    (
        "a question of NUL characters",
        {"model": "rtr", "messages": [{"role": "user", "content": "\x00\x00"}]},
        400,
        "empty_question",
    ),
    (
        "image content",
        {
            "model": "rtr",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "unsupported_content",
    ),
    (
        "tool message without its call id",
        {"model": "rtr", "messages": [*HELLO, {"role": "tool", "content": "x"}]},
        400,
        "missing_tool_call_id",
    ),
    (
        "tool call arguments that are not JSON",
        {
            "model": "rtr",
            "messages": [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{"},
                        }
                    ],
                },
            ],
        },
        400,
        "invalid_tool_calls",
    ),
    (
        "function message",
        {"model": "rtr", "messages": [*HELLO, {"role": "function", "content": "x", "name": "f"}]},
        400,
        "unsupported_role",
    ),
    ("n > 1", {"model": "rtr", "messages": HELLO, "n": 2}, 400, "unsupported_parameter"),
    (
        "a tool without a function",
        {"model": "rtr", "messages": HELLO, "tools": [{"type": "function"}]},
        400,
        "invalid_value",
    ),
    (
        "tool_choice without tools",
        {"model": "rtr", "messages": HELLO, "tool_choice": "required"},
        400,
        "invalid_value",
    ),
    (
        "functions",
        {"model": "rtr", "messages": HELLO, "functions": [{"name": "f"}]},
        400,
        "unsupported_parameter",
    ),
    (
        "an unknown response format",
        {"model": "rtr", "messages": HELLO, "response_format": {"type": "xml"}},
        400,
        "invalid_value",
    ),
    (
        "a json_schema format without its schema object",
        {"model": "rtr", "messages": HELLO, "response_format": {"type": "json_schema"}},
        400,
        "invalid_value",
    ),
    (
        "invalid UTF-8",
        b'{"model": "rtr", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "invalid_encoding",
    ),
    (
        "lone surrogate",
        b'{"model": "rtr", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "invalid_encoding",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_input_gets_an_openai_error(
    env: Env, case: str, body: Any, status: int, code: str
) -> None:
    if isinstance(body, bytes):
        resp = await post(env, content=body, headers={"content-type": "application/json"})
    else:
        resp = await post(env, body)
    assert_openai_error(resp, status, code)
    assert not env.big.calls and not env.small.calls  # nothing reached a model


async def test_unknown_knob_is_named_in_the_message(env: Env) -> None:
    err = assert_openai_error(await post(env, {"model": "rtr:lamda=0.5", "messages": HELLO}), 400)
    assert "lamda" in err["message"] and err["param"] == "model"
    err = assert_openai_error(
        await post(env, {"model": "rtr", "messages": HELLO, "rtr": {"budget": 3}}), 400
    )
    assert "budget" in err["message"] and err["param"] == "rtr.budget"
    bad_rule = {"model": "rtr:max_tokens=60,budget_rule=bestbet", "messages": HELLO}
    err = assert_openai_error(await post(env, bad_rule), 400)
    assert "budget_rule" in err["message"] and "best_bet" in err["message"]
    err = assert_openai_error(
        await post(env, {**bad_rule, "model": "rtr:max_tokens=60", "rtr": {"budget_rule": "x"}}),
        400,
    )
    assert "budget_rule" in err["param"]


async def test_a_10_mb_body_is_refused_before_it_is_read(env: Env) -> None:
    big = (
        b'{"model": "rtr", "messages": [{"role": "user", "content": "'
        + b"x" * (10 * 2**20)
        + b'"}]}'
    )
    assert_openai_error(await post(env, content=big), 413, "request_too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(10):
            yield b"x" * 2**20

    assert_openai_error(await post(env, content=chunked()), 413, "request_too_large")


async def test_a_1_mb_question_is_refused(env: Env) -> None:
    question = "What is 2 + 2? " * (2**20 // 15 + 1)
    resp = await post(env, {"model": "rtr", "messages": [{"role": "user", "content": question}]})
    err = assert_openai_error(resp, 400, "question_too_long")
    assert err["param"] == "messages.0.content"
    assert not env.router.calls


async def test_a_body_that_never_finishes_times_out() -> None:
    env = Env(body_timeout_s=0.2)
    import asyncio

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"model": "rtr", '
        await asyncio.sleep(30)
        yield b"}"

    assert_openai_error(await post(env, content=stalled()), 408, "request_timeout")


async def test_api_key() -> None:
    env = Env(api_key=KEY)
    good = {"authorization": f"Bearer {KEY}"}
    assert (await post(env, {"model": "rtr", "messages": HELLO}, headers=good)).status_code == 200
    err = assert_openai_error(
        await post(
            env, {"model": "rtr", "messages": HELLO}, headers={"authorization": "Bearer sk-wrong"}
        ),
        401,
        "invalid_api_key",
    )
    assert err["type"] == "invalid_request_error"
    assert_openai_error(
        await post(env, {"model": "rtr", "messages": HELLO}), 401, "missing_api_key"
    )
    async with env.client() as c:
        assert (await c.get("/v1/models")).status_code == 401
        assert (await c.get("/v1/models", headers=good)).status_code == 200
        assert (await c.get("/health")).status_code == 200  # liveness stays open
    # the key is checked before the body is read: a wrong key with a huge body is a 401
    big = b"x" * (10 * 2**20)
    assert (await post(env, content=big, headers={"authorization": "Bearer no"})).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app))
        client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="sk-wrong", http_client=http)
        await client.chat.completions.create(model="rtr", messages=HELLO)


async def test_unknown_routes_and_methods_get_openai_errors(env: Env) -> None:
    async with env.client() as c:
        assert_openai_error(await c.get("/v1/nothing"), 404)
        assert_openai_error(await c.get("/v1/chat/completions"), 405)


async def test_random_garbage_never_makes_a_500(env: Env) -> None:
    rng = random.Random(0)
    pieces: list[Any] = [None, 1, -1, 0.5, "", "x", True, [], {}, [1], {"a": 1}, "rtr", HELLO]
    keys = ["model", "messages", "stream", "max_tokens", "temperature", "rtr", "stop", "n"]
    statuses = set()
    for _ in range(150):
        if rng.random() < 0.3:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            resp = await post(env, content=raw)
        else:
            body = {k: rng.choice(pieces) for k in rng.sample(keys, rng.randrange(1, len(keys)))}
            if rng.random() < 0.5:
                body["model"] = rng.choice(["rtr", "rtr:lambda=0.5", "big", "zzz", "rtr:x=1"])
            resp = await post(env, body)
        statuses.add(resp.status_code)
        assert resp.status_code < 500, (resp.status_code, resp.text)
        if resp.status_code >= 400:
            assert_openai_error(resp, resp.status_code)
    assert statuses & {400, 404}


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        ServerSettings(route_name="rtr:x")
    with pytest.raises(ValueError):
        ServerSettings(max_body_bytes=0)


async def test_a_bug_is_a_500_with_its_request_id_logged_and_counted(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_rtr.server import schemas

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(schemas.ChatCompletionRequest, "model_validate", broken)
    # Starlette re-raises after its 500 handler ran (for the server's log); read the response.
    transport = httpx.ASGITransport(app=env.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        resp = await c.post(
            "/v1/chat/completions",
            json={"model": "rtr", "messages": HELLO},
            headers={"x-request-id": "req-42"},
        )
        stats = (await c.get("/rtr/stats")).json()
    err = assert_openai_error(resp, 500, "internal_error")
    assert "req-42" in err["message"]
    assert stats["faults"] == 1
    assert any("req-42" in r.getMessage() for r in caplog.records)
