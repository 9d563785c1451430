"""Serving the endpoint with uvicorn: one process, or ``workers`` processes sharing the port.

uvicorn picks its fastest event loop and HTTP parser when they are installed (uvloop and
httptools, both dependencies of this package). Each worker is a process of its own that loads
the router once (`app_from_env` is the factory uvicorn calls in it); its `/rtr/stats` counts what
that worker answered and names it (`worker`, its process id).

The router's encoder gets one ONNX Runtime thread per process unless ``RTR_ENCODER_THREADS``
says otherwise: on a server the event loop needs the other cores, and a second encoder thread
spin-waits on them between runs (docs/server.md has the measurements).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from langchain_rtr.errors import ConfigError
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.server.app import build_runnable, create_app
from langchain_rtr.server.header_timeout import header_timeout_protocol
from langchain_rtr.server.schemas import ServerSettings
from langchain_rtr.traffic import TrafficLog, open_traffic_log

KEEP_ALIVE_S = 75
"""Seconds an idle client connection is kept open. Longer than the clients' own idle expiry
(httpx and `openai`: 5 s), so the client always closes first: with uvicorn's default, also 5 s,
a request sent on a connection just as the server closes it is lost (a client `ReadError`)."""

SERVER_ENCODER_THREADS = 1
"""The encoder's ONNX Runtime threads in a server process, unless ``RTR_ENCODER_THREADS`` is set."""

WORKER_CONFIG_ENV = "RTR_SERVER_WORKER_CONFIG"
"""How `run_server` hands a worker its router, models file and settings (JSON)."""


def app_from_env() -> FastAPI:
    """The app of one worker process, from what `run_server` put in ``RTR_SERVER_WORKER_CONFIG``."""
    raw = os.environ.get(WORKER_CONFIG_ENV)
    if not raw:
        raise ConfigError(f"{WORKER_CONFIG_ENV} is not set; start workers with run_server")
    cfg = json.loads(raw)
    runnable, backends = build_runnable(Path(cfg["router_dir"]), cfg["models_file"])
    return create_app(
        runnable, backends=backends, settings=ServerSettings.model_validate(cfg["settings"])
    )


def run_server(
    router_dir_or_runnable: str | os.PathLike[str] | RTRRunnable,
    models_file: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    workers: int = 1,
    log_level: str = "info",
    limit_concurrency: int | None = None,
    settings: ServerSettings | None = None,
    traffic_log: str | os.PathLike[str] | None = None,
    store_questions: bool = False,
    **setting_overrides: Any,
) -> None:
    """Serve the endpoint with uvicorn until Ctrl-C (the body of `rtr serve-router`).

    Args:
        router_dir_or_runnable: A saved router directory, or a ready `RTRRunnable` (one
            worker only: a runnable cannot be handed to other processes).
        models_file: The models file with the endpoints (needed with a router directory
            unless the saved specs already carry base URLs).
        host: Address to bind; keep 127.0.0.1 unless an `api_key` guards it.
        port: Port to bind.
        api_key: Required bearer token; None: open.
        workers: Processes serving the port, each with its own copy of the router.
        log_level: uvicorn's log level.
        limit_concurrency: uvicorn's cap on open connections per worker (503 beyond it).
        settings: Full `ServerSettings` (`api_key` and overrides win over it).
        traffic_log: Write every routed call to this log (`langchain_rtr.traffic`; a
            ``.jsonl`` file or a Parquet folder); None: no log. One worker only for now.
        store_questions: Keep question and answer texts in that log (default: a hash and
            the embedding).
        **setting_overrides: Other `ServerSettings` fields.

    Raises:
        ConfigError: ``workers`` is not a positive int, or more than one with a runnable
            or a traffic log.
    """
    import uvicorn

    from langchain_rtr.predictor.backends import THREADS_ENV

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected an int >= 1, got {workers!r}")
    os.environ.setdefault(THREADS_ENV, str(SERVER_ENCODER_THREADS))
    overrides = dict(setting_overrides)
    if api_key is not None:
        overrides["api_key"] = api_key
    cfg = ServerSettings.merged(settings, **overrides)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "limit_concurrency": limit_concurrency,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "http": header_timeout_protocol(cfg.header_timeout_s),
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        if traffic_log is not None:
            raise ConfigError(
                "a traffic log needs one worker: worker processes would write the same log"
            )
        if isinstance(router_dir_or_runnable, RTRRunnable):
            raise ConfigError(
                "workers > 1 needs a router directory (each worker process loads it); "
                "got a ready RTRRunnable"
            )
        os.environ[WORKER_CONFIG_ENV] = json.dumps(
            {
                "router_dir": str(router_dir_or_runnable),
                "models_file": None if models_file is None else str(models_file),
                "settings": cfg.model_dump(mode="json"),
            }
        )
        target = f"{__name__}:app_from_env"
        uvicorn.run(target, factory=True, workers=workers, **common)
        return
    traffic = (
        None if traffic_log is None else TrafficLog(traffic_log, store_questions=store_questions)
    )
    if isinstance(router_dir_or_runnable, RTRRunnable):
        runnable = router_dir_or_runnable
        if traffic is not None:
            runnable.engine.traffic_log = open_traffic_log(traffic, runnable.router)
        backends = None
        if models_file is not None:
            from langchain_rtr.config import load_models_file

            backends = {n: s for n, s in load_models_file(models_file).specs.items() if s.base_url}
    else:
        runnable, backends = build_runnable(
            Path(router_dir_or_runnable), models_file, traffic_log=traffic
        )
    uvicorn.run(create_app(runnable, backends=backends, settings=cfg), **common)
