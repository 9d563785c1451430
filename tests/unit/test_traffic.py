"""The traffic log: every front end writes its calls, off the call path; feedback; refitting."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import HumanMessage

from langchain_rtr import traffic
from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.data.records import FIELD_NAMES, RoutingRecord
from langchain_rtr.dispatch import RoutingRow, RTRResult, Usage
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec
from langchain_rtr.traffic import TrafficLog, TrafficLogError, read_rows, record_feedback
from langchain_rtr.upkeep import log_outcomes, update_from_log
from tests.unit.test_predictor import MODELS, STRATEGIES, TopicEncoder, planted_matrix
from tests.unit.test_runnable_fakes import FakeRouter, make_models, make_strategies


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path / "rtr-cache"))


class CountingEncoder(TopicEncoder):
    """The test encoder, answering from whichever thread calls it."""

    def __init__(self) -> None:
        super().__init__(encoder_id="fake:topic")
        self.threads: set[str] = set()
        self.batches: list[int] = []

    def encode(self, texts: Any, **kw: Any) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(texts))
        return super().encode(texts, **kw)


def fake_runnable(log: TrafficLog) -> RTRRunnable:
    return RTRRunnable(
        router=FakeRouter(), models=make_models(), strategies=make_strategies(), traffic_log=log
    )


def test_runnable_logs_each_call_as_a_routing_record_without_the_question(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    log = TrafficLog(tmp_path / "calls.jsonl", encoder=encoder)
    rtr = fake_runnable(log)
    result = rtr.invoke("What is 2 + 2?")
    log.flush()
    (row,) = read_rows(tmp_path / "calls.jsonl")
    assert row["kind"] == "call" and row["call_id"] == result.call_id
    assert (row["model"], row["strategy"]) == (result.model, result.strategy) == ("big", "cot")
    assert result.usage is not None
    assert row["output_tokens"] == result.usage.output_tokens
    assert row["cost"] == pytest.approx(result.cost)
    assert row["latency_s"] == pytest.approx(result.latency_s)
    assert row["predicted_correctness"] == 0.8 and row["predicted_tokens"] == 120.0
    digest = hashlib.sha256(b"What is 2 + 2?").hexdigest()
    assert row["question"] == f"sha256:{digest}" and row["question_sha256"] == digest
    assert row["response"] is None
    assert "2 + 2" not in (tmp_path / "calls.jsonl").read_text()
    np.testing.assert_allclose(row["embedding"], encoder.encode(["What is 2 + 2?"])[0], rtol=1e-6)
    assert encoder.threads - {"MainThread"} == {"rtr-traffic-log"}  # encoded off the call path
    RoutingRecord(**{k: row[k] for k in FIELD_NAMES} | {"score": 1.0})  # a scored call is one
    log.close()


def test_store_questions_keeps_the_texts(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path / "calls.jsonl", store_questions=True)
    fake_runnable(log).invoke("What is 2 + 2?")
    log.close()
    (row,) = read_rows(tmp_path / "calls.jsonl")
    assert row["question"] == "What is 2 + 2?" and "boxed" in row["response"]


def test_logging_is_off_by_default() -> None:
    rtr = RTRRunnable(router=FakeRouter(), models=make_models(), strategies=make_strategies())
    assert rtr.engine.traffic_log is None
    assert rtr.invoke("What is 2 + 2?").call_id is not None


def test_chat_model_and_node_and_failed_calls_are_logged(tmp_path: Path) -> None:
    from langchain_rtr.graph import create_rtr_node
    from tests.unit.test_graph_fakes import make_rtr
    from tests.unit.test_runnable_fakes import connection_error

    log = TrafficLog(tmp_path / "calls.jsonl")
    rtr = fake_runnable(log)
    RTRChatModel(runnable=rtr).invoke([HumanMessage("What is 3 + 3?")])
    graph_rtr, _ = make_rtr(traffic_log=log)
    create_rtr_node(graph_rtr).invoke({"subtasks": ["What is 4 + 4?"]})
    down = RTRRunnable(
        router=FakeRouter(),
        models=make_models(big=connection_error(), small=connection_error()),
        strategies=make_strategies(),
        traffic_log=log,
    )
    failed = down.invoke("What is 5 + 5?")
    log.close()
    rows = read_rows(tmp_path / "calls.jsonl")
    assert len(rows) == 3
    assert rows[-1]["call_id"] == failed.call_id and rows[-1]["error"] == failed.error


async def test_server_logs_and_returns_the_call_id(tmp_path: Path) -> None:
    from tests.unit.test_server import Env, post

    log = TrafficLog(tmp_path / "calls.jsonl")
    env = Env(runnable_kw={"traffic_log": log})
    resp = await post(env, {"model": "rtr", "messages": [{"role": "user", "content": "2+2?"}]})
    assert resp.status_code == 200, resp.text
    log.close()
    (row,) = read_rows(tmp_path / "calls.jsonl")
    assert resp.json()["rtr"]["call_id"] == row["call_id"]


def hold_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the writer thread wait in its first write: (release it, it has entered one)."""
    release, entered = threading.Event(), threading.Event()
    real_write = traffic.write_rows

    def held(path: Path, rows: Any) -> None:
        entered.set()
        release.wait()
        real_write(path, rows)

    monkeypatch.setattr(traffic, "write_rows", held)
    return release, entered


