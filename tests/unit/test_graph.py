"""The budget-aware RTR node: order, budget, exhaustion modes, failures, resume."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from langchain_rtr.errors import ConfigError
from langchain_rtr.graph import (
    Allotment,
    Budget,
    BudgetExhaustedError,
    RTRNode,
    RTRState,
    create_rtr_node,
    pair_cap,
    split,
)
from langchain_rtr.graph.budget import PICO_PER_USD, usd_to_pico
from tests.unit.test_graph_fakes import (
    SPECS,
    BudgetChat,
    FakePredictor,
    make_models,
    make_rtr,
)
from tests.unit.test_runnable_fakes import status_error


def all_calls(models: dict[str, BudgetChat]) -> list[dict[str, Any]]:
    return [dict(c, model=name) for name, m in models.items() for c in m.calls]


def true_pico(models: dict[str, BudgetChat]) -> Fraction:
    """Exact $ (in picodollars) of what the fakes generated, at the specs' real prices."""
    total = Fraction(0)
    for c in all_calls(models):
        if "output_tokens" not in c:
            continue
        spec = SPECS[c["model"]]
        usd = (
            Fraction(c["input_tokens"]) * Fraction(str(spec.input_price))
            + Fraction(c["output_tokens"]) * Fraction(str(spec.output_price))
        ) / 10**6
        total += usd * PICO_PER_USD
    return total


QS = [f"subtask {i}: what is {i} + {i}?" for i in range(7)]


# --------------------------------------------------------------------------- budget maths
@given(
    left_tokens=st.one_of(st.none(), st.integers(0, 10**6)),
    left_pico=st.one_of(st.none(), st.integers(0, 10**12)),
    weights=st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=20),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_split_never_exceeds_what_is_left(
    left_tokens: int | None, left_pico: int | None, weights: list[float], data: Any
) -> None:
    take = data.draw(st.integers(0, len(weights)))
    left = Allotment(tokens=left_tokens, pico=left_pico)
    shares = split(left, weights, take)
    assert len(shares) == take
    if left_tokens is not None:
        assert sum(s.tokens or 0 for s in shares) <= left_tokens
    if left_pico is not None:
        assert sum(s.pico or 0 for s in shares) <= left_pico


def test_split_even_and_weighted() -> None:
    left = Allotment(tokens=100, pico=None)
    assert [s.tokens for s in split(left, [1, 1, 1, 1], 4)] == [25, 25, 25, 25]
    assert [s.tokens for s in split(left, [3, 1], 2)] == [75, 25]
    # Items not taken now keep their part.
    assert [s.tokens for s in split(left, [1, 1, 2], 1)] == [25]


@given(
    tokens=st.one_of(st.none(), st.integers(0, 5000)),
    usd=st.one_of(st.none(), st.floats(0, 0.01, allow_nan=False)),
    bound=st.integers(0, 3000),
    model=st.sampled_from(sorted(SPECS)),
)
@settings(max_examples=200, deadline=None)
def test_pair_cap_worst_case_fits(
    tokens: int | None, usd: float | None, bound: int, model: str
) -> None:
    spec = SPECS[model]
    share = Budget(tokens=tokens, usd=usd).total
    cap = pair_cap(share, spec, bound)
    if cap is None:
        assert share.unbounded and spec.max_tokens is None
        return
    if tokens is not None:
        assert cap <= tokens
    if spec.max_tokens is not None:
        assert cap <= spec.max_tokens
    if usd is not None and cap > 0:
        worst = (
            Fraction(bound) * Fraction(str(spec.input_price))
            + Fraction(cap) * Fraction(str(spec.output_price))
        ) / 10**6
        assert worst <= Fraction(str(usd))


def test_budget_validation() -> None:
    with pytest.raises(ConfigError, match="tokens"):
        Budget(tokens=-1)
    with pytest.raises(ConfigError, match="usd"):
        Budget(usd=float("nan"))
    with pytest.raises(ConfigError, match="unknown keys"):
        Budget.coerce({"dollars": 1})
    assert usd_to_pico(0.01) == 10**10


