"""The `rtr` command: train, evaluate, route, demo, and run the live pieces.

Heavy modules (torch, sentence-transformers, vLLM helpers) are imported inside each command so
that `rtr --help` and argument errors answer at once. Every error is printed as one line; set
``RTR_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from langchain_rtr.routing import Policy

app = typer.Typer(
    name="rtr",
    help="Route-To-Reason: route each question to the (model, strategy) pair with the best "
    "accuracy for its cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from langchain_rtr import __version__

        typer.echo(f"langchain-rtr {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Route-To-Reason: route each question to the best (model, strategy) pair for its cost."""


# Rich falls back to 80 columns when not on a terminal, which truncates model names in tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)

DEFAULT_OUT = Path("rtr-out")
DEFAULT_DATA = "faithful-cot"  # langchain_rtr.data.bundled.DEFAULT_BUNDLED, without importing it
DEMO_QUESTIONS = (
    "What is 7 + 5?",
    "A train leaves at 3:15 pm and the trip takes 2 hours 50 minutes. When does it arrive?",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with "
    "four. She sells the rest at $2 per egg. How much does she make every day?",
    "[Scott] and [Lewis] are brothers. [Jason] is father of their father. "
    "Question: How is [Lewis] related to [Jason]?",
    "Which organelle produces most of the ATP in a eukaryotic cell?",
)
DEMO_BUDGETS = (10, 60, 300)
"""Per-question output-token budgets the demo routes its questions under."""

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="A bundled set name, faithful-cot:PATH (a clone of the Faithful-COT repository) "
        "or a routing-set directory.",
    ),
]
RouterOpt = Annotated[Path, typer.Option("--router", "-r", help="A saved router directory.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the train/test split and of training.")]
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        envvar="RTR_ENCODER_BACKEND",
        help="Question encoder backend: onnx-int8 (default), onnx, static, sentence-transformers.",
    ),
]
TestFractionOpt = Annotated[
    float, typer.Option("--test-fraction", help="Share of questions held out for evaluation.")
]


def _epoch_progress(max_epochs: int) -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]training[/bold]"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task = progress.add_task("train", total=max_epochs, losses="")

    def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        progress.update(
            task, completed=epoch, losses=f"train {train_loss:.4f}  validation {val_loss:.4f}"
        )

    return progress, on_epoch


def _train(
    data: str,
    test_fraction: float,
    seed: int,
    cost_unit: str | None,
    max_questions: int | None = None,
    encoder_backend: str | None = None,
    cascade_to: str | None = None,
    cascade_share: float = 0.25,
    held_out_source: str | None = None,
) -> Any:
    """Load, split, encode and train with progress on stderr: (set, router, train, test).

    With ``held_out_source``, test is that source and train every other (leave-one-out).

    With ``cascade_to``, a second predictor is trained on that backend and the router sends the
    first one's least certain questions (``cascade_share`` of training questions) to it.
    """
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import resolve_backend
    from langchain_rtr.workflow import (
        fit_cascade_router,
        fit_router,
        load_data,
        split,
        split_by_source,
    )

    if cascade_to is not None and resolve_backend(cascade_to) == resolve_backend(encoder_backend):
        raise typer.BadParameter(
            f"--cascade-to {cascade_to} is the backend already in use; choose a fuller one "
            "(and a fast --encoder, such as static)"
        )

    started = time.perf_counter()
    with err_console.status(f"loading {data}"):
        routing_set = load_data(data)
        if held_out_source is not None:
            train, test = split_by_source(routing_set, held_out_source)
        else:
            train, test = split(
                routing_set, test_fraction=test_fraction, seed=seed, max_questions=max_questions
            )
    err_console.print(
        f"[dim]{routing_set.name}: {len(train) + len(test)} questions, "
        f"{len(train.pairs)} pairs; {len(train)} to train, {len(test)} held out[/dim]"
    )
    config = TrainConfig(seed=seed)
    with err_console.status("encoding questions (cached after the first run)"):
        from langchain_rtr.predictor import default_encoder

        encoder = default_encoder(backend=encoder_backend)
        encoder.encode(train.questions + test.questions, show_progress=False)
        full = default_encoder(backend=cascade_to) if cascade_to is not None else None
        if full is not None:  # it sees only the doubtful questions after training
            full.encode(train.questions, show_progress=False)
    trainings = 1 if full is None else 2
    progress, on_epoch = _epoch_progress(config.max_epochs * config.ensemble * trainings)
    with progress:
        if full is None:
            router = fit_router(
                routing_set,
                train,
                encoder=encoder,
                config=config,
                cost_unit=cost_unit,  # type: ignore[arg-type]
                progress=on_epoch,
            )
        else:
            router = fit_cascade_router(
                routing_set,
                train,
                fast_encoder=encoder,
                full_encoder=full,
                share=cascade_share,
                config=config,
                cost_unit=cost_unit,  # type: ignore[arg-type]
                progress=on_epoch,
            )
    err_console.print(f"[dim]trained in {time.perf_counter() - started:.1f} s[/dim]")
    return routing_set, router, train, test


