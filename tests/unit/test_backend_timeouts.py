"""A backend that accepts and never answers fails within the configured bounds, and is fallen
back from; the bounds come from the spec, the models file, or the defaults."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from langchain_rtr.config import parse_models_file
from langchain_rtr.models import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_FIRST_BYTE_TIMEOUT_S,
    backend_timeout,
    chat_model_for,
)
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec
from tests.unit.test_runnable_fakes import FakeRouter, make_strategies

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runnable.py"
GUARD_S = 60.0  # far above the bounds below (at most 2 x 1 s), far below the old 2 x 120 s


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A real server on loopback that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    spec = importlib.util.spec_from_file_location("bench_runnable", _BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server, url = module.start_stub_server()
    yield url
    server.shutdown()


def _call_in_thread(fn) -> object:  # type: ignore[no-untyped-def]
    """Run ``fn`` with a guard, so a hang fails the test instead of holding it for minutes."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), f"the call was still waiting after {GUARD_S:g}s"
    if "error" in box:
        return box["error"]
    return box["result"]


def test_defaults_bound_connect_and_first_byte() -> None:
    timeout = backend_timeout(ModelSpec(name="m", base_url="http://127.0.0.1:1/v1"))
    assert timeout.connect == DEFAULT_CONNECT_TIMEOUT_S
    assert timeout.read == DEFAULT_FIRST_BYTE_TIMEOUT_S
    assert DEFAULT_CONNECT_TIMEOUT_S <= 5 and DEFAULT_FIRST_BYTE_TIMEOUT_S <= 15
    llm = chat_model_for(ModelSpec(name="m", base_url="http://127.0.0.1:1/v1"))
    assert isinstance(llm.request_timeout, openai.Timeout) and llm.streaming is True


def test_models_file_sets_timeouts_per_model_and_globally() -> None:
    text = (
        "timeouts: {connect_s: 1.5, first_byte_s: 7}\n"
        "models:\n"
        "  - {name: a, base_url: 'http://127.0.0.1:1/v1', first_byte_timeout_s: 2.5}\n"
        "  - {name: b, base_url: 'http://127.0.0.1:2/v1'}\n"
    )
    specs = parse_models_file(text).specs
    a, b = backend_timeout(specs["a"]), backend_timeout(specs["b"])
    assert (a.connect, a.read) == (1.5, 2.5)
    assert (b.connect, b.read) == (1.5, 7.0)


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_hung_backend_fails_within_the_bound(hung_url: str) -> None:
    spec = ModelSpec(
        name="hung", base_url=hung_url, connect_timeout_s=0.5, first_byte_timeout_s=0.5
    )
    llm = chat_model_for(spec)
    outcome = _call_in_thread(lambda: llm.invoke("What is 2+2?"))
    assert isinstance(outcome, openai.APITimeoutError), outcome


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_hung_backend_is_fallen_back_from(hung_url: str, stub_url: str) -> None:
    router = FakeRouter()
    router.models = {
        "big": ModelSpec(
            name="big",
            base_url=hung_url,
            max_tokens=64,
            connect_timeout_s=0.5,
            first_byte_timeout_s=0.5,
        ),
        "small": ModelSpec(name="small", served_name="small-served", base_url=stub_url),
    }
    rtr = RTRRunnable(router=router, strategies=make_strategies())
    result = _call_in_thread(lambda: rtr.invoke("What is 2+2?"))
    assert not isinstance(result, BaseException), result
    assert result.model == "small" and result.answer == "4"  # type: ignore[attr-defined]
    failure = result.fallbacks[0]  # type: ignore[attr-defined]
    assert failure.model == "big" and failure.retryable and "Timeout" in failure.error_type
