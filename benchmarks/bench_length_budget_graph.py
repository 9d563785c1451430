"""Truncated answers in a LangGraph run under a token budget: point estimate vs confidence 0.9.

A router is trained on the training part of ``smol-arith`` (real SmolLM2 completions of the two
served endpoints ``smol-a`` and ``smol-b``, which the test servers decode as the set was
collected, so its length quantiles describe these servers), then the RTR node answers the
held-out questions as subtasks under one token budget, evenly shared, with the point estimate
(``confidence=None``) and with ``confidence=0.9``, once for each share in issue 18's range: the
25th, 37.5th, 50th, 62.5th and 75th percentiles of the training part's real lengths of the
pairs. An answer is truncated when the server produced as many tokens as the call's
``max_tokens``. Every strategy takes part, PAL included (its programs run in the sandbox, so
bubblewrap must be installed): without PAL both policies call ``smol-a``/``direct`` for every
question at every share (the pair predicted most accurate and the shortest), so they cannot
differ.
Needs the two live CPU vLLM servers; the integration test
``tests/integration/test_length_budget_integration.py`` asserts the direction over the whole
range::

    flock /tmp/rtr-integration.lock env RTR_SLOW_TESTS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD \\
        .venv/bin/python -m pytest tests/integration/test_length_budget_integration.py -s -q
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from langchain_rtr import workflow
from langchain_rtr.graph import Budget, create_rtr_node
from langchain_rtr.predictor import TrainConfig
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec

DATA = "smol-arith"
SHARE_PERCENTILES = (25.0, 37.5, 50.0, 62.5, 75.0)
"""Each subtask's even share of the budget: issue 18's range of real lengths (item 3)."""
CONFIDENCE = 0.9


def trained_router(
    specs: Mapping[str, ModelSpec], seed: int = 0
) -> tuple[RTRRouter, list[str], list[int]]:
    """A router on smol-arith's training part, pointed at the live ``specs``.

    Also the held-out questions, and the shares to run them at: the percentiles above of the
    real output tokens that the training part recorded.
    """
    routing_set = workflow.load_data(DATA)
    train, test = workflow.split(routing_set, seed=seed)
    router = workflow.fit_router(routing_set, train, config=TrainConfig(seed=seed))
    live = RTRRouter(
        router.predictor, dict(specs), cost_unit=router.cost_unit, cost_scale=router.cost_scale
    )
    lengths = np.asarray(train.output_tokens, np.float64)
    shares = [int(round(v)) for v in np.nanpercentile(lengths, SHARE_PERCENTILES)]
    return live, list(test.questions), shares


def truncated(answer: Mapping[str, Any]) -> bool:
    """Whether the call used its whole ``max_tokens`` (the server cut the answer off)."""
    cap = answer.get("max_tokens")
    return cap is not None and int(answer["spend"]["output_tokens"]) >= int(cap)


POLICIES: tuple[tuple[str, float | None], ...] = (
    ("point", None),
    (f"confidence {CONFIDENCE}", CONFIDENCE),
)


async def run_counts(
    router: RTRRouter, questions: list[str], share: int
) -> dict[str, dict[str, int]]:
    """Truncated, answered and skipped subtasks per policy, over the same questions."""
    rtr = RTRRunnable(router=router)
    budget = Budget(tokens=share * len(questions))
    out: dict[str, dict[str, int]] = {}
    for name, confidence in POLICIES:
        node = create_rtr_node(rtr, budget=budget, max_concurrency=2, confidence=confidence)
        graph_out = await node.ainvoke(
            {"subtasks": questions}, {"configurable": {"thread_id": f"{name} at {share}"}}
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


async def run_sweep(
    router: RTRRouter, questions: list[str], shares: list[int]
) -> dict[int, dict[str, dict[str, int]]]:
    """:func:`run_counts` at every share (tokens a subtask)."""
    return {share: await run_counts(router, questions, share) for share in shares}


def summed(sweep: Mapping[int, Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Each policy's counts added over all shares."""
    rows = list(sweep.values())
    return {name: {k: sum(r[name][k] for r in rows) for k in rows[0][name]} for name, _ in POLICIES}


def print_sweep(sweep: Mapping[int, Mapping[str, Mapping[str, int]]]) -> None:
    total = summed(sweep)
    for label, counts in [
        *((f"{s} tokens a subtask", c) for s, c in sweep.items()),
        ("all shares", total),
    ]:
        print(f"{label}:")
        for name, row in counts.items():
            print(f"  {name:>16}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    point, sure = total["point"], total[f"confidence {CONFIDENCE}"]
    ratio = sure["truncated"] / point["truncated"] if point["truncated"] else float("nan")
    print(f"truncated with confidence / point, all shares: {ratio:.2f}")


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
        router, questions, shares = trained_router(specs)
        print_sweep(asyncio.run(run_sweep(router, questions, shares)))
    finally:
        group.stop_all()


if __name__ == "__main__":
    main()