def _print_report(report: Any, plot: Path | None, json_out: Path | None) -> None:
    console.print(report)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        report.plot(plot)
        console.print(f"plot: {plot}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        console.print(f"report: {json_out}")


def _policy(
    lam: float | None,
    max_tokens: int | None,
    floor: float | None,
    confidence: float | None = None,
    budget_rule: str | None = None,
) -> Policy | None:
    """The flags' policy, by the one knob parser every front end uses."""
    from langchain_rtr.errors import RTRError
    from langchain_rtr.knobs import parse_knobs

    values: dict[str, Any] = {"lambda": lam, "max_tokens": max_tokens, "floor": floor}
    values |= {"confidence": confidence, "budget_rule": budget_rule}
    try:
        return parse_knobs(values, lambda k: "--" + k.replace("_", "-")).policy
    except RTRError as exc:
        raise typer.BadParameter(str(exc)) from None


def _parse_pairs(allow: list[str] | None) -> list[Any] | None:
    """`--allow` values: ``model/strategy`` pairs (split at the last ``/``) or bare models."""
    from langchain_rtr.errors import RTRError
    from langchain_rtr.knobs import parse_pair

    if not allow:
        return None
    try:
        return [parse_pair(item, "--allow") if "/" in item else item for item in allow]
    except RTRError as exc:
        raise typer.BadParameter(str(exc)) from None


def _print_decision(router: Any, question: str, policy: Any, allowed: Any) -> None:
    from langchain_rtr.cli.render import routing_table_view

    tables = router.tables([question])  # one prediction serves the table and the decision
    decision = router.decide(tables, policy, allowed)[0]
    console.print()
    console.print(routing_table_view(tables[0]))
    if decision.model is None:
        console.print(f"decision: [red]no pair chosen[/red] ({decision.status})")
    else:
        tokens = (
            f", ~{decision.output_tokens:.0f} tokens" if decision.output_tokens is not None else ""
        )
        console.print(
            f"decision: [green]{decision.model} / {decision.strategy}[/green] "
            f"(p(correct) {decision.correctness:.2f}{tokens}; {decision.status})"
        )


def _load_router(router_dir: Path, encoder: str | None, retrain_on: Any = None) -> Any:
    """A saved router, optionally with another encoder backend (refused unless retraining)."""
    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.routing import RTRRouter

    router = RTRRouter.load(
        router_dir,
        encoder=make_encoder(encoder) if encoder else None,
        retrain_on=retrain_on,
    )
    if retrain_on is not None:
        router.fit_cost_scale(retrain_on.questions)
    return router


HoldOutOpt = Annotated[
    str | None,
    typer.Option(
        "--hold-out-source",
        help="Leave-one-source-out: hold out this source (data set) whole instead of a random "
        "share of questions.",
    ),
]


@app.command()
def train(
    data: DataOpt = DEFAULT_DATA,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the router.")] = (
        DEFAULT_OUT / "router"
    ),
    test_fraction: TestFractionOpt = 0.2,
    seed: SeedOpt = 0,
    cost_unit: Annotated[
        str | None, typer.Option(help="usd or tokens (default: usd when models have prices).")
    ] = None,
    encoder: EncoderOpt = None,
    cascade_to: Annotated[
        str | None,
        typer.Option(
            "--cascade-to",
            help="Also train on this backend (onnx-int8, say) and send it the --encoder "
            "predictor's least certain questions.",
        ),
    ] = None,
    cascade_share: Annotated[
        float,
        typer.Option(
            "--cascade-share", min=0.0, max=1.0, help="Share of training questions sent on."
        ),
    ] = 0.25,
    hold_out_source: HoldOutOpt = None,
    update: Annotated[
        Path | None,
        typer.Option(
            "--update",
            help="Refit --router on this traffic log (lengths from every call, correctness "
            "where scored) instead of training anew.",
        ),
    ] = None,
    router_dir: Annotated[
        Path, typer.Option("--router", "-r", help="With --update: the router to refit.")
    ] = DEFAULT_OUT / "router",
) -> None:
    """Train a router on a routing set's training part and save it (or refit: --update)."""
    from langchain_rtr.workflow import TrainingInfo, save_training_info

    if update is not None:
        from langchain_rtr.cli.upkeep import update as update_router

        update_router(router_dir, update, out)
        return

    routing_set, router, _, _ = _train(
        data,
        test_fraction,
        seed,
        cost_unit,
        None,
        encoder,
        cascade_to,
        cascade_share,
        held_out_source=hold_out_source,
    )
    router.save(out)
    save_training_info(
        out,
        TrainingInfo(
            data, test_fraction, seed, str(router.cost_unit), held_out_source=hold_out_source
        ),
    )
    console.print(f"router saved to {out} ({routing_set.name}, {len(router.pairs)} pairs)")


