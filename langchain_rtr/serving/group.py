"""Several vLLM servers started and stopped together, and ``rtr serve``'s foreground loop."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from types import FrameType, TracebackType

from langchain_rtr.config import ModelsFile, ServeEntry, load_models_file
from langchain_rtr.serving.vllm import ServerStartError, VLLMServer


class ServerGroup:
    """Several servers started and stopped together (what ``rtr serve`` and the tests use).

    Args:
        servers: The servers, keyed by model name.
        concurrent: Start them all at once (faster with cores or GPUs to spare) instead of one
            after the other (kinder to a small CPU machine; see docs/serving.md).
    """

    def __init__(self, servers: Mapping[str, VLLMServer], *, concurrent: bool = False) -> None:
        self.servers = dict(servers)
        self.concurrent = concurrent
        #: Seconds each server took to become healthy, after :meth:`start_all`.
        self.startup_seconds: dict[str, float] = {}

    @classmethod
    def from_entries(
        cls,
        entries: Iterable[ServeEntry],
        log_dir: str | os.PathLike[str] | None = None,
        *,
        concurrent: bool = False,
    ) -> ServerGroup:
        """A group with one server per models-file serve entry."""
        return cls(
            {e.name: VLLMServer.from_entry(e, log_dir) for e in entries}, concurrent=concurrent
        )

    def __getitem__(self, name: str) -> VLLMServer:
        return self.servers[name]

    def start_all(self, on_ready: Callable[[str, VLLMServer], None] | None = None) -> None:
        """Start every server and wait until each is healthy; on any failure stop them all.

        Args:
            on_ready: Called with (name, server) as each becomes healthy.
        """

        def one(name: str, server: VLLMServer) -> None:
            t0 = time.monotonic()
            server.start()
            server.wait_healthy()
            self.startup_seconds[name] = time.monotonic() - t0
            if on_ready is not None:
                on_ready(name, server)

        if not (self.concurrent and len(self.servers) > 1):
            try:
                for name, server in self.servers.items():
                    one(name, server)
            except BaseException:
                self.stop_all()
                raise
            return
        pool = ThreadPoolExecutor(max_workers=len(self.servers))
        try:
            futures = [pool.submit(one, n, s) for n, s in self.servers.items()]
            for fut in as_completed(futures):
                fut.result()
        except BaseException:
            # Stopping a server makes its thread's wait_healthy fail at once; then stop again
            # in case a thread was between its check and its start.
            self.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            self.stop_all()
            raise
        finally:
            pool.shutdown(wait=True)

    def restart(self, name: str, timeout: float | None = None) -> float:
        """Stop one server (if running), start it again and wait until healthy; returns seconds."""
        server = self.servers[name]
        server.stop()
        t0 = time.monotonic()
        server.start()
        server.wait_healthy(timeout)
        return time.monotonic() - t0

    def stop_all(self) -> None:
        """Stop every server (in parallel: each may wait out its grace period)."""
        if not self.servers:
            return
        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            list(pool.map(lambda s: s.stop(), self.servers.values()))

    def dead(self) -> list[str]:
        """Names of servers that were started but have exited."""
        return [n for n, s in self.servers.items() if s.pid is not None and not s.is_running()]

    def __enter__(self) -> ServerGroup:
        self.start_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


class _Stop(Exception):
    pass


def serve_models(
    models_file: str | os.PathLike[str] | ModelsFile,
    log_dir: str | os.PathLike[str] = Path("rtr-out") / "logs",
    *,
    names: Sequence[str] | None = None,
    concurrent: bool = False,
    echo: Callable[[str], None] = print,
    ready_event: threading.Event | None = None,
) -> int:
    """Serve the models of a models file until Ctrl-C or SIGTERM (the body of ``rtr serve``).

    Starts one vLLM server per model with a ``serve:`` section, waits until each is healthy,
    prints its URL, then blocks. Stops them all on Ctrl-C, SIGTERM, or when one dies.

    Args:
        models_file: The models file (path or loaded).
        log_dir: Directory for one ``<model>.log`` per server.
        names: Serve only these models (default: every model with a ``serve:`` section).
        concurrent: Start the servers at once rather than one after the other.
        echo: Where progress lines go (the CLI passes ``typer.echo``).
        ready_event: Set once every server is healthy (for callers running this in a thread).

    Returns:
        The exit code: 0 after a requested stop, 1 if a server failed to start or died.

    Raises:
        ModelsFileError: The models file is invalid.
        ServerStartError: Nothing to serve (no entry has ``serve:``, or unknown ``names``).
    """
    loaded = models_file if isinstance(models_file, ModelsFile) else load_models_file(models_file)
    entries = loaded.serve_entries
    if names is not None:
        known = {e.name for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ServerStartError(
                f"no serve section for {', '.join(unknown)}; servable: {', '.join(sorted(known))}"
            )
        entries = [e for e in entries if e.name in names]
    if not entries:
        raise ServerStartError("no model in the models file has a `serve:` section")

    group = ServerGroup.from_entries(entries, log_dir, concurrent=concurrent)
    stop_requested = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop_requested.is_set():  # a second SIGTERM must not interrupt the cleanup
            stop_requested.set()
            raise _Stop

    previous = signal.signal(signal.SIGTERM, on_signal) if in_main else None
    try:
        for name, server in group.servers.items():
            echo(f"starting {name}: {' '.join(server.command())}")
            echo(f"  log: {server.log_path}")
        group.start_all(
            on_ready=lambda n, s: echo(
                f"ready  {n}: {s.base_url} (model {s.served_name!r}, "
                f"{group.startup_seconds.get(n, 0.0):.0f} s)"
            )
        )
        echo("all servers ready; Ctrl-C to stop")
        if ready_event is not None:
            ready_event.set()
        while not stop_requested.is_set():
            dead = group.dead()
            if dead:
                for name in dead:
                    echo(f"{name} exited; log tail:\n{group[name].log_tail()}")
                return 1
            stop_requested.wait(1.0)
        return 0
    except ServerStartError as exc:
        echo(f"error: {exc}")
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        stop_requested.set()
        # Ctrl-C pressed again while stopping would leave orphans; finish the cleanup first.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            echo("stopping servers...")
            group.stop_all()
            echo("stopped")
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous)
