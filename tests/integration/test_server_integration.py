"""The RTR endpoint on a real socket, in front of the real vLLM CPU servers, with real clients.

The `openai` client and `ChatOpenAI` are pointed at the endpoint unchanged (streaming included).
The router is trained here on a small synthetic set for the served names: these tests check the
endpoint, not routing quality. Run under the integration lock (docs/server.md):

    flock /tmp/rtr-integration.lock \\
        .venv/bin/python -m pytest tests/integration/test_server_integration.py
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
import uvicorn
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_openai import ChatOpenAI

from langchain_rtr.server import build_runnable, create_app
from tests.integration.conftest import CuttableProxy

if TYPE_CHECKING:
    from tests.integration.conftest import SmolServers

KEY = "sk-rtr-integration"
MAX_TOKENS = 16
QUESTION = [{"role": "user", "content": "What is 2 + 2? Answer with the number."}]
_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server_load.py"


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_server_load", _BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # it runs in a thread
        pass


@pytest.fixture(scope="module")
def backend_proxies(smol_servers: SmolServers) -> Iterator[dict[str, CuttableProxy]]:
    """The endpoint reaches each backend through a proxy, so a test can cut one (a stopped
    server, as its clients see it) and restore it in milliseconds instead of a vLLM restart."""
    proxies = {name: CuttableProxy(server.port) for name, server in smol_servers.servers.items()}
    for proxy in proxies.values():
        proxy.start()
    try:
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.close()


@pytest.fixture(scope="module")
def rtr_url(
    smol_servers: SmolServers,
    backend_proxies: dict[str, CuttableProxy],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The endpoint, served by uvicorn in a thread on a free loopback port."""
    work = tmp_path_factory.mktemp("rtr-server")
    monkeypatch_module.setenv("RTR_CACHE_DIR", str(work / "cache"))
    bench = _bench_module()
    specs = {
        name: spec.model_copy(update={"base_url": backend_proxies[name].base_url})
        for name, spec in smol_servers.specs.items()
    }
    router_dir = bench.train_synthetic_router(specs, work / "router")
    models_file = bench.write_models_file(specs, work / "models.yaml")
    runnable, backends = build_runnable(router_dir, models_file)
    app = create_app(runnable, backends=backends, api_key=KEY)
    port = _free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture
def client(rtr_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=rtr_url, api_key=KEY, max_retries=0, timeout=120)


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "rtr" and {"smol-a", "smol-b"} <= set(ids)


def test_openai_client_routed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="rtr:lambda=0.9", messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0.0
    )
    out = raw.parse()
    assert out.model in ("smol-a", "smol-b")
    assert out.choices[0].message.content
    assert out.usage is not None and 0 < out.usage.completion_tokens <= MAX_TOKENS
    assert out.usage.prompt_tokens > 5  # the backend's count, not an estimate of ours
    rtr = out.model_extra["rtr"] if out.model_extra else {}
    assert rtr["model"] == out.model and rtr["strategy"] in ("direct", "cot")
    assert 0.0 <= rtr["predicted_correctness"] <= 1.0
    assert raw.headers["x-rtr-model"] == out.model
    assert raw.headers["x-rtr-strategy"] == rtr["strategy"]


def test_openai_client_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="rtr",
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= MAX_TOKENS


def test_chat_openai_unchanged(rtr_url: str) -> None:
    llm = ChatOpenAI(
        model="rtr",
        base_url=rtr_url,
        api_key=KEY,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream_usage=True,
        include_response_headers=True,
    )
    with get_usage_metadata_callback() as cb:
        msg = llm.invoke("What is 3 + 4?")
        chunks = list(llm.stream("What is 3 + 4?"))
    assert msg.content and msg.response_metadata["model_name"] in ("smol-a", "smol-b")
    assert msg.response_metadata["headers"]["x-rtr-model"] == msg.response_metadata["model_name"]
    assert "".join(str(c.content) for c in chunks).strip()
    # usage of both calls, reported under the chosen backend model's name
    assert sum(u["output_tokens"] for u in cb.usage_metadata.values()) > 0
    assert set(cb.usage_metadata) <= {"smol-a", "smol-b"}


