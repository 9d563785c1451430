"""A backend that keeps a call alive without finishing it: a total deadline ends the call (a
routed one falls back, a pass-through one is a clear error); a backend whose call failed is
routed around for a cooldown instead of making every request wait on it."""

from __future__ import annotations

import asyncio
import contextlib
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from langchain_rtr.dispatch import CallRequest, RTRResult
from langchain_rtr.dispatch.calls import failed_attempt
from langchain_rtr.server import create_app
from langchain_rtr.server.deadlines import (
    BackendDeadlineError,
    stream_within_deadline,
    within_deadline,
)
from langchain_rtr.server.health import BackendHealth
from langchain_rtr.specs import ModelSpec
from tests.unit.test_backend_timeouts import stub_url  # noqa: F401  (fixture)
from tests.unit.test_runnable_fakes import connection_error
from tests.unit.test_server import HELLO, REPLY, STREAM, Env, post, sse_events, stream_text
from tests.unit.test_server_pooling import routed, served_app

GUARD_S = 60.0  # far above the deadlines below; without them these calls never end
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@contextlib.contextmanager
def stalling_backend(every_s: float | None) -> Iterator[str]:
    """A real server on loopback that reads a request, sends a 200's headers, then one SSE
    comment every ``every_s`` seconds forever (never a token), or nothing (None)."""
    stop = threading.Event()

    class Stalling(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen = b""
            while b"\r\n\r\n" not in seen:
                data = self.request.recv(65536)
                if not data:
                    return
                seen += data
            self.request.sendall(HEAD)
            while not stop.wait(every_s if every_s is not None else 0.1):
                if every_s is not None:
                    try:
                        self.request.sendall(b"2\r\n:\n\r\n")
                    except OSError:
                        return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Stalling)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def trickle_url() -> Iterator[str]:
    with stalling_backend(0.1) as url:
        yield url


@pytest.fixture
def stalled_url() -> Iterator[str]:
    with stalling_backend(None) as url:
        yield url


# ------------------------------------------------------------------ the deadline itself
async def test_a_call_past_its_deadline_raises_a_timeout_naming_it() -> None:
    with pytest.raises(BackendDeadlineError, match="backend 'x' did not finish within its 0.05"):
        await within_deadline(asyncio.sleep(GUARD_S), 0.05, "backend 'x'")
    assert issubclass(BackendDeadlineError, TimeoutError)  # an endpoint failure: falls back


async def test_a_calls_own_timeout_is_not_taken_for_the_deadline() -> None:
    async def own() -> None:
        raise TimeoutError("the client's read timeout")

    with pytest.raises(TimeoutError, match="the client's read timeout") as info:
        await within_deadline(own(), GUARD_S, "backend 'x'")
    assert not isinstance(info.value, BackendDeadlineError)


async def test_a_stream_that_never_ends_is_cut_at_its_deadline_and_closed() -> None:
    closed = asyncio.Event()

    async def forever() -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                await asyncio.sleep(0.01)
                n += 1
                yield n
        finally:
            closed.set()

    got: list[int] = []
    with pytest.raises(BackendDeadlineError):
        async for item in stream_within_deadline(forever(), 0.2, "backend 'x'"):
            got.append(item)
    assert got and got == list(range(1, len(got) + 1)) and closed.is_set()


async def test_a_stream_within_its_deadline_is_passed_through_whole() -> None:
    async def three() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    assert [n async for n in stream_within_deadline(three(), GUARD_S, "x")] == [0, 1, 2]


# ------------------------------------------------------------------ through the server
def trickling_specs(url: str, stub: str) -> dict[str, ModelSpec]:
    """``big`` (the first choice) trickles faster than its first-byte bound: only the deadline
    ends its calls; ``small`` answers."""
    return {
        "big": ModelSpec(
            name="big", base_url=url, max_tokens=64, connect_timeout_s=0.5, first_byte_timeout_s=1
        ),
        "small": ModelSpec(name="small", base_url=stub),
    }


