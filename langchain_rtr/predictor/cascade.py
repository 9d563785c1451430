"""A cascade of two predictors: a fast encoder for most questions, a full one for the doubtful.

The static encoder routes a question in well under a millisecond but loses some routing quality
(docs/encoders.md). Its own predictions say where: a question whose predicted correctness is
near 0.5 for many pairs is one the fast predictor cannot tell apart. The cascade scores every
question with the fast predictor and re-scores only the least certain share with a predictor
trained on a full encoder (int8 MiniLM, say), so most questions pay the fast price.

Uncertainty is the mean Bernoulli variance ``p(1 - p)`` of a question's predicted correctness
over pairs; the threshold is a quantile of it on the training questions, fixed when the cascade
is built and saved with it, so a question's route never depends on its batch-mates.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr.inputs import check_questions
from langchain_rtr.jsonfile import read_json_object
from langchain_rtr.predictor.checkpoint import atomic_write
from langchain_rtr.predictor.digests import record_digests, verify_digests
from langchain_rtr.predictor.encoder import QuestionEncoder
from langchain_rtr.predictor.predictor import RTRPredictor
from langchain_rtr.predictor.types import CheckpointError, Pair, Prediction, PredictorError

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "langchain-rtr-cascade"
CASCADE_VERSION = 1
FAST_DIR = "fast"
FULL_DIR = "full"


def uncertainty(correctness: np.ndarray) -> np.ndarray:
    """Mean Bernoulli variance ``p(1 - p)`` of each question's predicted correctness over pairs."""
    p = np.asarray(correctness, dtype=np.float64)
    return np.asarray(np.mean(p * (1.0 - p), axis=1))


@dataclass(frozen=True)
class CascadeStats:
    """How many questions a cascade has scored, and how many it sent to the full predictor."""

    questions: int
    escalated: int


