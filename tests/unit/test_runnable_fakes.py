"""Fakes shared by the runnable and chat model tests: a router, strategies, chat models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from langchain_rtr.routing import Decision
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies.base import Strategy

PAIRS = [("big", "cot"), ("small", "cot"), ("big", "direct"), ("small", "direct")]


def make_strategies() -> dict[str, Strategy]:
    return {
        "cot": Strategy(
            name="cot",
            description="reason step by step",
            prompt=ChatPromptTemplate.from_messages(
                [("system", "Reason step by step, answer in \\boxed{{}}."), ("human", "{question}")]
            ),
            thinking=False,
        ),
        "direct": Strategy(
            name="direct",
            description="the question alone",
            prompt=ChatPromptTemplate.from_messages([("human", "{question}")]),
            supports_tools=True,
        ),
    }


class FakeRouter:
    """Ranks pairs in a fixed order (optionally per question); records what it was asked."""

    def __init__(self, order: Sequence[tuple[str, str]] = PAIRS, max_tokens: int = 512) -> None:
        self.models = {
            "big": ModelSpec(name="big", input_price=1.0, output_price=2.0, max_tokens=max_tokens),
            "small": ModelSpec(name="small", input_price=0.1, output_price=0.2, tools=True),
        }
        self.pairs = list(PAIRS)
        self.order = list(order)
        self.calls: list[dict[str, Any]] = []
        self.batch_calls: list[list[str]] = []

    def _decide(self, question: str, policy: Any, allowed: Collection[tuple[str, str]] | None):
        ranking = tuple(p for p in self.order if allowed is None or p in set(allowed))
        model, strategy = ranking[0]
        return Decision(
            question=question,
            model=model,
            strategy=strategy,
            correctness=0.8,
            output_tokens=120.0,
            cost=0.5,
            usd=0.0003,
            cost_unit="usd",
            policy={"name": "fake"} if policy is None else policy.to_dict(),
            status="ok",
            ranking=ranking,
        )

    def route(self, question: str, policy: Any = None, allowed: Any = None) -> Decision:
        self.calls.append({"question": question, "policy": policy, "allowed": allowed})
        return self._decide(question, policy, allowed)

    def route_batch(self, questions: Sequence[str], policy: Any = None, allowed: Any = None):
        self.batch_calls.append(list(questions))
        return [self._decide(q, policy, allowed) for q in questions]


def connection_error() -> Exception:
    return openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1"))


def status_error(code: int) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    response = httpx.Response(code, request=request)
    cls = openai.InternalServerError if code >= 500 else openai.BadRequestError
    return cls(f"error {code}", response=response, body=None)


class FakeChat(BaseChatModel):
    """Answers `\\boxed{4}` (or `reply`), reports usage and its name; can be told to fail.

    Streaming, it can die mid-answer (`cut_after` words, then `cut_error`), and like vLLM with
    `extra_body={"continue_final_message": True}` it continues the final assistant message:
    it streams the rest of `reply` after that message's text.
    """

    served: str = "fake"
    reply: str = "Thinking... so the answer is \\boxed{4}."
    fail: Any = None  # an exception, or a callable question -> exception | None
    cut_after: int | None = None  # streamed words before the stream dies
    cut_error: Any = None  # what it dies with (default: a connection error)
    calls: list[dict[str, Any]] = Field(default_factory=list)
    tool_args: dict[str, Any] = Field(default_factory=dict)  # the args of its tool calls

    @property
    def _llm_type(self) -> str:
        return "fake-rtr"

    def bind_tools(self, tools, *, tool_choice=None, **kwargs) -> Runnable:
        """As ChatOpenAI: OpenAI-format tools and a normalised tool_choice, bound."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice in ("any", True):
            tool_choice = "required"
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _tool_call(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The call it makes when tools are bound (the forced one, else the first tool)."""
        tools = kwargs.get("tools")
        if not tools or kwargs.get("tool_choice") == "none":
            return None
        choice = kwargs.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        name = name or tools[0]["function"]["name"]
        return {"name": name, "args": dict(self.tool_args), "id": f"call-{len(self.calls)}"}

    def _message(self, kwargs: dict[str, Any]) -> AIMessage:
        call = self._tool_call(kwargs)
        return AIMessage(
            content="" if call else self.reply,
            tool_calls=[call] if call else [],
            usage_metadata=self._usage(),
            response_metadata={"model_name": self.served},
        )

    def _maybe_fail(self, messages: list[BaseMessage]) -> None:
        exc = self.fail(messages[-1].text) if callable(self.fail) else self.fail
        if exc is not None:
            raise exc

    def _usage(self) -> dict[str, int]:
        out = len(self.reply.split())
        return {"input_tokens": 10, "output_tokens": out, "total_tokens": 10 + out}

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.calls.append({"api": "sync", "messages": messages, "kwargs": kwargs, "stop": stop})
        self._maybe_fail(messages)
        return ChatResult(generations=[ChatGeneration(message=self._message(kwargs))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.calls.append({"api": "async", "messages": messages, "kwargs": kwargs, "stop": stop})
        self._maybe_fail(messages)
        return ChatResult(generations=[ChatGeneration(message=self._message(kwargs))])

    def _chunks(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> list[ChatGenerationChunk]:
        prefix = ""
        if (kwargs.get("extra_body") or {}).get("continue_final_message"):
            last = messages[-1]
            if not isinstance(last, AIMessage):
                raise status_error(400)  # vLLM refuses to continue a non-assistant message
            prefix = last.text
        text = self.reply[len(prefix) :] if self.reply.startswith(prefix) else self.reply
        words = text.split(" ")
        chunks = [
            ChatGenerationChunk(
                message=AIMessageChunk(content=w + (" " if i < len(words) - 1 else ""))
            )
            for i, w in enumerate(words)
        ]
        call = self._tool_call(kwargs)
        if call is not None:  # like vLLM: the name first, then the arguments in two pieces
            args = json.dumps(call["args"])
            pieces = [
                (call["name"], call["id"], ""),
                (None, None, args[:2]),
                (None, None, args[2:]),
            ]
            chunks = [
                ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        tool_call_chunks=[{"name": n, "id": i, "args": a, "index": 0}],
                    )
                )
                for n, i, a in pieces
            ]
        # Like ChatOpenAI with stream_usage: usage and model name arrive at the end; the
        # continued message counts as input.
        n_in, n_out = 10 + len(prefix.split()), len(text.split())
        usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}
        chunks.append(
            ChatGenerationChunk(
                message=AIMessageChunk(content="", usage_metadata=usage),  # type: ignore[arg-type]
                generation_info={"model_name": self.served, "finish_reason": "stop"},
            )
        )
        if self.cut_after is not None:
            chunks = chunks[: self.cut_after]
        return chunks

    def _cut(self) -> None:
        if self.cut_after is not None:
            raise self.cut_error or connection_error()

    def _stream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        self.calls.append({"api": "stream", "messages": messages, "kwargs": kwargs})
        self._maybe_fail(messages)
        yield from self._chunks(messages, kwargs)
        self._cut()

    async def _astream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.calls.append({"api": "astream", "messages": messages, "kwargs": kwargs})
        self._maybe_fail(messages)
        for chunk in self._chunks(messages, kwargs):
            yield chunk
        self._cut()


def make_models(**fail: Any) -> dict[str, FakeChat]:
    return {
        "big": FakeChat(served="big-served", fail=fail.get("big")),
        "small": FakeChat(served="small-served", reply="\\boxed{5}", fail=fail.get("small")),
    }
