"""Names shared by every part of routing.

Pairs, cost units, statuses, and what routing needs from the predictor: protocols, so that
routing never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Pair = tuple[str, str]
CostUnit = Literal["usd", "tokens"]
PairSelector = Pair | str
"""A pair ``(model, strategy)``, or a bare model name meaning every strategy of that model."""

CHARS_PER_TOKEN = 4.0
"""Characters per input token used to estimate a question's prompt length."""

PROMPT_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around one user turn (role markers, BOS/EOS)."""

DEFAULT_LAMBDA = 0.9
"""The trade-off used when no policy is given (see the module docstring for its meaning)."""

ROUTER_FORMAT = "langchain-rtr/router"
ROUTER_FORMAT_VERSION = 1

# Decision statuses.
STATUS_OK = "ok"
STATUS_NO_PAIR_FITS = "no_pair_fits"
"""TokenBudget: no allowed pair's predicted tokens fit the budget; no pair was chosen."""
STATUS_OVER_BUDGET = "over_budget"
"""TokenBudget with ``on_no_fit="fewest_tokens"``: nothing fits, the shortest pair was chosen."""
STATUS_NO_ALLOWED_PAIR = "no_allowed_pair"
"""The allowed mask of that question selects no pair (only reachable through raw arrays)."""
STATUS_BELOW_FLOOR = "below_floor"
"""AccuracyFloor: no allowed pair reaches the floor; the most accurate one was chosen."""


class PredictionLike(Protocol):
    """The predictor's output for ``n`` questions over its ``P`` pairs."""

    @property
    def correctness(self) -> np.ndarray:
        """float32 ``[n, P]``: probability that the pair answers correctly."""
        ...

    @property
    def output_tokens(self) -> np.ndarray | None:
        """float32 ``[n, P]`` predicted output tokens, or ``None`` without a length head."""
        ...


class EncoderLike(Protocol):
    """The question encoder the predictor was trained with."""

    @property
    def id(self) -> str:
        """A stable identity of the vectors."""
        ...

    @property
    def dim(self) -> int:
        """The vector size."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]``."""
        ...


class PredictorLike(Protocol):
    """What :class:`RTRRouter` uses of ``langchain_rtr.predictor.RTRPredictor``."""

    @property
    def pairs(self) -> list[Pair]:
        """The (model, strategy) column order of every prediction."""
        ...

    @property
    def encoder(self) -> EncoderLike:
        """The question encoder."""
        ...

    def predict(self, questions: Sequence[str]) -> PredictionLike:
        """Predict for question texts."""
        ...

    def predict_embeddings(
        self, embeddings: np.ndarray, questions: Sequence[str] | None = None
    ) -> PredictionLike:
        """Predict for already encoded questions (with their texts, which some predictors read)."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint into ``directory``."""
        ...
