"""The RTR predictor: question encoder, the two-headed network, training and checkpoints."""

from langchain_rtr.predictor.encoder import (
    DEFAULT_ENCODER_ID,
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    default_cache_dir,
    default_encoder,
)
from langchain_rtr.predictor.model import FactorisedHead, RTRNet
from langchain_rtr.predictor.predictor import (
    FORMAT_VERSION,
    CheckpointError,
    Prediction,
    PredictorError,
    RTRPredictor,
    TrainConfig,
    TrainingSummary,
)

__all__ = [
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
    "SentenceTransformerEncoder",
    "TrainConfig",
    "TrainingSummary",
    "default_cache_dir",
    "default_encoder",
]