class CascadePredictor:
    """Scores with ``fast``; questions above ``threshold`` uncertainty are re-scored by ``full``.

    Both predictors must cover the same pairs in the same order and agree on having a length
    head. Build one with :meth:`fit` (sets the threshold from a share of training questions) or
    :meth:`load`.

    Args:
        fast: The predictor on the fast encoder; its encoder is the cascade's :attr:`encoder`.
        full: The predictor on the full encoder.
        threshold: Questions whose uncertainty exceeds it go to ``full``.
        share: The share of training questions above ``threshold`` (recorded, for reading).
    """

    def __init__(
        self, fast: RTRPredictor, full: RTRPredictor, *, threshold: float, share: float
    ) -> None:
        if list(fast.pairs) != list(full.pairs):
            raise PredictorError(
                f"a cascade needs the same pairs in both predictors; fast has {fast.pairs}, "
                f"full has {full.pairs}"
            )
        if fast.has_length_head != full.has_length_head:
            raise PredictorError(
                "a cascade needs both predictors with a length head or both without one"
            )
        if math.isnan(threshold):
            raise PredictorError("a cascade's threshold must be a number, got NaN")
        self.fast = fast
        self.full = full
        self.threshold = float(threshold)
        self.share = float(share)
        self._questions = 0
        self._escalated = 0
        self._count_lock = threading.Lock()

    @classmethod
    def fit(
        cls,
        fast: RTRPredictor,
        full: RTRPredictor,
        questions: Sequence[str],
        *,
        share: float = 0.25,
    ) -> CascadePredictor:
        """A cascade that sends ``share`` of ``questions`` (the training ones) to ``full``.

        Raises:
            PredictorError: ``share`` outside [0, 1] or no questions to set the threshold on.
        """
        if not 0.0 <= share <= 1.0:
            raise PredictorError(f"cascade share must be in [0, 1], got {share}")
        if share == 0.0:
            return cls(fast, full, threshold=math.inf, share=0.0)
        if share == 1.0:
            return cls(fast, full, threshold=-math.inf, share=1.0)
        if not len(questions):
            raise PredictorError("a cascade's threshold is set on training questions; none given")
        u = uncertainty(fast.predict(list(questions)).correctness)
        return cls(fast, full, threshold=float(np.quantile(u, 1.0 - share)), share=share)

    # The surface RTRRouter uses (routing.PredictorLike).

    @property
    def pairs(self) -> list[Pair]:
        """The (model, strategy) columns of every prediction."""
        return self.fast.pairs

    @property
    def encoder(self) -> QuestionEncoder:
        """The fast encoder: what evaluation's KNN baseline and the embedding cache see."""
        return self.fast.encoder

    @property
    def has_length_head(self) -> bool:
        """Whether output lengths are predicted."""
        return self.fast.has_length_head

    @property
    def stats(self) -> CascadeStats:
        """Questions scored since this cascade was built or loaded, and how many went on."""
        return CascadeStats(self._questions, self._escalated)

    def predict(self, questions: Sequence[str]) -> Prediction:
        """Score ``questions`` with the fast predictor, the doubtful ones again with the full."""
        questions = check_questions(questions, where="CascadePredictor.predict questions")
        return self.predict_embeddings(self.fast.encoder.encode(questions), questions)

    def predict_embeddings(
        self, embeddings: np.ndarray, questions: Sequence[str] | None = None
    ) -> Prediction:
        """Score fast-encoder ``embeddings``; the doubtful rows are re-encoded from ``questions``.

        Raises:
            PredictorError: Some rows need the full predictor and ``questions`` is missing or of
                another length (the full encoder needs the texts).
        """
        quick = self.fast.predict_embeddings(embeddings, questions)
        n = quick.correctness.shape[0]
        if questions is not None and len(questions) != n:
            raise PredictorError(f"{len(questions)} questions for {n} embeddings")
        hard = np.flatnonzero(uncertainty(quick.correctness) > self.threshold)
        if hard.size and questions is None:
            raise PredictorError(
                f"{hard.size} question(s) need the full predictor, which encodes texts: pass "
                f"the {n} questions with the embeddings"
            )
        with self._count_lock:
            self._questions += n
            self._escalated += int(hard.size)
        if hard.size == 0:
            return quick
        assert questions is not None
        full = self.full.predict([questions[int(i)] for i in hard])
        correctness = quick.correctness.copy()
        correctness[hard] = full.correctness
        tokens = quick.output_tokens
        if tokens is not None and full.output_tokens is not None:
            tokens = tokens.copy()
            tokens[hard] = full.output_tokens
        bounds = quick.length_quantiles
        if bounds is not None and full.length_quantiles is not None:
            bounds = bounds.wider(full.length_quantiles)  # rows come from either predictor
        else:
            bounds = None
        return Prediction(correctness, tokens, bounds)

    def save(self, directory: str | Path) -> None:
        """Write ``fast/`` and ``full/`` checkpoints and ``cascade.json`` (the threshold)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.fast.save(directory / FAST_DIR)
        self.full.save(directory / FULL_DIR)
        config = {
            "format": CASCADE_FORMAT,
            "format_version": CASCADE_VERSION,
            "threshold": self.threshold,  # ±inf for shares 0 and 1, as json's Infinity
            "share": self.share,
            "fast": FAST_DIR,
            "full": FULL_DIR,
        }
        text = json.dumps(config, indent=2)
        atomic_write(directory / CASCADE_FILE, lambda p: Path(p).write_text(text, "utf-8"))
        record_digests(directory, [CASCADE_FILE])

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        fast_encoder: QuestionEncoder | None = None,
        full_encoder: QuestionEncoder | None = None,
        **kwargs: Any,
    ) -> CascadePredictor:
        """Read a cascade written by :meth:`save`.

        Each half rebuilds the encoder its checkpoint records, unless given here (an encoder
        the checkpoint cannot rebuild, such as a custom one). ``kwargs``
        (``expected_models``, ``expected_strategies``) go to both :meth:`RTRPredictor.load`.

        Raises:
            CheckpointError: Malformed or missing files, another format version, or an
                ``encoder`` / ``retrain_on`` argument (a cascade routes with the two encoders it
                was trained with).
        """
        directory = Path(directory)
        verify_digests(directory)
        path = directory / CASCADE_FILE
        for key in ("encoder", "retrain_on"):
            if kwargs.get(key) is not None:
                raise CheckpointError(
                    f"{directory} is a cascade of two predictors, each bound to its encoder; "
                    f"`{key}` cannot replace them (give fast_encoder= / full_encoder= for "
                    "encoders a checkpoint cannot rebuild, or train a new cascade)"
                )
            kwargs.pop(key, None)
        config = read_json_object(path, CheckpointError)
        if config.get("format") != CASCADE_FORMAT:
            raise CheckpointError(f"{path}: not a {CASCADE_FORMAT} file")
        if config.get("format_version") != CASCADE_VERSION:
            raise CheckpointError(
                f"{path}: format version {config.get('format_version')!r}; expected "
                f"{CASCADE_VERSION}"
            )
        try:
            threshold = float(config["threshold"])
            share = float(config["share"])
            fast_dir, full_dir = str(config["fast"]), str(config["full"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed cascade file ({exc!r})") from exc
        fast = RTRPredictor.load(directory / fast_dir, encoder=fast_encoder, **kwargs)
        full = RTRPredictor.load(directory / full_dir, encoder=full_encoder, **kwargs)
        try:
            return cls(fast, full, threshold=threshold, share=share)
        except PredictorError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"CascadePredictor(fast={self.fast.encoder.id!r}, full={self.full.encoder.id!r}, "
            f"share={self.share:g}, threshold={self.threshold:.4g})"
        )


def load_predictor(directory: str | Path, **kwargs: Any) -> RTRPredictor | CascadePredictor:
    """Load whichever predictor ``directory`` holds: a cascade or a single checkpoint."""
    directory = Path(directory)
    if (directory / CASCADE_FILE).is_file():
        return CascadePredictor.load(directory, **kwargs)
    return RTRPredictor.load(directory, **kwargs)
