"""Routed dispatch on the real vLLM CPU servers: RTRRunnable, RTRChatModel and a LangGraph graph.

Two endpoints (``smol-a``, ``smol-b``) x three strategies (``direct``, ``cot``, ``pal``). The
router is fitted here on synthetic records with a planted rule, so routing is deterministic and
spreads over both endpoints and all three strategies:

- arithmetic ("What is 17 * 23?") -> ``smol-a/pal``;
- "Explain why ..." -> ``smol-b/cot``;
- short facts ("What is the capital of ...?") -> ``smol-a/direct``.

What is checked is the dispatch, not model quality: real usage (as the server reported it,
counted once per answer by ``get_usage_metadata_callback``), answers parsed (PAL: the sandbox
ran the program), the right ``model_name``, and a fallback with nothing lost when ``smol-b`` is
frozen in the middle of a batch. Answers are kept short (``max_tokens`` 32; 128 for PAL) so the
file runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langgraph.graph import END, START, StateGraph

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.graph import Budget, RTRState, create_rtr_node, input_token_bound
from langchain_rtr.models import ModelRegistry
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRResult, RTRRunnable
from tests.integration.conftest import planted_router

if TYPE_CHECKING:
    from tests.integration.conftest import ServerControl, SmolServers

MODELS = ("smol-a", "smol-b")
STRATEGIES = ("direct", "cot", "pal")
SHORT = 32  # max_tokens of direct/cot answers
PAL_TOKENS = 128  # a PAL program needs room; also every spec's max_tokens cap here

_rng = random.Random(0)
ARITHMETIC = [f"What is {_rng.randrange(11, 99)} * {_rng.randrange(11, 99)}?" for _ in range(12)]
EXPLAIN = [
    f"Explain why {t}."
    for t in (
        "the sky is blue",
        "ice floats on water",
        "metal feels cold",
        "leaves change colour in autumn",
        "bread rises",
        "the moon has phases",
        "we have seasons",
        "salt melts ice",
        "rainbows appear after rain",
        "planes can fly",
        "magnets attract iron",
        "sound travels faster in water",
    )
]
FACTS = [
    f"What is the capital of {c}?"
    for c in (
        "France",
        "Spain",
        "Italy",
        "Japan",
        "Egypt",
        "Peru",
        "Kenya",
        "Canada",
        "Norway",
        "Chile",
        "India",
        "Greece",
    )
]
PLANTED: dict[tuple[str, str], list[str]] = {
    ("smol-a", "pal"): ARITHMETIC,
    ("smol-b", "cot"): EXPLAIN,
    ("smol-a", "direct"): FACTS,
}
#: Output tokens in the synthetic records: below the caps used here, so every pair "fits".
TRAIN_TOKENS = {"direct": 6, "cot": 24, "pal": 40}

# Held-out questions (not in the training records) and the pair the planted rule sends them to.
Q_PAL = "What is 17 * 23?"
Q_COT = "Explain why the sky is dark at night."
Q_FACT = "What is the capital of Portugal?"
EXPECTED = {Q_PAL: ("smol-a", "pal"), Q_COT: ("smol-b", "cot"), Q_FACT: ("smol-a", "direct")}


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router(smol_servers: SmolServers) -> RTRRouter:
    """A router fitted on the planted records, for the running servers (accuracy-only policy)."""
    from langchain_rtr.data.records import RoutingRecord
    from langchain_rtr.predictor import TrainConfig

    specs = {
        name: spec.model_copy(update={"max_tokens": PAL_TOKENS})
        for name, spec in smol_servers.specs.items()
    }
    records = [
        RoutingRecord(
            question=q,
            source="synthetic",
            model=m,
            strategy=s,
            score=1.0 if (m, s) == planted else 0.0,
            output_tokens=TRAIN_TOKENS[s],
        )
        for planted, questions in PLANTED.items()
        for q in questions
        for m in MODELS
        for s in STRATEGIES
    ]
    config = TrainConfig(
        hidden=32,
        learnable_dim=8,
        lr=1e-2,
        batch_size=8,
        max_epochs=60,
        validation_fraction=0.0,
        seed=0,
    )
    return planted_router(specs, records, STRATEGIES, config)


def _registry(router: RTRRouter, **overrides: Any) -> ModelRegistry:
    # Greedy decoding: the same prompt gives the same answer; no client retries (fallback is
    # the router's job).
    return ModelRegistry.from_specs(router.models, temperature=0, max_retries=0, **overrides)


@pytest.fixture
def rtr(router: RTRRouter) -> RTRRunnable:
    # Per test: its chat clients must not outlive the test's event loop (conftest).
    return RTRRunnable(router=router, models=_registry(router))


def knobs(tokens: int = SHORT, pairs: Iterable[tuple[str, str]] | None = None) -> Any:
    """A per-call config: accuracy-only routing (rtr_lambda=1) and a max_tokens cap.

    ``rtr_lambda`` is given with ``rtr_max_tokens`` so that the cap does not also switch the
    policy to a token budget (which would route to the shortest pair instead).
    """
    configurable: dict[str, Any] = {"rtr_lambda": 1.0, "rtr_max_tokens": tokens}
    if pairs is not None:
        configurable["rtr_allowed_pairs"] = [list(p) for p in pairs]
    return {"configurable": configurable}


def server_usage(message: AIMessage) -> tuple[int, int]:
    """(prompt, completion) tokens exactly as the server's response body reported them."""
    raw = message.response_metadata.get("token_usage")
    if raw:  # a non-streamed reply: ChatOpenAI keeps the server's `usage` object as is
        return int(raw["prompt_tokens"]), int(raw["completion_tokens"])
    um = message.usage_metadata  # streamed: the usage chunk vLLM sends last
    assert um is not None, "the server reported no usage"
    return um["input_tokens"], um["output_tokens"]


