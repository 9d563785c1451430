from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any
from uuid import UUID

import httpx
import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate

from langchain_rtr.errors import ConfigError, KnobTypeError, RTRError, UnknownPairError
from langchain_rtr.models import ModelRegistry
from langchain_rtr.routing import BestBet, TokenBudget, Tradeoff
from langchain_rtr.runnable import (
    AllPairsFailedError,
    RTRResult,
    RTRRunnable,
    is_endpoint_failure,
)
from tests.unit.test_runnable_fakes import (
    FakeChat,
    FakeRouter,
    connection_error,
    make_models,
    make_strategies,
    status_error,
)


def build(router: FakeRouter | None = None, models: dict[str, Any] | None = None, **kw: Any):
    router = router or FakeRouter()
    models = models if models is not None else make_models()
    rtr = RTRRunnable(router=router, models=models, strategies=make_strategies(), **kw)
    return rtr, router, models


# --------------------------------------------------------------------------- basics
@pytest.mark.parametrize(
    "inp",
    ["What is 2+2?", {"question": "What is 2+2?"}, [HumanMessage("What is 2+2?")]],
)
def test_invoke_input_forms(inp: Any) -> None:
    rtr, router, models = build()
    result = rtr.invoke(inp)
    assert isinstance(result, RTRResult)
    assert router.calls[0]["question"] == "What is 2+2?"
    assert (result.model, result.strategy) == ("big", "cot")
    assert result.answer == "4"
    assert result.ok and not result.fell_back
    assert isinstance(result.message, AIMessage)
    assert result.message.response_metadata["model_name"] == "big-served"
    assert (
        result.usage is not None
        and result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    )
    assert result.cost == pytest.approx(
        router.models["big"].call_cost(result.usage.input_tokens, result.usage.output_tokens)
    )
    assert result.routing.model == "big" and result.routing.predicted_correctness == 0.8
    assert result.latency_s >= 0
    # the strategy rendered the prompt: its system message, then the question
    sent = models["big"].calls[0]["messages"]
    assert isinstance(sent[0], SystemMessage) and sent[-1].text == "What is 2+2?"


def test_bad_input_raises() -> None:
    rtr, _, _ = build()
    with pytest.raises(ValueError, match="question"):
        rtr.invoke({"q": "x"})
    with pytest.raises(ValueError, match="no human message"):
        rtr.invoke([SystemMessage("hi")])
    with pytest.raises(TypeError):
        rtr.invoke(42)  # type: ignore[arg-type]


def test_message_context_kept_and_systems_merged() -> None:
    rtr, _, models = build()
    history = [
        SystemMessage("You are terse."),
        HumanMessage("Hi"),
        AIMessage("Hello"),
        HumanMessage("What is 2+2?"),
    ]
    rtr.invoke(history)
    sent = models["big"].calls[0]["messages"]
    systems = [m for m in sent if isinstance(m, SystemMessage)]
    assert len(systems) == 1 and sent[0] is systems[0]
    assert "terse" in systems[0].text and "step by step" in systems[0].text
    assert [m.text for m in sent[1:]] == ["Hi", "Hello", "What is 2+2?"]


def test_prompt_value_input_in_a_chain() -> None:
    rtr, router, _ = build()
    chain = ChatPromptTemplate.from_messages([("human", "Q: {q}")]) | rtr
    result = chain.invoke({"q": "2+2"})
    assert router.calls[0]["question"] == "Q: 2+2"
    assert result.answer == "4"


# --------------------------------------------------------------------------- knobs
def test_max_tokens_capped_by_budget_and_spec() -> None:
    rtr, _, models = build(router=FakeRouter(max_tokens=512))
    rtr.invoke("q1")
    assert models["big"].calls[-1]["kwargs"]["max_tokens"] == 512
    result = rtr.invoke("q2", config={"configurable": {"rtr_max_tokens": 100}})
    assert models["big"].calls[-1]["kwargs"]["max_tokens"] == 100
    assert result.max_tokens == 100
    rtr.invoke("q3", config={"configurable": {"rtr_max_tokens": 4096}})
    assert models["big"].calls[-1]["kwargs"]["max_tokens"] == 512