def test_passthrough_to_a_backend(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="smol-b", messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert out.model == "smol-b" and out.usage is not None and out.usage.completion_tokens > 0
    assert not (out.model_extra or {}).get("rtr")  # the backend's own answer, unchanged
    stream = client.chat.completions.create(
        model="smol-b", messages=QUESTION, max_tokens=MAX_TOKENS, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


def test_bad_requests_are_4xx_on_the_wire(rtr_url: str) -> None:
    url = rtr_url + "/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=30) as http:
        assert http.post(url, content=b"{nope", headers=auth).status_code == 400
        big = b"x" * (10 * 2**20)
        assert http.post(url, content=big, headers=auth).status_code == 413
        body = {"model": "rtr", "messages": [{"role": "user", "content": "y" * 2**20}]}
        assert http.post(url, json=body, headers=auth).status_code == 400
        wrong = {"authorization": "Bearer sk-wrong"}
        resp = http.post(url, json={"model": "rtr", "messages": QUESTION}, headers=wrong)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def test_a_stopped_backend_means_fallback(
    client: openai.OpenAI, backend_proxies: dict[str, CuttableProxy]
) -> None:
    first = client.chat.completions.create(model="rtr", messages=QUESTION, max_tokens=MAX_TOKENS)
    backend_proxies[first.model].cut()  # connection refused, as from a stopped server
    try:
        out = client.chat.completions.with_raw_response.create(
            model="rtr", messages=QUESTION, max_tokens=MAX_TOKENS
        )
    finally:
        backend_proxies[first.model].restore()
    parsed = out.parse()
    assert parsed.model != first.model
    rtr = parsed.model_extra["rtr"] if parsed.model_extra else {}
    assert [f["model"] for f in rtr["fallbacks"]] == [first.model]
    assert out.headers["x-rtr-fallbacks"] == "1"


def _read_stream(
    rtr_url: str, body: dict[str, Any], cut: dict[str, CuttableProxy] | None = None
) -> tuple[httpx.Headers, list[Any], str | None]:
    """POST a streamed request and parse its events; with `cut`, cut the answering backend's
    proxy once 10 content deltas have arrived (a server stopped mid-answer)."""
    events: list[Any] = []
    cut_model = None
    deltas = 0
    with (
        httpx.Client(timeout=120) as http,
        http.stream(
            "POST",
            rtr_url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            event = data if data == "[DONE]" else json.loads(data)
            events.append(event)
            choices = event.get("choices") if isinstance(event, dict) else None
            deltas += bool(choices and choices[0]["delta"].get("content"))
            if cut is not None and cut_model is None and deltas == 10:
                cut_model = resp.headers["x-rtr-model"]
                cut[cut_model].cut()
        return resp.headers, events, cut_model


def test_a_stream_cut_mid_answer_is_continued_on_the_other_backend(
    rtr_url: str, backend_proxies: dict[str, CuttableProxy]
) -> None:
    body = {
        "model": "rtr",
        "messages": [{"role": "user", "content": "Count from 1 to 60, separated by commas."}],
        "max_tokens": 160,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, reference, _ = _read_stream(rtr_url, body)  # the same answer, uncut
    try:
        headers, events, cut_model = _read_stream(rtr_url, body, cut=backend_proxies)
    finally:
        for proxy in backend_proxies.values():
            if proxy.is_cut:
                proxy.restore()
    assert cut_model is not None and headers["x-rtr-model"] == cut_model
    # one complete stream: a role chunk, deltas, one finish chunk, the usage chunk, [DONE]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert not any("error" in c for c in chunks), chunks[-1]
    assert len({c["id"] for c in chunks}) == 1
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    [finish] = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    rtr = finish["rtr"]
    assert rtr["continued"] is True and rtr["model"] != cut_model
    [failed] = rtr["fallbacks"]
    assert failed["model"] == cut_model and failed["streamed_tokens"] >= 10
    assert failed["strategy"] == rtr["strategy"]

    def text(evs: list[Any]) -> str:
        return "".join(
            e["choices"][0]["delta"].get("content") or ""
            for e in evs
            if isinstance(e, dict) and e.get("choices")
        )

    # coherent: same weights, greedy, so the continued answer is the uncut one
    print(f"\nreference: {text(reference)!r}\ncontinued: {text(events)!r}")
    print(f"usage ref {reference[-2]['usage']} continued {chunks[-1]['usage']}; cut {failed}")
    assert text(events) == text(reference)
    # usage is both attempts': the cut one read the prompt and wrote `streamed_tokens`, the
    # continuation read the prompt plus those and wrote the rest
    ref_usage, usage = reference[-2]["usage"], chunks[-1]["usage"]
    assert usage["completion_tokens"] == ref_usage["completion_tokens"]
    assert usage["prompt_tokens"] == 2 * ref_usage["prompt_tokens"] + failed["streamed_tokens"]