def check_answered(result: RTRResult, pair: tuple[str, str] | None = None) -> None:
    """A real answer from the pair, with the server's usage, cost and a parsed answer."""
    assert isinstance(result, RTRResult), result
    assert result.error is None, result.error
    assert result.ok and result.message is not None
    if pair is not None:
        assert (result.model, result.strategy) == pair, result.routing
    assert result.message.response_metadata["model_name"] == result.model
    assert result.message.text.strip()
    assert result.usage is not None
    prompt_tokens, completion_tokens = server_usage(result.message)
    assert result.usage.input_tokens == prompt_tokens > 0
    assert result.usage.output_tokens == completion_tokens > 0
    assert result.usage.total_tokens == prompt_tokens + completion_tokens
    assert result.max_tokens is not None and completion_tokens <= result.max_tokens
    # The prompt the server counted is the strategy's rendering (chat template on top).
    assert prompt_tokens >= len(result.question.split())
    assert result.cost is not None and result.cost > 0
    # Parsed: an answer, or a reason why there is none, never both or neither.
    assert (result.answer is None) == bool(result.parse_error), (result.answer, result.parse_error)
    if result.strategy == "pal":
        # The sandbox ran the program, or says why there was none to run.
        assert result.program_output is not None or result.parse_error
        if result.answer is not None:
            assert result.program_output is not None and result.program_output.strip()


def check_usage_counted_once(totals: Mapping[str, Any], results: Iterable[RTRResult]) -> None:
    """The usage callback's totals per model are exactly the answers' usage, each once."""
    expected: dict[str, list[int]] = {}
    for r in results:
        if r.message is None or r.usage is None:
            continue
        acc = expected.setdefault(str(r.model), [0, 0])
        acc[0] += r.usage.input_tokens
        acc[1] += r.usage.output_tokens
    got = {m: [u["input_tokens"], u["output_tokens"]] for m, u in totals.items()}
    assert got == expected


