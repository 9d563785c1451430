"""An OpenAI-compatible HTTP endpoint for RTR (see `langchain_rtr.server.app`)."""

from langchain_rtr.server.app import build_runnable, create_app
from langchain_rtr.server.errors import OpenAIError
from langchain_rtr.server.launch import KEEP_ALIVE_S, app_from_env, run_server
from langchain_rtr.server.schemas import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUESTION_CHARS,
    RTR_KNOBS,
    ChatCompletionRequest,
    ServerSettings,
    parse_rtr_model,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_QUESTION_CHARS",
    "KEEP_ALIVE_S",
    "RTR_KNOBS",
    "ChatCompletionRequest",
    "OpenAIError",
    "ServerSettings",
    "app_from_env",
    "build_runnable",
    "create_app",
    "parse_rtr_model",
    "run_server",
]
