"""The encoder backends by name: which one a call gets, and the encoder id each one gives.

Each backend has its own encoder id, so the embedding cache never mixes their vectors and a
predictor trained with one is refused with another.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor.encoder import DEFAULT_MODEL_NAME

EncoderBackend = Literal["sentence-transformers", "onnx", "onnx-int8", "static"]
BACKENDS: tuple[EncoderBackend, ...] = get_args(EncoderBackend)
DEFAULT_BACKEND: EncoderBackend = "onnx-int8"
"""The encoder backend wherever none is given (docs/encoders.md has the measurements behind it)."""
BACKEND_ENV = "RTR_ENCODER_BACKEND"
THREADS_ENV = "RTR_ENCODER_THREADS"


class EncoderBackendError(ConfigError):
    """An unknown backend name, or an artifact that cannot be built or read."""


def resolve_backend(backend: str | None = None) -> EncoderBackend:
    """The backend to use: ``backend`` if given, else ``$RTR_ENCODER_BACKEND``, else the default.

    Raises:
        EncoderBackendError: The name is not one of :data:`BACKENDS`.
    """
    where = "backend"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
        where = f"${BACKEND_ENV}"
    name = backend.strip().lower()
    for known in BACKENDS:
        if name == known:
            return known
    raise EncoderBackendError(
        f"{where}={backend!r} is not an encoder backend; expected one of {', '.join(BACKENDS)}"
    )


def backend_encoder_id(backend: EncoderBackend, model_name: str = DEFAULT_MODEL_NAME) -> str:
    """The encoder id of ``backend`` over ``model_name`` (``"onnx-int8:all-MiniLM-L6-v2"``)."""
    return f"{backend}:{model_name}"


DEFAULT_ENCODER_ID = backend_encoder_id(DEFAULT_BACKEND)
"""The id of the default encoder: the shipped MiniLM run by :data:`DEFAULT_BACKEND`."""


def backend_of_id(encoder_id: str) -> EncoderBackend | None:
    """The backend whose encoder over the shipped model has this id, or ``None``."""
    for backend in BACKENDS:
        if encoder_id == backend_encoder_id(backend):
            return backend
    return None
