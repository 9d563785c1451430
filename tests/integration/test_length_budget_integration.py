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
    reason="about 5 minutes on 2 cores, and issue 18 item 5 is not met: on servers that "
    "decode as smol-arith was collected, confidence 0.9 truncated as many of the 19 answers as "
    "the point estimate (docs/quality.md); run it with RTR_SLOW_TESTS=1",
)
async def test_confidence_truncates_fewer_answers_than_the_point_estimate(
    smol_servers: Any,
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = _bench()
    router, questions = bench.trained_router(smol_servers.specs)
    counts = await bench.run_counts(router, questions)
    bench.print_counts(counts)
    point, sure = counts["point"], counts[f"confidence {bench.CONFIDENCE}"]
    assert point["subtasks"] == sure["subtasks"] == len(questions)
    assert point["truncated"] > 0, counts  # the budget is tight enough to matter
    assert sure["truncated"] < point["truncated"], counts
