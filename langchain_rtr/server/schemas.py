"""What a chat completion request may hold, and how it becomes the engine's input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
)
from pydantic import BaseModel, ConfigDict, Field

from langchain_rtr.errors import ConfigError, QuestionTypeError, QuestionValueError, RTRError
from langchain_rtr.inputs import check_question
from langchain_rtr.knobs import (
    KNOBS,
    Knobs,
    UnknownKnobError,
    knobs_from_text,
    parse_knobs,
    parse_model_string,
)
from langchain_rtr.server.errors import bad_request

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read (413 above): room for long chat histories, not for abuse."""

DEFAULT_MAX_QUESTION_CHARS = 100_000
"""Longest routed question (400 above): about 25k tokens, past any small model's context."""

DEFAULT_BACKEND_DEADLINE_S = 900.0
"""Seconds one backend call may take in all: past the longest answer a small model writes
on a CPU at its token cap, so only a backend that never finishes meets it."""

DEFAULT_HEADER_TIMEOUT_S = 5.0
"""Seconds to send a request's line and headers (the connection is closed after): a client
sends them in one write, so only a stalled or hostile one (slowloris) comes near it."""

RTR_KNOBS: dict[str, str] = {k: v for k, v in KNOBS.items() if k != "policy"}
"""The routing knobs a request may set, in the model name or in the body's `rtr` object."""


class Lenient(BaseModel):
    """OpenAI's objects grow new optional fields often: keep them, type-check the known ones."""

    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(Lenient):
    """One message of a chat completion request."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(Lenient):
    """`stream_options`: only `include_usage` is used."""

    include_usage: bool = False


class RTRKnobsBody(BaseModel):
    """The body's `rtr` object; unknown keys are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    lambda_: float | None = Field(default=None, alias="lambda", ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0)
    floor: float | None = Field(default=None, ge=0.0, le=1.0)
    confidence: float | None = Field(default=None, gt=0.0, lt=1.0)
    budget_rule: Literal["fit", "best_bet"] | None = None
    pairs: list[str] | str | None = None


class ChatCompletionRequest(Lenient):
    """The fields of OpenAI's chat completion request this server reads; others are kept."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None
    rtr: RTRKnobsBody | None = None


def parse_rtr_model(model: str, route_name: str = "rtr") -> dict[str, str] | None:
    """Split `rtr:lambda=0.7,max_tokens=600` into its knobs (raw text values).

    Returns:
        None if `model` does not name the router; else the knobs (empty for plain `rtr`).

    Raises:
        OpenAIError: 400 for a malformed or unknown knob (the message names it).
    """
    try:
        return parse_model_string(model, route_name)
    except UnknownKnobError as exc:
        raise bad_request(str(exc), "model", "unknown_rtr_knob") from None
    except ConfigError as exc:
        raise bad_request(str(exc), "model", "invalid_rtr_knob") from None


def request_knobs(name_knobs: Mapping[str, str], body: RTRKnobsBody | None) -> Knobs:
    """The request's knobs: the model name's, then the body's `rtr` object (the body wins)."""
    try:
        values = knobs_from_text(name_knobs, lambda k: f"RTR knob {k!r}")
        if body is not None:
            given = body.model_dump(by_alias=True, exclude_none=True)
            values.update(given)
        return parse_knobs(values, lambda k: f"RTR knob {k!r}")
    except RTRError as exc:
        raise bad_request(str(exc), "model", "invalid_rtr_knob") from None


def text_of(message: ChatMessage, i: int) -> str:
    """The text of one request message; images and other parts are refused."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(
                f"messages[{i}].content[{j}]: the rtr model routes text; got a "
                f"{part.get('type')!r} part (call a backend model directly for other content)",
                f"messages.{i}.content.{j}",
                "unsupported_content",
            )
        parts.append(part["text"])
    return "".join(parts)


def check_text(text: str, where: str) -> None:
    """Refuse text that is not valid Unicode (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            f"{where}: the text is not valid Unicode (a lone surrogate escape)",
            where.replace("[", ".").replace("]", ""),
            "invalid_encoding",
        ) from None


def to_messages(messages: list[ChatMessage], max_question_chars: int) -> list[BaseMessage]:
    """LangChain messages for the runnable; the last user message is the routed question."""
    out: list[BaseMessage] = []
    last_user = -1
    for i, m in enumerate(messages):
        text = text_of(m, i)
        check_text(text, f"messages[{i}].content")
        if m.role in ("system", "developer"):
            out.append(SystemMessage(content=text))
        elif m.role == "user":
            out.append(HumanMessage(content=text))
            last_user = i
        elif m.role == "assistant" and not m.tool_calls:
            out.append(AIMessage(content=text))
        elif m.role in ("assistant", "tool"):
            out.append(_tool_turn(m, text, i))
        else:
            raise bad_request(
                f"messages[{i}]: {m.role!r} messages (OpenAI's deprecated functions) are not "
                "supported; send tools and tool messages",
                f"messages.{i}.role",
                "unsupported_role",
            )
    if last_user < 0:
        raise bad_request(
            "'messages' has no user message: the rtr model routes the last user message",
            "messages",
            "missing_user_message",
        )
    question = cast("str", out[last_user].content)
    try:  # the one input gate, as every entry point uses it
        check_question(question, where=f"messages[{last_user}]", max_chars=max_question_chars)
    except (QuestionTypeError, QuestionValueError) as exc:
        raise bad_request(str(exc), f"messages.{last_user}.content", exc.code) from None
    return out


