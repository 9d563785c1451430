"""One local vLLM OpenAI-compatible server: its interpreter, its process group, its health.

Each server runs in its own process group, so stopping it also stops vLLM's engine and worker
processes; anything still running when the interpreter exits is stopped too.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from langchain_rtr.config import ServeEntry
from langchain_rtr.errors import RTRError

#: Where scripts/setup_vllm_cpu.sh puts the CPU vLLM venv, relative to the working directory.
DEFAULT_VLLM_VENV = Path(".venv-vllm")
_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()


class ServerStartError(RTRError, RuntimeError):
    """A server could not start or did not become healthy; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; there is a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def resolve_vllm_python(python: str | os.PathLike[str] | None = None) -> str:
    """The interpreter that runs vLLM.

    Order: ``python`` if given (a serve entry's ``python:``), then ``$RTR_VLLM_PYTHON``, then this
    interpreter if it can import vllm (the GPU install, ``pip install langchain-rtr[vllm]``), then
    ``./.venv-vllm/bin/python`` (the CPU venv of ``scripts/setup_vllm_cpu.sh``).

    Raises:
        ServerStartError: None of these exists.
    """
    candidates: list[tuple[str, str]] = []
    if python:
        candidates.append(("the serve entry's python", str(python)))
    env = os.environ.get("RTR_VLLM_PYTHON")
    if env:
        candidates.append(("$RTR_VLLM_PYTHON", env))
    for origin, value in candidates:
        if "/" not in value:
            return value  # a command on PATH, e.g. "python3"
        if Path(value).is_file():
            return value
        raise ServerStartError(f"{origin} is {value!r}, which does not exist")
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv_python = DEFAULT_VLLM_VENV / "bin" / "python"
    if venv_python.is_file():
        return str(venv_python.absolute())
    raise ServerStartError(
        "no Python with vLLM found: set RTR_VLLM_PYTHON or the serve entry's `python:`, "
        "`pip install vllm` (GPU) here, or run scripts/setup_vllm_cpu.sh (CPU) to build .venv-vllm"
    )


