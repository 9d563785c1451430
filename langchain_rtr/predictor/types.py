"""What the predictor hands out and takes in: its errors, predictions and hyperparameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from langchain_rtr.errors import RTRError
from langchain_rtr.quantiles import LengthQuantiles

Pair = tuple[str, str]
ProgressFn = Callable[[int, float, float], None]


class PredictorError(RTRError, ValueError):
    """The predictor was given input it cannot use (missing descriptions, wrong shapes...)."""


class CheckpointError(PredictorError):
    """A checkpoint is missing, malformed, or does not fit what the caller expects."""


@dataclass
class Prediction:
    """Per-question, per-pair predictions; columns follow :attr:`RTRPredictor.pairs`.

    Attributes:
        correctness: float32 ``[n_questions, n_pairs]``, probability of a correct answer.
        output_tokens: float32 ``[n_questions, n_pairs]``, predicted output tokens; ``None`` when
            the predictor has no length head (its training data had no lengths), in which case
            cost comes from price alone.
        length_quantiles: Per-pair calibration of ``output_tokens`` into quantiles (``None``
            without a length head, or for a checkpoint saved before they existed).
    """

    correctness: np.ndarray
    output_tokens: np.ndarray | None
    length_quantiles: LengthQuantiles | None = None

    def output_tokens_at(self, confidence: float) -> np.ndarray | None:
        """``[n, P]`` output tokens that real output stays under with probability ``confidence``.

        Raises:
            PredictorError: There are point estimates but no quantiles to bound them with.
        """
        if self.output_tokens is None:
            return None
        if self.length_quantiles is None:
            raise PredictorError("this prediction has no length quantiles to bound tokens with")
        return self.length_quantiles.upper(self.output_tokens, confidence)


@dataclass
class TrainConfig:
    """Hyperparameters of :meth:`RTRPredictor.train`.

    The defaults follow the paper (Adam, lr 1e-3, up to 100 epochs, early stopping) except in
    two places. A batch here is ``batch_size`` questions with *all* their pairs, not
    ``batch_size`` (question, pair) rows. And instead of one network of 768 hidden units, five
    of 256 are averaged (``ensemble``, ``hidden``): on held-out data (``docs/quality.md``) that
    lifted RouteLLM GSM8K's APGR from 0.566 to 0.649 and LLMRouter's AIQ from 0.618 to 0.620.
    They have 1.7x the hidden units of one 768-unit network, so scoring costs about that much
    more (docs/encoders.md has training times).

    Attributes:
        learnable_dim: Size of each learnable model and strategy embedding (0: text only).
        hidden: Hidden units of each head.
        lr: Adam learning rate.
        batch_size: Questions per optimiser step.
        max_epochs: Upper bound on passes over the training questions.
        patience: Epochs without a better validation loss before stopping.
        validation_fraction: Share of questions held out for early stopping (0: none, train
            ``max_epochs``).
        seed: Seeds initialisation, the validation split and the batch order.
        weight_decay: Adam's L2 penalty.
        length_weight: Weight of the length loss against the correctness loss.
        embedding_std: Standard deviation of the initial learnable embeddings.
        min_delta: A validation loss must improve by more than this to count.
        num_threads: torch threads while training, restored afterwards (``None``: leave as
            is). One by default: the batches are too small to gain from more, results then do
            not depend on the machine's core count, and an oversubscribed machine does not
            slow training tenfold.
        ensemble: Networks trained apart (member 0 with ``seed``, the others with seeds
            derived from it; each with its own validation part) and averaged
            (:class:`~langchain_rtr.predictor.model.RTREnsemble`): one network's ranking of
            questions varies with its seed as much as with the data on small training sets.
        calibrate: Fit one Platt map of P(correct) for all pairs on the members' validation
            parts (:mod:`~langchain_rtr.predictor.calibration`); needs
            ``validation_fraction > 0``.
        workers: Processes the members train in at once (``None``: the usable cores, for a
            training set big enough to gain; :mod:`~langchain_rtr.predictor.members`). The
            weights do not depend on it.
        question_features: Give the heads the question's word, number and sentence counts
            beside its vector (:mod:`~langchain_rtr.predictor.features`). Off by default:
            on validation parts they made length predictions better where the questions
            resemble the training ones, and routing no better where they do not
            (docs/quality.md, "Question features").
    """

    learnable_dim: int = 64
    hidden: int = 256
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 5
    validation_fraction: float = 0.1
    seed: int = 0
    weight_decay: float = 0.0
    length_weight: float = 1.0
    embedding_std: float = 0.1
    min_delta: float = 1e-4
    num_threads: int | None = 1
    ensemble: int = 5
    calibrate: bool = True
    workers: int | None = None
    question_features: bool = False

    def __post_init__(self) -> None:
        checks = {
            "learnable_dim": self.learnable_dim >= 0,
            "hidden": self.hidden >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "max_epochs": self.max_epochs >= 1,
            "patience": self.patience >= 1,
            "validation_fraction": 0.0 <= self.validation_fraction < 1.0,
            "weight_decay": self.weight_decay >= 0,
            "length_weight": self.length_weight >= 0,
            "embedding_std": self.embedding_std >= 0,
            "min_delta": self.min_delta >= 0,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "ensemble": self.ensemble >= 1,
            "workers": self.workers is None or self.workers >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise PredictorError(
                "invalid TrainConfig: "
                + ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainingSummary:
    """What happened in training (stored in the checkpoint for provenance).

    Lists hold one entry per ensemble member, in member order.

    Attributes:
        epochs: Epochs each member ran.
        best_epochs: The epoch whose weights each member kept (1-based).
        best_validation_losses: Their validation losses (NaN without a validation part).
        train_questions: Questions each member trained on.
        validation_questions: Questions each member held out (each draws its own part).
        history: ``(member, epoch, train_loss, validation_loss)`` for every epoch run.
    """

    epochs: list[int] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    best_validation_losses: list[float] = field(default_factory=list)
    train_questions: int = 0
    validation_questions: int = 0
    history: list[tuple[int, int, float, float]] = field(default_factory=list)