# --------------------------------------------------------------------------- the node
def test_answers_in_order_with_measured_spend() -> None:
    rtr, models = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=2_000, usd=0.01), max_concurrency=3)
    out = node.invoke({"subtasks": QS})
    assert [a["question"] for a in out["answers"]] == QS
    assert [a["index"] for a in out["answers"]] == list(range(len(QS)))
    assert all(a["status"] in ("ok", "cheapest") for a in out["answers"])
    calls = all_calls(models)
    assert len(calls) == len(QS)
    assert out["spent"]["output_tokens"] == sum(c["output_tokens"] for c in calls)
    assert out["spent"]["input_tokens"] == sum(c["input_tokens"] for c in calls)
    assert out["spent"]["output_tokens"] <= 2_000
    assert out["budget_left"]["tokens"] == 2_000 - out["spent"]["output_tokens"]
    for a in out["answers"]:
        assert a["answer"] == "7"
        assert a["max_tokens"] is not None
        assert a["spend"]["output_tokens"] <= a["max_tokens"] <= a["allotted"]["tokens"]


async def test_async_parallel_waves_match_sync() -> None:
    rtr, models = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=1_500), max_concurrency=4)
    sync_out = node.invoke({"subtasks": QS})
    rtr2, models2 = make_rtr()
    node2 = create_rtr_node(rtr2, budget=Budget(tokens=1_500), max_concurrency=4)
    async_out = await node2.ainvoke({"subtasks": QS})
    strip = [(a["id"], a["model"], a["strategy"], a["spend"]) for a in sync_out["answers"]]
    assert strip == [(a["id"], a["model"], a["strategy"], a["spend"]) for a in async_out["answers"]]


def test_single_question_input() -> None:
    rtr, _ = make_rtr()
    out = create_rtr_node(rtr).invoke({"question": "What is 2 + 2?"})
    assert len(out["answers"]) == 1 and out["answers"][0]["status"] == "ok"
    assert out["budget_left"] == {"tokens": None, "usd": None}


def test_state_budget_overrides_node_budget() -> None:
    rtr, _ = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=10_000))
    out = node.invoke({"subtasks": QS[:2], "budget": {"tokens": 100}})
    assert out["spent"]["output_tokens"] <= 100


def test_skip_when_exhausted() -> None:
    rtr, models = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=20), on_exhausted="skip")
    out = node.invoke({"subtasks": QS[:3]})
    assert [a["status"] for a in out["answers"]] == ["skipped"] * 3
    assert all_calls(models) == []
    assert out["spent"]["output_tokens"] == 0


def test_raise_when_exhausted() -> None:
    rtr, models = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=20), on_exhausted="raise")
    with pytest.raises(BudgetExhaustedError, match="budget exhausted at subtask"):
        node.invoke({"subtasks": QS[:3]})
    assert all_calls(models) == []


def test_cheapest_when_nothing_is_predicted_to_fit() -> None:
    # Every pair is predicted to need about 1,000 tokens; the share is 60.
    table = {q: ([0.9, 0.8, 0.7, 0.6], [1000.0, 1000.0, 1000.0, 900.0]) for q in QS}
    rtr, models = make_rtr(FakePredictor(table))
    out = create_rtr_node(rtr, budget=Budget(tokens=60, usd=1.0)).invoke({"subtasks": QS[:1]})
    a = out["answers"][0]
    assert a["status"] == "cheapest"
    assert (a["model"], a["strategy"]) == ("small", "direct")  # the cheapest predicted $
    assert a["max_tokens"] == 60


def test_weighted_allotment_follows_predicted_tokens() -> None:
    table = {
        "easy": ([0.9, 0.9, 0.9, 0.9], [10.0, 10.0, 10.0, 10.0]),
        "hard": ([0.9, 0.9, 0.9, 0.9], [90.0, 90.0, 90.0, 90.0]),
    }
    rtr, _ = make_rtr(FakePredictor(table))
    node = create_rtr_node(
        rtr, budget=Budget(tokens=1_000), allotment="weighted", max_concurrency=2
    )
    out = node.invoke({"subtasks": ["easy", "hard"]})
    easy, hard = out["answers"]
    assert easy["allotted"]["tokens"] == 100 and hard["allotted"]["tokens"] == 900
    explicit = node.invoke(
        {"subtasks": [{"question": "easy", "weight": 3}, {"question": "hard", "weight": 1}]}
    )
    assert [a["allotted"]["tokens"] for a in explicit["answers"]] == [750, 250]