@app.command("eval")
def eval_(
    router_dir: RouterOpt = DEFAULT_OUT / "router",
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Default: the set the router was trained on.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the accuracy-cost plot here.")] = (
        DEFAULT_OUT / "eval.png"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = (
        None
    ),
    encoder: EncoderOpt = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Retrain the heads on --encoder if it differs.")
    ] = False,
    protocol: Annotated[
        str,
        typer.Option(
            help="router: the saved router on its own held-out part. loso: train and evaluate "
            "one router per source of --data, each tested on the source it never saw.",
        ),
    ] = "router",
    seed: SeedOpt = 0,
) -> None:
    """Evaluate a saved router on the held-out part of its set against the baselines."""
    from langchain_rtr.workflow import evaluate, load_data, load_training_info, split, split_for

    if protocol == "loso":
        _eval_loso(data or DEFAULT_DATA, seed, encoder, json_out)
        return
    if protocol != "router":
        raise typer.BadParameter(f"--protocol must be router or loso, got {protocol!r}")
    info = load_training_info(router_dir)
    if info is None and data is None:
        raise typer.BadParameter(
            f"{router_dir} has no training.json; say which data to evaluate on with --data"
        )
    routing_set = load_data(data or info.data)  # type: ignore[union-attr]
    if info is not None and (data is None or data == info.data):
        train_part, test = split_for(routing_set, info)
    else:
        # Another set: every question is unseen, and KNN's neighbours come from the set itself.
        train_part, test = split(routing_set, test_fraction=0.5, seed=0)
    router = _load_router(router_dir, encoder, train_part if retrain else None)
    with err_console.status("evaluating"):
        report = evaluate(router, train_part, test, name=routing_set.name)
    _print_report(report, plot, json_out)
    _print_cascade_share(router)
    from langchain_rtr.evaluation.lengths import router_length_accuracy

    lengths = router_length_accuracy(router, test, train_part)
    if lengths is not None:
        console.print(lengths)


def _eval_loso(data: str, seed: int, encoder: str | None, json_out: Path | None) -> None:
    """Leave-one-source-out: one router per source, each tested on the source it never saw."""
    from langchain_rtr.workflow import evaluate, load_data, sources_of

    sources = sources_of(load_data(data))
    table = Table(
        "held-out source",
        "questions",
        "best single",
        "RTR AIQ",
        "KNN AIQ",
        "singles AIQ",
        title=f"{data}: leave-one-source-out (seed {seed})",
        title_justify="left",
    )
    results: dict[str, Any] = {}
    for source in sources:
        routing_set, router, train_part, test = _train(
            data, 0.2, seed, None, None, encoder, held_out_source=source
        )
        report = evaluate(router, train_part, test, name=f"{routing_set.name} without {source}")
        results[source] = report.to_dict()
        best = report.method(report.best_single)
        table.add_row(
            source,
            str(report.n_questions),
            f"{best.name} {best.accuracy:.3f}",
            *(f"{report.aiq.get(k, float('nan')):.4f}" for k in ("rtr", "knn", "singles")),
        )
    aiqs = {k: [results[s]["aiq"][k] for s in sources] for k in ("rtr", "knn", "singles")}
    table.add_row("mean", "", "", *(f"{sum(v) / len(v):.4f}" for v in aiqs.values()), style="bold")
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"report: {json_out}")