@pytest.mark.allow_hosts(["127.0.0.1"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_routed_call_to_a_trickling_backend_falls_back_at_the_deadline(
    trickle_url: str,
    stub_url: str,  # noqa: F811
    stream: bool,
) -> None:
    _, runnable = served_app(trickling_specs(trickle_url, stub_url))
    app = create_app(runnable, backend_deadline_s=1.0)
    body: dict[str, Any] = {"model": "rtr", "messages": HELLO, "stream": stream}
    resp = await asyncio.wait_for(routed(app, body), GUARD_S)
    assert resp.status_code == 200, resp.text
    if stream:
        rtr = next(e["rtr"] for e in sse_events(resp.text) if isinstance(e, dict) and "rtr" in e)
    else:
        rtr = resp.json()["rtr"]
    assert rtr["model"] == "small"
    failure = rtr["fallbacks"][0]
    assert failure["model"] == "big" and "BackendDeadlineError" in failure["error_type"]


@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_a_passthrough_to_a_trickling_backend_is_a_clear_error(trickle_url: str) -> None:
    """Streamed: the relayed bytes, then an error event and [DONE]; whole: a 504."""
    _, runnable = served_app(trickling_specs(trickle_url, "http://127.0.0.1:1/v1"))
    settings = {"backend_deadline_s": 1.0, "passthrough_timeout_s": 1.0}
    body: dict[str, Any] = {"model": "big", "messages": HELLO}
    whole = await asyncio.wait_for(routed(create_app(runnable, **settings), body), GUARD_S)
    assert whole.status_code == 504 and whole.json()["error"]["code"] == "backend_timeout"
    app = create_app(runnable, **settings)  # `routed` closes an app's clients after it
    streamed = await asyncio.wait_for(routed(app, {**body, "stream": True}), GUARD_S)
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "backend_unavailable"
    assert "deadline" in events[-2]["error"]["message"]


@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_a_passthrough_stream_stalled_after_its_headers_ends_with_done(
    stalled_url: str,
) -> None:
    _, runnable = served_app(trickling_specs(stalled_url, "http://127.0.0.1:1/v1"))
    app = create_app(runnable)
    body = {"model": "big", "messages": HELLO, "stream": True}
    resp = await asyncio.wait_for(routed(app, body), GUARD_S)
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "backend_unavailable"


# ------------------------------------------------------------------ routing around a failure
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result(answered_by: str | None, failures: list[Exception], on: tuple[str, ...]) -> RTRResult:
    """What a routed call ended with (only what the health reads of it)."""
    return RTRResult.model_construct(
        question="q",
        model=answered_by,
        message=AIMessage("4") if answered_by else None,
        fallbacks=[failed_attempt((m, "cot"), exc) for m, exc in zip(on, failures, strict=True)],
    )


def failed_on(*models: str, answered_by: str | None = "small") -> RTRResult:
    return result(answered_by, [connection_error() for _ in models], models)


def test_a_failed_model_is_skipped_for_its_cooldown_then_probed_by_one_request() -> None:
    clock = Clock()
    health = BackendHealth(10.0, clock)
    assert health.skipped() == frozenset()
    health.observe(failed_on("big"))
    assert health.skipped() == {"big"}
    clock.now += 10.5
    assert health.skipped() == frozenset()  # this request may try it: the probe
    assert health.skipped() == {"big"}  # the others keep off it meanwhile
    health.observe(failed_on(answered_by="big"))  # the probe was answered
    assert health.skipped() == frozenset()


def test_a_refusal_is_not_a_reason_to_skip_a_model() -> None:
    health = BackendHealth(10.0, Clock())
    health.observe(result("small", [ValueError("bad request")], ("big",)))
    assert health.skipped() == frozenset()


def test_restrict_keeps_a_request_off_skipped_models_unless_none_would_be_left() -> None:
    env = Env()
    engine = env.runnable.engine
    health = BackendHealth(10.0, Clock())
    req = CallRequest(question="q")
    assert health.restrict(engine, req) is req
    health.observe(failed_on("big"))
    restricted = health.restrict(engine, req)
    assert restricted.allowed and {m for m, _ in restricted.allowed} == {"small"}
    assert restricted.last_resort and {m for m, _ in restricted.last_resort} == {"big"}
    health.observe(failed_on("small", answered_by=None))
    assert health.restrict(engine, req) is req  # every model down: try them all the same


async def test_the_server_routes_around_a_model_that_just_failed() -> None:
    env = Env(backend_cooldown_s=30.0)
    env.big.fail = connection_error()
    first = (await post(env, {"model": "rtr", "messages": HELLO})).json()["rtr"]
    assert first["model"] == "small" and [f["model"] for f in first["fallbacks"]] == ["big"]
    calls = len(env.big.calls)
    second = (await post(env, {"model": "rtr", "messages": HELLO})).json()["rtr"]
    assert second["model"] == "small" and second["fallbacks"] == []
    assert len(env.big.calls) == calls  # not tried: no second wait on it
    off = Env(backend_cooldown_s=0.0)
    off.big.fail = connection_error()
    for _ in range(2):
        again = (await post(off, {"model": "rtr", "messages": HELLO})).json()["rtr"]
        assert [f["model"] for f in again["fallbacks"]] == ["big"]


async def test_a_cooled_down_model_is_the_last_resort_when_the_others_fail() -> None:
    env = Env(backend_cooldown_s=30.0)
    env.big.fail = connection_error()
    await post(env, {"model": "rtr", "messages": HELLO})  # big cools down, small answers
    env.big.fail = None
    env.small.fail = connection_error()
    resp = await post(env, {"model": "rtr", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    rtr = resp.json()["rtr"]
    assert rtr["model"] == "big" and [f["model"] for f in rtr["fallbacks"]] == ["small"]


async def test_a_stream_cut_on_the_last_model_up_is_continued_on_a_cooled_down_one() -> None:
    env = Env({"continuable_models": ["big", "small"]}, backend_cooldown_s=30.0)
    env.big.fail = connection_error()
    await post(env, {"model": "rtr", "messages": HELLO})  # big cools down, small answers
    env.big.fail = None
    env.big.reply = env.small.reply = REPLY
    env.small.cut_after = 3
    resp = await post(env, STREAM)
    assert resp.headers["x-rtr-model"] == "small"
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    assert stream_text(events) == REPLY
    [finish] = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finish["rtr"]["continued"] is True and finish["rtr"]["model"] == "big"