def test_one_failed_subtask_keeps_the_others() -> None:
    bad = QS[2]

    def fail(q: str) -> Exception | None:
        return status_error(400) if bad in q else None

    models = make_models(big={"fail": fail}, small={"fail": fail})
    rtr, _ = make_rtr(models=models)
    out = create_rtr_node(rtr, budget=Budget(tokens=3_000), max_concurrency=3).invoke(
        {"subtasks": QS}
    )
    statuses = [a["status"] for a in out["answers"]]
    assert statuses[2] == "error" and out["answers"][2]["error"]
    assert all(s == "ok" for i, s in enumerate(statuses) if i != 2)
    assert out["answers"][2]["spend"]["output_tokens"] == 0


def test_exception_in_runnable_is_recorded() -> None:
    rtr, _ = make_rtr()
    node = RTRNode(rtr)
    task = {
        "id": "x",
        "index": 0,
        "question": "q",
        "status": "ok",
        "allotted": {},
        "share_tokens": None,
        "share_pico": None,
        "max_tokens": None,
        "allowed": [["nope", "cot"]],
        "input_bounds": {},
        "predicted_tokens": None,
        "predicted_correctness": None,
    }
    out = node.call(task, {})  # type: ignore[arg-type]
    assert out["results"]["x"]["status"] == "error"
    assert "UnknownPairError" in out["results"]["x"]["error"]


def test_missing_usage_books_the_worst_case() -> None:
    models = make_models(big={"report_usage": False}, small={"report_usage": False})
    rtr, _ = make_rtr(models=models)
    out = create_rtr_node(rtr, budget=Budget(tokens=500)).invoke({"subtasks": QS[:2]})
    for a in out["answers"]:
        assert a["spend"]["output_tokens"] == a["max_tokens"]
    assert out["spent"]["output_tokens"] <= 500


def test_bad_input_raises() -> None:
    rtr, _ = make_rtr()
    node = create_rtr_node(rtr)
    with pytest.raises(ConfigError, match="duplicate subtask id"):
        node.invoke({"subtasks": [{"question": "a", "id": "1"}, {"question": "b", "id": "1"}]})
    with pytest.raises(ConfigError, match="subtasks'\\]\\[0\\]"):
        node.invoke({"subtasks": [3]})
    with pytest.raises(ConfigError, match="max_concurrency"):
        create_rtr_node(rtr, max_concurrency=0)


# --------------------------------------------------------------------------- properties
@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    questions = [f"q{i}-{draw(st.integers(0, 10**6))}" for i in range(n)]
    tok = st.floats(1, 600, allow_nan=False)
    table = {
        q: (
            draw(st.lists(st.floats(0, 1), min_size=4, max_size=4)),
            draw(st.lists(tok, min_size=4, max_size=4)),
        )
        for q in questions
    }
    lengths = {q: draw(st.integers(0, 700)) for q in questions}
    return {
        "questions": questions,
        "table": table,
        "lengths": lengths,
        "tokens": draw(st.one_of(st.none(), st.integers(0, 3_000))),
        "usd": draw(st.one_of(st.none(), st.floats(0, 0.003, allow_nan=False))),
        "allotment": draw(st.sampled_from(["even", "weighted"])),
        "on_exhausted": draw(st.sampled_from(["cheapest", "skip"])),
        "max_concurrency": draw(st.integers(1, 5)),
        "fail": draw(st.sets(st.sampled_from(questions), max_size=2)),
    }


@given(sc=scenarios())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_spend_never_exceeds_budget_and_no_subtask_is_lost(sc: dict[str, Any]) -> None:
    def length(q: str) -> int:
        return next(v for k, v in sc["lengths"].items() if k in q)

    def fail(q: str) -> Exception | None:
        return status_error(400) if any(f in q for f in sc["fail"]) else None

    models = {
        "big": BudgetChat(served="big", length=length, fail=fail),
        "small": BudgetChat(served="small", length=length, fail=fail),
    }
    rtr, _ = make_rtr(FakePredictor(sc["table"]), models=models)
    node = create_rtr_node(
        rtr,
        budget=Budget(tokens=sc["tokens"], usd=sc["usd"]),
        allotment=sc["allotment"],
        on_exhausted=sc["on_exhausted"],
        max_concurrency=sc["max_concurrency"],
    )
    out = node.invoke({"subtasks": sc["questions"]})
    # No subtask is lost, and they come back in order.
    assert [a["question"] for a in out["answers"]] == sc["questions"]
    assert len(out["results"]) == len(sc["questions"])
    # What the fakes really produced never exceeds the budget ...
    calls = [c for c in all_calls(models) if "output_tokens" in c]
    produced = sum(c["output_tokens"] for c in calls)
    if sc["tokens"] is not None:
        assert produced <= sc["tokens"]
    if sc["usd"] is not None:
        assert true_pico(models) <= Fraction(str(sc["usd"])) * PICO_PER_USD
    # ... and the books match what was measured.
    assert out["spent"]["output_tokens"] == produced
    assert out["spent"]["calls"] == len(calls)
    for c in all_calls(models):
        assert c["max_tokens"] is not None or (sc["tokens"] is None and sc["usd"] is None)
    for a in out["answers"]:
        if a["status"] in ("ok", "cheapest"):
            assert a["spend"]["output_tokens"] <= (a["max_tokens"] or 10**9)


