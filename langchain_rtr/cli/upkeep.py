"""The `rtr` commands that keep a router current: `rtr add-model` and `rtr train --update`.

Registered on the app in ``langchain_rtr.cli.main``; heavy modules are imported on use.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 120)

DEFAULT_OUT = Path("rtr-out")


def _spec(
    name: str,
    models_file: Path | None,
    description: str | None,
    input_price: float | None,
    output_price: float | None,
) -> Any:
    """The new model's spec: its entry in ``--models``, with any flag given overriding it."""
    from langchain_rtr.specs import ModelSpec

    values: dict[str, Any] = {"name": name}
    if models_file is not None:
        from langchain_rtr.config import load_models_file

        specs = load_models_file(models_file).specs
        if name not in specs:
            raise typer.BadParameter(f"{models_file} has no model {name!r} ({sorted(specs)})")
        values = specs[name].model_dump()
    for key, value in (
        ("description", description),
        ("input_price", input_price),
        ("output_price", output_price),
    ):
        if value is not None:
            values[key] = value
    if not str(values.get("description") or "").strip():
        raise typer.BadParameter(
            f"{name!r} needs a description (--description, or its entry in --models): it is "
            "what the predictor encodes"
        )
    return ModelSpec.model_validate(values)


def add_model(
    name: Annotated[str, typer.Option("--name", help="The new model's name.")],
    router_dir: Annotated[
        Path, typer.Option("--router", "-r", help="The trained router to add it to.")
    ] = DEFAULT_OUT / "router",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the new router.")] = (
        DEFAULT_OUT / "router-added"
    ),
    records: Annotated[
        list[Path] | None,
        typer.Option("--records", help="Its outcomes: records files (JSONL/Parquet; repeatable)."),
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(
            "--questions", help="Profile it on this question set first (`rtr collect`; --models)."
        ),
    ] = None,
    models_file: Annotated[
        Path | None,
        typer.Option("--models", help="Models file with its entry (description, prices, URL)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Its description.")] = None,
    input_price: Annotated[float | None, typer.Option(help="$ per million input tokens.")] = None,
    output_price: Annotated[float | None, typer.Option(help="$ per million output tokens.")] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option("--strategy", "-s", help="Strategies to route it with (repeatable)."),
    ] = None,
) -> None:
    """Add a model to a trained router from a few of its outcomes; other weights stay frozen."""
    from langchain_rtr.data.io import read_records
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.upkeep import add_model as add_model_to_router

    spec = _spec(name, models_file, description, input_price, output_price)
    router = RTRRouter.load(router_dir)
    files = list(records or [])
    if questions is not None:
        if models_file is None:
            raise typer.BadParameter("--questions needs --models (the model's endpoint)")
        from langchain_rtr.collect import run_collect

        collected = out.parent / f"{out.name}-{name}-records.jsonl"
        run_collect(
            models_file,
            questions,
            collected,
            strategies=strategy or [s for s in router.predictor.strategies],  # type: ignore[attr-defined]
            models=[name],
            echo=console.print,
        )
        files.append(collected)
    outcomes = [r for f in files for r in read_records(f).records if r.model == name]
    added = add_model_to_router(router, spec, outcomes, strategies=strategy)
    added.save(out)
    new_pairs = [p for p in added.pairs if p[0] == name]
    console.print(
        f"router saved to {out}: {len(added.pairs)} pairs, {name} added with "
        f"{', '.join(s for _, s in new_pairs)} from {sum(r.ok for r in outcomes)} outcomes"
    )


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def update(router_dir: Path, log_path: Path, out: Path) -> None:
    """`rtr train --update LOG`: refit ``router_dir`` on a traffic log and print what moved."""
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.upkeep import update_from_log

    router = RTRRouter.load(router_dir)
    with console.status(f"refitting on {log_path}"):
        report = update_from_log(router, log_path)
    report.router.save(out)
    log = report.log
    console.print(
        f"{log.calls} logged calls: {len(log.matrix)} used ({log.scored} with feedback)"
        + (f"; left out: {log.skipped}" if log.skipped else "")
    )
    table = Table(
        "held-out calls",
        "before",
        "after",
        title="what moved (median |log(predicted / real tokens)|; Brier of P(correct))",
        title_justify="left",
    )
    for key in dict.fromkeys([*report.before, *report.after]):
        table.add_row(key, _cell(report.before.get(key)), _cell(report.after.get(key)))
    console.print(table)
    console.print(f"router saved to {out}")
