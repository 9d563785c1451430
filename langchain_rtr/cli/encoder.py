"""`rtr encoder`: build the fast encoder backends offline, once, from the shipped model.

Mounted in ``cli/main.py`` with ``app.add_typer(encoder_app, name="encoder")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import numpy as np

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


@dataclass
class QualityRow:
    """One backend's (or cascade's) routing quality on the held-out part, per seed."""

    name: str
    aiq: list[float] = field(default_factory=list)
    max_accuracy: list[float] = field(default_factory=list)


class _Projected:
    """Static vectors mapped into another encoder's space by a fitted linear map, normalised."""

    def __init__(self, inner: Any, weight: np.ndarray, encoder_id: str) -> None:
        self.inner, self.weight, self.id = inner, weight, encoder_id
        self.dim = int(weight.shape[1])

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        import numpy as np

        v = np.asarray(self.inner.encode(list(texts)), np.float32) @ self.weight
        return np.asarray(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))


def compare_backends(
    data: str = "llmrouter",
    *,
    backends: Sequence[str] = ("sentence-transformers", "onnx", "onnx-int8", "static"),
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.2,
    cascade: Sequence[float] = (0.1, 0.25),
    cascade_full: str = "onnx-int8",
    projection_alpha: float | None = 0.1,
    echo: Callable[[str], None] | None = None,
) -> list[QualityRow]:
    """The same held-out evaluation for each backend, on each seed's split.

    For each backend and seed: train a router on the training part, evaluate on the held-out
    part, and keep RTR's AIQ and the highest accuracy on its λ sweep.

    With the static backend and ``cascade`` shares, also the cascade that sends the static
    predictor's least certain questions (top share by mean ``p(1-p)``, threshold set on the
    training questions) through the ``cascade_full`` backend's predictor; and, with
    ``projection_alpha``, the static vectors mapped by a ridge regression (that penalty) onto the
    default encoder's vectors of the *training* questions (no labels), heads trained on those.
    """
    import numpy as np

    from langchain_rtr.evaluation import evaluate_routing
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import make_encoder, resolve_backend
    from langchain_rtr.predictor.cascade import CascadePredictor
    from langchain_rtr.workflow import fit_router, load_data, split

    names = [resolve_backend(b) for b in backends]
    if "static" in names and cascade and cascade_full not in names:
        names.append(resolve_backend(cascade_full))
    routing_set = load_data(data)
    encoders = {b: make_encoder(b) for b in names}
    rows: dict[str, QualityRow] = {}

    def record(name: str, report: Any) -> None:
        row = rows.setdefault(name, QualityRow(name))
        row.aiq.append(float(report.aiq["rtr"]))
        row.max_accuracy.append(float(max(report.curves["rtr"].accuracy)))
        if echo:
            echo(f"  {name}: AIQ {row.aiq[-1]:.4f}, max accuracy {row.max_accuracy[-1]:.4f}")

    for seed in seeds:
        train, test = split(routing_set, test_fraction=test_fraction, seed=seed)
        if echo:
            echo(f"seed {seed}: {len(train)} questions to train, {len(test)} held out")
        outputs: dict[str, Any] = {}
        for backend in names:
            encoder = encoders[backend]
            router = fit_router(routing_set, train, encoder=encoder, config=TrainConfig(seed=seed))
            test_emb, train_emb = encoder.encode(test.questions), encoder.encode(train.questions)
            prediction = router.predictor.predict_embeddings(test_emb)
            outputs[backend] = (router, prediction, test_emb, train_emb)
            kw: dict[str, Any] = {"cost_unit": router.cost_unit, "cost_scale": router.cost_scale}
            args = (test, prediction, test_emb, train, train_emb, router.models)
            if backend in backends:
                record(backend, evaluate_routing(*args, **kw))
        if "static" in outputs and projection_alpha is not None:
            xs = encoders["static"].encode(train.questions)
            teacher = encoders.get("sentence-transformers") or make_encoder("sentence-transformers")
            xt = teacher.encode(train.questions)
            gram = xs.T @ xs + projection_alpha * np.eye(xs.shape[1], dtype=np.float32)
            weight = np.linalg.solve(gram, xs.T @ xt).astype(np.float32)
            projected = _Projected(encoders["static"], weight, f"static-projected:{seed}")
            router = fit_router(
                routing_set, train, encoder=projected, config=TrainConfig(seed=seed)
            )
            p_test, p_train = projected.encode(test.questions), projected.encode(train.questions)
            record(
                "static, projected onto the default's space",
                evaluate_routing(
                    test,
                    router.predictor.predict_embeddings(p_test),
                    p_test,
                    train,
                    p_train,
                    router.models,
                    cost_unit=router.cost_unit,
                    cost_scale=router.cost_scale,
                ),
            )
        if "static" not in outputs or not cascade:
            continue
        router, _, test_emb, train_emb = outputs["static"]
        full_router = outputs[cascade_full][0]
        kw = {"cost_unit": router.cost_unit, "cost_scale": router.cost_scale}
        for share in cascade:
            chain = CascadePredictor.fit(
                router.predictor, full_router.predictor, train.questions, share=share
            )
            record(
                f"static, {share:.0%} least certain via {cascade_full}",
                evaluate_routing(
                    test,
                    chain.predict_embeddings(test_emb, test.questions),
                    test_emb,
                    train,
                    train_emb,
                    router.models,
                    **kw,
                ),
            )
    return list(rows.values())


def quality_markdown(rows: Sequence[QualityRow], baseline: str = "sentence-transformers") -> str:
    """The quality table: mean (min..max over seeds) AIQ, its change vs ``baseline``, accuracy."""
    import numpy as np

    base = next((r for r in rows if r.name == baseline), None)
    lines = [
        "| backend | AIQ, mean (min..max) | Δ AIQ vs default (per seed) | max accuracy |",
        "|---|---|---|---|",
    ]
    for r in rows:
        aiq = np.array(r.aiq)
        delta = "n/a"
        if base is not None and len(base.aiq) == len(r.aiq):
            d = aiq - np.array(base.aiq)
            delta = f"{d.mean():+.4f} ({', '.join(f'{x:+.4f}' for x in d)})"
        lines.append(
            f"| {r.name} | {aiq.mean():.4f} ({aiq.min():.4f}..{aiq.max():.4f}) | {delta} "
            f"| {np.mean(r.max_accuracy):.4f} |"
        )
    return "\n".join(lines)


@encoder_app.command("compare")
def compare(
    data: Annotated[str, typer.Option("--data", "-d", help="Bundled set or directory.")] = (
        "llmrouter"
    ),
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="Backends (default: all).")
    ] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Seeds (default 0 1 2).")] = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.2,
) -> None:
    """Quality guard: the same held-out evaluation per backend (AIQ, max accuracy, by seed)."""
    from langchain_rtr.predictor.backends import BACKENDS

    rows = compare_backends(
        data,
        backends=backend or list(BACKENDS),
        seeds=seed or [0, 1, 2],
        test_fraction=test_fraction,
        echo=lambda m: err_console.print(f"[dim]{m}"),
    )
    console.print(quality_markdown(rows))
