from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from langchain_rtr.config import load_models_file
from langchain_rtr.serving import (
    ServerGroup,
    ServerStartError,
    VLLMServer,
    free_port,
    resolve_vllm_python,
)
from langchain_rtr.specs import ModelSpec

if TYPE_CHECKING:
    from tests.integration.conftest import ServerControl, SmolServers

# --------------------------------------------------------------------------------------------
# A fake `vllm` package: same command line, /health and /v1/models, a child process in its
# group. It checks the server plumbing (start, fail fast, stop the whole group, serve_models)
# in seconds, without vLLM installed.
# --------------------------------------------------------------------------------------------

FAKE_API_SERVER = """
import argparse, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--model"); p.add_argument("--served-model-name"); p.add_argument("--host")
p.add_argument("--port", type=int); p.add_argument("--dtype")
args, extra = p.parse_known_args()
print("fake vllm args", sys.argv[1:], flush=True)
if os.environ.get("FAKE_CRASH"):
    print("boom: " + os.environ["FAKE_CRASH"], flush=True)
    sys.exit(3)
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A worker, like vLLM's engine core: it must die with the server.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("child", child.pid, flush=True)
time.sleep(float(os.environ.get("FAKE_DELAY", "0.3")))

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({"data": [{"id": args.served_model_name}]}).encode()
        else:
            self.send_response(404); self.end_headers(); return
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a):
        pass

ThreadingHTTPServer((args.host, args.port), H).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path: Path) -> dict[str, str]:
    """Environment that makes `python -m vllm.entrypoints.openai.api_server` the fake."""
    pkg = tmp_path / "fakevllm" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_API_SERVER)
    return {"PYTHONPATH": str(tmp_path / "fakevllm")}


def fake_server(tmp_path: Path, env: dict[str, str], name: str = "fake") -> VLLMServer:
    return VLLMServer(
        "/nonexistent/model",
        served_name=name,
        port=free_port(),
        python=sys.executable,
        env=env,
        log_path=tmp_path / "logs" / f"{name}.log",
        startup_timeout=30,
    )


def child_pid(server: VLLMServer) -> int:
    for _ in range(50):
        for line in server.log_path.read_text().splitlines():
            if line.startswith("child "):
                return int(line.split()[1])
        time.sleep(0.1)
    raise AssertionError("fake server printed no child pid")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_fake_lifecycle_stops_the_whole_group(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    server = fake_server(tmp_path, fake_vllm)
    with server:
        pid = server.pid
        assert pid is not None
        child = child_pid(server)
        assert pid_alive(child)
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as resp:
            assert resp.status == 200
    assert not server.is_running()
    assert not pid_alive(child)
    assert not group_alive(pid)
    log = server.log_path.read_text()
    assert "--served-model-name fake" in log and "=== rtr: starting" in log


def test_fake_stop_escalates_to_sigkill(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    server = fake_server(tmp_path, {**fake_vllm, "FAKE_IGNORE_TERM": "1"})
    server.start()
    server.wait_healthy()
    pid = server.pid
    assert pid is not None
    t0 = time.monotonic()
    code = server.stop(grace=1.0)
    assert code == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert not group_alive(pid)


def test_fake_crash_fails_fast_with_log_tail(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    server = fake_server(tmp_path, {**fake_vllm, "FAKE_CRASH": "no such model"})
    server.start()
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code 3") as info:
        server.wait_healthy(timeout=60)
    assert time.monotonic() - t0 < 20  # not the full timeout
    assert "boom: no such model" in str(info.value)


def test_fake_timeout_stops_the_server(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    server = fake_server(tmp_path, {**fake_vllm, "FAKE_DELAY": "60"})
    server.start()
    with pytest.raises(ServerStartError, match="not healthy after"):
        server.wait_healthy(timeout=1)
    assert not server.is_running()


def test_port_in_use_is_refused(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    first = fake_server(tmp_path, fake_vllm, "first")
    with first:
        second = fake_server(tmp_path, fake_vllm, "second")
        second.port = first.port
        with pytest.raises(ServerStartError, match="already in use"):
            second.start()


def test_fake_group_restart_and_concurrent_start(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    servers = {n: fake_server(tmp_path, fake_vllm, n) for n in ("a", "b")}
    with ServerGroup(servers, concurrent=True) as group:
        assert set(group.startup_seconds) == {"a", "b"}
        old_pid = group["b"].pid
        group.restart("b")
        assert group["b"].pid != old_pid and group["b"].is_running()
        assert group["b"].log_path.read_text().count("=== rtr: starting") == 2
    assert not any(s.is_running() for s in servers.values())


def test_fake_group_failure_stops_the_others(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    ok = fake_server(tmp_path, fake_vllm, "ok")
    bad = fake_server(tmp_path, {**fake_vllm, "FAKE_CRASH": "x"}, "bad")
    group = ServerGroup({"ok": ok, "bad": bad}, concurrent=True)
    with pytest.raises(ServerStartError):
        group.start_all()
    assert not ok.is_running() and not bad.is_running()


def test_serve_models_until_sigterm(tmp_path: Path, fake_vllm: dict[str, str]) -> None:
    ports = [free_port(), free_port()]
    models = tmp_path / "models.yaml"
    models.write_text(
        textwrap.dedent(
            f"""\
            serve_defaults: {{python: {sys.executable}, env: {json.dumps(fake_vllm)}}}
            models:
              - {{name: m1, serve: {{model: x, port: {ports[0]}}}}}
              - {{name: m2, serve: {{model: y, port: {ports[1]}}}}}
              - {{name: remote, base_url: "http://elsewhere:1/v1"}}
            """
        )
    )
    code = (
        "import sys; from langchain_rtr.serving import serve_models; "
        f"sys.exit(serve_models({str(models)!r}, {str(tmp_path / 'logs')!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "all servers ready" in line or not line:
            break
    output = "".join(lines)
    assert "all servers ready" in output, output
    for port in ports:
        assert f"http://127.0.0.1:{port}/v1" in output
    assert "remote" not in output  # no serve section: not started
    children = [
        int(line.split()[1])
        for name in ("m1", "m2")
        for line in (tmp_path / "logs" / f"{name}.log").read_text().splitlines()
        if line.startswith("child ")
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "stopped" in proc.stdout.read()
    assert children and not any(pid_alive(pid) for pid in children)


def test_resolve_vllm_python_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "py"
    exe.write_text("")
    monkeypatch.setenv("RTR_VLLM_PYTHON", sys.executable)
    assert resolve_vllm_python(str(exe)) == str(exe)  # the serve entry wins
    assert resolve_vllm_python() == sys.executable
    monkeypatch.setenv("RTR_VLLM_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(ServerStartError, match="RTR_VLLM_PYTHON"):
        resolve_vllm_python()


def test_command_from_models_file_entry(tmp_path: Path) -> None:
    models = tmp_path / "m.yaml"
    models.write_text(
        "models:\n"
        "  - name: q\n"
        "    served_name: org/q\n"
        "    serve: {model: org/q, port: 8123, tensor_parallel_size: 2, python: python3,\n"
        "            gpu_memory_utilization: 0.8, extra_args: [--seed, 1]}\n"
    )
    (entry,) = load_models_file(models).serve_entries
    server = VLLMServer.from_entry(entry, tmp_path / "logs")
    cmd = server.command()
    assert cmd[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--served-model-name"] == "org/q"
    assert flags["--port"] == "8123"
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--gpu-memory-utilization"] == "0.8"
    assert cmd[-2:] == ["--seed", "1"]
    assert server.log_path == (tmp_path / "logs" / "q.log").absolute()
    assert server.base_url == entry.base_url


# --------------------------------------------------------------------------------------------
# Real vLLM CPU servers (tests/integration/conftest.py starts them once per session).
# --------------------------------------------------------------------------------------------


def chat(servers: SmolServers, name: str, timeout: float = 120) -> ChatOpenAI:
    spec = servers.specs[name]
    return ChatOpenAI(
        base_url=spec.base_url,
        model=spec.served_name or spec.name,
        api_key="EMPTY",  # type: ignore[arg-type]
        temperature=0,
        max_tokens=32,  # type: ignore[call-arg]
        stream_usage=True,
        timeout=timeout,
        max_retries=0,
    )


@pytest.mark.parametrize("name", ["smol-a", "smol-b"])
def test_real_invoke_has_usage(smol_servers: SmolServers, name: str) -> None:
    message = chat(smol_servers, name).invoke("What is 2+2? Answer with a number.")
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str) and message.content.strip()
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 32
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["model_name"] == name


def test_real_stream_has_usage(smol_servers: SmolServers) -> None:
    chunks = list(chat(smol_servers, "smol-a").stream("Name a colour."))
    assert len(chunks) > 1
    total: AIMessageChunk = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total.content, str) and total.content.strip()
    usage = total.usage_metadata
    assert usage is not None  # vLLM sends usage in the last chunk when asked (stream_usage)
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 32


async def test_real_ainvoke(smol_servers: SmolServers) -> None:
    message = await chat(smol_servers, "smol-b").ainvoke("Say hello.")
    assert message.usage_metadata is not None


def test_real_models_endpoint_lists_served_name(smol_servers: SmolServers) -> None:
    for name, url in smol_servers.base_urls.items():
        with urllib.request.urlopen(f"{url}/models", timeout=10) as resp:
            ids = [m["id"] for m in json.load(resp)["data"]]
        assert ids == [name]


def test_real_stop_and_restart(smol_servers: SmolServers, server_control: ServerControl) -> None:
    server = smol_servers.servers["smol-b"]
    pid = server.pid
    assert pid is not None and server.is_running()
    server_control.stop("smol-b")
    assert not server.is_running()
    assert not group_alive(pid)  # vLLM's engine core and worker went with it
    with pytest.raises(Exception):  # noqa: B017 - any connection error will do
        chat(smol_servers, "smol-b").invoke("hi")
    # The other endpoint is unaffected.
    assert chat(smol_servers, "smol-a").invoke("hi").content
    seconds = server_control.start("smol-b")
    assert seconds > 0 and server.is_running()
    assert chat(smol_servers, "smol-b").invoke("hi").usage_metadata is not None
    log = server.log_path.read_text()
    assert log.count("=== rtr: starting") >= 2  # appended, not overwritten
    assert "Application startup complete" in log


def test_real_pause_makes_calls_time_out(
    smol_servers: SmolServers, server_control: ServerControl
) -> None:
    server_control.pause("smol-a")
    t0 = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - openai's timeout error
        chat(smol_servers, "smol-a", timeout=2).invoke("hi")
    assert time.monotonic() - t0 < 30
    server_control.resume("smol-a")
    assert chat(smol_servers, "smol-a").invoke("hi").content


def test_dead_endpoint_refuses(dead_endpoint_spec: ModelSpec) -> None:
    llm = ChatOpenAI(
        base_url=dead_endpoint_spec.base_url,
        model="dead",
        api_key="EMPTY",  # type: ignore[arg-type]
        max_retries=0,
    )
    with pytest.raises(Exception, match="(?i)connect"):
        llm.invoke("hi")
