"""RTRPredictor: train the two heads on an outcome matrix, predict, save and load.

The predictor knows nothing of LangChain: it maps question texts to a correctness probability
and an output-length estimate for every (model, strategy) pair; policies live elsewhere.

torch is imported only to train or to build the torch network (``.net``): loading a checkpoint
(``safetensors.numpy``) and scoring (:mod:`~langchain_rtr.predictor.scoring`) run in numpy, so a
routing process with a torch-free encoder (ONNX, static) never imports torch. Training is in
:mod:`~langchain_rtr.predictor.training`, the checkpoint format in
:mod:`~langchain_rtr.predictor.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.inputs import check_questions
from langchain_rtr.predictor.calibration import PlattCalibration
from langchain_rtr.predictor.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StoredPredictor,
    net_from_state,
    read_checkpoint,
    rebuild_encoder,
    write_checkpoint,
)
from langchain_rtr.predictor.encoder import QuestionEncoder
from langchain_rtr.predictor.features import QUESTION_FEATURES, with_question_features
from langchain_rtr.predictor.scoring import NumpyScorer, member_prefixes
from langchain_rtr.predictor.training import member_seeds, train_ensemble, unique
from langchain_rtr.predictor.types import (
    CheckpointError,
    Pair,
    Prediction,
    PredictorError,
    ProgressFn,
    TrainConfig,
    TrainingSummary,
)
from langchain_rtr.quantiles import LengthQuantiles

if TYPE_CHECKING:
    from langchain_rtr.predictor.model import RTREnsemble

__all__ = [  # the names this module held before training and checkpoints moved out
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "Pair",
    "Prediction",
    "PredictorError",
    "ProgressFn",
    "RTRPredictor",
    "TrainConfig",
    "TrainingSummary",
    "member_seeds",
]


class RTRPredictor:
    """Predicts, for each question, correctness and output length of every (model, strategy).

    Build one with :meth:`train` or :meth:`load`; the constructor is for those two.

    Attributes:
        pairs: The (model, strategy) columns of every :class:`Prediction`, in order.
        models: The models, in order of first appearance in ``pairs``.
        strategies: The strategies, in order of first appearance in ``pairs``.
        encoder: The question encoder (cached by default).
        has_length_head: Whether output lengths are predicted.
        config: The hyperparameters it was trained with.
        length_scale: Training targets are ``log1p(tokens) / length_scale``.
        summary: What happened in training.
        length_quantiles: Conformal quantiles of the length head's log residuals, per pair,
            from each member's own validation part (``None`` without a length head or in a
            checkpoint saved before they existed).
    """

    def __init__(
        self,
        net: RTREnsemble | None,
        *,
        pairs: Sequence[Pair],
        encoder: QuestionEncoder,
        config: TrainConfig,
        length_scale: float | None,
        model_descriptions: Mapping[str, str],
        strategy_descriptions: Mapping[str, str],
        summary: TrainingSummary | None = None,
        state: Mapping[str, np.ndarray] | None = None,
        length_quantiles: LengthQuantiles | None = None,
        calibration: PlattCalibration | None = None,
    ) -> None:
        if net is None and state is None:
            raise PredictorError("RTRPredictor needs the network or its state dict")
        self._net = net.eval() if net is not None else None
        self._state: dict[str, np.ndarray] | None = dict(state) if state is not None else None
        self.pairs: list[Pair] = [(m, s) for m, s in pairs]
        self.models: list[str] = unique([m for m, _ in self.pairs])
        self.strategies: list[str] = unique([s for _, s in self.pairs])
        self.encoder = encoder
        self.config = config
        self.length_scale = length_scale
        self.model_descriptions = dict(model_descriptions)
        self.strategy_descriptions = dict(strategy_descriptions)
        self.summary = summary or TrainingSummary()
        self.length_quantiles = length_quantiles
        self.calibration = calibration
        self._numpy: NumpyScorer | None = None

    @property
    def net(self) -> RTREnsemble:
        """The torch networks (built from the loaded weights on first use; imports torch)."""
        if self._net is None:
            assert self._state is not None
            self._net = net_from_state(self._state, self.pairs, self.config)
        return self._net

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays, keyed like ``RTREnsemble.state_dict()``."""
        if self._net is not None:
            return {k: v.detach().cpu().numpy() for k, v in self._net.state_dict().items()}
        assert self._state is not None
        return dict(self._state)

    @property
    def has_length_head(self) -> bool:
        """Whether output lengths are predicted (the training data had lengths)."""
        if self._net is not None:
            return self._net.has_length_head
        assert self._state is not None
        return f"{member_prefixes(self._state)[0]}length.out.weight" in self._state

    @property
    def encoder_dim(self) -> int:
        """Size of the encoder's vectors (the question vectors less the question features)."""
        extra = len(QUESTION_FEATURES) if self.config.question_features else 0
        return self.question_dim - extra

    @property
    def question_dim(self) -> int:
        """Size of the question vectors the heads take (see :meth:`question_vectors`)."""
        if self._net is not None:
            return self._net.question_dim
        assert self._state is not None
        key = f"{member_prefixes(self._state)[0]}correctness.question.weight"
        return int(self._state[key].shape[1])

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        train: OutcomeMatrix,
        model_descriptions: Mapping[str, str],
        strategy_descriptions: Mapping[str, str],
        *,
        encoder: QuestionEncoder | None = None,
        config: TrainConfig | None = None,
        progress: ProgressFn | None = None,
    ) -> RTRPredictor:
        """Train ``config.ensemble`` networks on ``train``, each with its own validation part.

        Cells that are NaN (not observed) are left out of the losses. The length head is
        trained on ``log1p(output_tokens)`` where tokens were observed, and not built at all when
        ``train`` has no lengths.

        Args:
            train: Outcomes, one row per question, one column per pair.
            model_descriptions: Model name to text description, for every model in ``train``.
            strategy_descriptions: Strategy name to text description, likewise.
            encoder: The question encoder; default :func:`default_encoder` (the cached MiniLM
                in the default backend, onnx-int8).
            config: Hyperparameters; default :class:`TrainConfig()`.
            progress: Called after each epoch with ``(epoch, train_loss, validation_loss)``;
                ``epoch`` counts on across members (at most ``max_epochs * ensemble``).

        Returns:
            The predictor; each member keeps the weights of its best validation epoch.

        Raises:
            PredictorError: No pairs, no observed outcomes, or a description is missing.
        """
        config = config or TrainConfig()
        trained = train_ensemble(
            train,
            model_descriptions,
            strategy_descriptions,
            encoder=encoder,
            config=config,
            progress=progress,
        )
        return cls(
            trained.net,
            pairs=trained.pairs,
            encoder=trained.encoder,
            config=config,
            length_scale=trained.length_scale,
            model_descriptions={m: model_descriptions[m] for m in trained.models},
            strategy_descriptions={s: strategy_descriptions[s] for s in trained.strategies},
            summary=trained.summary,
            length_quantiles=trained.length_quantiles,
            calibration=trained.calibration,
        )

    # ---------------------------------------------------------------- prediction

    def predict(self, questions: Sequence[str]) -> Prediction:
        """Encode ``questions`` (through the encoder's cache) and score every pair."""
        questions = check_questions(questions, where="RTRPredictor.predict questions")
        return self.predict_embeddings(self.encoder.encode(questions), questions)

    def question_vectors(self, questions: Sequence[str]) -> np.ndarray:
        """What the heads read for ``questions``: ``[n, question_dim]``.

        The encoder's vectors, with the question features appended where the predictor was
        trained with them.
        """
        questions = list(questions)
        vectors = self.encoder.encode(questions)
        if not self.config.question_features:
            return np.asarray(vectors, np.float32)
        return with_question_features(vectors, questions)

    def predict_embeddings(
        self, embeddings: np.ndarray, questions: Sequence[str] | None = None
    ) -> Prediction:
        """Score every pair for questions already encoded: ``[n, dim]`` (a single ``[dim]`` too).

        ``embeddings`` are the encoder's vectors, with ``questions``, their texts, where the
        predictor was trained with question features (:mod:`~langchain_rtr.predictor.features`);
        or :meth:`question_vectors`, which hold the features already.

        Runs in numpy (:mod:`~langchain_rtr.predictor.scoring`): both heads' question blocks as
        one product over the whole batch, then the ``[n, P, hidden]`` part in chunks small
        enough to stay in cache.
        """
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] not in (self.encoder_dim, self.question_dim):
            raise PredictorError(
                f"embeddings have shape {q.shape}; expected (n, {self.encoder_dim})"
                + (
                    f" or, with the features, (n, {self.question_dim})"
                    if self.config.question_features
                    else ""
                )
            )
        if q.shape[1] != self.question_dim:
            if questions is None or len(questions) != q.shape[0]:
                given = "no questions" if questions is None else f"{len(questions)} questions"
                raise PredictorError(
                    f"{given} for {q.shape[0]} embeddings: this predictor also reads the "
                    "question texts (it was trained with question features)"
                )
            q = with_question_features(q, questions)
        correctness, length = self._numpy_scorer().score(q)
        return Prediction(self._calibrated(correctness), length, self.length_quantiles)

    def _calibrated(self, correctness: np.ndarray) -> np.ndarray:
        """The calibrated P(correct) (unchanged for a checkpoint saved without calibration)."""
        return correctness if self.calibration is None else self.calibration.apply(correctness)

    def _numpy_scorer(self) -> NumpyScorer:
        """The torch-free scorer, built once from the weights."""
        if self._numpy is None:
            self._numpy = NumpyScorer.from_state_dict(self.state_dict(), self.length_scale)
        return self._numpy

    def retrain(
        self,
        train: OutcomeMatrix,
        *,
        encoder: QuestionEncoder | None = None,
        progress: ProgressFn | None = None,
    ) -> RTRPredictor:
        """A new predictor trained like this one (same hyperparameters and descriptions).

        Used to move a predictor to another encoder: question vectors of two encoders are not
        interchangeable, so the heads are trained again on ``train`` with ``encoder``.
        """
        return type(self).train(
            train,
            self.model_descriptions,
            self.strategy_descriptions,
            encoder=encoder if encoder is not None else self.encoder,
            config=self.config,
            progress=progress,
        )

    # -------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed, so a crash never leaves a torn
        file behind. No pickle is involved. An ONNX or static encoder's artifact is copied into
        ``encoder/`` (:func:`~langchain_rtr.predictor.backends.save_artifact`).
        """
        write_checkpoint(self, directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        encoder: QuestionEncoder | None = None,
        expected_models: Sequence[str] | None = None,
        expected_strategies: Sequence[str] | None = None,
        retrain_on: OutcomeMatrix | None = None,
        progress: ProgressFn | None = None,
        cache_embeddings: bool = True,
    ) -> RTRPredictor:
        """Load a checkpoint written by :meth:`save`.

        Loading never imports torch: the weights are read as numpy arrays and scored in numpy
        until something needs the torch network.

        Args:
            directory: The checkpoint directory.
            encoder: The question encoder; default: rebuilt from the checkpoint (the cached
                MiniLM in the backend it was trained with, or the sentence-transformers model
                it names).
            expected_models: If given, the checkpoint must cover exactly these models.
            expected_strategies: If given, the checkpoint must cover exactly these strategies.
            retrain_on: Training data to use when ``encoder`` is not the one the checkpoint was
                trained with: the heads are then trained again on it with ``encoder`` (same
                hyperparameters and descriptions) instead of refusing.
            progress: Epoch callback of that retraining.
            cache_embeddings: Put the rebuilt encoder behind the on-disk embedding cache (the
                default). A long-running server of unique questions turns it off: the cache
                would write a row per question, up to its bound, and gain nothing.

        Raises:
            CheckpointError: Files missing, malformed or changed since they were saved (their
                recorded sha256 differs), another format version, other models or strategies
                than expected, or an encoder whose id or size differ (without ``retrain_on``).
        """
        directory = Path(directory)
        stored = read_checkpoint(
            directory, expected_models=expected_models, expected_strategies=expected_strategies
        )
        enc_id, enc_dim = stored.encoder_id, stored.encoder_dim
        if encoder is None:
            encoder = rebuild_encoder(stored.config["encoder"], directory, cache=cache_embeddings)
        if encoder.id != enc_id or encoder.dim != enc_dim:
            if retrain_on is not None:
                old = cls._from_stored(stored, encoder)
                return old.retrain(retrain_on, encoder=encoder, progress=progress)
            if encoder.id != enc_id:
                raise CheckpointError(
                    f"checkpoint {directory} was trained with encoder {enc_id!r} (dim {enc_dim}); "
                    f"the encoder given is {encoder.id!r}. Question vectors of different "
                    "encoders are not interchangeable: route with the encoder it was trained "
                    "with, or retrain it on the new encoder (RTRPredictor.load(..., "
                    "retrain_on=training_matrix), or `--retrain` on the command line)"
                )
            raise CheckpointError(
                f"checkpoint {directory} expects {enc_dim}-d question vectors from {enc_id!r}; "
                f"the encoder given makes {encoder.dim}-d vectors"
            )
        return cls._from_stored(stored, encoder)

    @classmethod
    def _from_stored(cls, stored: StoredPredictor, encoder: QuestionEncoder) -> RTRPredictor:
        """A predictor over checkpoint tensors (numpy; no torch network yet)."""
        training = stored.config.get("training") or {}
        summary = TrainingSummary(
            **{k: v for k, v in training.items() if k in TrainingSummary.__dataclass_fields__}
        )
        return cls(
            None,
            pairs=stored.pairs,
            encoder=encoder,
            config=stored.hyper,
            length_scale=stored.length_scale,
            model_descriptions=stored.config.get("model_descriptions") or {},
            strategy_descriptions=stored.config.get("strategy_descriptions") or {},
            summary=summary,
            state=stored.tensors,
            length_quantiles=stored.length_quantiles,
            calibration=stored.calibration,
        )

    def __repr__(self) -> str:
        return (
            f"RTRPredictor({len(self.models)} models x {len(self.strategies)} strategies, "
            f"{len(self.pairs)} pairs, encoder={self.encoder.id!r}, "
            f"length_head={self.has_length_head})"
        )
