"""The RTR predictor: question encoder, the two-headed network, training and checkpoints.

Importing this package does not import torch: the network classes (``RTRNet``,
``FactorisedHead``) load on first access, and inference runs in numpy.
"""

from typing import TYPE_CHECKING, Any

from langchain_rtr.predictor.backends import DEFAULT_BACKEND, DEFAULT_ENCODER_ID
from langchain_rtr.predictor.encoder import (
    SENTENCE_TRANSFORMERS_ID,
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    default_cache_dir,
    default_encoder,
)

if TYPE_CHECKING:
    from langchain_rtr.predictor.model import FactorisedHead, RTRNet
from langchain_rtr.predictor.checkpoint import FORMAT_VERSION
from langchain_rtr.predictor.predictor import RTRPredictor
from langchain_rtr.predictor.types import (
    CheckpointError,
    Prediction,
    PredictorError,
    TrainConfig,
    TrainingSummary,
)

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_ENCODER_ID",
    "FORMAT_VERSION",
    "CachedEncoder",
    "CheckpointError",
    "FactorisedHead",
    "Prediction",
    "PredictorError",
    "QuestionEncoder",
    "RTRNet",
    "RTRPredictor",
    "SENTENCE_TRANSFORMERS_ID",
    "SentenceTransformerEncoder",
    "TrainConfig",
    "TrainingSummary",
    "default_cache_dir",
    "default_encoder",
]


def __getattr__(name: str) -> Any:
    if name in ("FactorisedHead", "RTRNet"):
        from langchain_rtr.predictor import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
