"""The bodies the server answers with, in the shapes of the ``openai`` package's types.

Each builder names the type its dict follows: ``openai.types.chat.ChatCompletion``,
``ChatCompletionChunk``, ``openai.types.Model`` (the model list is the page of them that
``client.models.list()`` reads), ``openai.types.completion_usage.CompletionUsage``; the error
body (:meth:`~langchain_rtr.server.errors.OpenAIError.body`) follows
``openai.types.shared.ErrorObject``. RTR's own field, ``rtr``, rides along as an extra field,
which those types keep.

They are dicts written by orjson (:mod:`~langchain_rtr.server.jsonio`) rather than the pydantic
objects themselves: building and dumping an ``openai`` object costs five to six times the dict
(docs/server.md has the measurement), paid on every answer and every streamed chunk. The unit
tests validate every body the app writes against the ``openai`` types and require the
round trip to give the same body back, so a field that drifts from openai's schema fails
there.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, convert_to_openai_messages

from langchain_rtr.dispatch import RTRResult


def completion_body(
    completion_id: str,
    created: int,
    model: str | None,
    message: AIMessage,
    usage: dict[str, int] | None,
    rtr: dict[str, Any],
) -> dict[str, Any]:
    """A whole answer (``openai.types.chat.ChatCompletion``), one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": assistant_message(message),
                "logprobs": None,
                "finish_reason": finish_reason(message),
            }
        ],
        "usage": usage,
        "rtr": rtr,
    }


def chunk_body(
    completion_id: str,
    created: int,
    model: str | None,
    delta: dict[str, Any],
    finish: str | None = None,
    *,
    include_usage: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One streamed event (``openai.types.chat.ChatCompletionChunk``).

    ``include_usage`` (the request's ``stream_options``) adds ``usage: null`` to every chunk but
    the last, as OpenAI does; ``extra`` replaces or adds top-level fields (``choices=[]`` and
    ``usage`` for the usage chunk, ``rtr`` for the last two).
    """
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        body["usage"] = None
    body.update(extra)
    return body


def usage_body(result: RTRResult) -> dict[str, int] | None:
    """The result's usage (``openai.types.completion_usage.CompletionUsage``)."""
    if result.usage is None:
        return None
    return {
        "prompt_tokens": result.usage.input_tokens,
        "completion_tokens": result.usage.output_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def assistant_message(message: AIMessage) -> dict[str, Any]:
    """The answer as OpenAI's assistant message: its text, and its tool calls if any."""
    if not message.tool_calls:
        return {"role": "assistant", "content": message.text}
    body = convert_to_openai_messages(message)
    return {"role": "assistant", "content": message.text or None, "tool_calls": body["tool_calls"]}


def tool_call_deltas(chunk: AIMessageChunk) -> list[dict[str, Any]]:
    """A chunk's tool call pieces as OpenAI's ``delta.tool_calls`` (id and name once, first)."""
    deltas: list[dict[str, Any]] = []
    for i, piece in enumerate(chunk.tool_call_chunks):
        index = piece.get("index")
        delta: dict[str, Any] = {"index": index if index is not None else i}
        if piece.get("id"):
            delta["id"] = piece["id"]
            delta["type"] = "function"
        function = {k: piece[k] for k in ("name", "args") if piece.get(k) is not None}
        if "args" in function:
            function["arguments"] = function.pop("args")
        delta["function"] = function
        deltas.append(delta)
    return deltas


def finish_reason(message: AIMessage) -> str:
    """OpenAI's finish reason of a message (`stop` when the backend gave none)."""
    reason = message.response_metadata.get("finish_reason")
    return reason if isinstance(reason, str) and reason else "stop"


def model_card(name: str, created: int, owner: str) -> dict[str, Any]:
    """One entry of ``GET /v1/models`` (``openai.types.Model``)."""
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``: the page of :func:`model_card` entries the openai client reads."""
    return {"object": "list", "data": cards}
