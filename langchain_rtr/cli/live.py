"""The `rtr` commands that run the live pieces: model servers, profiling, the endpoint.

Registered on the app in ``langchain_rtr.cli.main``; each imports its module on use.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 120)

DEFAULT_OUT = Path("rtr-out")
RouterOpt = Annotated[Path, typer.Option("--router", "-r", help="A saved router directory.")]


def serve(
    models_file: Annotated[Path, typer.Argument(help="Models file (YAML) with serve: sections.")],
    log_dir: Annotated[Path, typer.Option(help="Server logs go here.")] = DEFAULT_OUT / "logs",
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Serve only these (repeatable).")
    ] = None,
    concurrent: Annotated[
        bool, typer.Option(help="Start the servers at the same time instead of in turn.")
    ] = False,
) -> None:
    """Start one vLLM server per model, wait until healthy, stop all on Ctrl-C or SIGTERM."""
    from langchain_rtr.serving import serve_models

    code = serve_models(
        models_file, log_dir, names=model, concurrent=concurrent, echo=console.print
    )
    raise typer.Exit(code)


def collect(
    models_file: Annotated[Path, typer.Argument(help="Models file (YAML).")],
    questions_file: Annotated[Path, typer.Argument(help="Question set (JSONL or CSV).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records file (JSONL), appended.")] = (
        DEFAULT_OUT / "records.jsonl"
    ),
    strategy: Annotated[
        list[str] | None, typer.Option("--strategy", "-s", help="Strategies (repeatable).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Calls in flight per endpoint.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Output token cap per call.")] = 512,
    retries: Annotated[int, typer.Option(help="Retries on endpoint failures.")] = 3,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
) -> None:
    """Profile every (model, strategy) pair on a question set; resumable."""
    from langchain_rtr.collect import PAPER_STRATEGIES, run_collect

    summary = run_collect(
        models_file,
        questions_file,
        out,
        strategies=strategy or PAPER_STRATEGIES,
        models=model,
        concurrency=concurrency,
        max_tokens=max_tokens,
        retries=retries,
        limit=limit,
        echo=console.print,
    )
    if getattr(summary, "interrupted", False):
        raise typer.Exit(130)


def serve_router(
    router_dir: RouterOpt = DEFAULT_OUT / "router",
    models_file: Annotated[
        Path | None, typer.Option("--models", help="Models file with the backends' endpoints.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="RTR_API_KEY", help="Require this bearer key.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes, each loading the router once.")
    ] = 1,
    traffic_log: Annotated[
        Path | None,
        typer.Option(
            "--traffic-log",
            help="Write every routed call here (PATH.jsonl, or a folder of Parquet files) "
            "for `rtr train --update`.",
        ),
    ] = None,
    store_questions: Annotated[
        bool,
        typer.Option(
            "--store-questions", help="Keep question texts in the log (default: hash + embedding)."
        ),
    ] = False,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            "--header-timeout",
            min=0.001,
            envvar="RTR_HEADER_TIMEOUT_S",
            help="Seconds a client may take to send its request headers before it is cut off "
            "(default: the server's, 5).",
        ),
    ] = None,
) -> None:
    """Serve RTR behind an OpenAI-compatible /v1/chat/completions endpoint."""
    from langchain_rtr.server import run_server

    overrides: dict[str, Any] = {}
    if header_timeout is not None:
        overrides["header_timeout_s"] = header_timeout
    run_server(
        router_dir,
        models_file,
        host=host,
        port=port,
        api_key=api_key,
        workers=workers,
        traffic_log=traffic_log,
        store_questions=store_questions,
        **overrides,
    )
