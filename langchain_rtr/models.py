"""Chat clients for the candidate models: built from `ModelSpec`s or registered in code.

A spec with a `base_url` becomes a `ChatOpenAI` pointed at an OpenAI-compatible server (vLLM,
llama.cpp, a hosted API). Usage reporting is switched on for streaming too, because with a custom
`base_url` langchain-openai leaves it off, and without it `get_usage_metadata_callback()` would
miss every streamed answer. Retries are kept low: the router's own fallback to the next-best pair
is a better use of a failing endpoint's time than retrying it. Every call streams (``invoke``
too) under a connect and a time-to-first-byte bound (:func:`backend_timeout`), so a backend that
accepts and never answers is a quick endpoint failure rather than a client held for minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from langchain_rtr.errors import ConfigError, UnknownPairError
from langchain_rtr.specs import ModelSpec

if TYPE_CHECKING:
    import openai

DEFAULT_CONNECT_TIMEOUT_S = 3.0
"""Seconds to open a connection to a backend (a spec's ``connect_timeout_s`` overrides it)."""

DEFAULT_FIRST_BYTE_TIMEOUT_S = 10.0
"""Seconds a backend may stay silent: to the first byte of its answer, and between any two
bytes after (a spec's ``first_byte_timeout_s`` overrides it). Clients stream every call, even
``invoke``, so the first byte is the first token, not the end of a long answer."""

WRITE_TIMEOUT_S = 10.0
"""Seconds to send a request (questions are small; a stalled upload is a failed endpoint)."""

DEFAULT_MAX_RETRIES = 1
"""Client-level retries per request; the router falls back across pairs beyond that."""


def chat_model_for(spec: ModelSpec, **overrides: Any) -> BaseChatModel:
    """Build a `ChatOpenAI` client for one model spec.

    Args:
        spec: The model; `base_url` is where its OpenAI-compatible API lives (a spec without one
            talks to api.openai.com with `OPENAI_API_KEY`), `served_name` the name the server
            knows it by.
        **overrides: Any `ChatOpenAI` field (e.g. `timeout`, `max_retries`, `temperature`);
            they win over the defaults derived from the spec (see :func:`backend_timeout`).

    Returns:
        A `ChatOpenAI` with `stream_usage=True`. `max_tokens` is not set on the client: the
        router sets it per call (the spec's cap, lowered by the per-question token budget).
    """
    from langchain_openai import ChatOpenAI

    kwargs: dict[str, Any] = {
        "model": spec.served_name or spec.name,
        "stream_usage": True,
        "streaming": True,  # invoke streams too: the read timeout then bounds time to first token
        "max_retries": DEFAULT_MAX_RETRIES,
        "timeout": backend_timeout(spec),
    }
    if "stream_chunk_timeout" in ChatOpenAI.model_fields:
        # The read timeout above already bounds every wait between bytes; langchain-openai's
        # own per-chunk bound would add a task per streamed chunk.
        kwargs["stream_chunk_timeout"] = None
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
        # Local servers need no key, but the OpenAI client refuses to start without one.
        kwargs["api_key"] = spec.api_key or "EMPTY"
    elif spec.api_key:
        kwargs["api_key"] = spec.api_key
    kwargs.update(overrides)
    return ChatOpenAI(**kwargs)


def backend_timeout(spec: ModelSpec) -> openai.Timeout:
    """The spec's connect and first-byte bounds as the OpenAI client's ``Timeout``.

    ``openai.Timeout`` is the timeout of the HTTP library the SDK is built on (httpx's API); its
    read timeout is the longest wait for the next bytes of a response, so on a streamed
    call it bounds the time to the first token and every stall after it. A hung backend (one that
    accepts and never answers) fails within ``(1 + max_retries) * (connect + first byte)`` as
    an ``openai.APITimeoutError``, which the router treats as an endpoint failure and falls back.
    """
    import openai  # with the client, not when this module is imported

    connect, first_byte = backend_bounds(spec)
    return openai.Timeout(connect=connect, read=first_byte, write=WRITE_TIMEOUT_S, pool=connect)


def backend_bounds(spec: ModelSpec) -> tuple[float, float]:
    """The spec's connect and first-byte bounds in seconds, the defaults where it sets none."""
    return (
        spec.connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S,
        spec.first_byte_timeout_s or DEFAULT_FIRST_BYTE_TIMEOUT_S,
    )


class ModelRegistry(Mapping[str, BaseChatModel]):
    """Model name -> chat model: the clients the router may dispatch to.

    Models come from two places: specs (a models file), whose `ChatOpenAI` clients are built on
    first use so that listing an unreachable server costs nothing, and any `BaseChatModel`
    registered in code (`register`), e.g. a `ChatAnthropic` or a fake in tests. The names are the
    router's model names (`ModelSpec.name`), not the served names.
    """

    def __init__(
        self,
        models: Mapping[str, BaseChatModel] | None = None,
        *,
        specs: Mapping[str, ModelSpec] | None = None,
        client_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """Create a registry.

        Args:
            models: Ready chat models by name.
            specs: Specs to build `ChatOpenAI` clients from, lazily; only those with a
                `base_url` are taken (a spec without one describes a model the predictor knows
                but that is not served here). A name in both `models` and `specs` keeps the
                model given in code.
            client_overrides: `ChatOpenAI` fields applied to every client built from a spec.
        """
        self._models: dict[str, BaseChatModel] = {}
        self._built: set[str] = set()  # the names in _models that were built from a spec
        self._specs: dict[str, ModelSpec] = {}
        self._overrides = dict(client_overrides or {})
        self._lock = threading.Lock()
        for name, spec in (specs or {}).items():
            if spec.base_url:
                self._specs[name] = spec
        for name, model in (models or {}).items():
            self.register(name, model, replace=True)

    @classmethod
    def from_specs(cls, specs: Mapping[str, ModelSpec], **client_overrides: Any) -> ModelRegistry:
        """A registry of `ChatOpenAI` clients for every spec that has a `base_url`."""
        return cls(specs=specs, client_overrides=client_overrides)

    def with_client_overrides(self, **client_overrides: Any) -> ModelRegistry:
        """The same models, with these `ChatOpenAI` fields on every client built from a spec.

        Models registered in code are shared as they are; clients built from specs are built
        again, lazily, with the overrides on top of this registry's own (the server gives them
        its pooled HTTP client this way).
        """
        with self._lock:
            specs = dict(self._specs)  # a spec stays here once its client is built
            code = {n: m for n, m in self._models.items() if n not in self._built}
        return ModelRegistry(
            code, specs=specs, client_overrides={**self._overrides, **client_overrides}
        )

    def register(self, name: str, model: BaseChatModel, *, replace: bool = False) -> None:
        """Register a chat model under a router model name.

        Raises:
            TypeError: `model` is not a `BaseChatModel`.
            ConfigError: `name` is taken and `replace` is False.
        """
        if not isinstance(model, BaseChatModel):
            msg = (
                f"ModelRegistry.register({name!r}): expected a langchain BaseChatModel, "
                f"got {type(model).__name__}"
            )
            raise TypeError(msg)
        with self._lock:
            if not replace and (name in self._models or name in self._specs):
                msg = f"model {name!r} is already registered; pass replace=True to replace it"
                raise ConfigError(msg)
            self._specs.pop(name, None)
            self._built.discard(name)
            self._models[name] = model

    def __getitem__(self, name: str) -> BaseChatModel:
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(name)
            if model is None:
                spec = self._specs.get(name)
                if spec is None:
                    known = ", ".join(sorted(self)) or "none"
                    msg = f"no chat model registered for model {name!r} (registered: {known})"
                    raise UnknownPairError(msg)
                model = chat_model_for(spec, **self._overrides)
                self._models[name] = model
                self._built.add(name)
            return model

    def __contains__(self, name: object) -> bool:
        return name in self._models or name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._models, *self._specs}))

    def __len__(self) -> int:
        return len({*self._models, *self._specs})

    def __repr__(self) -> str:
        return f"ModelRegistry({list(self)!r})"