class LLMRuns(BaseCallbackHandler):
    """Counts chat model runs and records the routed model of each (from run metadata)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str | None] = []
        self.ended: list[LLMResult] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self.lock:
            self.started.append((metadata or {}).get("rtr_model"))

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        with self.lock:
            self.ended.append(response)

    def count(self, model: str) -> int:
        with self.lock:
            return sum(m == model for m in self.started)


# --------------------------------------------------------------------------------------------
# RTRRunnable
# --------------------------------------------------------------------------------------------


def test_planted_routing_spreads_over_both_endpoints_and_three_strategies(
    router: RTRRouter,
) -> None:
    decisions = router.route_batch(list(EXPECTED))
    got = {d.question: d.pair for d in decisions}
    assert got == EXPECTED, [(d.question, d.pair, d.correctness) for d in decisions]
    assert {m for m, _ in EXPECTED.values()} == set(MODELS)
    assert {s for _, s in EXPECTED.values()} == set(STRATEGIES)
    for d in decisions:  # the fallback order covers the other pairs
        assert d.ranking[0] == d.pair and len(d.ranking) == len(MODELS) * len(STRATEGIES)


def test_invoke_routes_and_runs_the_pal_program(rtr: RTRRunnable) -> None:
    with get_usage_metadata_callback() as cb:
        pal = rtr.invoke(Q_PAL, config=knobs(PAL_TOKENS))
        direct = rtr.invoke("What is 2 + 2?", config=knobs(pairs=[("smol-b", "direct")]))
    print(
        f"\nPAL: {pal.message and pal.message.text!r} -> {pal.program_output!r} {pal.parse_error}"
    )
    print(f"direct: {direct.message and direct.message.text!r} -> {direct.answer!r}")
    check_answered(pal, EXPECTED[Q_PAL])
    assert pal.routing.model == "smol-a" and pal.routing.strategy == "pal"
    assert pal.max_tokens == PAL_TOKENS and not pal.fallbacks
    check_answered(direct, ("smol-b", "direct"))
    assert direct.max_tokens == SHORT
    check_usage_counted_once(cb.usage_metadata, [pal, direct])


async def test_ainvoke_routes_explain_to_cot_on_the_other_endpoint(rtr: RTRRunnable) -> None:
    with get_usage_metadata_callback() as cb:
        result = await rtr.ainvoke({"question": Q_COT}, config=knobs())
    check_answered(result, EXPECTED[Q_COT])
    check_usage_counted_once(cb.usage_metadata, [result])


def test_batch_covers_every_pair(rtr: RTRRunnable) -> None:
    pairs = [(m, s) for m in MODELS for s in STRATEGIES]
    questions = ["What is 3 + 4?", "What is 6 * 7?", "What is 12 - 5?"] * 2
    configs = [knobs(PAL_TOKENS if s == "pal" else SHORT, pairs=[(m, s)]) for m, s in pairs]
    with get_usage_metadata_callback() as cb:
        results = rtr.batch(questions, configs)  # type: ignore[arg-type]
    assert [r.question for r in results] == questions
    for r, pair in zip(results, pairs, strict=True):
        check_answered(r, pair)
    check_usage_counted_once(cb.usage_metadata, results)
    assert set(cb.usage_metadata) == set(MODELS)


async def test_astream_yields_chunks_then_the_result(rtr: RTRRunnable) -> None:
    chunks: list[AIMessageChunk] = []
    results: list[RTRResult] = []
    with get_usage_metadata_callback() as cb:
        async for item in rtr.astream(Q_FACT, config=knobs()):
            if isinstance(item, RTRResult):
                results.append(item)
            else:
                assert not results, "a chunk came after the result"
                chunks.append(item)
    assert len(results) == 1 and len(chunks) > 1
    (result,) = results
    check_answered(result, EXPECTED[Q_FACT])
    assert result.message is not None
    assert "".join(str(c.content) for c in chunks) == result.message.text
    # vLLM's usage chunk (stream_usage) reached the result, and the callback saw it once.
    assert result.usage is not None
    streamed = [c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata]
    assert sum(streamed) == result.usage.output_tokens
    check_usage_counted_once(cb.usage_metadata, [result])


# --------------------------------------------------------------------------------------------
# RTRChatModel in an LCEL chain
# --------------------------------------------------------------------------------------------


def test_chat_model_in_an_lcel_chain_counts_usage_once(rtr: RTRRunnable) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a terse assistant."), ("human", "{question}")]
    )
    chat = RTRChatModel(runnable=rtr)
    chain = (prompt | chat | StrOutputParser()).with_config(knobs())
    for mode in ("invoke", "stream"):
        runs = LLMRuns()
        with get_usage_metadata_callback() as cb:
            config: Any = {"callbacks": [runs]}
            if mode == "invoke":
                text = chain.invoke({"question": Q_FACT}, config)
            else:
                text = "".join(chain.stream({"question": Q_FACT}, config))
        assert isinstance(text, str) and text.strip(), mode
        # One chat model run (the RTRChatModel; the routed ChatOpenAI is not a second one).
        assert len(runs.started) == 1 and len(runs.ended) == 1, mode
        generation = runs.ended[0].generations[0][0]
        assert isinstance(generation, ChatGeneration)
        message = generation.message
        assert isinstance(message, AIMessage)
        assert message.text == text
        meta = message.response_metadata
        assert meta["model_name"] == "smol-a" and meta["rtr"]["answered_by"] == ["smol-a", "direct"]
        prompt_tokens, completion_tokens = server_usage(message)
        assert 0 < completion_tokens <= SHORT and prompt_tokens > 0
        assert cb.usage_metadata["smol-a"]["input_tokens"] == prompt_tokens, mode
        assert cb.usage_metadata["smol-a"]["output_tokens"] == completion_tokens, mode
        assert set(cb.usage_metadata) == {"smol-a"}, mode


# --------------------------------------------------------------------------------------------
# LangGraph
# --------------------------------------------------------------------------------------------


class _PlanState(RTRState, total=False):
    task: str
    report: str


def test_langgraph_graph_answers_subtasks_across_both_endpoints(rtr: RTRRunnable) -> None:
    subtasks = [
        {"id": "math", "question": Q_PAL, "weight": PAL_TOKENS},
        {"id": "why", "question": Q_COT, "weight": SHORT},
        {"id": "fact", "question": Q_FACT, "weight": SHORT},
    ]
    tokens = PAL_TOKENS + 2 * SHORT

    def plan(state: _PlanState) -> dict[str, Any]:
        assert state["task"]
        return {"subtasks": subtasks}

    def combine(state: _PlanState) -> dict[str, Any]:
        return {"report": "\n".join(f"{a['id']}: {a['answer']}" for a in state["answers"])}

    builder = StateGraph(_PlanState)
    builder.add_node("plan", plan)
    builder.add_node(
        "rtr",
        create_rtr_node(rtr, budget=Budget(tokens=tokens), allotment="weighted", max_concurrency=3),
    )
    builder.add_node("combine", combine)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "rtr")
    builder.add_edge("rtr", "combine")
    builder.add_edge("combine", END)
    graph = builder.compile()

    with get_usage_metadata_callback() as cb:
        out = graph.invoke({"task": "three small questions"})
    answers = out["answers"]
    print("\n" + out["report"])
    assert [a["id"] for a in answers] == ["math", "why", "fact"]
    per_model: dict[str, list[int]] = {}
    for a in answers:
        assert a["status"] == "ok" and not a["fallbacks"], a
        assert (a["model"], a["strategy"]) == EXPECTED[a["question"]], a
        spend = a["spend"]
        assert 0 < spend["output_tokens"] <= a["max_tokens"] <= a["allotted"]["tokens"]
        rendered = rtr.strategies[a["strategy"]].render(a["question"])
        assert 0 < spend["input_tokens"] <= input_token_bound(rendered)
        assert (a["answer"] is None) == bool(a["error"]), a
        acc = per_model.setdefault(a["model"], [0, 0])
        acc[0] += spend["input_tokens"]
        acc[1] += spend["output_tokens"]
    assert set(per_model) == set(MODELS)
    # What the graph booked is what the servers reported, once.
    assert {m: [u["input_tokens"], u["output_tokens"]] for m, u in cb.usage_metadata.items()} == (
        per_model
    )
    assert out["spent"]["output_tokens"] == sum(v[1] for v in per_model.values()) <= tokens
    assert out["report"].count("\n") == len(subtasks) - 1


# --------------------------------------------------------------------------------------------
# Fallback in the middle of a batch
# --------------------------------------------------------------------------------------------

#: Client timeout for the fallback test: well above an answer's time on a loaded 2-core
#: machine (a few seconds for 32 tokens), well below the 120 s default.
FROZEN_TIMEOUT_S = 20.0


def test_a_server_frozen_mid_batch_falls_back_with_nothing_lost(
    router: RTRRouter, server_control: ServerControl
) -> None:
    """smol-b is frozen (SIGSTOP) while a batch routed to it is in flight.

    A frozen server is the failure mode that costs the client most (the call hangs until its
    timeout rather than failing at once), and unlike stopping it needs no 1-3 minute restart.
    A refused connection (a stopped server) is covered by test_server_integration and the unit
    tests.
    """
    rtr = RTRRunnable(router=router, models=_registry(router, timeout=FROZEN_TIMEOUT_S))
    allowed = [("smol-b", "cot"), ("smol-a", "cot")]
    questions = [
        f"Explain why {t}."
        for t in (
            "snow is white",
            "the sea is salty",
            "cats purr",
            "wood burns",
            "it rains",
            "we sleep",
        )
    ]
    runs = LLMRuns()
    config: Any = {**knobs(pairs=allowed), "callbacks": [runs]}
    inputs: list[Any] = list(questions)
    outcome: dict[str, Any] = {}

    def run_batch() -> None:
        try:
            with get_usage_metadata_callback() as cb:
                outcome["results"] = rtr.batch(inputs, config)
            outcome["usage"] = dict(cb.usage_metadata)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=run_batch, daemon=True)
    t0 = time.monotonic()
    worker.start()
    # Freeze smol-b once every item's request to it has been sent.
    while runs.count("smol-b") < len(questions):
        assert worker.is_alive(), outcome
        assert time.monotonic() - t0 < 60, f"only {runs.count('smol-b')} calls reached smol-b"
        time.sleep(0.05)
    time.sleep(0.5)
    server_control.pause("smol-b")
    worker.join(timeout=4 * FROZEN_TIMEOUT_S + 120)
    assert not worker.is_alive(), "the batch hangs"
    assert "error" not in outcome, outcome.get("error")

    results: list[RTRResult] = outcome["results"]
    # Nothing lost: one answered result per question, in order, none with an error.
    assert [r.question for r in results] == questions
    failed_over = [r for r in results if r.fallbacks]
    assert failed_over, "no call was in flight on smol-b when it froze"
    for r in results:
        assert r.routing.model == "smol-b" and r.routing.ranking[:2] == allowed, r.routing
        if r.fallbacks:
            check_answered(r, ("smol-a", "cot"))
            assert r.fell_back
            assert [(f.model, f.strategy, f.retryable) for f in r.fallbacks] == [
                ("smol-b", "cot", True)
            ]
            assert "timed out" in r.fallbacks[0].error.lower() or "timeout" in (
                r.fallbacks[0].error_type.lower()
            ), r.fallbacks[0]
        else:  # answered before the freeze
            check_answered(r, ("smol-b", "cot"))
    # The usage callback counted each answer once, under the model that gave it.
    check_usage_counted_once(outcome["usage"], results)