def _tool_turn(message: ChatMessage, text: str, i: int) -> BaseMessage:
    """An assistant turn with tool calls, or a tool result, as LangChain's message."""
    if message.role == "tool" and not message.tool_call_id:
        raise bad_request(
            f"messages[{i}]: a 'tool' message needs its 'tool_call_id'",
            f"messages.{i}.tool_call_id",
            "missing_tool_call_id",
        )
    body: dict[str, Any] = {"role": message.role, "content": text}
    if message.tool_calls:
        body["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        body["tool_call_id"] = message.tool_call_id
    try:
        return convert_to_messages([body])[0]
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        raise bad_request(
            f"messages[{i}].tool_calls: not OpenAI tool calls with JSON arguments ({exc})",
            f"messages.{i}.tool_calls",
            "invalid_tool_calls",
        ) from None


def call_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    """The request's sampling fields that go to the chosen model."""
    kwargs: dict[str, Any] = {}
    cap = req.max_completion_tokens or req.max_tokens
    if cap is not None:
        kwargs["max_tokens"] = cap  # the runnable lowers it to the model's cap and the budget
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    if req.stop:
        kwargs["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    # tools (and a response format) restrict the routing and reach the chosen model's own
    # bind_tools (langchain_rtr.dispatch.tools)
    for name in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def refuse_unsupported(req: ChatCompletionRequest) -> None:
    """Refuse request fields the router cannot honour (n > 1, functions, ...)."""
    if req.n not in (None, 1):
        raise bad_request(
            "the rtr model answers with one choice; 'n' must be 1", "n", "unsupported_parameter"
        )
    if req.functions:
        raise bad_request(
            "'functions' is OpenAI's deprecated form of tools; send 'tools'",
            "functions",
            "unsupported_parameter",
        )
    for i, tool in enumerate(req.tools or []):
        function = tool.get("function")
        if tool.get("type") != "function" or not (
            isinstance(function, dict) and isinstance(function.get("name"), str)
        ):
            raise bad_request(
                f"tools[{i}]: expected {{'type': 'function', 'function': {{'name': ..., "
                "'parameters': ...}}}",
                f"tools.{i}",
                "invalid_value",
            )
    if req.tool_choice is not None and not req.tools:
        raise bad_request(
            "'tool_choice' is only allowed when 'tools' are given", "tool_choice", "invalid_value"
        )
    fmt = req.response_format
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind not in RESPONSE_FORMATS:
        raise bad_request(
            f"'response_format.type' must be one of {', '.join(RESPONSE_FORMATS)}, got {kind!r}",
            "response_format.type",
            "invalid_value",
        )
    spec = fmt.get("json_schema")
    if kind == "json_schema" and not (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("schema", {}), dict)
    ):
        raise bad_request(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'",
            "response_format.json_schema",
            "invalid_value",
        )


class ServerSettings(BaseModel):
    """How the endpoint behaves; every field has a safe default.

    Attributes:
        api_key: Clients must send `Authorization: Bearer <api_key>`; None: no check.
        route_name: The model name that selects RTR (`rtr`, `rtr:<knobs>`).
        max_body_bytes: Largest request body; larger ones get 413 before being read.
        max_question_chars: Longest routed question; longer ones get 400.
        body_timeout_s: Seconds a client may take to send its body (408 after).
        header_timeout_s: Seconds a client may take to send a request's line and headers,
            from the connection's opening or the request's first byte; the connection is
            closed after (a keep-alive connection's wait between requests is not counted).
        passthrough: Whether requests naming a backend model go to it directly.
        passthrough_timeout_s: Longest wait for a whole non-streamed pass-through answer (a
            streamed one is bounded by the backend's connect and first-byte timeouts, like
            routed calls, and by ``backend_deadline_s``).
        backend_deadline_s: Longest one backend call may take in all, however it spaces its
            bytes (the first-byte timeout bounds each wait, not the sum): a routed call falls
            back after it, a pass-through stream ends with an error event.
        backend_cooldown_s: How long routed requests keep off a model after its call failed
            as an endpoint (timeout, connection, 5xx), so that they do not all wait on a hung
            backend; then one request tries it again (`langchain_rtr.server.health`). 0: never.
        stats: Serve `GET /rtr/stats` (request and response counts; guarded by the key).
        max_route_batch: Most questions routed in one `route_batch` call under load.
    """

    model_config = ConfigDict(frozen=True)

    api_key: str | None = None
    route_name: str = Field(default="rtr", min_length=1, pattern=r"^[^:,\s]+$")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    max_question_chars: int = Field(default=DEFAULT_MAX_QUESTION_CHARS, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    header_timeout_s: float = Field(default=DEFAULT_HEADER_TIMEOUT_S, gt=0, allow_inf_nan=False)
    passthrough: bool = True
    passthrough_timeout_s: float = Field(default=300.0, gt=0)
    backend_deadline_s: float = Field(default=DEFAULT_BACKEND_DEADLINE_S, gt=0, allow_inf_nan=False)
    backend_cooldown_s: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    stats: bool = True
    max_route_batch: int = Field(default=64, ge=1)

    @classmethod
    def merged(cls, settings: ServerSettings | None, **overrides: Any) -> ServerSettings:
        """``settings`` (or the defaults) with ``overrides`` on top, all validated."""
        base = (settings or cls()).model_dump()
        return cls.model_validate({**base, **overrides})
