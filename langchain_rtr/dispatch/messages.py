"""Input shapes of a routed call: where the question is, and how the prompt is put together."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union, cast

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
    message_chunk_to_message,
)
from langchain_core.prompt_values import PromptValue

from langchain_rtr.errors import ConfigError, KnobTypeError, QuestionTypeError
from langchain_rtr.inputs import check_question

RTRInput = Union[str, Mapping[str, Any], Sequence[BaseMessage], PromptValue]  # noqa: UP007
"""A question string, `{"question": ...}`, a list of messages, or a chat prompt value."""


class InputError(ConfigError):
    """A routed call's input is unusable (no question, no human message, ...)."""


class InputTypeError(KnobTypeError):
    """A routed call's input has a type that is not one of `RTRInput`'s."""


def split_input(input: RTRInput) -> tuple[str, list[BaseMessage], list[BaseMessage]]:
    """Question text plus the messages before and after it.

    The text of the last human message is the question (routing sees only it); the other
    messages are kept as context, in their places.
    """
    if isinstance(input, str):
        question = input
        before: list[BaseMessage] = []
        after: list[BaseMessage] = []
    elif isinstance(input, Mapping):
        value = input.get("question")
        if not isinstance(value, str):
            msg = (
                "RTRRunnable input: a dict needs a 'question' string, got keys "
                f"{sorted(map(str, input))}"
            )
            raise InputError(msg)
        question, before, after = value, [], []
    elif isinstance(input, PromptValue | Sequence):
        try:
            messages = (
                input.to_messages()
                if isinstance(input, PromptValue)
                else convert_to_messages(input)
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            msg = f"RTRRunnable input: not a list of messages: {exc}"
            raise InputError(msg) from exc
        human = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        if not human:
            msg = "RTRRunnable input: the messages contain no human message to route"
            raise InputError(msg)
        i = human[-1]
        _refuse_non_text(messages[i].content, i)
        question, before, after = messages[i].text, messages[:i], messages[i + 1 :]
    else:
        msg = (
            "RTRRunnable input: expected a question string, {'question': str}, a list of "
            f"messages or a PromptValue, got {type(input).__name__}"
        )
        raise InputTypeError(msg)
    check_question(question, where="RTRRunnable input question")
    return question, before, after


def _refuse_non_text(content: str | list[Any], index: int) -> None:
    """The router routes text: an image (or any other part) in the question is refused."""
    if isinstance(content, str):
        return
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if not isinstance(part, str) and kind != "text":
            raise QuestionTypeError(
                f"RTRRunnable input: messages[{index}].content[{j}] is a "
                f"{kind or type(part).__name__!r} part; the router routes text only (send other "
                "content to a model directly)",
                "unsupported_content",
            )


def merge_system(messages: Sequence[BaseMessage]) -> SystemMessage | None:
    """All the system messages' texts as one system message (None when there are none)."""
    systems = [m for m in messages if isinstance(m, SystemMessage)]
    if len(systems) <= 1:
        return systems[0] if systems else None
    return SystemMessage(content="\n\n".join(m.text for m in systems if m.text))


def merge_messages(
    before: list[BaseMessage], rendered: list[BaseMessage], after: list[BaseMessage]
) -> list[BaseMessage]:
    """The prompt: the context around the strategy's rendering, one leading system message.

    All system messages (the context's first, then the strategy's) are merged into one,
    which every chat template accepts.
    """
    everything = [*before, *rendered, *after]
    rest = [m for m in everything if not isinstance(m, SystemMessage)]
    system = merge_system(everything)
    return rest if system is None else [system, *rest]


def join_chunks(chunks: list[AIMessageChunk]) -> AIMessage:
    """Streamed chunks as one message."""
    if not chunks:
        return AIMessage(content="")
    total = chunks[0] + chunks[1:] if len(chunks) > 1 else chunks[0]
    return cast("AIMessage", message_chunk_to_message(total))


def count_tokens(chunks: Sequence[AIMessageChunk]) -> int:
    """Tokens in streamed chunks: vLLM sends one token per content chunk."""
    return sum(1 for c in chunks if c.text)


def last_item(items: Iterator[Any]) -> Any:
    """The last item of a stream of inputs (a runnable's stream carries one)."""
    value = None
    for value in items:  # noqa: B007
        pass
    return value