# --------------------------------------------------------------------------- in a graph
class PlanState(RTRState, total=False):
    topic: str
    summary: str


def _graph(node: Any, crash: dict[str, int]) -> Any:
    def plan(state: PlanState) -> dict[str, Any]:
        return {"subtasks": [f"{state['topic']} part {i}" for i in range(5)]}

    def combine(state: PlanState) -> dict[str, Any]:
        if crash["n"] > 0:
            crash["n"] -= 1
            raise RuntimeError("combine crashed")
        return {"summary": " | ".join(a["answer"] or "-" for a in state["answers"])}

    builder = StateGraph(PlanState)
    builder.add_node("plan", plan)
    builder.add_node("rtr", node)
    builder.add_node("combine", combine)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "rtr")
    builder.add_edge("rtr", "combine")
    builder.add_edge("combine", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_resume_after_a_later_node_fails_does_not_spend_twice() -> None:
    rtr, models = make_rtr()
    graph = _graph(create_rtr_node(rtr, budget=Budget(tokens=1_000), max_concurrency=2), {"n": 1})
    cfg = {"configurable": {"thread_id": "t1"}}
    with pytest.raises(RuntimeError, match="combine crashed"):
        graph.invoke({"topic": "math"}, cfg)
    assert len(all_calls(models)) == 5
    out = graph.invoke(None, cfg)
    calls = all_calls(models)
    assert len(calls) == 5  # each subtask's model was called once in total
    assert out["summary"]
    assert out["spent"]["output_tokens"] == sum(c["output_tokens"] for c in calls)


class Crash(BaseException):
    """Like a process being killed: nothing in the node catches it."""


def test_resume_after_a_crash_mid_fan_out_does_not_spend_twice() -> None:
    crashed = {"n": 1}

    def fail(q: str) -> BaseException | None:
        if "part 3" in q and crashed["n"]:
            crashed["n"] -= 1
            return Crash()
        return None

    models = make_models(big={"fail": fail}, small={"fail": fail})
    rtr, _ = make_rtr(models=models)
    # One subtask per wave: the crash kills wave 4; waves 1-3 are checkpointed. (A crash can
    # only repeat the calls of the wave in flight, whose results were never written.)
    graph = _graph(create_rtr_node(rtr, budget=Budget(tokens=1_000), max_concurrency=1), {"n": 0})
    cfg = {"configurable": {"thread_id": "t2"}}
    with pytest.raises(Crash):
        graph.invoke({"topic": "math"}, cfg)
    out = graph.invoke(None, cfg)
    answered = [c for c in all_calls(models) if "output_tokens" in c]
    questions = [c["question"] for c in answered]
    assert sorted(questions) == sorted(set(questions))  # no subtask answered twice
    assert len(answered) == 5
    assert [a["status"] for a in out["answers"]] == ["ok"] * 5
    assert out["spent"]["output_tokens"] == sum(c["output_tokens"] for c in answered)
    assert out["spent"]["output_tokens"] <= 1_000


def test_results_already_in_state_are_not_asked_again() -> None:
    rtr, models = make_rtr()
    node = create_rtr_node(rtr, budget=Budget(tokens=1_000))
    first = node.invoke({"subtasks": QS[:3]})
    n = len(all_calls(models))
    again = node.invoke({"subtasks": QS[:3], "results": first["results"]})
    assert len(all_calls(models)) == n
    assert again["answers"] == first["answers"]
