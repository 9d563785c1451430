"""The step drivers: one loop, run sync and async, with calls, parses and streams."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from langchain_rtr.dispatch import (
    Call,
    Parse,
    Steps,
    Stream,
    adrive,
    adrive_stream,
    drive,
    drive_stream,
)


class Down(Exception):
    """A failure the loops below fall back on."""


class Fatal(Exception):
    """A failure the loops below let out."""


def fallback(requests: list[str], log: list[Any]) -> Steps[str]:
    """Call each request until one answers; `Down` falls back, anything else escapes."""
    for request in requests:
        try:
            answer = yield Call(request)
        except Down as exc:
            log.append(("down", request, str(exc)))
            continue
        return f"{request}->{answer}"
    return "none answered"


def plain(name: str) -> Callable[[str], str]:
    def call(request: str) -> str:
        if request.startswith("down"):
            raise Down(request)
        if request.startswith("fatal"):
            raise Fatal(request)
        return f"{name}({request})"

    return call


def aplain(name: str) -> Callable[[str], Any]:
    sync = plain(name)

    async def acall(request: str) -> str:
        await asyncio.sleep(0)
        return sync(request)

    return acall


def run_plain(mode: str, steps: Steps[str]) -> str:
    if mode == "sync":
        return drive(steps, plain("sync"))
    return asyncio.run(adrive(steps, aplain("async")))


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
def test_the_result_is_what_the_loop_returns(mode: str) -> None:
    log: list[Any] = []
    assert run_plain(mode, fallback(["a", "b"], log)) == f"a->{mode}(a)"
    assert log == []


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_call_is_thrown_in_and_the_loop_falls_back(mode: str) -> None:
    log: list[Any] = []
    result = run_plain(mode, fallback(["down1", "down2", "c"], log))
    assert result == f"c->{mode}(c)"
    assert log == [("down", "down1", "down1"), ("down", "down2", "down2")]


@pytest.mark.parametrize("mode", MODES)
def test_a_failure_the_loop_does_not_catch_escapes_as_itself(mode: str) -> None:
    log: list[Any] = []
    with pytest.raises(Fatal, match="fatal1"):
        run_plain(mode, fallback(["down1", "fatal1", "c"], log))
    assert log == [("down", "down1", "down1")]  # c was never called


@pytest.mark.parametrize("mode", MODES)
def test_a_loop_that_returns_at_once_calls_nothing(mode: str) -> None:
    assert run_plain(mode, fallback([], [])) == "none answered"


class Strategy:
    """Parses by upper-casing; says which of its parses ran."""

    name = "upper"

    def __init__(self) -> None:
        self.used: list[str] = []

    def parse(self, output: Any) -> str:
        self.used.append("parse")
        return str(output.content).upper()

    async def aparse(self, output: Any) -> str:
        self.used.append("aparse")
        return str(output.content).upper()


def parsed(strategy: Strategy) -> Steps[str]:
    message = yield Call("q")
    return str((yield Parse(strategy, AIMessage(content=message))))


@pytest.mark.parametrize(("mode", "parse"), [("sync", "parse"), ("async", "aparse")])
def test_a_parse_uses_the_drivers_own_parse(mode: str, parse: str) -> None:
    strategy = Strategy()
    assert run_plain(mode, parsed(strategy)) == f"{mode}(q)".upper()
    assert strategy.used == [parse]


def test_a_parse_error_escapes() -> None:
    class Broken(Strategy):
        def parse(self, output: Any) -> str:
            raise ValueError("unparsable")

    with pytest.raises(ValueError, match="unparsable"):
        drive(parsed(Broken()), plain("sync"))


# --------------------------------------------------------------------------- streams
def streamed_fallback(requests: list[str], log: list[Any]) -> Steps[str]:
    """Stream each request until one ends; keeps what a failed stream had let out."""
    for request in requests:
        step: Stream[str] = Stream(request)
        try:
            chunks = yield step
        except Down:
            log.append((request, list(step.chunks)))
            continue
        return "".join(chunks)
    return "none answered"


CUT = "<cut>"


def chunks_of(request: str) -> list[str]:
    """``"down:ab"`` streams a, b and is then cut; ``"ok:xy"`` streams x, y."""
    kind, _, text = request.partition(":")
    return [*text, CUT] if kind == "down" else list(text)


def stream_call(request: str) -> Iterator[str]:
    for chunk in chunks_of(request):
        if chunk == CUT:
            raise Down(request)
        yield chunk


async def astream_call(request: str) -> AsyncIterator[str]:
    for chunk in chunks_of(request):
        await asyncio.sleep(0)
        if chunk == CUT:
            raise Down(request)
        yield chunk


def run_stream(mode: str, steps: Steps[str]) -> list[str]:
    if mode == "sync":
        return list(drive_stream(steps, stream_call))

    async def collect() -> list[str]:
        return [item async for item in adrive_stream(steps, astream_call)]

    return asyncio.run(collect())


@pytest.mark.parametrize("mode", MODES)
def test_stream_chunks_go_out_as_they_come_then_the_result(mode: str) -> None:
    assert run_stream(mode, streamed_fallback(["ok:xyz"], [])) == ["x", "y", "z", "xyz"]


@pytest.mark.parametrize("mode", MODES)
def test_a_cut_stream_keeps_what_it_let_out_and_the_loop_goes_on(mode: str) -> None:
    log: list[Any] = []
    out = run_stream(mode, streamed_fallback(["down:ab", "down:", "ok:cd"], log))
    assert out == ["a", "b", "c", "d", "cd"]
    assert log == [("down:ab", ["a", "b"]), ("down:", [])]


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_failure_the_loop_does_not_catch_escapes(mode: str) -> None:
    def loop() -> Steps[str]:
        yield Stream("down:a")
        return "unreachable"

    with pytest.raises(Down):
        run_stream(mode, loop())


@pytest.mark.parametrize(("mode", "parse"), [("sync", "parse"), ("async", "aparse")])
def test_a_stream_driver_runs_the_other_steps_too(mode: str, parse: str) -> None:
    strategy = Strategy()

    def loop() -> Steps[str]:
        chunks = yield Stream("ok:hi")
        return str((yield Parse(strategy, AIMessage(content="".join(chunks)))))

    assert run_stream(mode, loop()) == ["h", "i", "HI"]
    assert strategy.used == [parse]


# --------------------------------------------------------------------------- lifetimes
class Held:
    """What a failure carries, so a test can see whether that failure is still alive."""


def failing_then_checking(alive: list[bool]) -> Callable[[str], str]:
    """``down`` fails carrying a `Held`; any later call notes whether that `Held` is reachable."""
    refs: list[weakref.ref[Held]] = []

    def call(request: str) -> str:
        if request == "down":
            held = Held()
            refs.append(weakref.ref(held))
            raise Down(held)
        gc.collect()  # only what something still refers to survives this
        alive.append(refs[0]() is not None)
        return request

    return call


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_calls_exception_is_let_go_before_the_next_call(mode: str) -> None:
    alive: list[bool] = []
    call = failing_then_checking(alive)
    if mode == "sync":
        drive(fallback(["down", "b"], []), call)
    else:

        async def acall(request: str) -> str:
            return call(request)

        asyncio.run(adrive(fallback(["down", "b"], []), acall))
    assert alive == [False]


@pytest.mark.parametrize("mode", MODES)
def test_a_cut_streams_exception_is_let_go_before_the_next_stream(mode: str) -> None:
    alive: list[bool] = []
    check = failing_then_checking(alive)

    def chunks(request: str) -> Iterator[str]:
        yield request[:1]
        yield check(request)

    async def achunks(request: str) -> AsyncIterator[str]:
        for chunk in chunks(request):
            yield chunk

    def loop() -> Steps[str]:
        for request in ["down", "ok"]:
            try:
                streamed = yield Stream(request)
            except Down:
                continue
            return "".join(streamed)
        return "none answered"

    if mode == "sync":
        out = list(drive_stream(loop(), chunks))
    else:

        async def collect() -> list[str]:
            return [item async for item in adrive_stream(loop(), achunks)]

        out = asyncio.run(collect())
    assert out == ["d", "o", "ok", "ook"] and alive == [False]
