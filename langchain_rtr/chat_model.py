"""`RTRChatModel`: a chat model that routes, so RTR drops into any chain or agent.

Each call routes the text of the last human message (the other messages are kept as context,
as in `RTRRunnable`), renders it with the chosen strategy, and returns the chosen model's
`AIMessage`: its content (or, with `output="answer"`, the parsed answer), its `usage_metadata`
and `response_metadata["model_name"]` as the backend reported them, and the decision under
`response_metadata["rtr"]` (also dispatched as the custom event `"rtr_decision"`).

Why the chosen model is called through its `_generate`/`_stream` and not `invoke`: this object
*is* the chat model run. Calling `invoke` inside it would start a second, nested chat model run
with the same usage, and `get_usage_metadata_callback()` (or any tracer summing tokens) would
count every answer twice. The cost: the inner model's own callbacks, cache and rate limiter are
not used; set them on the `RTRChatModel`.

Routing knobs per call: the `RTRRunnable` keys (`rtr_lambda`, `rtr_max_tokens`,
`rtr_confidence`, `rtr_budget_rule`, `rtr_floor`, `rtr_allowed_pairs`, `rtr_policy`) from
`config["configurable"]`, or as keyword arguments (`chat.invoke(msgs, rtr_lambda=0.5)`,
`chat.bind(rtr_max_tokens=256)`), parsed by the one knob parser (`langchain_rtr.knobs`).
Other keyword arguments (`temperature`, `max_tokens`, `stop`) go to the chosen model;
`max_tokens` must be a positive int and is still capped.

Capabilities: text in, text out, streaming, tool calling, structured output. `bind_tools`
(with `tool_choice`) routes among the pairs whose strategy carries tools (`supports_tools`:
direct, think, no_think) on models declared `tools: true` in the models file; the chosen model
binds the tools itself. `with_structured_output` (Pydantic, TypedDict or JSON schema; `method`
`json_schema` (default: the server's JSON-schema structured output, vLLM's guided decoding),
`function_calling` or `json_mode`, as in ChatOpenAI) routes among the pairs whose strategy
carries tools. CoT, CoD and PAL shape and parse a free-text answer, so such calls never go
there; a call nothing can carry raises `NoCapablePairError`. A turn after tool results is
routed on the last human message, as any other: tool calls and tool messages are context.
With `output="answer"`, calls with tools or a response format still return the message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal, TypeVar, cast
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_function, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict

from langchain_rtr.dispatch import AllPairsFailedError, Attempt, CallRequest, RTRResult, routing_row
from langchain_rtr.dispatch.tools import carries_format, carries_tools
from langchain_rtr.runnable import CONFIG_KEYS, DECISION_EVENT, RTRRunnable

__all__ = ["RTRChatModel"]


def _merged_message(result: ChatResult) -> AIMessage:
    """The first generation's message with generation info and llm_output in its metadata.

    `BaseChatModel.invoke` does this merge; calling `_generate` directly, we do it here, so
    `response_metadata["model_name"]` (in ChatOpenAI's llm_output) is on the message.
    """
    gen = result.generations[0]
    message = cast("AIMessage", gen.message)
    meta = {**(result.llm_output or {}), **(gen.generation_info or {}), **message.response_metadata}
    return message.model_copy(update={"response_metadata": meta})


def _as_chunk(message: AIMessage) -> AIMessageChunk:
    return AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=message.usage_metadata,
        id=message.id,
    )


def _chunk_message(chunk: ChatGenerationChunk) -> AIMessageChunk:
    message = cast("AIMessageChunk", chunk.message)
    if chunk.generation_info:
        message.response_metadata = {**chunk.generation_info, **message.response_metadata}
    return message


_Manager = TypeVar("_Manager", CallbackManager, AsyncCallbackManager)


def _event_target(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    manager: type[_Manager],
) -> tuple[_Manager, UUID] | None:
    """Where a custom event of this chat model run goes (None: no handler listens).

    The run's own handlers, with the run as the event's run, so `astream_events` shows the
    decision on the chat model run itself.
    """
    if run_manager is None or not run_manager.handlers:
        return None
    target = manager(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.parent_run_id,
        tags=run_manager.tags,
        metadata=run_manager.metadata,
    )
    return target, run_manager.run_id


def _emit(run_manager: CallbackManagerForLLMRun | None, decision: Any) -> None:
    """Dispatch the decision as a custom event of this chat model run."""
    if target := _event_target(run_manager, CallbackManager):
        data = routing_row(decision).model_dump(mode="json")
        target[0].on_custom_event(DECISION_EVENT, data, run_id=target[1])


async def _aemit(run_manager: AsyncCallbackManagerForLLMRun | None, decision: Any) -> None:
    if target := _event_target(run_manager, AsyncCallbackManager):
        data = routing_row(decision).model_dump(mode="json")
        await target[0].on_custom_event(DECISION_EVENT, data, run_id=target[1])


def _has_stream(model: BaseChatModel) -> bool:
    return type(model)._stream is not BaseChatModel._stream


def _has_astream(model: BaseChatModel) -> bool:
    return _has_stream(model) or type(model)._astream is not BaseChatModel._astream


def _split_stop(kwargs: dict[str, Any]) -> tuple[list[str] | None, dict[str, Any]]:
    rest = dict(kwargs)
    return rest.pop("stop", None), rest


def _streams_by_default(model: BaseChatModel) -> bool:
    """Whether the model must be called through its stream, as LangChain's ``invoke`` does.

    Every `chat_model_for` model has ``streaming=True`` (so the read timeout bounds the time
    to the first token); its ``_generate`` alone would get a stream back.
    """
    return getattr(model, "streaming", None) is True and _has_stream(model)


def _call(attempt: Attempt) -> AIMessage:
    stop, kwargs = _split_stop(attempt.kwargs)
    model, messages = attempt.model, attempt.messages
    if _streams_by_default(model):
        return _merged_message(generate_from_stream(model._stream(messages, stop=stop, **kwargs)))
    return _merged_message(model._generate(messages, stop=stop, **kwargs))


async def _acall(attempt: Attempt) -> AIMessage:
    stop, kwargs = _split_stop(attempt.kwargs)
    model, messages = attempt.model, attempt.messages
    if _streams_by_default(model) and _has_astream(model):
        stream = model._astream(messages, stop=stop, **kwargs)
        return _merged_message(await agenerate_from_stream(stream))
    return _merged_message(await model._agenerate(messages, stop=stop, **kwargs))


def _stream_call(attempt: Attempt) -> Iterator[AIMessageChunk]:
    if not _has_stream(attempt.model):
        yield _as_chunk(_call(attempt))
        return
    stop, kwargs = _split_stop(attempt.kwargs)
    for chunk in attempt.model._stream(attempt.messages, stop=stop, **kwargs):
        yield _chunk_message(chunk)


async def _astream_call(attempt: Attempt) -> AsyncIterator[AIMessageChunk]:
    if not _has_astream(attempt.model):
        yield _as_chunk(await _acall(attempt))
        return
    stop, kwargs = _split_stop(attempt.kwargs)
    async for chunk in attempt.model._astream(attempt.messages, stop=stop, **kwargs):
        yield _chunk_message(chunk)


def _shaped(kwargs: Mapping[str, Any]) -> bool:
    """Whether the call has tools or a structured output format (its message is the answer)."""
    return carries_tools(kwargs) or carries_format(kwargs)


StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


def _with_parser(
    llm: Runnable[LanguageModelInput, Any], parser: Runnable[Any, Any], include_raw: bool
) -> Runnable[LanguageModelInput, Any]:
    """``llm | parser``, or with ``include_raw`` the ``raw``/``parsed``/``parsing_error`` dict.

    As LangChain's chat models return it: a parse failure is reported, not raised.
    """
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


class RTRChatModel(BaseChatModel):
    """A `BaseChatModel` that routes every call through an `RTRRunnable`.

    Example:
        ```python
        chat = RTRChatModel(runnable=RTRRunnable(router=router))
        msg = chat.invoke("What is 17 * 23?")
        msg.response_metadata["model_name"], msg.response_metadata["rtr"]["strategy"]
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runnable: RTRRunnable
    """Does the routing, the fallback and the parsing."""
    output: Literal["message", "answer"] = "message"
    """`"message"`: the chosen model's content as is; `"answer"`: the strategy's parsed answer
    (PAL: the program's result), for chains that want only the answer."""

    @property
    def _llm_type(self) -> str:
        return "rtr"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"pairs": sorted(self.runnable.servable_pairs), "output": self.output}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # The routed model is only known after routing; it is in response_metadata.
        params = LangSmithParams(
            ls_provider="rtr", ls_model_name=str(kwargs.get("model", "rtr")), ls_model_type="chat"
        )
        if stop:
            params["ls_stop"] = stop
        return params

    # -- knobs from config["configurable"] ---------------------------------------------------
    @staticmethod
    def _with_knobs(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        configurable = (config or {}).get("configurable") or {}
        knobs = {k: configurable[k] for k in CONFIG_KEYS if k in configurable}
        return {**knobs, **kwargs}

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """`BaseChatModel.invoke`, reading the routing knobs from `config["configurable"]`."""
        return super().invoke(input, config, stop=stop, **self._with_knobs(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Async `invoke`."""
        return await super().ainvoke(input, config, stop=stop, **self._with_knobs(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """`BaseChatModel.stream`, reading the routing knobs from `config["configurable"]`."""
        yield from super().stream(input, config, stop=stop, **self._with_knobs(config, kwargs))

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async `stream`."""
        async for chunk in super().astream(
            input, config, stop=stop, **self._with_knobs(config, kwargs)
        ):
            yield chunk

    # -- tools and structured output ---------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI format); calls then route among the pairs that can carry them.

        Args:
            tools: Tools, functions, Pydantic classes or OpenAI tool dicts.
            tool_choice: As LangChain's chat models take it: a tool's name, ``"any"`` (or
                ``"required"``, ``True``) to force a call, ``"auto"``, ``"none"``; the chosen
                model's own ``bind_tools`` translates it.
            strict: OpenAI's strict schema flag, passed on.
            parallel_tool_calls: Whether several calls may come in one turn, passed on.
            **kwargs: More call kwargs (bound as they are).

        Raises:
            NoCapablePairError: No usable pair can carry tools (no model declares
                ``tools: true``, or no strategy supports tools).
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        options = {
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
            "strict": strict,
        }
        bound = {"tools": formatted, **{k: v for k, v in options.items() if v is not None}}
        self.runnable.engine.capable(bound)  # fail at bind time, not on the first call
        return self.bind(**bound, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: StructuredMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable that routes and returns ``schema``'s object (a dict for a dict schema).

        Args:
            schema: A Pydantic class, a TypedDict, or a JSON schema / OpenAI function dict
                (``json_mode`` may go without: it then returns whatever JSON object came).
            method: ``json_schema``: the server's JSON-schema structured output
                (``response_format``; vLLM's guided decoding, so even a small model answers
                valid JSON); ``function_calling``: a forced call of a tool with the schema
                (needs a tool model); ``json_mode``: ``response_format`` ``json_object``, the
                schema is only used to parse.
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            strict: OpenAI's strict schema flag, passed on.
            **kwargs: Not accepted (a typo must not be ignored).

        Raises:
            ValueError: An unknown method or argument, or no schema where one is needed.
            NoCapablePairError: No usable pair can carry it.
        """
        if kwargs:
            raise ValueError(f"with_structured_output: unsupported arguments {sorted(kwargs)}")
        if method not in ("json_schema", "function_calling", "json_mode"):
            msg = (
                "with_structured_output: method must be 'json_schema', 'function_calling' or "
                f"'json_mode', got {method!r}"
            )
            raise ValueError(msg)
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output: method={method!r} needs a schema")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace: dict[str, Any] = {}
        if schema is not None:
            fmt = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
            trace["ls_structured_output_format"] = fmt
        parser: Runnable[Any, Any]
        if method == "function_calling":
            assert schema is not None
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, strict=strict, **trace)
            parser = (
                PydanticToolsParser(tools=[cast("type[BaseModel]", schema)], first_tool_only=True)
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
            return _with_parser(llm, parser, include_raw)
        if method == "json_schema":
            assert schema is not None
            function = convert_to_openai_function(schema, strict=strict)
            spec = {"name": function["name"], "schema": function["parameters"]}
            if function.get("description"):
                spec["description"] = function["description"]
            if strict is not None:
                spec["strict"] = strict
            response_format: dict[str, Any] = {"type": "json_schema", "json_schema": spec}
        else:
            response_format = {"type": "json_object"}
        self.runnable.engine.capable({"response_format": response_format})
        llm = self.bind(response_format=response_format, **trace)
        parser = (
            PydanticOutputParser(pydantic_object=cast("type[BaseModel]", schema))
            if pydantic
            else JsonOutputParser()
        )
        return _with_parser(llm, parser, include_raw)

    # -- the routing -------------------------------------------------------------------------
    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> CallRequest:
        # Knobs set on an enclosing chain reach us through the config context.
        ambient = ensure_config().get("configurable") or {}
        knobs = {k: ambient[k] for k in CONFIG_KEYS if k in ambient}
        call_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in CONFIG_KEYS:
                knobs[key] = value
            else:
                call_kwargs[key] = value
        if stop:
            call_kwargs["stop"] = stop
        return self.runnable.request(messages, knobs, call_kwargs)

    def _message(self, result: RTRResult, req: CallRequest) -> AIMessage:
        if result.message is None:
            raise AllPairsFailedError(result) from result.exception
        info = {
            **routing_row(result.decision).model_dump(mode="json"),
            "answered_by": [result.model, result.strategy],
            "answer": result.answer,
            "parse_error": result.parse_error,
            "max_tokens": result.max_tokens,
            "cost": result.cost,
            "fallbacks": [f.model_dump() for f in result.fallbacks],
        }
        update: dict[str, Any] = {
            "response_metadata": {**result.message.response_metadata, "rtr": info}
        }
        if self.output == "answer" and not _shaped(req.call_kwargs):  # else the message is it
            update["content"] = result.answer or ""
        return result.message.model_copy(update=update)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        req = self._request(messages, stop, kwargs)
        decision = self.runnable.engine.route(req)
        _emit(run_manager, decision)
        return self._chat_result(self.runnable.engine.execute(req, decision, _call), req)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        req = self._request(messages, stop, kwargs)
        decision = await self.runnable.aroute(req, ensure_config())
        await _aemit(run_manager, decision)
        result = await self.runnable.engine.aexecute(req, decision, _acall)
        return self._chat_result(result, req)

    def _chat_result(self, result: RTRResult, req: CallRequest) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(result, req))])

    def _final_chunk(self, result: RTRResult, req: CallRequest) -> ChatGenerationChunk:
        message = self._message(result, req)  # raises when nothing answered
        chunk = AIMessageChunk(
            content="", response_metadata={"rtr": message.response_metadata["rtr"]}
        )
        return ChatGenerationChunk(message=chunk)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.output == "answer" and not _shaped(kwargs):  # parsed once the reply is whole
            result = self._generate(messages, stop, run_manager, **kwargs)
            yield ChatGenerationChunk(
                message=_as_chunk(cast("AIMessage", result.generations[0].message))
            )
            return
        rtr = self.runnable
        req = self._request(messages, stop, kwargs)
        decision = rtr.engine.route(req)
        _emit(run_manager, decision)
        for item in rtr.engine.execute_stream(req, decision, _stream_call):
            if isinstance(item, RTRResult):
                yield self._final_chunk(item, req)
            else:  # BaseChatModel.stream reports the token to the callbacks
                yield ChatGenerationChunk(message=item)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.output == "answer" and not _shaped(kwargs):
            result = await self._agenerate(messages, stop, run_manager, **kwargs)
            yield ChatGenerationChunk(
                message=_as_chunk(cast("AIMessage", result.generations[0].message))
            )
            return
        rtr = self.runnable
        req = self._request(messages, stop, kwargs)
        decision = await rtr.aroute(req, ensure_config())
        await _aemit(run_manager, decision)
        async for item in rtr.engine.aexecute_stream(req, decision, _astream_call):
            if isinstance(item, RTRResult):
                yield self._final_chunk(item, req)
            else:
                yield ChatGenerationChunk(message=item)
