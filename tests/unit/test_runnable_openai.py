"""ChatOpenAI clients built from specs, against an in-process stub server on loopback."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_openai import ChatOpenAI

from langchain_rtr.errors import ConfigError, UnknownPairError
from langchain_rtr.models import ModelRegistry, chat_model_for
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec
from tests.unit.test_runnable_fakes import (
    PAIRS,
    FakeChat,
    FakeRouter,
    make_strategies,
)

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runnable.py"


@pytest.fixture(scope="module")
def stub_url():
    spec = importlib.util.spec_from_file_location("bench_runnable", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server, url = module.start_stub_server()
    yield url
    server.shutdown()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_chat_model_for_spec() -> None:
    spec = ModelSpec(name="smol", served_name="smol-135m", base_url="http://127.0.0.1:1/v1")
    llm = chat_model_for(spec, temperature=0.0)
    assert isinstance(llm, ChatOpenAI)
    assert llm.model_name == "smol-135m" and llm.stream_usage is True
    assert llm.openai_api_key.get_secret_value() == "EMPTY"
    assert llm.temperature == 0.0 and llm.max_retries <= 2


def test_registry() -> None:
    specs = {
        "a": ModelSpec(name="a", base_url="http://127.0.0.1:1/v1"),
        "b": ModelSpec(name="b"),  # no endpoint: known to the predictor, not served
    }
    reg = ModelRegistry.from_specs(specs)
    assert list(reg) == ["a"] and "b" not in reg
    assert reg["a"] is reg["a"]  # built once, lazily
    with pytest.raises(UnknownPairError, match="registered: a"):
        reg["b"]
    reg.register("b", FakeChat())
    with pytest.raises(ConfigError):
        reg.register("b", FakeChat())
    with pytest.raises(TypeError):
        reg.register("c", object())  # type: ignore[arg-type]
    assert len(reg) == 2


def _router(urls: dict[str, str]) -> FakeRouter:
    router = FakeRouter()
    router.models = {
        name: ModelSpec(name=name, served_name=f"{name}-served", base_url=url, max_tokens=64)
        for name, url in urls.items()
    }
    return router


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_live_dispatch_usage_and_fallback(stub_url: str) -> None:
    router = _router({"big": _closed_port_url(), "small": stub_url})
    rtr = RTRRunnable(router=router, strategies=make_strategies())  # clients from the specs
    with get_usage_metadata_callback() as cb:
        result = rtr.invoke("What is 2+2?")
        *chunks, streamed = list(rtr.stream("What is 2+2?"))
    assert result.model == "small" and result.answer == "4"
    assert "ConnectionError" in result.fallbacks[0].error_type and result.fallbacks[0].retryable
    assert result.message.response_metadata["model_name"] == "small-served"
    assert streamed.model == "small" and chunks
    assert streamed.usage is not None and streamed.usage.total_tokens == 20  # usage while streaming
    assert cb.usage_metadata["small-served"]["total_tokens"] == 40
    assert set(cb.usage_metadata) == {"small-served"}


@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_live_async(stub_url: str) -> None:
    rtr = RTRRunnable(
        router=_router({"big": stub_url, "small": stub_url}), strategies=make_strategies()
    )
    results = await rtr.abatch(["1+3?", "2+2?"])
    assert all(r.answer == "4" and r.usage.total_tokens == 20 for r in results)
    assert PAIRS[0] == (results[0].model, results[0].strategy)
