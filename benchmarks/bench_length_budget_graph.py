"""Truncated answers in a LangGraph run under a token budget: point estimate vs confidence 0.9.

A router is trained on the training part of ``smol-arith`` (real SmolLM2 completions of the two
served endpoints ``smol-a`` and ``smol-b``, so its length quantiles describe these servers),
then the RTR node answers the held-out questions as subtasks under one token budget, evenly
shared, twice: with the point estimate (``confidence=None``) and with ``confidence=0.9``. An
answer is truncated when the server produced as many tokens as the call's ``max_tokens``.
PAL is left out (no sandbox needed). Needs the two live CPU vLLM servers; the integration test
``tests/integration/test_length_budget_integration.py`` asserts the direction::

    flock /tmp/rtr-integration.lock env RTR_SLOW_TESTS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD \\
        .venv/bin/python -m pytest tests/integration/test_length_budget_integration.py -s -q
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from langchain_rtr import workflow
from langchain_rtr.graph import Budget, create_rtr_node
from langchain_rtr.predictor import TrainConfig
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec

DATA = "smol-arith"
TOKENS_PER_SUBTASK = 120
"""Each subtask's even share: between the median and the 75th percentile of real lengths."""
CONFIDENCE = 0.9


def trained_router(specs: Mapping[str, ModelSpec], seed: int = 0) -> tuple[RTRRouter, list[str]]:
    """A router on smol-arith's training part, pointed at the live ``specs``; held-out questions."""
    routing_set = workflow.load_data(DATA)
    train, test = workflow.split(routing_set, seed=seed)
    router = workflow.fit_router(routing_set, train, config=TrainConfig(seed=seed))
    live = RTRRouter(
        router.predictor, dict(specs), cost_unit=router.cost_unit, cost_scale=router.cost_scale
    )
    return live, list(test.questions)


def truncated(answer: Mapping[str, Any]) -> bool:
    """Whether the call used its whole ``max_tokens`` (the server cut the answer off)."""
    cap = answer.get("max_tokens")
    return cap is not None and int(answer["spend"]["output_tokens"]) >= int(cap)


async def run_counts(router: RTRRouter, questions: list[str]) -> dict[str, dict[str, int]]:
    """Truncated, answered and skipped subtasks per policy, over the same questions."""
    pairs = [p for p in router.pairs if p[1] != "pal"]
    rtr = RTRRunnable(router=router, allowed_pairs=pairs)
    budget = Budget(tokens=TOKENS_PER_SUBTASK * len(questions))
    out: dict[str, dict[str, int]] = {}
    for name, confidence in (("point", None), (f"confidence {CONFIDENCE}", CONFIDENCE)):
        node = create_rtr_node(rtr, budget=budget, max_concurrency=2, confidence=confidence)
        graph_out = await node.ainvoke(
            {"subtasks": questions}, {"configurable": {"thread_id": name}}
        )
        answers = graph_out["answers"]
        out[name] = {
            "subtasks": len(answers),
            "truncated": sum(truncated(a) for a in answers),
            "answered": sum(a["status"] in ("ok", "cheapest") for a in answers),
            "cheapest_fallback": sum(a["status"] == "cheapest" for a in answers),
            "output_tokens": int(graph_out["spent"]["output_tokens"]),
        }
    return out


def print_counts(counts: Mapping[str, Mapping[str, int]]) -> None:
    for name, row in counts.items():
        print(f"{name:>16}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    point, sure = counts["point"], counts[f"confidence {CONFIDENCE}"]
    ratio = sure["truncated"] / point["truncated"] if point["truncated"] else float("nan")
    print(f"truncated with confidence / point: {ratio:.2f}")


def main() -> None:
    """Start the two CPU servers as the integration tests do, then measure."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from langchain_rtr.serving import ServerGroup
    from tests.integration.conftest import SMOL_MODELS, core_binding, make_cpu_server

    logs = Path("/tmp/rtr-bench-logs")
    logs.mkdir(exist_ok=True)
    servers = {
        name: make_cpu_server(name, logs, env=core_binding(i, len(SMOL_MODELS)))
        for i, name in enumerate(SMOL_MODELS)
    }
    group = ServerGroup(servers, concurrent=True)
    group.start_all()
    try:
        specs = {
            name: ModelSpec(
                name=name,
                description=description,
                input_price=ip,
                output_price=op,
                base_url=servers[name].base_url,
                served_name=name,
                api_key="EMPTY",
                max_tokens=256,
            )
            for name, (description, ip, op) in SMOL_MODELS.items()
        }
        router, questions = trained_router(specs)
        print_counts(asyncio.run(run_counts(router, questions)))
    finally:
        group.stop_all()


if __name__ == "__main__":
    main()
