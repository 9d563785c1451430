"""A LangGraph run on one budget: plan subtasks, answer each with RTR, combine.

    # 1. serve the file's models:  rtr serve examples/models.cpu.yaml
    # 2. a trained router saved under rtr-out/router (rtr train ...), then:
    python examples/langgraph_budget_agent.py --models examples/models.cpu.yaml \\
        --router rtr-out/router --tokens 200 --usd 0.001

    # no trained router for these models yet? --synthetic-router fits a tiny one on made-up
    # records for the file's models: it shows the wiring and the budget, not routing quality.

Graph: ``plan`` (split the task into subtasks) -> ``rtr`` (the budget-aware RTR node: one
budget for the run, shares per subtask, fan-out with Send) -> ``combine``. It prints, per
subtask, the pair that answered, its tokens and $, and the budget left after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langchain_rtr.config import load_models_file
from langchain_rtr.graph import Budget, RTRState, create_rtr_node
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec

DEFAULT_TASK = [
    "What is 2 + 2?",
    "What is the capital of France?",
    "What is 10 - 3?",
    "Name a primary colour.",
]


class TaskState(RTRState, total=False):
    """The run's state: the RTR node's keys plus the task and the final report."""

    task: list[str]
    report: str


def plan(state: TaskState) -> dict[str, Any]:
    """Turn the task into subtasks (here: one per line; an LLM planner would go here)."""
    return {"subtasks": [{"id": f"s{i}", "question": q} for i, q in enumerate(state["task"])]}


def combine(state: TaskState) -> dict[str, Any]:
    """Join the answers (here: a numbered list)."""
    lines = [
        f"{i + 1}. {a['question']} -> {a['answer'] if a['answer'] is not None else a['status']}"
        for i, a in enumerate(state["answers"])
    ]
    return {"report": "\n".join(lines)}


def build_graph(
    rtr: RTRRunnable,
    *,
    budget: Budget,
    allotment: str = "even",
    on_exhausted: str = "cheapest",
    max_concurrency: int = 2,
    checkpointer: Any = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """plan -> rtr -> combine, with one budget for the run."""
    builder = StateGraph(TaskState)
    builder.add_node("plan", plan)
    builder.add_node(
        "rtr",
        create_rtr_node(
            rtr,
            budget=budget,
            allotment=allotment,  # type: ignore[arg-type]
            on_exhausted=on_exhausted,  # type: ignore[arg-type]
            max_concurrency=max_concurrency,
        ),
    )
    builder.add_node("combine", combine)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "rtr")
    builder.add_edge("rtr", "combine")
    builder.add_edge("combine", END)
    return builder.compile(checkpointer=checkpointer)


def synthetic_router(specs: Mapping[str, ModelSpec], strategies: Sequence[str]) -> RTRRouter:
    """A tiny router fitted on made-up records for `specs` (wiring demos and tests only).

    Every (model, strategy) gets the same made-up outcomes on a few questions, except that
    ``direct`` is made shorter, so the predictions are plausible but say nothing real.
    """
    from langchain_rtr.data.matrix import OutcomeMatrix
    from langchain_rtr.data.records import RoutingRecord
    from langchain_rtr.predictor import RTRPredictor, TrainConfig
    from langchain_rtr.strategies import get_strategy

    questions = [
        "What is 1 + 1?",
        "What is 7 * 8?",
        "Who wrote Hamlet?",
        "What is 12 / 4?",
        "Name a planet.",
        "What is 9 - 5?",
    ]
    records = []
    for k, q in enumerate(questions):
        for m in specs:
            for s in strategies:
                records.append(
                    RoutingRecord(
                        question=q,
                        source="synthetic",
                        model=m,
                        strategy=s,
                        score=float((k + len(m) + len(s)) % 2),
                        output_tokens=12 + 3 * k if s == "direct" else 40 + 5 * k,
                    )
                )
    matrix = OutcomeMatrix.from_records(records)
    predictor = RTRPredictor.train(
        matrix,
        {m: spec.description or m for m, spec in specs.items()},
        {s: get_strategy(s).description for s in strategies},
        config=TrainConfig(hidden=32, learnable_dim=8, max_epochs=5, validation_fraction=0.0),
    )
    router = RTRRouter(predictor, dict(specs), cost_unit="usd")
    router.fit_cost_scale(questions)
    return router


def report(out: Mapping[str, Any], budget: Budget) -> str:
    """Per subtask: the pair, tokens, $, and the budget left after it (in subtask order)."""
    lines = []
    spent_tokens = 0
    spent_usd = 0.0
    for a in out["answers"]:
        spend = a["spend"]
        spent_tokens += spend["output_tokens"]
        spent_usd += spend["usd"]
        left_tokens = "-" if budget.tokens is None else budget.tokens - spent_tokens
        left_usd = "-" if budget.usd is None else f"{budget.usd - spent_usd:.8f}"
        pair = f"{a['model']}/{a['strategy']}" if a["model"] else "(none)"
        lines.append(
            f"[{a['id']}] {a['status']:<8} {pair:<20} max_tokens={a['max_tokens']} "
            f"in={spend['input_tokens']} out={spend['output_tokens']} ${spend['usd']:.8f} "
            f"left: tokens={left_tokens} usd={left_usd}  answer={a['answer']!r}"
        )
    total = out["spent"]
    lines.append(
        f"total: {total['calls']} calls, {total['output_tokens']} output tokens, "
        f"${total['usd']:.8f}; budget left {out['budget_left']}"
    )
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description="A LangGraph run with one RTR budget.")
    ap.add_argument("--models", default="examples/models.cpu.yaml", help="the models file")
    ap.add_argument("--router", default=None, help="a saved, trained RTRRouter directory")
    ap.add_argument("--synthetic-router", action="store_true", help="fit a toy router instead")
    ap.add_argument("--tokens", type=int, default=200, help="output-token budget for the run")
    ap.add_argument("--usd", type=float, default=None, help="dollar budget for the run")
    ap.add_argument("--allotment", choices=["even", "weighted"], default="even")
    ap.add_argument("--on-exhausted", choices=["cheapest", "skip", "raise"], default="cheapest")
    ap.add_argument("--max-concurrency", type=int, default=2)
    ap.add_argument("--task", action="append", help="a subtask (repeat); default: a demo task")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    specs = load_models_file(args.models).specs
    strategies = ["direct", "cot"]
    if args.router:
        router = RTRRouter.load(args.router, models=specs)
    elif args.synthetic_router:
        router = synthetic_router(specs, strategies)
    else:
        ap.error("give --router DIR (a trained router) or --synthetic-router")
    rtr = RTRRunnable(router=router)
    budget = Budget(tokens=args.tokens, usd=args.usd)
    graph = build_graph(
        rtr,
        budget=budget,
        allotment=args.allotment,
        on_exhausted=args.on_exhausted,
        max_concurrency=args.max_concurrency,
    )
    out = await graph.ainvoke({"task": args.task or DEFAULT_TASK})
    print(report(out, budget))
    print("\n" + out["report"])


if __name__ == "__main__":
    asyncio.run(main())