def test_strategy_model_kwargs_reach_the_model() -> None:
    rtr, _, models = build()
    rtr.invoke("q")
    kwargs = models["big"].calls[-1]["kwargs"]
    assert kwargs["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}


def test_configurable_policy_and_allowed_pairs() -> None:
    rtr, router, _ = build()
    rtr.invoke("q", config={"configurable": {"rtr_lambda": 0.3}})
    assert router.calls[-1]["policy"] == Tradeoff(lam=0.3)
    rtr.invoke("q", config={"configurable": {"rtr_max_tokens": 64}})
    policy = router.calls[-1]["policy"]
    assert isinstance(policy, TokenBudget) and policy.max_tokens == 64
    explicit = TokenBudget(max_tokens=10)
    rtr.invoke("q", config={"configurable": {"rtr_policy": explicit}})
    assert router.calls[-1]["policy"] is explicit
    # two knobs that each choose a policy are refused, not silently ranked
    with pytest.raises(ConfigError, match="at most one"):
        rtr.invoke("q", config={"configurable": {"rtr_policy": explicit, "rtr_lambda": 0.5}})
    result = rtr.invoke(
        "q", config={"configurable": {"rtr_allowed_pairs": [("small", "direct"), "small/cot"]}}
    )
    assert set(router.calls[-1]["allowed"]) == {("small", "direct"), ("small", "cot")}
    assert result.model == "small"
    # with_config works too, and config_specs declares the keys
    assert {s.id for s in rtr.config_specs} >= {"rtr_lambda", "rtr_max_tokens", "rtr_allowed_pairs"}
    rtr.with_config(configurable={"rtr_lambda": 1.0}).invoke("q")
    assert router.calls[-1]["policy"] == Tradeoff(lam=1.0)


@pytest.mark.parametrize("policy", [TokenBudget(max_tokens=77), BestBet(max_tokens=77)])
def test_policy_budget_caps_max_tokens(policy: TokenBudget | BestBet) -> None:
    rtr, _, models = build(policy=policy)
    rtr.invoke("q")
    assert models["big"].calls[-1]["kwargs"]["max_tokens"] == 77


@pytest.mark.parametrize(
    ("configurable", "error"),
    [
        ({"rtr_lambda": 1.5}, ConfigError),
        ({"rtr_lambda": "high"}, KnobTypeError),
        ({"rtr_max_tokens": 0}, ConfigError),
        ({"rtr_max_tokens": -1}, ConfigError),
        ({"rtr_max_tokens": 2.5}, KnobTypeError),
        ({"rtr_policy": "high"}, KnobTypeError),
        ({"rtr_policy": 0}, KnobTypeError),
        ({"rtr_policy": {}}, KnobTypeError),
        ({"rtr_confidence": 0.9}, ConfigError),  # a confidence needs a token budget
        ({"rtr_max_tokens": 100, "rtr_confidence": 1.0}, ConfigError),
        ({"rtr_budget_rule": "best_bet"}, ConfigError),  # a rule needs a token budget
        ({"rtr_max_tokens": 100, "rtr_budget_rule": "best"}, ConfigError),
        ({"rtr_max_tokens": 100, "rtr_budget_rule": 1}, KnobTypeError),
        (
            {"rtr_max_tokens": 100, "rtr_budget_rule": "best_bet", "rtr_confidence": 0.9},
            ConfigError,
        ),
        ({"rtr_max_tokens": 100, "rtr_budget_rule": "fit", "rtr_lambda": 0.5}, ConfigError),
        ({"rtr_allowed_pairs": [("huge", "cot")]}, UnknownPairError),
        ({"rtr_allowed_pairs": [5]}, KnobTypeError),
        ({"rtr_allowed_pairs": {"big": "cot"}}, KnobTypeError),
        ({"rtr_allowed_pairs": [("big", "cot", "x")]}, ConfigError),
    ],
)
def test_bad_knobs_are_refused(configurable: dict[str, Any], error: type[Exception]) -> None:
    rtr, router, _ = build()
    with pytest.raises(error) as caught:
        rtr.invoke("q", config={"configurable": configurable})
    assert isinstance(caught.value, RTRError)
    assert router.calls == []


def test_the_budget_rule_picks_the_budget_policy() -> None:
    rtr, router, _ = build()
    for rule, policy in (
        ("fit", TokenBudget(100, on_no_fit="fewest_tokens")),
        ("best_bet", BestBet(100)),
    ):
        config = {"rtr_max_tokens": 100, "rtr_budget_rule": rule}
        rtr.invoke("q", config={"configurable": config})
        assert router.calls[-1]["policy"] == policy


def test_a_pair_string_means_the_same_in_config_as_in_the_model_string() -> None:
    rtr, router, _ = build()
    rtr.invoke("q", config={"configurable": {"rtr_allowed_pairs": "big/cot|small/cot"}})
    assert set(router.calls[-1]["allowed"]) == {("big", "cot"), ("small", "cot")}


def test_untrained_model_or_strategy_is_refused() -> None:
    with pytest.raises(UnknownPairError, match="huge"):
        RTRRunnable(
            router=FakeRouter(),
            models={**make_models(), "huge": FakeChat()},
            strategies=make_strategies(),
        )
    strategies = make_strategies()
    strategies["pal"] = strategies["cot"]
    with pytest.raises(UnknownPairError, match="pal"):
        RTRRunnable(router=FakeRouter(), models=make_models(), strategies=strategies)
    with pytest.raises(UnknownPairError):
        RTRRunnable(
            router=FakeRouter(),
            models=make_models(),
            strategies=make_strategies(),
            allowed_pairs=[("big", "pal")],
        )


def test_only_servable_pairs_are_routed() -> None:
    models = make_models()
    del models["big"]  # the predictor knows "big", but it is not served here
    rtr, router, _ = build(models=models)
    assert rtr.servable_pairs == {("small", "cot"), ("small", "direct")}
    result = rtr.invoke("q")
    assert set(router.calls[0]["allowed"]) == rtr.servable_pairs
    assert result.model == "small"
    with pytest.raises(UnknownPairError, match="no chat model"):
        rtr.invoke("q", config={"configurable": {"rtr_allowed_pairs": [("big", "cot")]}})


# --------------------------------------------------------------------------- fallback
def test_falls_back_on_connection_error_and_skips_the_dead_model() -> None:
    rtr, _, models = build(models=make_models(big=connection_error()))
    result = rtr.invoke("q")
    assert (result.model, result.strategy) == ("small", "cot")
    assert result.fell_back and result.answer == "5"
    assert [(f.model, f.strategy, f.retryable) for f in result.fallbacks] == [("big", "cot", True)]
    assert "APIConnectionError" in result.fallbacks[0].error_type
    assert len(models["big"].calls) == 1  # ("big", "direct") was not tried: same endpoint
    assert result.routing.model == "big"  # the router's choice is still reported


@pytest.mark.parametrize("api", ["invoke", "ainvoke"])
def test_a_failed_pairs_exception_is_let_go_before_the_fallback_call(api: str) -> None:
    """Under a burst of failures every request in flight would otherwise hold its own."""
    refs: list[weakref.ref[Exception]] = []
    alive: list[bool] = []

    def fail_big(question: str) -> Exception:
        exc = connection_error()
        refs.append(weakref.ref(exc))
        return exc

    def check_small(question: str) -> None:
        gc.collect()  # only what something still refers to survives this
        alive.append(refs[0]() is not None)

    rtr, _, _ = build(models=make_models(big=fail_big, small=check_small))
    result = rtr.invoke("q") if api == "invoke" else asyncio.run(rtr.ainvoke("q"))
    assert result.model == "small" and result.fell_back
    assert alive == [False]


def test_falls_back_on_5xx_not_on_4xx() -> None:
    rtr, _, _ = build(models=make_models(big=status_error(503)))
    assert rtr.invoke("q").model == "small"
    rtr, _, models = build(models=make_models(big=status_error(400)))
    result = rtr.invoke("q")
    assert result.message is None and result.error is not None
    assert not result.fallbacks[0].retryable
    assert models["small"].calls == []
    assert isinstance(result.exception, Exception)


def test_everything_fails() -> None:
    rtr, _, _ = build(models=make_models(big=connection_error(), small=TimeoutError("slow")))
    result = rtr.invoke("q")
    assert not result.ok and result.answer is None and "every routed pair failed" in result.error
    assert {f.model for f in result.fallbacks} == {"big", "small"}
    rtr, _, _ = build(
        models=make_models(big=connection_error(), small=connection_error()), raise_on_failure=True
    )
    with pytest.raises(AllPairsFailedError) as info:
        rtr.invoke("q")
    assert len(info.value.result.fallbacks) == 2


def test_max_attempts() -> None:
    rtr, _, models = build(models=make_models(big=connection_error()), max_attempts=1)
    result = rtr.invoke("q")
    assert not result.ok and models["small"].calls == []


def test_is_endpoint_failure() -> None:
    assert is_endpoint_failure(connection_error())
    assert is_endpoint_failure(status_error(502))
    assert not is_endpoint_failure(status_error(400))
    assert not is_endpoint_failure(ValueError("bug"))
    # an error event in a stream (vLLM's engine dying mid-answer): the event's code decides
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    dead = {"message": "EngineCore encountered an issue", "type": "EngineDeadError", "code": 500}
    assert is_endpoint_failure(openai.APIError("engine dead", request, body=dead))
    bad = {"message": "bad request", "type": "BadRequestError", "code": 400}
    assert not is_endpoint_failure(openai.APIError("bad", request, body=bad))
    assert not is_endpoint_failure(openai.APIError("no body", request, body=None))


# --------------------------------------------------------------------------- batch
def test_batch_routes_once_and_isolates_failures() -> None:
    def fail_on_boom(question: str) -> Exception | None:
        return connection_error() if "boom" in question else None

    models = make_models(big=fail_on_boom, small=fail_on_boom)
    rtr, router, _ = build(models=models)
    results = rtr.batch(["a", "boom", "c"])
    assert router.batch_calls == [["a", "boom", "c"]] and router.calls == []
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error and results[0].answer == results[2].answer == "4"


def test_batch_bad_input_follows_return_exceptions() -> None:
    rtr, _, _ = build()
    out = rtr.batch(["a", {"nope": 1}, "c"], return_exceptions=True)
    assert isinstance(out[1], ValueError) and out[0].ok and out[2].ok
    with pytest.raises(ValueError):
        rtr.batch(["a", {"nope": 1}])


def test_batch_per_item_config() -> None:
    rtr, router, models = build()
    rtr.batch(
        ["a", "b"],
        config=[{"configurable": {"rtr_max_tokens": 10}}, {"configurable": {"rtr_max_tokens": 20}}],
    )
    caps = sorted(c["kwargs"]["max_tokens"] for c in models["big"].calls)
    assert caps == [10, 20]
    assert len(router.batch_calls) == 2  # different policies: one route_batch each


async def test_abatch_isolates_and_is_async() -> None:
    models = make_models(big=lambda q: connection_error() if q == "boom" else None)
    rtr, router, _ = build(models=models)
    results = await rtr.abatch(["a", "boom"])
    assert results[0].model == "big" and results[1].model == "small" and results[1].fell_back
    assert router.batch_calls == [["a", "boom"]]
    assert {c["api"] for m in models.values() for c in m.calls} == {"async"}


# --------------------------------------------------------------------------- async
async def test_ainvoke_uses_the_models_async_api() -> None:
    rtr, _, models = build(models=make_models(big=connection_error()))
    result = await rtr.ainvoke("q", config={"configurable": {"rtr_max_tokens": 50}})
    assert result.model == "small" and result.max_tokens == 50
    assert [c["api"] for c in models["big"].calls] == ["async"]
    assert [c["api"] for c in models["small"].calls] == ["async"]


# --------------------------------------------------------------------------- streaming
def test_stream_yields_chunks_then_result() -> None:
    rtr, _, _ = build()
    items = list(rtr.stream("q"))
    *chunks, final = items
    assert chunks and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert isinstance(final, RTRResult) and final.answer == "4"
    assert "".join(c.text for c in chunks) == final.message.text
    assert final.message.usage_metadata is not None
    assert final.message.response_metadata["model_name"] == "big-served"


def test_stream_falls_back_before_the_first_chunk() -> None:
    rtr, _, _ = build(models=make_models(big=connection_error()))
    *chunks, final = list(rtr.stream("q"))
    assert (
        final.model == "small"
        and final.fell_back
        and "".join(c.text for c in chunks) == "\\boxed{5}"
    )


async def test_astream() -> None:
    rtr, _, models = build()
    items = [x async for x in rtr.astream("q")]
    assert isinstance(items[-1], RTRResult) and items[-1].answer == "4"
    assert all(isinstance(c, AIMessageChunk) for c in items[:-1])
    assert models["big"].calls[0]["api"] == "astream"


def test_stream_in_a_chain_ends_with_the_result() -> None:
    from langchain_core.runnables import RunnableLambda

    rtr, _, _ = build()
    chain = rtr | RunnableLambda(lambda r: r.answer)
    assert list(chain.stream("q")) == ["4"]


# --------------------------------------------------------------------------- metadata, usage
class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.llm_metadata: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: Any,
        *,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.llm_metadata.append(dict(metadata or {}))


@pytest.mark.parametrize("mode", ["invoke", "stream", "batch"])
def test_decision_in_run_metadata(mode: str) -> None:
    rtr, _, _ = build(models=make_models(big=connection_error()))
    rec = Recorder()
    config = {"callbacks": [rec], "metadata": {"user": "u1"}}
    if mode == "invoke":
        rtr.invoke("q", config=config)
    elif mode == "stream":
        list(rtr.stream("q", config=config))
    else:
        rtr.batch(["q"], config=config)
    assert [name for name, _ in rec.events] == ["rtr_decision"]
    data = rec.events[0][1]
    assert data["model"] == "big" and data["predicted_correctness"] == 0.8
    assert data["ranking"][0] == ("big", "cot")
    assert [(m["rtr_model"], m["rtr_strategy"], m["rtr_attempt"]) for m in rec.llm_metadata] == [
        ("big", "cot", 0),
        ("small", "cot", 1),
    ]
    assert all(m["user"] == "u1" for m in rec.llm_metadata)


async def test_decision_event_async() -> None:
    rtr, _, _ = build()
    rec = Recorder()
    await rtr.ainvoke("q", config={"callbacks": [rec]})
    assert rec.events[0][0] == "rtr_decision" and rec.llm_metadata[0]["rtr_model"] == "big"


def test_usage_totals_per_model() -> None:
    rtr, _, _ = build()
    with get_usage_metadata_callback() as cb:
        a = rtr.invoke("q")
        b = rtr.invoke("q", config={"configurable": {"rtr_allowed_pairs": [("small", "cot")]}})
        *_, c = list(rtr.stream("q"))
    assert set(cb.usage_metadata) == {"big-served", "small-served"}
    big = cb.usage_metadata["big-served"]
    assert big["total_tokens"] == a.usage.total_tokens + c.usage.total_tokens
    assert cb.usage_metadata["small-served"]["output_tokens"] == b.usage.output_tokens


async def test_usage_totals_async() -> None:
    rtr, _, _ = build()
    with get_usage_metadata_callback() as cb:
        results = await rtr.abatch(["a", "b"])
        items = [x async for x in rtr.astream("c")]
    total = sum(r.usage.total_tokens for r in results) + items[-1].usage.total_tokens
    assert cb.usage_metadata["big-served"]["total_tokens"] == total


def test_result_serialises() -> None:
    rtr, _, _ = build()
    dumped = rtr.invoke("q").model_dump(mode="json")
    assert (
        dumped["model"] == "big"
        and "decision" not in dumped
        and dumped["routing"]["status"] == "ok"
    )


def test_registry_models_accepted() -> None:
    registry = ModelRegistry(make_models())
    rtr = RTRRunnable(router=FakeRouter(), models=registry, strategies=make_strategies())
    assert rtr.invoke("q").model == "big"


def test_an_image_in_the_question_is_refused_not_dropped() -> None:
    from langchain_core.messages import HumanMessage

    from langchain_rtr.dispatch.messages import split_input
    from langchain_rtr.errors import QuestionTypeError

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    message = HumanMessage(content=[{"type": "text", "text": "What is in it?"}, image])
    with pytest.raises(QuestionTypeError, match=r"content\[1\].*'image_url'") as caught:
        split_input([message])
    assert caught.value.code == "unsupported_content"
    text_only = HumanMessage(content=[{"type": "text", "text": "What is 2 + 2?"}])
    assert split_input([text_only])[0] == "What is 2 + 2?"


@pytest.mark.parametrize("question", ["", "   ", "\x00\x00", "\ud800"])
def test_the_runnable_refuses_what_the_gate_refuses(question: str) -> None:
    from langchain_rtr.dispatch.messages import split_input
    from langchain_rtr.errors import QuestionValueError

    with pytest.raises(QuestionValueError):
        split_input(question)