def _print_cascade_share(router: Any) -> None:
    """For a cascade router, how many questions its full encoder saw."""
    from langchain_rtr.predictor.cascade import CascadePredictor

    chain = router.predictor
    if isinstance(chain, CascadePredictor) and chain.stats.questions:
        stats = chain.stats
        console.print(
            f"cascade: {stats.escalated} of {stats.questions} questions "
            f"({stats.escalated / stats.questions:.0%}) re-scored with {chain.full.encoder.id}"
        )


@app.command()
def route(
    question: Annotated[str, typer.Argument(help="The question to route.")],
    router_dir: RouterOpt = DEFAULT_OUT / "router",
    lam: Annotated[float | None, typer.Option("--lambda", help="Trade-off λ in [0, 1].")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Per-question budget in output tokens.")
    ] = None,
    floor: Annotated[float | None, typer.Option(help="Accuracy floor in [0, 1].")] = None,
    confidence: Annotated[
        float | None,
        typer.Option(help="With --max-tokens: probability in (0, 1) the answer fits."),
    ] = None,
    budget_rule: Annotated[
        str | None, typer.Option(help="With --max-tokens: fit (default) or best_bet.")
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="Allowed model or model/strategy (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Print a question's routing table and the chosen pair."""
    from langchain_rtr.inputs import check_question
    from langchain_rtr.routing import RTRRouter

    question = check_question(question, where="rtr route QUESTION")  # before loading anything
    policy = _policy(lam, max_tokens, floor, confidence, budget_rule)
    router = RTRRouter.load(router_dir)
    allowed = _parse_pairs(allow)
    if as_json:
        decision = router.route(question, policy=policy, allowed=allowed)
        console.print_json(json.dumps(decision.to_dict()))
        return
    _print_decision(router, question, policy, allowed)


@app.command()
def demo(
    data: DataOpt = DEFAULT_DATA,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = DEFAULT_OUT,
    seed: SeedOpt = 0,
    max_questions: Annotated[
        int,
        typer.Option(
            help="Use a seeded sample of this many questions (0: all). Encoding every question "
            "of the default set takes minutes on 2 cores; `rtr train` uses all by default."
        ),
    ] = 3000,
    encoder: EncoderOpt = None,
) -> None:
    """Train on a bundled set, compare RTR with the baselines, plot, and route examples."""
    from langchain_rtr.workflow import TrainingInfo, evaluate, save_training_info

    started = time.perf_counter()
    sample = max_questions or None
    routing_set, router, train_part, test = _train(data, 0.2, seed, None, sample, encoder)
    with err_console.status("evaluating against the baselines"):
        report = evaluate(router, train_part, test, name=routing_set.name)
    _print_report(report, out / f"{routing_set.name}-curve.png", out / f"{routing_set.name}.json")
    router_dir = out / "router"
    router.save(router_dir)
    save_training_info(
        router_dir, TrainingInfo(data, 0.2, seed, str(router.cost_unit), max_questions=sample)
    )
    console.print(f"router: {router_dir}")
    console.rule("routing a few questions")
    for question in DEMO_QUESTIONS:
        _print_decision(router, question, None, None)
    from langchain_rtr.cli.render import budgets_view

    console.print(budgets_view(router, DEMO_QUESTIONS, DEMO_BUDGETS))
    console.print(f"\n[dim]demo finished in {time.perf_counter() - started:.0f} s[/dim]")


@app.command("bundled")
def bundled() -> None:
    """List the bundled routing sets."""
    from langchain_rtr.data.bundled import list_bundled, load_bundled

    table = Table("name", "questions", "models", "strategies", "records")
    for name in list_bundled():
        rs = load_bundled(name)
        table.add_row(
            name,
            str(len({r.key for r in rs.records})),
            str(len(rs.models)),
            str(len(rs.strategies)),
            str(len(rs.records)),
        )
    console.print(table)


from langchain_rtr.cli.encoder import encoder_app  # noqa: E402
from langchain_rtr.cli.live import collect, serve, serve_router  # noqa: E402
from langchain_rtr.cli.upkeep import add_model  # noqa: E402

app.command()(serve)
app.command()(collect)
app.command("serve-router")(serve_router)
app.command("add-model")(add_model)
app.add_typer(encoder_app, name="encoder")


def main() -> None:
    """Entry point: run the app, turning any error into one clear line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress is shown instead
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except (typer.Abort, EOFError):
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the CLI's contract is one line per error
        if os.environ.get("RTR_DEBUG"):
            raise
        import click

        if isinstance(exc, click.ClickException):
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        from rich.markup import escape

        message = escape(str(exc) or repr(exc))
        err_console.print(
            f"[red]error:[/red] {type(exc).__name__}: {message}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
