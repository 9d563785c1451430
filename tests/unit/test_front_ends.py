"""The same knobs give the same routing decision through every front end.

One real `RTRRouter` (over a deterministic fake predictor) is driven with the same questions
and knobs from `config["configurable"]` (`RTRRunnable`), keyword arguments (`RTRChatModel`),
CLI flags (`rtr route --json`) and the server's model string (`rtr:k=v,...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.cli.main import app as cli
from langchain_rtr.routing import RTRRouter
from langchain_rtr.server import create_app
from tests.unit.test_graph_fakes import make_rtr
from tests.unit.test_graph_quantiles import QuantilePredictor

QUESTIONS = ["What is 2 + 2?", "Name the capital of France.", "Integrate x^2 from 0 to 3."]

# knob -> (config key, CLI flag, model-string name)
KNOB_SETS: list[dict[str, Any]] = [
    {"lambda": 0.3},
    {"lambda": 1.0},
    {"max_tokens": 64},
    {"max_tokens": 1},  # nothing fits: every front end answers with the shortest pair
    {"floor": 0.5},
    {"lambda": 0.9, "pairs": ["small/cot", "big/direct"]},
    {"max_tokens": 100, "budget_rule": "best_bet"},
]


def _config(knobs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in knobs.items():
        out["rtr_allowed_pairs" if key == "pairs" else f"rtr_{key}"] = value
    return out


def _cli_args(knobs: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in knobs.items():
        if key == "pairs":
            for pair in value:
                args += ["--allow", pair]
        else:
            args += ["--lambda" if key == "lambda" else "--" + key.replace("_", "-"), str(value)]
    return args


def _model_string(knobs: dict[str, Any]) -> str:
    parts = [f"{k}={'|'.join(v) if k == 'pairs' else v}" for k, v in knobs.items()]
    return "rtr:" + ",".join(parts)


@pytest.mark.parametrize("knobs", KNOB_SETS, ids=lambda k: _model_string(k))
async def test_the_same_knobs_route_the_same_everywhere(
    knobs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rtr, _ = make_rtr(QuantilePredictor())  # length quantiles, for the best bet
    chat = RTRChatModel(runnable=rtr)
    monkeypatch.setattr(RTRRouter, "load", classmethod(lambda cls, *a, **k: rtr.router))
    server = create_app(rtr)
    seen: dict[str, list[tuple[Any, ...]]] = {"runnable": [], "chat": [], "cli": [], "server": []}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=server), base_url="http://rtr.test"
    ) as client:
        for question in QUESTIONS:
            result = rtr.invoke(question, config={"configurable": _config(knobs)})
            seen["runnable"].append((result.routing.model, result.routing.strategy))
            meta = chat.invoke(question, **_config(knobs)).response_metadata["rtr"]
            seen["chat"].append((meta["model"], meta["strategy"]))
            out = CliRunner().invoke(
                cli, ["route", question, "--router", str(tmp_path), "--json", *_cli_args(knobs)]
            )
            assert out.exit_code == 0, out.output
            decision = json.loads(out.stdout)
            seen["cli"].append((decision["model"], decision["strategy"]))
            resp = await client.post(
                "/v1/chat/completions",
                json={
                    "model": _model_string(knobs),
                    "messages": [{"role": "user", "content": question}],
                },
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()["rtr"]
            seen["server"].append((body["routed_model"], body["routed_strategy"]))
    assert seen["runnable"] == seen["chat"] == seen["cli"] == seen["server"], seen
    assert all(m is not None for m, _ in seen["runnable"])
    if "pairs" in knobs:
        allowed = {tuple(p.split("/")) for p in knobs["pairs"]}
        assert set(seen["runnable"]) <= allowed


def test_the_knob_sets_do_not_all_pick_the_same_pair() -> None:
    # the comparison above could not fail if every knob set chose the same pair
    rtr, _ = make_rtr(QuantilePredictor())
    picks = {
        (r.routing.model, r.routing.strategy)
        for knobs in KNOB_SETS
        for r in [rtr.invoke(QUESTIONS[0], config={"configurable": _config(knobs)})]
    }
    assert len(picks) > 1


def test_the_best_bet_knob_routes_unlike_the_plain_budget() -> None:
    rtr, _ = make_rtr(QuantilePredictor())
    picks = {
        rule: [
            rtr.invoke(
                q, config={"configurable": {"rtr_max_tokens": 100, "rtr_budget_rule": rule}}
            ).routing.strategy
            for q in QUESTIONS
        ]
        for rule in ("fit", "best_bet")
    }
    assert picks["fit"] != picks["best_bet"], picks
