"""A client that never finishes its request headers (slowloris) is cut off within the server's
header bound; normal requests and idle keep-alive connections are not. The server is the real
one (`run_server`, uvicorn with httptools; and uvicorn's h11 parser) in a process of its own."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 1.0
SLACK_S = 10.0  # a loaded 2-core machine; without the bound the connection stays open for good

SERVE = """
import sys
from langchain_rtr.runnable import RTRRunnable
from tests.unit.test_runnable_fakes import FakeChat, FakeRouter, make_strategies

runnable = RTRRunnable(
    router=FakeRouter(), models={"big": FakeChat(), "small": FakeChat()},
    strategies=make_strategies(),
)
port, bound, parser = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if parser == "run_server":
    from langchain_rtr.server import run_server

    run_server(runnable, port=port, log_level="warning", header_timeout_s=bound)
else:
    import uvicorn

    from langchain_rtr.server import create_app
    from langchain_rtr.server.header_timeout import header_timeout_protocol

    uvicorn.run(create_app(runnable), port=port, log_level="warning",
                http=header_timeout_protocol(bound, "h11"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["run_server", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port), str(BOUND_S), request.param],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S + SLACK_S)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) before its timeout runs out."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def get_health(sock: socket.socket) -> int:
    """One keep-alive ``GET /health`` on ``sock``; its status."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: rtr\r\n\r\n")
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-response: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return int(head.split(b" ", 2)[1])


@pytest.mark.allow_hosts(["127.0.0.1"])
@pytest.mark.parametrize(
    "partial",
    [b"", b"POST /v1/chat/comp", b"POST /v1/chat/completions HTTP/1.1\r\nHost: rtr\r\n"],
    ids=["nothing", "half a request line", "headers without their end"],
)
def test_unfinished_headers_are_cut_off_and_others_still_answer(port: int, partial: bytes) -> None:
    with connect(port) as slow, connect(port) as other:
        slow.sendall(partial)
        assert get_health(other) == 200  # the server answers others meanwhile
        assert closed_by_server(slow), "the connection was still open"


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_client_trickling_header_bytes_is_cut_off_too(port: int) -> None:
    """Each byte arrives well within the bound; the headers as a whole never do."""
    with connect(port) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        slow.settimeout(BOUND_S / 4)
        deadline, closed = time.monotonic() + BOUND_S + SLACK_S, False
        while not closed and time.monotonic() < deadline:
            try:
                slow.sendall(b"X")
                closed = slow.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:  # reset, or a broken pipe: closed by the server
                closed = True
        assert closed, "the connection was still open"


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_an_idle_keep_alive_connection_is_governed_by_keep_alive(port: int) -> None:
    with connect(port) as sock:
        assert get_health(sock) == 200
        time.sleep(2.5 * BOUND_S)  # idle between requests: longer than the header bound
        assert get_health(sock) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request stalls mid-headers
        assert closed_by_server(sock), "the connection was still open"


def test_the_protocol_reaches_worker_processes_with_its_bound() -> None:
    """uvicorn pickles its config (the protocol included) into each ``--workers`` process."""
    from langchain_rtr.server.header_timeout import HttpToolsHeaderTimeout, header_timeout_protocol

    again = pickle.loads(pickle.dumps(header_timeout_protocol(2.5)))
    assert again.func is HttpToolsHeaderTimeout  # type: ignore[attr-defined]
    assert again.keywords == {"header_timeout_s": 2.5}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, None),
        (["--header-timeout", "2.5"], {}, 2.5),
        ([], {"RTR_HEADER_TIMEOUT_S": "7"}, 7),
    ],
)
def test_serve_router_passes_the_header_timeout_on(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], expected: float | None
) -> None:
    from typer.testing import CliRunner

    import langchain_rtr.server
    from langchain_rtr.cli.main import app

    seen: dict[str, object] = {}
    monkeypatch.setattr(langchain_rtr.server, "run_server", lambda *a, **kw: seen.update(kw))
    monkeypatch.delenv("RTR_HEADER_TIMEOUT_S", raising=False)
    result = CliRunner().invoke(app, ["serve-router", *args], env=env)
    assert result.exit_code == 0, result.output
    assert seen.get("header_timeout_s") == expected
