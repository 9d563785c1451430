"""The server's hot path: one pooled aiohttp client for spec-built backends, orjson in and out,
and the launch options (workers, encoder threads). Backends are real servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from langchain_rtr.dispatch import DispatchEngine
from langchain_rtr.errors import ConfigError
from langchain_rtr.models import DEFAULT_CONNECT_TIMEOUT_S, ModelRegistry
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.server import app_from_env, create_app, run_server
from langchain_rtr.server.jsonio import dumps
from langchain_rtr.server.passthrough import passthrough_timeout
from langchain_rtr.server.pooling import pooled_http_client
from langchain_rtr.specs import ModelSpec
from tests.unit.test_backend_timeouts import hung_url, stub_url  # noqa: F401  (fixtures)
from tests.unit.test_runnable_fakes import FakeChat, FakeRouter, make_strategies

HELLO = [{"role": "user", "content": "What is 2 + 2?"}]


def served_app(models: dict[str, ModelSpec], **registered: Any) -> tuple[Any, RTRRunnable]:
    router = FakeRouter()
    router.models = models
    registry = ModelRegistry(registered or None, specs=models)
    runnable = RTRRunnable(router=router, models=registry, strategies=make_strategies())
    return create_app(runnable), runnable


async def routed(app: Any, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://rtr.test")
    async with app.router.lifespan_context(app), client:  # the lifespan closes the pool
        return await client.post("/v1/chat/completions", json=body, timeout=60)


# ------------------------------------------------------------------ the pooled client
def test_registry_overrides_rebuild_spec_clients_and_share_models_given_in_code() -> None:
    mine = FakeChat(served="mine")
    spec = ModelSpec(name="big", base_url="http://127.0.0.1:1/v1")
    registry = ModelRegistry({"small": mine}, specs={"big": spec})
    before = registry["big"]
    again = registry.with_client_overrides(temperature=0.25)
    assert again["small"] is mine
    assert isinstance(again["big"], ChatOpenAI) and again["big"] is not before
    assert again["big"].temperature == 0.25 and before.temperature != 0.25  # type: ignore[attr-defined]
    assert sorted(again) == sorted(registry)


def test_an_engine_with_other_models_must_name_the_same_ones() -> None:
    router = FakeRouter()
    engine = DispatchEngine(router, {"big": FakeChat(), "small": FakeChat()}, make_strategies())
    with pytest.raises(ConfigError, match="expected the models"):
        engine.with_models(ModelRegistry({"big": FakeChat()}))
    other = ModelRegistry({"big": FakeChat(), "small": FakeChat()})
    assert engine.with_models(other).models is other and engine.models is not other


@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_routed_calls_go_through_one_pooled_client(stub_url: str) -> None:  # noqa: F811
    specs = {
        "big": ModelSpec(name="big", base_url=stub_url, max_tokens=64),
        "small": ModelSpec(name="small", base_url=stub_url),
    }
    app, runnable = served_app(specs)
    resp = await routed(app, {"model": "rtr", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert resp.json()["rtr"]["answer"] == "4"
    # the server's clients are built on its pooled client; the runnable's own are untouched
    pooled = {app.state.engine.models[n].http_async_client for n in specs}
    assert len(pooled) == 1 and None not in pooled
    assert runnable.engine.models["big"].http_async_client is None  # type: ignore[attr-defined]


@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_a_hung_backend_is_fallen_back_from_through_the_pooled_client(
    hung_url: str,  # noqa: F811
    stub_url: str,  # noqa: F811
) -> None:
    """The first-byte bound holds on aiohttp's transport too (it maps to its socket read)."""
    specs = {
        "big": ModelSpec(
            name="big",
            base_url=hung_url,
            max_tokens=64,
            connect_timeout_s=0.5,
            first_byte_timeout_s=0.5,
        ),
        "small": ModelSpec(name="small", base_url=stub_url),
    }
    app, _ = served_app(specs)
    resp = await routed(app, {"model": "rtr", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    rtr = resp.json()["rtr"]
    assert rtr["model"] == "small" and rtr["fallbacks"][0]["model"] == "big"
    assert "Timeout" in rtr["fallbacks"][0]["error_type"]


def test_the_pooled_client_is_the_openai_aiohttp_one() -> None:
    client = pooled_http_client()
    assert isinstance(client, openai.DefaultAioHttpClient)


# ------------------------------------------------------------------ JSON
def test_dumps_writes_compact_utf8_json() -> None:
    assert dumps({"b": "é", "n": None, 1: 2}) == '{"b":"é","n":null,"1":2}'


# ------------------------------------------------------------------ launch
@pytest.mark.parametrize("workers", [0, -1, True, "2"])
def test_workers_must_be_a_positive_int(workers: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        run_server(tmp_path, workers=workers)


def test_several_workers_need_a_router_directory() -> None:
    runnable = RTRRunnable(
        router=FakeRouter(),
        models={"big": FakeChat(), "small": FakeChat()},
        strategies=make_strategies(),
    )
    with pytest.raises(ConfigError, match="router directory"):
        run_server(runnable, workers=2)


def test_a_worker_without_its_config_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RTR_SERVER_WORKER_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="run_server"):
        app_from_env()


# ------------------------------------------------------------------ pass-through bounds
@pytest.mark.allow_hosts(["127.0.0.1"])
async def test_a_streamed_passthrough_to_a_hung_backend_fails_within_its_bound(
    hung_url: str,  # noqa: F811
) -> None:
    hung = ModelSpec(
        name="hung", base_url=hung_url, connect_timeout_s=0.5, first_byte_timeout_s=0.5
    )
    runnable = RTRRunnable(
        router=FakeRouter(),
        models={"big": FakeChat(), "small": FakeChat()},
        strategies=make_strategies(),
    )
    app = create_app(runnable, backends={"hung": hung})
    body = {"model": "hung", "messages": HELLO, "stream": True}
    resp = await routed(app, body)  # before: held for the 300 s whole-answer timeout
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "backend_timeout"


def test_a_non_streamed_passthrough_waits_for_the_whole_answer() -> None:
    spec = ModelSpec(name="m", base_url="http://127.0.0.1:1/v1", first_byte_timeout_s=2.0)
    streamed, whole = (
        passthrough_timeout(spec, True, 300.0),
        passthrough_timeout(spec, False, 300.0),
    )
    assert (streamed.read, whole.read) == (2.0, 300.0)
    assert streamed.connect == whole.connect == DEFAULT_CONNECT_TIMEOUT_S
