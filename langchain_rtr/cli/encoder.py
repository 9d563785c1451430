"""`rtr encoder`: build the encoder backends offline, once, from the shipped model; compare them.

``rtr encoder compare`` is the quality guard of docs/encoders.md: the same held-out evaluation
per backend, on random splits and with each record source (data set or cluster) held out.

Mounted in ``cli/main.py`` with ``app.add_typer(encoder_app, name="encoder")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from langchain_rtr.data.matrix import OutcomeMatrix, RoutingSet

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


Protocol = Literal["random", "group-out"]
PROTOCOLS: tuple[Protocol, ...] = ("random", "group-out")


@dataclass
class QualityRow:
    """One backend's (or cascade's) routing quality on the held-out part of each fold."""

    name: str
    protocol: Protocol = "random"
    folds: list[str] = field(default_factory=list)
    aiq: list[float] = field(default_factory=list)
    max_accuracy: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Fold:
    """One train / held-out split of a quality protocol, and the training seed it uses."""

    name: str
    train: OutcomeMatrix
    test: OutcomeMatrix
    seed: int


def random_folds(routing_set: RoutingSet, seeds: Sequence[int], test_fraction: float) -> list[Fold]:
    """A random held-out share per seed (split and training seed the same)."""
    from langchain_rtr.workflow import split

    folds = []
    for seed in seeds:
        train, test = split(routing_set, test_fraction=test_fraction, seed=seed)
        folds.append(Fold(f"seed {seed}", train, test, seed))
    return folds


def group_out_folds(routing_set: RoutingSet, seed: int = 0) -> list[Fold]:
    """Leave one group out: each record ``source`` in turn is held out, trained on the others.

    The routing set's sources are its groups: the upstream data set of each question
    (``faithful-cot``), or the cluster a question was assigned to (``llmrouter`` keeps
    ``cluster_id`` as ``source = "cluster-<id>"``). The held-out group is data the router never
    saw a question of: a shifted distribution, not a random share of the same one.

    Raises:
        ConfigError: The set has fewer than two sources.
    """
    import numpy as np

    from langchain_rtr.errors import ConfigError

    matrix = routing_set.matrix()
    sources = np.asarray(matrix.sources)
    groups = sorted(set(matrix.sources))
    if len(groups) < 2:
        raise ConfigError(
            f"{routing_set.name}: leave-one-group-out needs at least two record sources; "
            f"found {groups}"
        )
    return [
        Fold(
            f"{group} out",
            matrix.subset(np.flatnonzero(sources != group)),
            matrix.subset(np.flatnonzero(sources == group)),
            seed,
        )
        for group in groups
    ]


def compare_backends(
    data: str = "llmrouter",
    *,
    backends: Sequence[str] = ("sentence-transformers", "onnx", "onnx-int8", "static"),
    protocols: Sequence[Protocol] = PROTOCOLS,
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.2,
    cascade: Sequence[float] = (0.1, 0.25),
    cascade_full: str = "onnx-int8",
    ensemble: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[QualityRow]:
    """The same held-out evaluation for each backend, on each fold of each protocol.

    For each backend and fold: train a router on the training part (full ``TrainConfig``
    defaults, the fold's seed), evaluate on the held-out part, and keep RTR's AIQ and the
    highest accuracy on its λ sweep. ``random``: a random ``test_fraction`` per seed;
    ``group-out``: :func:`group_out_folds`. With the static backend and ``cascade`` shares, also
    the cascade that sends the static predictor's least certain questions (that share of the
    training questions, by mean ``p(1-p)``) through the ``cascade_full`` backend's predictor.
    ``ensemble`` overrides ``TrainConfig.ensemble`` (fewer networks: a quicker, noisier guard).
    """
    from langchain_rtr.evaluation import evaluate_routing
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import make_encoder, resolve_backend
    from langchain_rtr.predictor.cascade import CascadePredictor
    from langchain_rtr.workflow import fit_router, load_data

    names = [resolve_backend(b) for b in backends]
    full_name = resolve_backend(cascade_full)
    with_cascade = "static" in names and bool(cascade)
    trained = [*names, full_name] if with_cascade and full_name not in names else names
    routing_set = load_data(data)
    encoders = {b: make_encoder(b) for b in trained}
    rows: dict[tuple[str, str], QualityRow] = {}

    def record(protocol: Protocol, fold: Fold, name: str, report: Any) -> None:
        row = rows.setdefault((protocol, name), QualityRow(name, protocol))
        row.folds.append(fold.name)
        row.aiq.append(float(report.aiq["rtr"]))
        row.max_accuracy.append(float(max(report.curves["rtr"].accuracy)))
        if echo:
            echo(f"  {name}: AIQ {row.aiq[-1]:.4f}, max accuracy {row.max_accuracy[-1]:.4f}")

    for protocol in protocols:
        if protocol == "random":
            folds = random_folds(routing_set, seeds, test_fraction)
        else:
            folds = group_out_folds(routing_set, seed=seeds[0] if seeds else 0)
        for fold in folds:
            train, test = fold.train, fold.test
            if echo:
                echo(f"{protocol}, {fold.name}: {len(train)} to train, {len(test)} held out")
            outputs: dict[str, Any] = {}
            for backend in trained:
                encoder = encoders[backend]
                config = TrainConfig(seed=fold.seed)
                if ensemble is not None:
                    config = dataclasses.replace(config, ensemble=ensemble)
                router = fit_router(routing_set, train, encoder=encoder, config=config)
                test_emb, train_emb = (
                    encoder.encode(test.questions),
                    encoder.encode(train.questions),
                )
                prediction = router.predictor.predict_embeddings(test_emb, test.questions)
                outputs[backend] = (router, test_emb, train_emb)
                kw: dict[str, Any] = {
                    "cost_unit": router.cost_unit,
                    "cost_scale": router.cost_scale,
                }
                if backend in names:
                    report = evaluate_routing(
                        test, prediction, test_emb, train, train_emb, router.models, **kw
                    )
                    record(protocol, fold, backend, report)
            if not with_cascade:
                continue
            router, test_emb, train_emb = outputs["static"]
            full_router = outputs[full_name][0]
            kw = {"cost_unit": router.cost_unit, "cost_scale": router.cost_scale}
            for share in cascade:
                chain = CascadePredictor.fit(
                    router.predictor, full_router.predictor, train.questions, share=share
                )
                prediction = chain.predict_embeddings(test_emb, test.questions)
                report = evaluate_routing(
                    test, prediction, test_emb, train, train_emb, router.models, **kw
                )
                record(protocol, fold, f"static, {share:.0%} least certain via {full_name}", report)
    return list(rows.values())


def quality_markdown(rows: Sequence[QualityRow], baseline: str = "sentence-transformers") -> str:
    """One table per protocol: mean (min..max over folds) AIQ, its change vs ``baseline``."""
    import numpy as np

    tables = []
    for protocol in dict.fromkeys(r.protocol for r in rows):
        mine = [r for r in rows if r.protocol == protocol]
        base = next((r for r in mine if r.name == baseline), None)
        folds = ", ".join(mine[0].folds)
        lines = [
            f"{protocol} ({folds}):",
            "",
            f"| backend | AIQ, mean (min..max) | Δ AIQ vs {baseline} (per fold) | max accuracy |",
            "|---|---|---|---|",
        ]
        for r in mine:
            aiq = np.array(r.aiq)
            delta = "n/a"
            if base is not None and base.folds == r.folds:
                d = aiq - np.array(base.aiq)
                delta = f"{d.mean():+.4f} ({', '.join(f'{x:+.4f}' for x in d)})"
            lines.append(
                f"| {r.name} | {aiq.mean():.4f} ({aiq.min():.4f}..{aiq.max():.4f}) | {delta} "
                f"| {np.mean(r.max_accuracy):.4f} |"
            )
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


@encoder_app.command("compare")
def compare(
    data: Annotated[str, typer.Option("--data", "-d", help="Bundled set or directory.")] = (
        "llmrouter"
    ),
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="Backends (default: all).")
    ] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(
            "--protocol",
            "-p",
            help="random (a held-out share per seed) and/or group-out (each record source "
            "held out in turn); default both.",
        ),
    ] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Seeds (default 0 1 2).")] = None,
    ensemble: Annotated[
        int | None, typer.Option("--ensemble", help="Networks per predictor (default 5).")
    ] = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.2,
    cascade: Annotated[
        list[float] | None,
        typer.Option(
            "--cascade", help="Cascade shares to evaluate with static (default 0.1 0.25)."
        ),
    ] = None,
) -> None:
    """Quality guard: the same held-out evaluation per backend (AIQ, max accuracy, by fold)."""
    from langchain_rtr.predictor.backends import BACKENDS

    chosen = protocol or list(PROTOCOLS)
    bad = [p for p in chosen if p not in PROTOCOLS]
    if bad:
        raise typer.BadParameter(f"--protocol {bad}: expected {' or '.join(PROTOCOLS)}")
    rows = compare_backends(
        data,
        backends=backend or list(BACKENDS),
        protocols=[p for p in PROTOCOLS if p in chosen],
        seeds=seed or [0, 1, 2],
        test_fraction=test_fraction,
        cascade=[0.1, 0.25] if cascade is None else cascade,
        ensemble=ensemble,
        echo=lambda m: err_console.print(f"[dim]{m}"),
    )
    console.print(quality_markdown(rows))
