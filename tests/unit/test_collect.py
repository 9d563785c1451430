"""rtr collect with fake chat models: grading, resume, partial lines, errors, limits, stopping."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_rtr.collect import (
    CollectError,
    collect,
    collected_records,
    collected_routing_set,
    plan_pairs,
    repair_tail,
    run_collect,
)
from langchain_rtr.data.io import read_records
from langchain_rtr.data.records import RecordError
from langchain_rtr.errors import ConfigError
from langchain_rtr.questions import Question, write_questions
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies import get_strategy
from langchain_rtr.strategies.base import Strategy

# the module, not the `collect` function the package exports under the same name
collect_mod = importlib.import_module("langchain_rtr.collect")


def _answer(question: str) -> int:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return a + b


class FakeChat(BaseChatModel):
    """Answers "What is a + b?" right (or off by one when `wrong`), reports usage.

    `behaviour(call_no, kwargs)` may raise (an endpoint failure) or return None; `gate` makes
    calls wait until it is set (to hold calls in flight).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name_: str = "fake"
    endpoint: str = ""
    wrong: bool = False
    delay: float = 0.001
    reply: Callable[[str], str] | None = None
    behaviour: Callable[[int, dict[str, Any]], None] | None = None
    gate: asyncio.Event | None = None
    stats: Any = Field(default_factory=dict)  # Any: pydantic must not copy it
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "fake-collect"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kw: Any) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._calls += 1
        st = self.stats
        st["calls"] = st.get("calls", 0) + 1
        st.setdefault("kwargs", []).append(kw)
        ep = st.setdefault("in_flight", {})
        key = self.endpoint or self.name_
        ep[key] = ep.get(key, 0) + 1
        st.setdefault("max_in_flight", {})
        st["max_in_flight"][key] = max(st["max_in_flight"].get(key, 0), ep[key])
        try:
            if self.behaviour is not None:
                self.behaviour(self._calls, kw)
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
            text = str(messages[-1].content)
            if self.reply is not None:
                content = self.reply(text)
            else:
                value = _answer(text) + (1 if self.wrong else 0)
                content = f"Let me add. The answer is \\boxed{{{value}}}."
        finally:
            ep[key] -= 1
        msg = AIMessage(
            content=content,
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])


def _questions(n: int) -> list[Question]:
    return [
        Question(id=f"q{i}", question=f"What is {i} + {i + 3}?", answer=str(2 * i + 3),
                 answer_type="number", source=f"arith-{1 + i % 2}")
        for i in range(n)
    ]  # fmt: skip


def _strategies() -> list[Strategy]:
    return [get_strategy("direct"), get_strategy("cot")]


