"""rtr collect on the real vLLM CPU servers: end to end, and a server stopped mid-collection.

Everything here is real: the servers' answers, their token counts, the PAL sandbox, the grading,
the predictor trained on what was collected, and the routed call that follows. Only the grid is
small (a few questions, short ``max_tokens``) so the file runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from langchain_rtr.collect import (
    PAPER_STRATEGIES,
    collect,
    collected_records,
    collected_routing_set,
)
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.questions import Question
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.strategies import get_strategy
from tests.integration.conftest import fresh_async_http_clients

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.integration.conftest import CuttableProxy, SmolServers

EASY = [
    ("What is 2 + 2?", "4", "arith-1"),
    ("What is 3 + 5?", "8", "arith-1"),
    ("What is 7 + 1?", "8", "arith-1"),
    ("What is 48 + 37?", "85", "arith-3"),
    ("What is 23 * 7?", "161", "arith-4"),
    ("Tom has 3 apples and gets 4 more. How many apples does Tom have now?", "7", "word-1"),
    ("A box holds 6 eggs. How many eggs are in 4 boxes?", "24", "word-2"),
    ("What is (12 + 8) * 3?", "60", "arith-5"),
]


def _questions(n: int) -> list[Question]:
    return [
        Question(id=f"it-{i}", question=q, answer=a, answer_type="number", source=s)
        for i, (q, a, s) in enumerate(EASY[:n])
    ]


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_collect_train_route_and_dispatch_on_real_servers(
    smol_servers: SmolServers, tmp_path: Path
) -> None:
    specs = smol_servers.specs
    strategies = [get_strategy(s) for s in PAPER_STRATEGIES]
    out = tmp_path / "grid.jsonl"
    questions = _questions(3)

    summary = asyncio.run(
        collect(questions, specs, strategies, out, max_tokens=64, seed=0, progress=False)
    )
    assert summary.complete, summary.format()
    assert summary.cells == len(questions) * len(specs) * len(strategies)
    records = collected_records(out)
    assert len(records) == summary.cells
    for r in records:
        # real usage from the server, a real answer text, a grade
        assert r.error is None and r.score in (0.0, 1.0)
        assert r.input_tokens is not None and r.input_tokens > 5
        assert r.output_tokens is not None and 0 < r.output_tokens <= 64
        assert r.latency_s is not None and r.latency_s > 0
        assert r.response and r.cost is not None and r.cost > 0
    # strategies change what the model writes: CoT's prompt is longer than direct's
    by_pair = {(r.question_id, r.model, r.strategy): r for r in records}
    q0 = questions[0].id
    assert (
        by_pair[(q0, "smol-a", "cot")].input_tokens > by_pair[(q0, "smol-a", "direct")].input_tokens
    )  # type: ignore[operator]

    # a rerun on the real servers does nothing
    again = asyncio.run(collect(questions, specs, strategies, out, max_tokens=64, progress=False))
    assert again.attempted == 0 and again.done_before == summary.cells

    # train on what was collected
    rs = collected_routing_set(out, "it-grid", specs, strategies)
    matrix = rs.matrix()
    assert np.isfinite(matrix.score).all() and matrix.has_lengths
    predictor = RTRPredictor.train(
        matrix,
        {n: s.description for n, s in rs.models.items()},
        rs.strategies,
        config=TrainConfig(max_epochs=5, validation_fraction=0.0, hidden=64, learnable_dim=8),
    )
    assert sorted(predictor.pairs) == sorted(matrix.pairs)

    # route and dispatch to the live servers with what was learnt
    router = RTRRouter(predictor, specs)
    router.fit_cost_scale(matrix.questions)
    runnable = RTRRunnable(router=router)
    result = runnable.invoke(
        "What is 6 + 3?", config={"configurable": {"rtr_max_tokens": 64, "rtr_lambda": 0.5}}
    )
    assert result.error is None, result.error
    assert (result.model, result.strategy) in set(matrix.pairs)
    assert result.usage is not None and result.usage.output_tokens > 0
    assert result.message is not None and result.message.text


def test_a_server_stopped_mid_collection_is_recorded_and_a_rerun_finishes(
    smol_servers: SmolServers,
    endpoint_proxy: Callable[[str], CuttableProxy],
    tmp_path: Path,
) -> None:
    # smol-b is reached through a proxy: cutting it is what a client sees when the server
    # stops (calls in flight reset, new ones refused), and restoring it is the restart, without
    # the 1-3 minutes a real vLLM restart costs (test_serving covers the real one).
    proxy = endpoint_proxy("smol-b")
    specs = {
        **smol_servers.specs,
        "smol-b": smol_servers.specs["smol-b"].model_copy(update={"base_url": proxy.base_url}),
    }
    strategies = [get_strategy("direct"), get_strategy("cod")]
    questions = _questions(5)  # 10 cells on smol-b: 2 answered before the cut, the rest after
    out = tmp_path / "faults.jsonl"
    stopped_after: dict[str, int] = {}

    async def run_and_stop_b() -> Any:
        task = asyncio.create_task(
            collect(
                questions,
                specs,
                strategies,
                out,
                max_tokens=48,
                seed=0,
                concurrency_per_endpoint=2,
                retries=3,  # a loaded machine can fail a call on the healthy server too
                backoff_s=0.5,
                give_up_after=4,
                progress=False,
            )
        )
        while sum(r["model"] == "smol-b" for r in _rows(out)) < 2:
            assert not task.done(), "the collection ended before smol-b answered twice"
            await asyncio.sleep(0.1)
        stopped_after["lines"] = len(_rows(out))
        proxy.cut()
        return await task

    first = asyncio.run(run_and_stop_b())
    per_model = len(questions) * len(strategies)
    rows = _rows(out)
    a_rows = [r for r in rows if r["model"] == "smol-a"]
    b_rows = [r for r in rows if r["model"] == "smol-b"]
    # the other endpoint's cells all completed, none of them an error
    a_errors = [r["error"] for r in a_rows if r["error"] is not None]
    assert len(a_rows) == per_model and not a_errors, a_errors
    # the stopped server's failures are recorded as errors, never as wrong answers
    b_errors = [r for r in b_rows if r["error"] is not None]
    assert b_errors, first.format()
    assert all(r["score"] is None for r in b_errors)
    assert all("Connection" in r["error"] or "connect" in r["error"].lower() for r in b_errors)
    assert not first.complete
    missing = {(q.id, "smol-b", s.name) for q in questions for s in strategies} - {
        (r["question_id"], r["model"], r["strategy"]) for r in b_rows if r["error"] is None
    }
    assert len(missing) == first.remaining > 0

    proxy.restore()
    fresh_async_http_clients()  # the first run's loop is closed
    second = asyncio.run(
        collect(questions, specs, strategies, out, max_tokens=48, seed=0, progress=False)
    )
    assert second.complete, second.format()
    new = _rows(out)[len(rows) :]
    # exactly the missing cells were run, once each
    assert sorted((r["question_id"], r["model"], r["strategy"]) for r in new) == sorted(missing)
    assert all(r["error"] is None for r in new)
    final = collected_records(out)
    assert len(final) == 2 * per_model and all(r.ok for r in final)
