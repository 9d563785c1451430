"""Fakes for the graph and agent tests: a real RTRRouter over a scripted predictor, and chat
models that honour max_tokens and report usage like a real server."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from pydantic import Field, PrivateAttr

from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies.base import Strategy

PAIRS = [("big", "cot"), ("big", "direct"), ("small", "cot"), ("small", "direct")]
SPECS = {
    "big": ModelSpec(name="big", input_price=1.0, output_price=4.0, max_tokens=400),
    "small": ModelSpec(name="small", input_price=0.1, output_price=0.2),
}


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


@dataclass
class FakePrediction:
    correctness: np.ndarray
    output_tokens: np.ndarray | None


class FakeEncoder:
    id = "fake"
    dim = 2

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 2), np.float32)


class FakePredictor:
    """Predictions per question: from `table` if present, else derived from a hash of the text."""

    def __init__(
        self,
        table: dict[str, tuple[list[float], list[float]]] | None = None,
        lengths: bool = True,
    ) -> None:
        self.pairs = list(PAIRS)
        self.encoder = FakeEncoder()
        self.table = dict(table or {})
        self.lengths = lengths

    def _row(self, q: str) -> tuple[list[float], list[float]]:
        if q in self.table:
            return self.table[q]
        h = _h(q)
        corr = [0.9, 0.7, 0.6, 0.4]
        base = 20 + h % 200
        return corr, [base * 3.0, base * 1.0, base * 2.0, base * 0.5]

    def predict(self, questions: Sequence[str]) -> FakePrediction:
        rows = [self._row(q) for q in questions]
        corr = np.array([r[0] for r in rows], np.float32).reshape(len(rows), len(PAIRS))
        tok = np.array([r[1] for r in rows], np.float32).reshape(len(rows), len(PAIRS))
        return FakePrediction(corr, tok if self.lengths else None)

    def predict_embeddings(self, embeddings: np.ndarray) -> FakePrediction:
        raise NotImplementedError

    def save(self, directory: Any) -> None:
        raise NotImplementedError


def make_router(predictor: FakePredictor | None = None, **kw: Any) -> RTRRouter:
    kw.setdefault("cost_scale", 1e-3)
    return RTRRouter(predictor or FakePredictor(), SPECS, **kw)


def make_strategies() -> dict[str, Strategy]:
    return {
        "cot": Strategy(
            name="cot",
            description="reason step by step",
            prompt=ChatPromptTemplate.from_messages(
                [("system", "Reason step by step, answer in \\boxed{{}}."), ("human", "{question}")]
            ),
        ),
        "direct": Strategy(
            name="direct",
            description="the question alone",
            prompt=ChatPromptTemplate.from_messages([("human", "{question}")]),
        ),
    }


class BudgetChat(BaseChatModel):
    """Answers with `length(question)` tokens, cut at max_tokens; usage like a real server.

    Input tokens are reported as ceil(chars / 4) + 10, which is under any byte-based bound.
    `fail(question) -> Exception | None` makes chosen calls fail; `calls` records each call.
    """

    served: str = "fake"
    length: Callable[[str], int] = Field(default=lambda q: 10 + _h(q) % 300)
    fail: Any = None
    report_usage: bool = True
    calls: list[dict[str, Any]] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "fake-budget"

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        question = messages[-1].text
        exc = self.fail(question) if callable(self.fail) else self.fail
        if exc is not None:
            with self._lock:
                self.calls.append({"question": question, "max_tokens": kwargs.get("max_tokens")})
            raise exc
        n = self.length(question)
        cap = kwargs.get("max_tokens")
        out = n if cap is None else min(n, int(cap))
        chars = sum(len(m.text) for m in messages)
        usage = {"input_tokens": -(-chars // 4) + 10, "output_tokens": out}
        with self._lock:
            self.calls.append(
                {
                    "question": question,
                    "max_tokens": cap,
                    "input_tokens": usage["input_tokens"],
                    "output_tokens": out,
                }
            )
        usage["total_tokens"] = usage["input_tokens"] + out
        return AIMessage(
            content=" ".join(["w"] * max(out - 1, 0) + ["\\boxed{7}"]),
            usage_metadata=usage if self.report_usage else None,  # type: ignore[arg-type]
            response_metadata={"model_name": self.served},
        )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:  # type: ignore[no-untyped-def]
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:  # type: ignore[no-untyped-def]
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])


def make_models(**kw: Any) -> dict[str, BudgetChat]:
    return {
        "big": BudgetChat(served="big-served", **kw.get("big", {})),
        "small": BudgetChat(served="small-served", **kw.get("small", {})),
    }


def make_rtr(
    predictor: FakePredictor | None = None, models: dict[str, BudgetChat] | None = None, **kw: Any
) -> tuple[RTRRunnable, dict[str, BudgetChat]]:
    models = models if models is not None else make_models()
    rtr = RTRRunnable(
        router=make_router(predictor),
        models=models,
        strategies=make_strategies(),
        route_in_thread=False,
        **kw,
    )
    return rtr, models