def test_a_stuck_sink_never_blocks_calls_and_drops_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, entered = hold_writes(monkeypatch)
    log = TrafficLog(tmp_path / "calls.jsonl", max_queue=2, batch_size=1)
    rtr = fake_runnable(log)
    rtr.invoke("first")
    assert entered.wait(10)  # the writer holds the first row and is stuck
    results = [rtr.invoke(f"question {i}") for i in range(6)]  # returns although stuck
    assert all(r.ok for r in results)
    assert log.stats.submitted == 7 and log.stats.dropped == 4
    release.set()
    log.close()
    assert log.stats.written == 3 and len(read_rows(tmp_path / "calls.jsonl")) == 3


def test_the_rows_of_one_write_are_embedded_in_one_encoder_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, entered = hold_writes(monkeypatch)
    encoder = CountingEncoder()
    log = TrafficLog(tmp_path / "calls.jsonl", encoder=encoder)
    rtr = fake_runnable(log)
    rtr.invoke("first")
    assert entered.wait(10)  # the writer holds the first row; the next five queue up
    questions = [f"question {i}" for i in range(5)]
    for question in questions:
        rtr.invoke(question)
    release.set()
    log.close()
    assert encoder.batches == [1, 5]
    rows = read_rows(tmp_path / "calls.jsonl")
    expected = encoder.encode(["first", *questions])
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, rtol=1e-6)


