from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.errors import ConfigError, KnobTypeError, RTRError
from langchain_rtr.runnable import AllPairsFailedError, RTRRunnable
from tests.unit.test_runnable_fakes import (
    FakeChat,
    FakeRouter,
    connection_error,
    make_models,
    make_strategies,
)


def build(**fail: Any) -> tuple[RTRChatModel, FakeRouter, dict[str, Any]]:
    router = FakeRouter()
    models = make_models(**fail)
    rtr = RTRRunnable(router=router, models=models, strategies=make_strategies())
    return RTRChatModel(runnable=rtr), router, models


def test_invoke_returns_the_chosen_models_message() -> None:
    chat, router, models = build()
    msg = chat.invoke([SystemMessage("Be brief."), HumanMessage("What is 2+2?")])
    assert isinstance(msg, AIMessage) and "\\boxed{4}" in msg.text
    assert msg.response_metadata["model_name"] == "big-served"
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] > 0
    rtr = msg.response_metadata["rtr"]
    assert rtr["answered_by"] == ["big", "cot"] and rtr["answer"] == "4"
    assert router.calls[0]["question"] == "What is 2+2?"
    # called through _generate: no nested chat model run
    assert models["big"].calls[0]["api"] == "sync"


def test_output_answer() -> None:
    chat, _, _ = build()
    chat = chat.model_copy(update={"output": "answer"})
    assert chat.invoke("2+2?").content == "4"
    assert "".join(c.text for c in chat.stream("2+2?")) == "4"


def test_usage_counted_once_per_answer() -> None:
    chat, _, _ = build()
    with get_usage_metadata_callback() as cb:
        a = chat.invoke("q")
        chunks = list(chat.stream("q"))
    streamed = chunks[0]
    for c in chunks[1:]:
        streamed = streamed + c
    assert set(cb.usage_metadata) == {"big-served"}
    assert cb.usage_metadata["big-served"]["total_tokens"] == (
        a.usage_metadata["total_tokens"] + streamed.usage_metadata["total_tokens"]
    )
    assert streamed.response_metadata["model_name"] == "big-served"
    assert streamed.response_metadata["rtr"]["model"] == "big"


async def test_async_paths_and_usage() -> None:
    chat, _, models = build(big=connection_error())
    with get_usage_metadata_callback() as cb:
        msg = await chat.ainvoke("q")
        chunks = [c async for c in chat.astream("q")]
    assert msg.response_metadata["model_name"] == "small-served"
    assert msg.response_metadata["rtr"]["fallbacks"][0]["model"] == "big"
    assert isinstance(chunks[0], AIMessageChunk)
    assert {c["api"] for c in models["small"].calls} == {"async", "astream"}
    assert (
        cb.usage_metadata["small-served"]["total_tokens"] == 2 * msg.usage_metadata["total_tokens"]
    )


def test_knobs_from_config_kwargs_and_bind() -> None:
    chat, router, models = build()
    chat.invoke("q", config={"configurable": {"rtr_max_tokens": 33}})
    assert models["big"].calls[-1]["kwargs"]["max_tokens"] == 33
    chat.bind(rtr_allowed_pairs=[("small", "direct")]).invoke("q")
    assert router.calls[-1]["allowed"] == frozenset({("small", "direct")})
    chat.invoke("q", temperature=0.2, max_tokens=20, stop=["\n\n"])
    last = models["big"].calls[-1]
    assert last["kwargs"]["temperature"] == 0.2 and last["kwargs"]["max_tokens"] == 20
    assert last["stop"] == ["\n\n"]
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat
    chain.invoke({"q": "x"}, config={"configurable": {"rtr_lambda": 0.25}})
    assert router.calls[-1]["policy"].lam == 0.25


def test_all_failed_raises() -> None:
    chat, _, _ = build(big=connection_error(), small=connection_error())
    with pytest.raises(AllPairsFailedError):
        chat.invoke("q")


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.starts = 0

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append(name)

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1


def test_decision_event_and_single_run() -> None:
    chat, _, _ = build()
    rec = Events()
    chat.invoke("q", config={"callbacks": [rec]})
    assert rec.events == ["rtr_decision"] and rec.starts == 1


def test_in_an_agent_like_loop_history_is_kept() -> None:
    chat, _, models = build()
    chat.invoke([HumanMessage("hi"), AIMessage("hello"), HumanMessage("2+2?")])
    sent = models["big"].calls[-1]["messages"]
    assert [m.text for m in sent[1:]] == ["hi", "hello", "2+2?"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_tokens": -1}, ConfigError),
        ({"max_tokens": 0}, ConfigError),
        ({"max_tokens": "20"}, KnobTypeError),
        ({"rtr_policy": "high"}, KnobTypeError),
        ({"rtr_lambda": 2.0}, ConfigError),
    ],
)
def test_bad_call_kwargs_are_refused_before_any_model_call(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    chat, router, models = build()
    with pytest.raises(error) as caught:
        chat.invoke("q", **kwargs)
    assert isinstance(caught.value, RTRError)
    assert router.calls == [] and not models["big"].calls and not models["small"].calls


class StreamingOnlyChat(FakeChat):
    """Like ChatOpenAI built with ``streaming=True``: its ``_generate`` alone cannot answer."""

    streaming: bool = True

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a streaming=True model must be called through its stream")

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a streaming=True model must be called through its stream")


async def test_a_streaming_model_is_called_through_its_stream() -> None:
    models = {
        "big": StreamingOnlyChat(served="big-served", streaming=True),
        "small": StreamingOnlyChat(served="small-served", reply="\\boxed{5}", streaming=True),
    }
    chat = RTRChatModel(runnable=RTRRunnable(router=FakeRouter(), models=models))
    for message in (chat.invoke("What is 2+2?"), await chat.ainvoke("What is 2+2?")):
        assert isinstance(message, AIMessage)
        assert "boxed" in message.text
        assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