SPECS = {
    "good": ModelSpec(name="good", input_price=1.0, output_price=2.0, base_url="http://h1/v1"),
    "bad": ModelSpec(name="bad", input_price=0.5, output_price=1.0, base_url="http://h2/v1"),
}


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _cells(rows: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((r["question_id"], r["model"], r["strategy"]) for r in rows)


def test_collects_grades_and_prices_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    models = {"good": FakeChat(name_="good"), "bad": FakeChat(name_="bad", wrong=True)}
    s = _run(collect(_questions(3), models, _strategies(), out, specs=SPECS, progress=False))
    rows = _lines(out)
    assert len(rows) == 12 and s.attempted == 12 and s.succeeded == 12 and s.complete
    assert set(_cells(rows).values()) == {1}
    for r in rows:
        assert r["score"] == (1.0 if r["model"] == "good" else 0.0)
        assert r["input_tokens"] == 10 and r["output_tokens"] == 5
        spec = SPECS[r["model"]]
        assert r["cost"] == pytest.approx(spec.call_cost(10, 5))
        assert r["latency_s"] >= 0 and "\\boxed" in r["response"] and r["error"] is None
        assert r["source"].startswith("arith-")
    assert s.pairs["good/cot"].accuracy == 1.0 and s.pairs["bad/direct"].accuracy == 0.0
    assert s.pairs["good/direct"].mean_output_tokens == 5
    assert "good/direct" in s.format()


def test_rerun_does_nothing_and_writes_no_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stats: dict[str, Any] = {}
    models = {"good": FakeChat(name_="good", stats=stats)}
    _run(collect(_questions(4), models, _strategies(), out, specs=SPECS, progress=False))
    before = out.read_bytes()
    calls = stats["calls"]
    s = _run(collect(_questions(4), models, _strategies(), out, specs=SPECS, progress=False))
    assert s.attempted == 0 and s.done_before == 8 and s.complete
    assert out.read_bytes() == before and stats["calls"] == calls
    # a bigger question set: only the new questions are run
    s = _run(collect(_questions(6), models, _strategies(), out, specs=SPECS, progress=False))
    assert s.attempted == 4 and s.done_before == 8
    assert set(_cells(_lines(out)).values()) == {1}


def test_partial_last_line_is_cut_with_a_warning_and_redone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.jsonl"
    models = {"good": FakeChat(name_="good")}
    _run(collect(_questions(3), models, _strategies(), out, specs=SPECS, progress=False))
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    lost = json.loads(lines[-1])
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="langchain_rtr.collect"):
        s = _run(collect(_questions(3), models, _strategies(), out, specs=SPECS, progress=False))
    assert s.repaired_bytes > 0 and "partial last line" in caplog.text
    assert "partial last line" in s.format()
    assert s.attempted == 1 and s.complete
    rows = _lines(out)  # every line parses again
    assert len(rows) == 6 and set(_cells(rows).values()) == {1}
    assert (lost["question_id"], lost["model"], lost["strategy"]) in _cells(rows)


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    models = {"good": FakeChat(name_="good")}
    _run(collect(_questions(2), models, _strategies(), out, specs=SPECS, progress=False))
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    assert repair_tail(out) == 0 and out.read_bytes().endswith(b"\n")
    s = _run(collect(_questions(2), models, _strategies(), out, specs=SPECS, progress=False))
    assert s.attempted == 0 and len(_lines(out)) == 4


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    models = {"good": FakeChat(name_="good")}
    _run(collect(_questions(2), models, _strategies(), out, specs=SPECS, progress=False))
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = "{oops\n"
    out.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(RecordError, match=r"out.jsonl:2"):
        _run(collect(_questions(2), models, _strategies(), out, specs=SPECS, progress=False))


def test_endpoint_errors_are_recorded_retried_and_redone_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    down = {"down": True}
    bad_stats: dict[str, Any] = {}

    def refuse(call_no: int, kw: dict[str, Any]) -> None:
        if down["down"]:
            raise ConnectionRefusedError("connection refused")

    models = {
        "good": FakeChat(name_="good"),
        "bad": FakeChat(name_="bad", behaviour=refuse, stats=bad_stats),
    }
    s = _run(
        collect(_questions(3), models, _strategies(), out, specs=SPECS, progress=False,
                retries=2, backoff_s=0, give_up_after=None)
    )  # fmt: skip
    assert s.succeeded == 6 and s.failed == 6 and not s.complete and s.remaining == 6
    assert bad_stats["calls"] == 6 * 3  # each cell: the call and 2 retries
    rows = _lines(out)
    for r in rows:
        if r["model"] == "bad":
            assert r["score"] is None and "ConnectionRefusedError" in r["error"]
            assert r["output_tokens"] is None
        else:
            assert r["score"] == 1.0 and r["error"] is None
    assert s.pairs["bad/cot"].errors == 3 and s.pairs["good/cot"].ok == 3
    # the errors are not data: training sees only the good model's cells
    rs = collected_routing_set(out, "t", SPECS, _strategies())
    assert {r.model for r in rs.records} == {"good"}

    down["down"] = False  # the server is back
    s2 = _run(collect(_questions(3), models, _strategies(), out, specs=SPECS, progress=False))
    assert s2.attempted == 6 and s2.done_before == 6 and s2.complete
    redone = {(r["question_id"], r["model"], r["strategy"]) for r in _lines(out)[len(rows) :]}
    assert redone == {(r["question_id"], r["model"], r["strategy"]) for r in rows if r["error"]}
    final = collected_records(out)
    assert len(final) == 12 and all(r.ok for r in final)