def test_parquet_folder_and_feedback_from_another_process(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    log = TrafficLog(folder, flush_interval_s=0.0)
    rtr = fake_runnable(log)
    first, second = rtr.invoke("alpha one"), rtr.invoke("beta two")
    log.record_feedback(str(first.call_id), 1.0)
    log.close()
    record_feedback(folder, str(second.call_id), 0.0)
    record_feedback(folder, str(second.call_id), 0.5)  # the last score wins
    rows = read_rows(folder)
    assert [r["kind"] for r in rows].count("call") == 2
    scores = {r["call_id"]: r["score"] for r in rows if r["kind"] == "feedback"}
    assert scores == {first.call_id: 1.0, second.call_id: 0.5}
    with pytest.raises(TrafficLogError, match=r"\[0, 1\]"):
        record_feedback(folder, "x", 1.5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "call"}\nnot json\n')
    with pytest.raises(TrafficLogError, match="bad.jsonl:2"):
        read_rows(bad)


# ----------------------------------------------------------------- refitting from the log

PLANTED_SHIFT = 3.0
"""m1's answers with CoT run three times longer than what the router was trained on."""


def logged_call(question: str, pair: tuple[str, str], tokens: int, call_id: str) -> RTRResult:
    row = RoutingRow(model=pair[0], strategy=pair[1], predicted_correctness=0.5)
    usage = Usage(input_tokens=20, output_tokens=tokens, total_tokens=20 + tokens)
    return RTRResult(
        question=question,
        model=pair[0],
        strategy=pair[1],
        routing=row,
        usage=usage,
        latency_s=0.1,
        call_id=call_id,
        max_tokens=4096,
    )


def test_update_from_a_log_picks_up_a_planted_shift_in_one_models_lengths(tmp_path: Path) -> None:
    encoder = TopicEncoder()
    config = TrainConfig(hidden=64, learnable_dim=8, max_epochs=60, patience=8, lr=3e-3, ensemble=2)
    predictor = RTRPredictor.train(
        planted_matrix(300, seed=3), MODELS, STRATEGIES, encoder=encoder, config=config
    )
    specs = {m: ModelSpec(name=m, description=d) for m, d in MODELS.items()}
    router = RTRRouter(predictor, specs, cost_unit="tokens", cost_scale=100.0)
    questions = planted_matrix(200, seed=8).questions
    rng = np.random.default_rng(0)
    log = TrafficLog(tmp_path / "calls.jsonl", encoder=encoder)
    for i, q in enumerate(questions):
        pair = ("m1", "cot") if i % 2 else ("m2", "direct")
        planted = 400 * PLANTED_SHIFT if pair == ("m1", "cot") else 40
        log.submit(logged_call(q, pair, int(planted * rng.uniform(0.8, 1.25)), f"c{i}"))
    log.close()
    for i in range(0, 200, 4):
        record_feedback(tmp_path / "calls.jsonl", f"c{i}", 1.0 if "beta" in questions[i] else 0.0)
    outcomes = log_outcomes(tmp_path / "calls.jsonl", router)
    assert outcomes.calls == 200 and outcomes.scored == 50

    report = update_from_log(router, tmp_path / "calls.jsonl")
    fresh = planted_matrix(60, seed=12).questions
    col = router.pairs.index(("m1", "cot"))
    other = router.pairs.index(("m2", "direct"))

    def median_tokens(r: RTRRouter, j: int) -> float:
        tokens = r.predictor.predict(fresh).output_tokens
        assert tokens is not None
        return float(np.median(tokens[:, j]))

    before, after = median_tokens(router, col), median_tokens(report.router, col)
    target = 400 * PLANTED_SHIFT
    assert abs(np.log(after / target)) < 0.5 * abs(np.log(before / target)), (before, after)
    assert 40 / 1.5 < median_tokens(report.router, other) < 40 * 1.5
    assert report.after["length_error m1"] < report.before["length_error m1"]


async def test_the_server_takes_feedback_for_a_call_id(tmp_path: Path) -> None:
    from tests.unit.test_server import Env, post

    log = TrafficLog(tmp_path / "calls.jsonl")
    env = Env(runnable_kw={"traffic_log": log})
    answer = await post(env, {"model": "rtr", "messages": [{"role": "user", "content": "2+2?"}]})
    call_id = answer.json()["rtr"]["call_id"]
    async with env.client() as client:
        ok = await client.post("/rtr/feedback", json={"call_id": call_id, "score": 1})
        bad_score = await client.post("/rtr/feedback", json={"call_id": call_id, "score": 2})
        no_id = await client.post("/rtr/feedback", json={"score": 0.5})
        not_json = await client.post("/rtr/feedback", content=b"[1, 2]")
    assert ok.status_code == 200 and ok.json() == {"call_id": call_id, "score": 1, "queued": True}
    assert bad_score.status_code == 400 and bad_score.json()["error"]["param"] == "score"
    assert no_id.status_code == 400 and no_id.json()["error"]["param"] == "call_id"
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_type"
    log.close()
    rows = read_rows(tmp_path / "calls.jsonl")
    feedback = [r for r in rows if r["kind"] == "feedback"]
    assert [(r["call_id"], r["score"]) for r in feedback] == [(call_id, 1.0)]


async def test_a_server_without_a_traffic_log_says_so_on_feedback() -> None:
    from tests.unit.test_server import Env

    async with Env().client() as client:
        resp = await client.post("/rtr/feedback", json={"call_id": "x", "score": 1})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_traffic_log"
