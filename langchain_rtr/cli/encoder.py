"""`rtr encoder`: build the fast encoder backends offline, once, from the shipped model.

Mounted in ``cli/main.py`` with ``app.add_typer(encoder_app, name="encoder")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

encoder_app = typer.Typer(
    name="encoder",
    help="Build and list the question-encoder backends (ONNX fp32/int8, static).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache root (default $RTR_CACHE_DIR or ~/.cache/langchain-rtr)."
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild even if already built.")]


def _build(backends: list[str], cache_dir: Path | None, force: bool) -> None:
    from langchain_rtr.predictor.backends import build_artifact, resolve_backend

    for name in backends:
        backend = resolve_backend(name)
        artifact = build_artifact(
            backend, cache_dir=cache_dir, force=force, log=lambda m: err_console.print(f"[dim]{m}")
        )
        state = f"built in {artifact.seconds:.0f} s" if artifact.built else "already built, reused"
        console.print(f"{backend}: {artifact.path} ({state})")


@encoder_app.command("export")
def export(
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="onnx and/or onnx-int8 (default: both)."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export the shipped encoder to ONNX (fp32, fused) and quantise it to int8 (per channel)."""
    chosen = backend or ["onnx", "onnx-int8"]
    bad = [b for b in chosen if b not in ("onnx", "onnx-int8")]
    if bad:
        raise typer.BadParameter(f"export builds onnx or onnx-int8, not {bad}; see `distill`")
    _build(chosen, cache_dir, force)


@encoder_app.command("distill")
def distill(
    cache_dir: CacheDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Distil a static (model2vec) encoder from the shipped encoder."""
    _build(["static"], cache_dir, force)


@encoder_app.command("list")
def list_() -> None:
    """Show each backend, its encoder id and whether its artifact is built."""
    from langchain_rtr.predictor.backends import (
        BACKENDS,
        artifact_dir,
        artifact_ready,
        backend_encoder_id,
        resolve_backend,
    )

    current = resolve_backend(None)
    table = Table("backend", "encoder id", "artifact", "selected")
    for backend in BACKENDS:
        if backend == "sentence-transformers":
            where = "(the shipped model)"
        else:
            path = artifact_dir(backend)
            where = f"{path}" if artifact_ready(path) else "not built"
        table.add_row(
            backend, backend_encoder_id(backend), where, "yes" if backend == current else ""
        )
    console.print(table)