def test_other_errors_are_recorded_without_retry(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stats: dict[str, Any] = {}

    def boom(call_no: int, kw: dict[str, Any]) -> None:
        raise ValueError("bad request: prompt too long")

    models = {"bad": FakeChat(name_="bad", behaviour=boom, stats=stats)}
    s = _run(collect(_questions(2), models, _strategies(), out, specs=SPECS, progress=False))
    assert stats["calls"] == 4 and s.failed == 4
    assert all(r["score"] is None and "ValueError" in r["error"] for r in _lines(out))


def test_an_endpoint_that_keeps_failing_is_abandoned_and_left_for_a_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    def refuse(call_no: int, kw: dict[str, Any]) -> None:
        raise ConnectionRefusedError("refused")

    models = {"good": FakeChat(name_="good"), "bad": FakeChat(name_="bad", behaviour=refuse)}
    s = _run(
        collect(_questions(10), models, _strategies(), out, specs=SPECS, progress=False,
                retries=0, concurrency_per_endpoint=1, give_up_after=3)
    )  # fmt: skip
    assert s.abandoned == ["http://h2/v1"] and s.failed == 3 and s.not_run == 17
    assert s.pairs["good/direct"].ok == 10
    assert "gave up on endpoint http://h2/v1" in s.format()
    assert s.remaining == 20


def test_concurrency_is_limited_per_endpoint(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # two models on one server share its limit; a third on another server has its own
    specs = {
        "a": ModelSpec(name="a", base_url="http://same/v1"),
        "b": ModelSpec(name="b", base_url="http://same/v1"),
        "c": ModelSpec(name="c", base_url="http://other/v1"),
    }
    shared: dict[str, Any] = {}
    models = {
        name: FakeChat(name_=name, endpoint=spec.base_url or "", stats=shared, delay=0.01)
        for name, spec in specs.items()
    }
    s = _run(
        collect(_questions(8), models, _strategies(), out, specs=specs, progress=False,
                concurrency_per_endpoint=3)
    )  # fmt: skip
    assert s.succeeded == 48
    assert shared["max_in_flight"] == {"http://same/v1": 3, "http://other/v1": 3}


def test_stop_keeps_what_was_written_and_a_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stop_holder: dict[str, asyncio.Event] = {}
    gate_holder: dict[str, asyncio.Event] = {}

    def hold_after_five(call_no: int, kw: dict[str, Any]) -> None:
        if call_no > 5:
            stop_holder["stop"].set()  # Ctrl-C while calls are in flight

    async def main() -> Any:
        stop_holder["stop"] = asyncio.Event()
        gate_holder["gate"] = asyncio.Event()  # never set: later calls hang until cancelled
        model = FakeChat(name_="good", behaviour=hold_after_five, delay=0.0)

        # calls after the fifth hang on the gate
        def gated(call_no: int, kw: dict[str, Any]) -> None:
            hold_after_five(call_no, kw)
            if call_no > 5:
                model.gate = gate_holder["gate"]

        model.behaviour = gated
        return await collect(
            _questions(10), {"good": model}, _strategies(), out, specs=SPECS, progress=False,
            concurrency_per_endpoint=1, stop=stop_holder["stop"],
        )  # fmt: skip

    s = _run(main())
    assert s.interrupted and s.attempted == 5 and s.not_run == 15
    assert "interrupted" in s.format()
    rows = _lines(out)
    assert len(rows) == 5 and all(r["score"] == 1.0 for r in rows)
    s2 = _run(
        collect(_questions(10), {"good": FakeChat(name_="good")}, _strategies(), out,
                specs=SPECS, progress=False)
    )  # fmt: skip
    assert s2.attempted == 15 and s2.complete
    assert set(_cells(_lines(out)).values()) == {1}


def test_cancelling_the_task_keeps_the_file_consistent(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    async def main() -> None:
        gate = asyncio.Event()
        model = FakeChat(name_="good", delay=0.0)

        def gated(call_no: int, kw: dict[str, Any]) -> None:
            if call_no > 3:
                model.gate = gate

        model.behaviour = gated
        task = asyncio.create_task(
            collect(_questions(5), {"good": model}, _strategies(), out, specs=SPECS,
                    progress=False, concurrency_per_endpoint=1)
        )  # fmt: skip
        while not out.exists() or len(out.read_text().splitlines()) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(main())
    rows = _lines(out)
    assert len(rows) == 3 and set(_cells(rows).values()) == {1}


def test_thinking_toggles_only_on_reasoning_models_and_call_arguments(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stats_r: dict[str, Any] = {}
    stats_p: dict[str, Any] = {}
    specs = {
        "r": ModelSpec(name="r", reasoning=True, max_tokens=100, base_url="http://r/v1"),
        "p": ModelSpec(name="p", base_url="http://p/v1"),
    }
    models = {"r": FakeChat(name_="r", stats=stats_r), "p": FakeChat(name_="p", stats=stats_p)}
    strategies = [get_strategy("direct"), get_strategy("no_think")]
    pairs, skipped = plan_pairs(list(models), strategies, specs)
    assert [(m, s.name) for m, s in pairs] == [("r", "direct"), ("r", "no_think"), ("p", "direct")]
    assert list(skipped) == ["p/no_think"]
    s = _run(
        collect(_questions(2), models, strategies, out, specs=specs, progress=False,
                max_tokens=300, temperature=0.0, seed=7)
    )  # fmt: skip
    assert s.cells == 6 and "p/no_think" in s.format()
    assert all(kw["max_tokens"] == 100 for kw in stats_r["kwargs"])  # the spec's cap is lower
    assert all(kw["max_tokens"] == 300 and kw["temperature"] == 0.0 for kw in stats_p["kwargs"])
    thinking = [kw for kw in stats_r["kwargs"] if "extra_body" in kw]
    assert len(thinking) == 2
    assert thinking[0]["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}
    seeds = {kw["seed"] for kw in stats_r["kwargs"] + stats_p["kwargs"]}
    assert len(seeds) == 6  # one per cell
    out2 = tmp_path / "again.jsonl"
    stats_r.clear()
    _run(collect(_questions(2), {"r": models["r"]}, strategies, out2, specs=specs,
                 progress=False, seed=7))  # fmt: skip
    assert {kw["seed"] for kw in stats_r["kwargs"]} <= seeds  # same cell, same seed


def test_pal_answers_are_graded_on_the_programs_result(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    def program(prompt: str) -> str:
        a, b = map(int, re.findall(r"\d+", prompt.split("\n\n", 1)[1])[:2])
        return f"```python\nprint({a} + {b})\n```"

    models = {"good": FakeChat(name_="good", reply=program)}
    s = _run(
        collect(_questions(2), models, [get_strategy("pal")], out, specs=SPECS, progress=False)
    )
    assert s.succeeded == 2
    assert all(r["score"] == 1.0 and "print(" in r["response"] for r in _lines(out))


def test_bad_arguments(tmp_path: Path) -> None:
    models = {"good": FakeChat(name_="good")}
    qs = _questions(1)
    with pytest.raises(CollectError, match=r"\.jsonl"):
        _run(collect(qs, models, _strategies(), tmp_path / "x.parquet", progress=False))
    with pytest.raises(CollectError, match="no questions"):
        _run(collect([], models, _strategies(), tmp_path / "x.jsonl", progress=False))
    with pytest.raises(CollectError, match="twice"):
        _run(collect(qs, models, [get_strategy("cot")] * 2, tmp_path / "x.jsonl", progress=False))
    with pytest.raises(CollectError, match="no \\(model, strategy\\) pair"):
        _run(collect(qs, models, [get_strategy("think")], tmp_path / "x.jsonl", progress=False))
    with pytest.raises(CollectError, match="ModelSpec or a langchain BaseChatModel"):
        _run(collect(qs, {"x": object()}, _strategies(), tmp_path / "x.jsonl",  # type: ignore[dict-item]
                     progress=False))  # fmt: skip


def test_routing_set_from_a_collection(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    models = {"good": FakeChat(name_="good"), "bad": FakeChat(name_="bad", wrong=True)}
    _run(collect(_questions(4), models, _strategies(), out, specs=SPECS, progress=False))
    rs = collected_routing_set(out, "mine", SPECS, _strategies(), attribution="made here")
    assert rs.name == "mine" and len(rs.records) == 16
    assert all(s.base_url is None for s in rs.models.values())
    assert set(rs.strategies) == {"direct", "cot"}
    m = rs.matrix()
    assert m.score.shape == (4, 4)


def test_run_collect_reads_files_prints_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        "  - {name: m1, base_url: 'http://127.0.0.1:9/v1', input_price: 1, output_price: 1}\n"
        "  - {name: m2, input_price: 1, output_price: 1}\n",
        encoding="utf-8",
    )
    qfile = write_questions(tmp_path / "q.jsonl", _questions(3))
    built: list[ModelSpec] = []

    def fake_client(spec: ModelSpec, **kw: Any) -> BaseChatModel:
        built.append(spec)
        assert kw["max_retries"] == 0  # collect owns the retries
        return FakeChat(name_=spec.name)

    monkeypatch.setattr(collect_mod, "chat_model_for", fake_client)
    printed: list[str] = []
    s = run_collect(models_file, qfile, tmp_path / "out.jsonl", strategies=["direct"],
                    limit=2, progress=False, echo=printed.append)  # fmt: skip
    assert [b.name for b in built] == ["m1"]  # m2 has no endpoint
    assert s.cells == 2 and s.complete and "collect complete" in printed[0]
    assert len(read_records(tmp_path / "out.jsonl").records) == 2
    with pytest.raises(CollectError, match="not in"):
        run_collect(models_file, qfile, tmp_path / "o.jsonl", models=["zz"], progress=False)
    with pytest.raises(CollectError, match="no base_url"):
        run_collect(models_file, qfile, tmp_path / "o.jsonl", models=["m2"], progress=False)


def test_progress_bar_runs(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    s = _run(collect(_questions(2), {"good": FakeChat(name_="good")}, _strategies(), out,
                     specs=SPECS, progress=True))  # fmt: skip
    assert s.succeeded == 4


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_a_cap_of_no_tokens_is_refused_as_in_every_front_end(
    tmp_path: Path, max_tokens: int
) -> None:
    # 0 used to mean "no cap" here (and -5 reached the server) while the runnable, the chat
    # model, the CLI's route and the server refuse it
    stats: dict[str, Any] = {}
    models = {"good": FakeChat(name_="good", stats=stats)}
    out = tmp_path / "out.jsonl"
    with pytest.raises(ConfigError, match="max_tokens"):
        _run(collect(_questions(1), models, _strategies(), out, specs=SPECS, progress=False,
                     max_tokens=max_tokens))  # fmt: skip
    assert stats.get("calls", 0) == 0 and not out.exists()
    with pytest.raises(ConfigError, match="--max-tokens"):  # before the models file is read
        run_collect(tmp_path / "missing.yaml", tmp_path / "q.jsonl", out, max_tokens=max_tokens)
