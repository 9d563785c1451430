"""On the live CPU servers, confidence 0.9 truncates fewer answers than the point estimate."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_length_budget_graph.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_length_budget_graph", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    os.environ.get("RTR_SLOW_TESTS") != "1",
    reason="about 12-14 minutes on 2 cores (19 subtasks x 5 shares x 2 policies, PAL programs "
    "in the sandbox), too long for CI; it passed in two runs with the same counts "
    "(docs/quality.md, issue 18 item 5); run it with RTR_SLOW_TESTS=1",
)
async def test_confidence_truncates_fewer_answers_than_the_point_estimate(
    smol_servers: Any,
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = _bench()
    router, questions, shares = bench.trained_router(smol_servers.specs)
    sweep = await bench.run_sweep(router, questions, shares)
    bench.print_sweep(sweep)
    counts = bench.summed(sweep)  # over the shares of issue 18's range
    point, sure = counts["point"], counts[f"confidence {bench.CONFIDENCE}"]
    assert point["subtasks"] == sure["subtasks"] == len(questions) * len(shares)
    assert point["truncated"] > 0, counts  # the budget is tight enough to matter
    assert sure["truncated"] < point["truncated"], counts
