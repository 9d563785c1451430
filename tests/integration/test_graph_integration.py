"""The example graph (plan -> RTR node -> combine) on the real local vLLM servers.

The router is fitted on synthetic records for the served names (see
`examples/langgraph_budget_agent.py: synthetic_router`): this checks the graph's wiring and
its budget against real servers and their real usage, not routing quality.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from langgraph.checkpoint.memory import InMemorySaver

from langchain_rtr.graph import Budget, input_token_bound
from langchain_rtr.runnable import RTRRunnable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "langgraph_budget_agent.py"
STRATEGIES = ["direct", "cot"]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("langgraph_budget_agent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _example()


@pytest.fixture(scope="module")
def router(smol_servers: Any, example: ModuleType) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return example.synthetic_router(smol_servers.specs, STRATEGIES)


async def test_example_graph_on_real_servers(router: Any, example: ModuleType) -> None:
    rtr = RTRRunnable(router=router)
    budget = Budget(tokens=120, usd=1e-5)
    graph = example.build_graph(rtr, budget=budget, max_concurrency=2, checkpointer=InMemorySaver())
    task = ["What is 2 + 2?", "What is the capital of France?", "What is 10 - 3?", "Say hi."]
    out = await graph.ainvoke({"task": task}, {"configurable": {"thread_id": "it"}})
    print("\n" + example.report(out, budget))
    answers = out["answers"]
    assert [a["question"] for a in answers] == task
    assert all(a["status"] in ("ok", "cheapest") for a in answers), answers
    assert out["spent"]["output_tokens"] <= 120
    assert out["spent"]["picodollars"] <= 10**7  # 1e-5 $
    for a in answers:
        assert 0 < a["spend"]["output_tokens"] <= a["max_tokens"] <= 64
        assert a["spend"]["output_tokens"] <= a["allotted"]["tokens"]
        # The prompt-token bound really bounds what the server counted.
        rendered = rtr.strategies[a["strategy"]].render(a["question"])
        assert a["spend"]["input_tokens"] <= input_token_bound(rendered)
    assert out["report"].count("\n") == len(task) - 1


def test_example_cli_prints_each_subtask(smol_servers: Any, tmp_path: Path) -> None:
    models = {
        "models": [
            {
                "name": name,
                "description": spec.description,
                "input_price": spec.input_price,
                "output_price": spec.output_price,
                "base_url": spec.base_url,
                "served_name": spec.served_name,
                "max_tokens": 32,
            }
            for name, spec in smol_servers.specs.items()
        ]
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    cmd = [
        sys.executable,
        str(EXAMPLE),
        "--models",
        str(path),
        "--synthetic-router",
        "--tokens",
        "60",
        "--task",
        "What is 1 + 1?",
        "--task",
        "Name a colour.",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[s")]
    assert len(lines) == 2
    for line in lines:
        assert "smol-" in line and "left: tokens=" in line and "$" in line