class VLLMServer:
    """One vLLM OpenAI-compatible server in a subprocess.

    Use it as a context manager (start, wait until healthy, stop on exit) or call
    :meth:`start`, :meth:`wait_healthy` and :meth:`stop` yourself. A stopped server can be started
    again (its log is appended to).

    Example:
        >>> with VLLMServer("/models/smol", served_name="smol", port=8001) as server:
        ...     ChatOpenAI(base_url=server.base_url, model=server.served_name, api_key="EMPTY")
    """

    def __init__(
        self,
        model: str,
        *,
        served_name: str,
        port: int,
        host: str = "127.0.0.1",
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        """Describe a server; nothing starts until :meth:`start`.

        Args:
            model: Model dir or Hugging Face id (``--model``).
            served_name: Name clients ask for (``--served-model-name``).
            port: TCP port (``--port``).
            host: Bind address (``--host``); loopback by default so nothing is exposed.
            dtype: ``--dtype`` (``float32`` on CPU; ``auto``/``bfloat16`` on GPU).
            max_model_len: ``--max-model-len``; caps the KV cache a server must reserve.
            enforce_eager: ``--enforce-eager``: skip graph capture (faster start, CPU default).
            tensor_parallel_size: ``--tensor-parallel-size``: GPUs one model is split over.
            gpu_memory_utilization: ``--gpu-memory-utilization``: share of each GPU vLLM takes.
            extra_args: More vLLM arguments, passed as they are.
            env: Extra environment (e.g. ``VLLM_CPU_KVCACHE_SPACE``), on top of this process's.
            python: Interpreter with vLLM; see :func:`resolve_vllm_python`.
            log_path: File that gets the server's stdout and stderr (default: a temp file name
                under ``./rtr-out/logs``).
            startup_timeout: Default timeout of :meth:`wait_healthy`, in seconds.
        """
        self.model = model
        self.served_name = served_name
        self.port = port
        self.host = host
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.python = python
        self.startup_timeout = startup_timeout
        self.log_path = Path(
            log_path or Path("rtr-out") / "logs" / f"vllm-{served_name}-{port}.log"
        ).absolute()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_entry(
        cls, entry: ServeEntry, log_dir: str | os.PathLike[str] | None = None
    ) -> VLLMServer:
        """A server for one models-file entry, logging to ``<log_dir>/<name>.log``."""
        s = entry.serve
        return cls(
            s.model,
            served_name=entry.served_name,
            port=s.port,
            host=s.host,
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            enforce_eager=s.enforce_eager,
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            extra_args=s.extra_args,
            env=s.env,
            python=s.python,
            log_path=Path(log_dir or Path("rtr-out") / "logs") / f"{entry.name}.log",
            startup_timeout=s.startup_timeout,
        )

    # --- where it is -------------------------------------------------------------------------

    @property
    def connect_host(self) -> str:
        """Address clients on this machine use (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def url(self) -> str:
        """``http://host:port``, the server root."""
        return f"http://{self.connect_host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``) for ``ChatOpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        """The server process id (also its process group id), while started."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            resolve_vllm_python(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
        ]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.tensor_parallel_size != 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        return cmd + self.extra_args

    # --- lifecycle ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> VLLMServer:
        """Start the process (returns at once; call :meth:`wait_healthy` next).

        Raises:
            ServerStartError: It is already running, the port is taken (we would otherwise
                health-check someone else's server), or the interpreter cannot be run.
        """
        with self._lock:
            if self.is_running():
                raise ServerStartError(f"{self.served_name} is already running (pid {self.pid})")
            if _port_in_use(self.connect_host, self.port):
                raise ServerStartError(
                    f"cannot start {self.served_name}: port {self.port} on {self.connect_host} "
                    "is already in use"
                )
            cmd = self.command()
            env = {**os.environ, **self.env}
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                log.write(f"\n=== rtr: starting at {time.ctime()}: {' '.join(cmd)}\n".encode())
                log.flush()
                try:
                    self._proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,  # own process group: stop() reaches its workers
                    )
                except OSError as exc:
                    raise ServerStartError(f"cannot run {cmd[0]!r}: {exc}") from exc
            _LIVE.add(self)
            return self

    def wait_healthy(self, timeout: float | None = None, interval: float = 0.5) -> float:
        """Block until ``GET /health`` answers 200 and ``/v1/models`` lists the served name.

        Args:
            timeout: Seconds to wait (default: ``startup_timeout``).
            interval: Seconds between polls.

        Returns:
            Seconds waited.

        Raises:
            ServerStartError: The process exited (at once, not after the timeout) or the timeout
                passed; the message ends with the log tail. On timeout the server is stopped.
        """
        limit = self.startup_timeout if timeout is None else timeout
        started = time.monotonic()
        while True:
            proc = self._proc
            if proc is None:
                raise ServerStartError(f"{self.served_name} was not started")
            code = proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.served_name} exited with code {code} before it was healthy "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if self._healthy():
                return time.monotonic() - started
            if time.monotonic() - started > limit:
                self.stop()
                raise ServerStartError(
                    f"{self.served_name} was not healthy after {limit:.0f} s; stopped it "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(interval)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                if resp.status != 200:
                    return False
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                listed = json.load(resp)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return any(m.get("id") == self.served_name for m in listed.get("data", []))

    def stop(self, grace: float = 20.0) -> int | None:
        """Stop the server and every process in its group.

        SIGTERM to the group first (vLLM shuts its engine down cleanly), then SIGKILL to whatever
        is left after ``grace`` seconds. Safe to call twice.

        Returns:
            The server's exit code, or ``None`` if it was never started.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            pgid = proc.pid  # start_new_session made it the group leader
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            # The leader may be gone while its engine or workers still wind down.
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(pgid) or proc.poll() is None:
                _signal_group(pgid, signal.SIGKILL)
                proc.wait()
                for _ in range(50):
                    if not _group_alive(pgid):
                        break
                    time.sleep(0.1)
            _LIVE.discard(self)
            return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log (what to show when it failed)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"VLLMServer({self.served_name!r}, {self.base_url}, {state})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop(grace=5.0)
