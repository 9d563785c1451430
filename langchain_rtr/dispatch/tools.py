"""Tools and structured output through the router: which pairs can carry them, and the binding.

A call carries tools when its kwargs have ``tools`` (OpenAI-format dicts, what
`RTRChatModel.bind_tools` and the server's ``tools`` field give), and a structured output format
when they have a ``response_format`` other than text. Either one restricts the call to the pairs
whose strategy declares ``supports_tools`` (its prompt leaves the answer's form to the caller and
its answer is the model's message: direct, thinking on/off); tools also need a model whose spec
says ``tools: true`` (its server parses tool calls). The tools reach the chosen model through
its own ``bind_tools``, so each chat model formats them (and ``tool_choice``) its own way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableBinding

from langchain_rtr.errors import ConfigError

Pair = tuple[str, str]

TOOL_OPTIONS = ("tool_choice", "parallel_tool_calls", "strict")
"""Call kwargs that go to the chosen model's ``bind_tools`` with the tools."""


class NoCapablePairError(ConfigError):
    """A call has tools or a structured output format and no allowed pair can carry it."""


def carries_tools(call_kwargs: Mapping[str, Any]) -> bool:
    """Whether the call has tools bound."""
    return bool(call_kwargs.get("tools"))


def carries_format(call_kwargs: Mapping[str, Any]) -> bool:
    """Whether the call asks for a structured output format (JSON schema or JSON object)."""
    fmt = call_kwargs.get("response_format")
    if fmt is None:
        return False
    return not (isinstance(fmt, Mapping) and fmt.get("type") in (None, "text"))


def capable_pairs(
    pairs: Iterable[Pair],
    strategies: Mapping[str, Any],
    specs: Mapping[str, Any],
    call_kwargs: Mapping[str, Any],
) -> frozenset[Pair] | None:
    """The pairs that can carry the call's tools or format; None when it has neither.

    Raises:
        NoCapablePairError: The call needs a capability and no pair of ``pairs`` has it; the
            message says which strategies and models have it.
    """
    tools, fmt = carries_tools(call_kwargs), carries_format(call_kwargs)
    if not (tools or fmt):
        return None
    pairs = sorted(pairs)
    able_strategies = {s for _, s in pairs if getattr(strategies[s], "supports_tools", False)}
    able_models = {m for m, _ in pairs if getattr(specs.get(m), "tools", False)}
    out = frozenset(
        (m, s) for m, s in pairs if s in able_strategies and (not tools or m in able_models)
    )
    if not out:
        need = "tools" if tools else "a structured output format (response_format)"
        parts = [
            f"the call has {need} and none of the allowed pairs {pairs} can carry it: a pair "
            "needs a strategy with supports_tools (direct, think, no_think are built in; "
            f"allowed here: {sorted(able_strategies) or 'none'})"
        ]
        if tools:
            parts.append(
                " and a model declared `tools: true` in the models file, served with tool "
                f"calling (vLLM --enable-auto-tool-choice); allowed here: "
                f"{sorted(able_models) or 'none'}"
            )
        raise NoCapablePairError("".join(parts))
    return out


def bind_call_tools(
    model: BaseChatModel, kwargs: dict[str, Any]
) -> tuple[BaseChatModel, dict[str, Any]]:
    """The model and kwargs of one attempt once the call's tools are bound by ``model`` itself.

    Raises:
        ConfigError: The model's ``bind_tools`` does not give a plain binding of it.
    """
    if not carries_tools(kwargs):
        return model, kwargs
    rest = dict(kwargs)
    tools = rest.pop("tools")
    options = {k: v for k in TOOL_OPTIONS if (v := rest.pop(k, None)) is not None}
    bound = model.bind_tools(tools, **options)
    if not isinstance(bound, RunnableBinding) or not isinstance(bound.bound, BaseChatModel):
        msg = (
            f"{type(model).__name__}.bind_tools gave a {type(bound).__name__}, not a binding "
            "of the chat model; the router cannot pass tools to it"
        )
        raise ConfigError(msg)
    return bound.bound, {**rest, **bound.kwargs}
