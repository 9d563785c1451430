"""Streams that die mid-answer: another model continues them (vLLM's continue_final_message)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from langchain_rtr.errors import ConfigError
from langchain_rtr.runnable import CONTINUE_BODY, AllPairsFailedError, RTRResult, RTRRunnable
from tests.unit.test_runnable_fakes import (
    FakeChat,
    FakeRouter,
    make_strategies,
    status_error,
)

REPLY = "Two plus two: add the units, carry nothing, so the answer is \\boxed{4}."
N_WORDS = len(REPLY.split())


def build(
    order: Any = None, big_cut: int | None = 3, small_cut: int | None = None, **kw: Any
) -> tuple[RTRRunnable, FakeChat, FakeChat]:
    """`big` (the first choice) dies after `big_cut` words; `small` would answer the same."""
    big = FakeChat(served="big-served", reply=REPLY, cut_after=big_cut)
    small = FakeChat(served="small-served", reply=REPLY, cut_after=small_cut)
    kw.setdefault("continuable_models", ["big", "small"])
    router = FakeRouter(order) if order is not None else FakeRouter()
    rtr = RTRRunnable(
        router=router, models={"big": big, "small": small}, strategies=make_strategies(), **kw
    )
    return rtr, big, small


def split(items: list[Any]) -> tuple[str, RTRResult]:
    *chunks, result = items
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert isinstance(result, RTRResult)
    return "".join(c.text for c in chunks), result


def assert_continued(text: str, result: RTRResult, big: FakeChat, small: FakeChat) -> None:
    assert text == REPLY  # one answer: the 3 words streamed, then the rest, nothing twice
    assert result.ok and result.continued and result.answer == "4"
    assert (result.model, result.strategy) == ("small", "cot")
    assert result.message is not None and result.message.text == REPLY
    [cut] = result.fallbacks
    assert (cut.model, cut.strategy, cut.streamed_tokens, cut.retryable) == ("big", "cot", 3, True)
    # the same rendered prompt, plus the partial answer to continue
    partial = "".join(w + " " for w in REPLY.split(" ")[:3])
    assert small.calls[0]["messages"] == [*big.calls[0]["messages"], AIMessage(content=partial)]
    assert small.calls[0]["kwargs"]["extra_body"].items() >= CONTINUE_BODY.items()
    # both attempts are paid for: big read the prompt (10) and wrote 3 words; small read the
    # prompt plus those 3 words and wrote the rest
    assert result.usage is not None
    assert result.usage.input_tokens == 10 + (10 + 3)
    assert result.usage.output_tokens == N_WORDS
    assert result.usage.total_tokens == 23 + N_WORDS
    expected_cost = (10 * 1.0 + 3 * 2.0 + 13 * 0.1 + (N_WORDS - 3) * 0.2) / 1e6
    assert result.cost == pytest.approx(expected_cost)


async def test_astream_continues_a_cut_answer_on_another_model() -> None:
    rtr, big, small = build()
    text, result = split([x async for x in rtr.astream("q")])
    assert_continued(text, result, big, small)
    assert [c["api"] for c in small.calls] == ["astream"]


def test_stream_continues_a_cut_answer_on_another_model() -> None:
    rtr, big, small = build()
    text, result = split(list(rtr.stream("q")))
    assert_continued(text, result, big, small)
    assert [c["api"] for c in small.calls] == ["stream"]


def test_the_continuation_gets_what_is_left_of_max_tokens() -> None:
    rtr, _, small = build()
    *_, result = list(rtr.stream("q", config={"configurable": {"rtr_max_tokens": 50}}))
    assert result.continued and result.max_tokens == 50
    assert small.calls[0]["kwargs"]["max_tokens"] == 47


class FakeChatWithBody(FakeChat):
    """A fake that carries its own `extra_body`, as `ChatOpenAI(extra_body=...)` does."""

    extra_body: dict[str, Any] | None = None


def test_extra_body_of_the_client_and_the_strategy_is_kept() -> None:
    big = FakeChat(reply=REPLY, cut_after=3)
    small = FakeChatWithBody(reply=REPLY, extra_body={"top_k": 5})
    rtr = RTRRunnable(
        router=FakeRouter(),
        models={"big": big, "small": small},
        strategies=make_strategies(),  # cot sends chat_template_kwargs in extra_body
        continuable_models=["small"],
    )
    *_, result = list(rtr.stream("q"))
    assert result.continued
    # a per-call extra_body replaces ChatOpenAI's own, so all three must be in it
    assert small.calls[0]["kwargs"]["extra_body"] == {
        "top_k": 5,
        "chat_template_kwargs": {"enable_thinking": False},
        **CONTINUE_BODY,
    }


def test_a_model_with_the_same_strategy_is_preferred() -> None:
    # after big/cot, the ranking says big/direct (same model: skipped), small/direct, small/cot
    order = [("big", "cot"), ("big", "direct"), ("small", "direct"), ("small", "cot")]
    rtr, big, small = build(order=order)
    text, result = split(list(rtr.stream("q")))
    assert text == REPLY and (result.model, result.strategy) == ("small", "cot")
    assert small.calls[0]["messages"][:-1] == big.calls[0]["messages"]


def test_without_a_pair_of_that_strategy_the_strategy_is_kept() -> None:
    rtr, big, small = build(allowed_pairs=[("big", "cot"), ("small", "direct")])
    text, result = split(list(rtr.stream("q")))
    # the partial answer follows the cot prompt, so small continues that prompt
    assert text == REPLY and (result.model, result.strategy) == ("small", "cot")
    assert small.calls[0]["messages"][:-1] == big.calls[0]["messages"]


@pytest.mark.parametrize(
    ("case", "kw", "streamed"),
    [
        ("no model can continue", {"continuable_models": []}, [3]),
        ("the continuation dies too", {"small_cut": 2}, [3, 2]),
        ("the cut is not an endpoint failure", {"cut_error": status_error(400)}, [3]),
    ],
)
def test_no_continuation_ends_with_an_error(case: str, kw: dict[str, Any], streamed: list[int]):
    cut_error = kw.pop("cut_error", None)
    rtr, big, small = build(**kw)
    big.cut_error = cut_error
    text, result = split(list(rtr.stream("q")))
    assert result.error and result.message is None and not result.continued, case
    assert [f.streamed_tokens for f in result.fallbacks] == streamed
    assert text == "".join(w + " " for w in REPLY.split(" ")[: sum(streamed)])
    if streamed == [3]:
        assert small.calls == []


async def test_no_continuation_raises_with_raise_on_failure() -> None:
    rtr, _, _ = build(continuable_models=[], raise_on_failure=True)
    with pytest.raises(AllPairsFailedError) as info:
        _ = [x async for x in rtr.astream("q")]
    assert info.value.result.fallbacks[0].streamed_tokens == 3


def test_failing_before_the_first_token_still_falls_back_silently() -> None:
    rtr, _, small = build(big_cut=0)
    text, result = split(list(rtr.stream("q")))
    assert text == REPLY and result.model == "small" and not result.continued
    assert result.fallbacks[0].streamed_tokens == 0
    assert "continue_final_message" not in small.calls[0]["kwargs"]["extra_body"]
    assert result.usage is not None and result.usage.input_tokens == 10


def test_continuable_models_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"continuable_models: \['nope'\]"):
        build(continuable_models=["nope"])


def test_by_default_only_chat_openai_on_a_server_continues() -> None:
    served = ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="x")
    hosted = ChatOpenAI(model="m", api_key="x")
    rtr = RTRRunnable(
        router=FakeRouter(), models={"big": served, "small": hosted}, strategies=make_strategies()
    )
    assert rtr.engine.can_continue("big") and not rtr.engine.can_continue("small")
    fakes, _, _ = build(continuable_models=None)
    assert not fakes.engine.can_continue("small")


def test_an_error_event_from_a_dying_server_is_continued_too() -> None:
    # vLLM shutting down mid-answer sends an error event (code 500), not a cut connection
    import httpx
    import openai

    rtr, big, small = build()
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    big.cut_error = openai.APIError(
        "EngineCore encountered an issue",
        request,
        body={"message": "EngineCore encountered an issue", "type": "EngineDeadError", "code": 500},
    )
    text, result = split(list(rtr.stream("What is 2 + 2?")))
    assert_continued(text, result, big, small)
