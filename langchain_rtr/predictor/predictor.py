"""RTRPredictor: train the two heads on an outcome matrix, predict, save and load.

The predictor knows nothing of LangChain: it maps question texts to a correctness probability
and an output-length estimate for every (model, strategy) pair; policies live elsewhere.

torch is imported only to train or to build the torch network (``.net``): loading a checkpoint
(``safetensors.numpy``) and scoring (:mod:`~langchain_rtr.predictor.scoring`) run in numpy, so a
routing process with a torch-free encoder (ONNX, static) never imports torch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.errors import RTRError
from langchain_rtr.inputs import check_questions
from langchain_rtr.predictor.backends import (
    backend_of_id,
    checkpoint_encoder,
    make_encoder,
    save_artifact,
)
from langchain_rtr.predictor.calibration import (
    CalibrationError,
    PlattCalibration,
    member_validation_logits,
)
from langchain_rtr.predictor.digests import record_digests, verify_digests
from langchain_rtr.predictor.encoder import (
    SENTENCE_TRANSFORMERS_ID,
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    default_encoder,
    uncached,
)
from langchain_rtr.predictor.extras import require
from langchain_rtr.predictor.members import MemberData, default_workers, train_members
from langchain_rtr.predictor.scoring import (
    NumpyScorer,
    ScoringError,
    member_prefixes,
)
from langchain_rtr.quantiles import LengthQuantiles, QuantileError

if TYPE_CHECKING:
    import torch

    from langchain_rtr.predictor.model import RTREnsemble, RTRNet

FORMAT_NAME = "langchain-rtr-predictor"
FORMAT_VERSION = 2
"""Bumped whenever the checkpoint layout or the meaning of a stored tensor changes."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

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


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _description_texts(
    names: Sequence[str], descriptions: Mapping[str, str], kind: str
) -> list[str]:
    missing = [n for n in names if n not in descriptions]
    if missing:
        raise PredictorError(
            f"no description for {kind}(s) {missing}; the {kind} descriptions given cover "
            f"{sorted(descriptions)}"
        )
    # An empty description would make every such model look alike; its name is more telling.
    return [descriptions[n].strip() or n for n in names]


def member_seeds(seed: int, members: int) -> list[int]:
    """Seeds of an ensemble's members: ``seed`` itself, then independent streams derived from it.

    Derived rather than ``seed + i``, so the ensembles of seeds 0 and 1 share no member.
    """
    derived = [
        int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(1, members)
    ]
    return [seed, *derived]


def validation_split(n: int, fraction: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """Sorted (train, validation) row indices; at least one of each when ``n >= 2``."""
    order = rng.permutation(n)
    n_val = int(round(fraction * n)) if fraction > 0 and n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


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
        self.models: list[str] = _unique([m for m, _ in self.pairs])
        self.strategies: list[str] = _unique([s for _, s in self.pairs])
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
    def question_dim(self) -> int:
        """Size of the question vectors the heads take."""
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
        require("torch", "training a predictor")
        from langchain_rtr.predictor.model import RTREnsemble

        config = config or TrainConfig()
        if not train.pairs:
            raise PredictorError("the training matrix has no (model, strategy) pairs")
        n_pairs = len(train.pairs)
        if train.score.shape != (len(train.questions), n_pairs):
            raise PredictorError(
                f"score has shape {train.score.shape}; expected "
                f"({len(train.questions)}, {n_pairs}) for the matrix's questions and pairs"
            )
        pairs: list[Pair] = [(m, s) for m, s in train.pairs]
        models = _unique([m for m, _ in pairs])
        strategies = _unique([s for _, s in pairs])
        model_texts = _description_texts(models, model_descriptions, "model")
        strategy_texts = _description_texts(strategies, strategy_descriptions, "strategy")

        score = np.asarray(train.score, np.float32)
        observed = np.isfinite(score)
        rows = np.flatnonzero(observed.any(axis=1))
        if rows.size == 0:
            raise PredictorError("the training matrix has no observed outcome")
        tokens = np.asarray(train.output_tokens, np.float32)
        has_lengths = bool(np.isfinite(tokens[rows]).any())

        encoder = encoder if encoder is not None else default_encoder()
        questions = encoder.encode([train.questions[i] for i in rows])
        descriptions = encoder.encode(model_texts + strategy_texts)

        length_scale: float | None = None
        log_tokens = np.full((rows.size, n_pairs), np.nan, np.float32)
        if has_lengths:
            with np.errstate(invalid="ignore"):
                log_tokens = np.log1p(np.maximum(tokens[rows], 0.0)).astype(np.float32)
            mean_log = float(np.nanmean(log_tokens))
            length_scale = mean_log if mean_log > 0 else 1.0

        model_index = {m: i for i, m in enumerate(models)}
        strategy_index = {s: i for i, s in enumerate(strategies)}
        data = MemberData(
            model_text=descriptions[: len(models)],
            strategy_text=descriptions[len(models) :],
            pair_model=np.array([model_index[m] for m, _ in pairs], np.int64),
            pair_strategy=np.array([strategy_index[s] for _, s in pairs], np.int64),
            questions=questions,
            score=score[rows],
            length=log_tokens / length_scale if length_scale else None,
            length_scale=length_scale,
            config=config,
        )
        seeds = member_seeds(config.seed, config.ensemble)
        workers = default_workers(config, rows.size * n_pairs)
        runs = train_members(data, seeds, workers, progress)
        summary = TrainingSummary()
        held_out: list[tuple[np.ndarray, np.ndarray]] = []  # (predicted, real) tokens
        validation_logits: list[tuple[np.ndarray, np.ndarray]] = []
        for member, run in enumerate(runs):
            if run.val_tokens is not None:
                held_out.append((run.val_tokens, tokens[rows][run.val_idx]))
            if run.val_logits is not None:
                validation_logits.append((run.val_idx, run.val_logits))
            summary.epochs.append(run.epochs)
            summary.best_epochs.append(run.best_epoch)
            summary.best_validation_losses.append(run.best_validation_loss)
            summary.history += [(member, *row) for row in run.history]
            summary.train_questions = run.train_size
            summary.validation_questions = len(run.val_idx)
        calibration = None
        if config.calibrate and validation_logits:
            held = member_validation_logits(validation_logits, rows.size, n_pairs)
            calibration = PlattCalibration.fit(held, score[rows])
        return cls(
            RTREnsemble([run.net for run in runs]),
            pairs=pairs,
            encoder=encoder,
            config=config,
            length_scale=length_scale,
            model_descriptions={m: model_descriptions[m] for m in models},
            strategy_descriptions={s: strategy_descriptions[s] for s in strategies},
            summary=summary,
            length_quantiles=LengthQuantiles.calibrate(
                np.concatenate([p for p, _ in held_out]), np.concatenate([r for _, r in held_out])
            )
            if held_out
            else None,
            calibration=calibration,
        )

    # ---------------------------------------------------------------- prediction

    def predict(self, questions: Sequence[str]) -> Prediction:
        """Encode ``questions`` (through the encoder's cache) and score every pair."""
        questions = check_questions(questions, where="RTRPredictor.predict questions")
        return self.predict_embeddings(self.encoder.encode(questions))

    def predict_embeddings(self, embeddings: np.ndarray) -> Prediction:
        """Score every pair for already-encoded questions ``[n, dim]`` (a single ``[dim]`` too).

        Runs in numpy (:mod:`~langchain_rtr.predictor.scoring`): both heads' question blocks as
        one product over the whole batch, then the ``[n, P, hidden]`` part in chunks small
        enough to stay in cache.
        """
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.question_dim:
            raise PredictorError(
                f"embeddings have shape {q.shape}; expected (n, {self.question_dim})"
            )
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
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}
        inner = uncached(self.encoder)
        encoder_info: dict[str, Any] = {"id": self.encoder.id, "dim": self.question_dim}
        if isinstance(inner, SentenceTransformerEncoder) and inner.id != SENTENCE_TRANSFORMERS_ID:
            encoder_info["name_or_path"] = inner._source or inner.name
        config: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "encoder": encoder_info,
            "models": self.models,
            "strategies": self.strategies,
            "pairs": [list(p) for p in self.pairs],
            "has_length_head": self.has_length_head,
            "length_normalisation": (
                {"target": "log1p(output_tokens) / scale", "scale": self.length_scale}
                if self.has_length_head
                else None
            ),
            "hyperparameters": asdict(self.config),
            "model_descriptions": self.model_descriptions,
            "strategy_descriptions": self.strategy_descriptions,
            "training": {k: v for k, v in asdict(self.summary).items() if k != "history"},
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
        }
        if self.length_quantiles is not None:
            config["length_quantiles"] = self.length_quantiles.to_dict()
        atomic_write(
            directory / WEIGHTS_FILE,
            lambda path: save_file(tensors, path, metadata={"format": FORMAT_NAME}),
        )
        text = json.dumps(config, indent=2, allow_nan=True)
        atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(text, "utf-8"))
        artifact = save_artifact(self.encoder, directory)  # so a torch-free install can route it
        names = [WEIGHTS_FILE, CONFIG_FILE]
        if artifact is not None:  # the encoder's bytes are part of what the checkpoint vouches for
            names += [
                path.relative_to(directory).as_posix()
                for path in sorted(artifact.iterdir())
                if path.is_file()
            ]
        record_digests(directory, names)

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

        Raises:
            CheckpointError: Files missing, malformed or changed since they were saved (their
                recorded sha256 differs), another format version, other models or strategies
                than expected, or an encoder whose id or size differ (without ``retrain_on``).
        """
        directory = Path(directory)
        verify_digests(directory)
        config = _read_config(directory)
        version = config.get("format_version")
        if config.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: format {config.get('format')!r} version {version!r}; "
                f"expected format {FORMAT_NAME!r} version {FORMAT_VERSION}"
            )
        try:
            models = [str(m) for m in config["models"]]
            strategies = [str(s) for s in config["strategies"]]
            pairs = [(str(m), str(s)) for m, s in config["pairs"]]
            enc_id, enc_dim = str(config["encoder"]["id"]), int(config["encoder"]["dim"])
            hyper = TrainConfig.from_dict(config["hyperparameters"])
            has_length = bool(config["has_length_head"])
            norm = config.get("length_normalisation") or {}
            length_scale = float(norm["scale"]) if has_length else None
            quantiles = (
                LengthQuantiles.from_dict(config["length_quantiles"], len(pairs))
                if has_length and config.get("length_quantiles") is not None
                else None
            )
            stored = config.get("calibration")
            calibration = None if stored is None else PlattCalibration.from_dict(stored, len(pairs))
        except QuantileError as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: length_quantiles: {exc}") from exc
        except (KeyError, TypeError, ValueError, CalibrationError) as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: malformed config ({exc!r})") from exc
        _check_names("models", models, expected_models, directory)
        _check_names("strategies", strategies, expected_strategies, directory)

        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_FILE}")
        model_index = {m: i for i, m in enumerate(models)}
        strategy_index = {s: i for i, s in enumerate(strategies)}
        unknown = [p for p in pairs if p[0] not in model_index or p[1] not in strategy_index]
        if unknown:
            raise CheckpointError(f"{directory / CONFIG_FILE}: pairs {unknown} name unknown names")
        try:
            tensors = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{weights_path}: unreadable safetensors ({exc})") from exc
        expected = _expected_shapes(
            len(models), len(strategies), len(pairs), enc_dim, hyper, has_length
        )
        _check_tensors(tensors, expected, weights_path, directory)
        want_models = [model_index[m] for m, _ in pairs]
        want_strategies = [strategy_index[s] for _, s in pairs]
        if not all(
            np.array_equal(tensors[f"{p}pair_model"], want_models)
            and np.array_equal(tensors[f"{p}pair_strategy"], want_strategies)
            for p in member_prefixes(tensors)
        ):
            raise CheckpointError(
                f"{weights_path}: pair indices do not match the pairs of {directory / CONFIG_FILE}"
            )

        if encoder is None:
            encoder = _rebuild_encoder(config["encoder"], directory)
        if encoder.id != enc_id or encoder.dim != enc_dim:
            if retrain_on is not None:
                old = cls._from_parts(
                    config, tensors, pairs, encoder, hyper, length_scale, quantiles
                )
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
        return cls._from_parts(
            config, tensors, pairs, encoder, hyper, length_scale, quantiles, calibration
        )

    @classmethod
    def _from_parts(
        cls,
        config: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        pairs: Sequence[Pair],
        encoder: QuestionEncoder,
        hyper: TrainConfig,
        length_scale: float | None,
        length_quantiles: LengthQuantiles | None = None,
        calibration: PlattCalibration | None = None,
    ) -> RTRPredictor:
        """A predictor over checkpoint tensors (numpy; no torch network yet)."""
        training = config.get("training") or {}
        summary = TrainingSummary(
            **{k: v for k, v in training.items() if k in TrainingSummary.__dataclass_fields__}
        )
        return cls(
            None,
            pairs=pairs,
            encoder=encoder,
            config=hyper,
            length_scale=length_scale,
            model_descriptions=config.get("model_descriptions") or {},
            strategy_descriptions=config.get("strategy_descriptions") or {},
            summary=summary,
            state=tensors,
            length_quantiles=length_quantiles,
            calibration=calibration,
        )

    def __repr__(self) -> str:
        return (
            f"RTRPredictor({len(self.models)} models x {len(self.strategies)} strategies, "
            f"{len(self.pairs)} pairs, encoder={self.encoder.id!r}, "
            f"length_head={self.has_length_head})"
        )


def predicted_tokens(net: RTRNet, questions: torch.Tensor, length_scale: float) -> np.ndarray:
    """One network's point estimates of output tokens ``[n, P]`` (for calibration)."""
    import torch

    with torch.no_grad():
        _, length = net(questions)
    assert length is not None
    tokens: np.ndarray = np.expm1(length.numpy().astype(np.float64) * length_scale)
    return tokens


def _masked_losses(
    net: RTRNet,
    questions: torch.Tensor,
    score: torch.Tensor,
    length: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean BCE over observed scores and mean squared error over observed lengths."""
    logits, predicted_length = net(questions)
    return masked_losses(logits, predicted_length, score, length)


def masked_losses(
    logits: torch.Tensor,
    predicted_length: torch.Tensor | None,
    score: torch.Tensor,
    length: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The losses of outputs against targets where the targets are observed (not NaN)."""
    import torch
    from torch import nn

    observed = torch.isfinite(score)
    target = torch.where(observed, score, torch.zeros_like(score))
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce_mean = (bce * observed).sum() / observed.sum().clamp(min=1)
    if length is None or predicted_length is None:
        return bce_mean, None
    has_len = torch.isfinite(length)
    diff = torch.where(has_len, predicted_length - length, torch.zeros_like(length))
    mse = (diff * diff).sum() / has_len.sum().clamp(min=1)
    return bce_mean, mse


@dataclass
class _Fit:
    """One network's training run."""

    epochs: int = 0
    best_epoch: int = 0
    best_validation_loss: float = math.nan
    history: list[tuple[int, float, float]] = field(default_factory=list)


def fit_network(
    net: RTRNet,
    *,
    questions: torch.Tensor,
    score: torch.Tensor,
    length: torch.Tensor | None,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: ProgressFn | None,
) -> _Fit:
    """Adam over batches of questions x all pairs; early stopping restores the best weights."""
    import torch

    # The fused kernel is several times faster on CPU: the step is memory-bound elementwise work
    # over about a million weights per head, which dominates a small batch's forward/backward.
    try:
        optimiser = torch.optim.Adam(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
    except (RuntimeError, TypeError):  # an older torch without fused CPU Adam
        optimiser = torch.optim.Adam(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
    val_t = torch.from_numpy(val_idx)

    def total(bce: torch.Tensor, mse: torch.Tensor | None) -> torch.Tensor:
        return bce if mse is None else bce + config.length_weight * mse

    summary = _Fit()
    best_state: dict[str, torch.Tensor] | None = None
    best_loss, stale = math.inf, 0
    for epoch in range(1, config.max_epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(train_idx))
        losses: list[float] = []
        for batch in torch.split(order, config.batch_size):
            optimiser.zero_grad(set_to_none=True)
            lb = length[batch] if length is not None else None
            loss = total(*_masked_losses(net, questions[batch], score[batch], lb))
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        net.eval()
        val_loss = math.nan
        if len(val_idx):
            with torch.no_grad():
                lv = length[val_t] if length is not None else None
                val_loss = float(total(*_masked_losses(net, questions[val_t], score[val_t], lv)))
        summary.history.append((epoch, train_loss, val_loss))
        summary.epochs = epoch
        if progress is not None:
            progress(epoch, train_loss, val_loss)
        if not len(val_idx):
            continue
        if val_loss < best_loss - config.min_delta:
            best_loss, stale = val_loss, 0
            best_state = copy.deepcopy(net.state_dict())
            summary.best_epoch, summary.best_validation_loss = epoch, val_loss
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        summary.best_epoch = summary.epochs
    net.eval()
    return summary


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the caller's setting."""
    import torch

    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write via a temporary file renamed into place, so a crash never leaves a torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a predictor checkpoint: no {CONFIG_FILE}")
    return read_json_object(path)


def read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file as a dict; any failure is a :class:`CheckpointError` naming it."""
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def _check_names(
    kind: str, found: Sequence[str], expected: Sequence[str] | None, directory: Path
) -> None:
    if expected is None or set(found) == set(expected):
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    raise CheckpointError(
        f"checkpoint {directory} was trained for {kind} {list(found)}; expected "
        f"{list(expected)} (missing {missing}, unexpected {extra})"
    )


def _rebuild_encoder(info: Mapping[str, Any], directory: Path) -> QuestionEncoder:
    """The encoder a checkpoint records: the copy it carries, else the cached (or built) one."""
    enc_id = str(info.get("id"))
    carried = checkpoint_encoder(directory, enc_id)
    if carried is not None:
        return carried
    if enc_id == SENTENCE_TRANSFORMERS_ID:
        return default_encoder(backend="sentence-transformers")
    backend = backend_of_id(enc_id)
    if backend is not None:
        return make_encoder(backend)
    source = info.get("name_or_path")
    if source and enc_id.startswith("sentence-transformers:"):
        return CachedEncoder(SentenceTransformerEncoder(str(source), encoder_id=enc_id))
    raise CheckpointError(
        f"checkpoint {directory} was trained with encoder {enc_id!r}, which cannot be rebuilt "
        "from the checkpoint; pass encoder= to load()"
    )


def _expected_shapes(
    n_models: int,
    n_strategies: int,
    n_pairs: int,
    dim: int,
    hyper: TrainConfig,
    has_length: bool,
) -> dict[str, tuple[int, ...]]:
    """The tensors of an ``RTREnsemble`` with this configuration, and their shapes."""
    learn, hidden = hyper.learnable_dim, hyper.hidden
    pair_dim = 2 * dim + 2 * learn
    one: dict[str, tuple[int, ...]] = {
        "model_text": (n_models, dim),
        "strategy_text": (n_strategies, dim),
        "pair_model": (n_pairs,),
        "pair_strategy": (n_pairs,),
        "model_learn": (n_models, learn),
        "strategy_learn": (n_strategies, learn),
    }
    for head in ("correctness", "length") if has_length else ("correctness",):
        one |= {
            f"{head}.question.weight": (hidden, dim),
            f"{head}.pair.weight": (hidden, pair_dim),
            f"{head}.pair.bias": (hidden,),
            f"{head}.out.weight": (1, hidden),
            f"{head}.out.bias": (1,),
        }
    return {f"members.{i}.{k}": v for i in range(hyper.ensemble) for k, v in one.items()}


def _check_tensors(
    tensors: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    weights_path: Path,
    directory: Path,
) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    ]
    if missing or extra or wrong:
        raise CheckpointError(
            f"{weights_path}: tensors do not match {directory / CONFIG_FILE} "
            f"(missing {missing}, unexpected {extra}, wrong shapes {wrong})"
        )
    try:
        NumpyScorer.from_state_dict(tensors, 1.0)
    except ScoringError as exc:
        raise CheckpointError(f"{weights_path}: {exc}") from exc


def net_from_state(
    state: Mapping[str, np.ndarray], pairs: Sequence[Pair], hyper: TrainConfig
) -> RTREnsemble:
    """The torch networks holding ``state`` (imports torch)."""
    torch = require("torch", "the torch network of a predictor (`predictor.net`)")

    from langchain_rtr.predictor.model import RTREnsemble, RTRNet

    prefixes = member_prefixes(state)
    first = prefixes[0]
    dim = int(state[f"{first}correctness.question.weight"].shape[1])
    with torch.random.fork_rng(devices=[]):  # initial values are overwritten below
        members = [
            RTRNet(
                torch.zeros(state[f"{p}model_text"].shape[0], dim),
                torch.zeros(state[f"{p}strategy_text"].shape[0], dim),
                torch.from_numpy(np.asarray(state[f"{p}pair_model"], dtype=np.int64)),
                torch.from_numpy(np.asarray(state[f"{p}pair_strategy"], dtype=np.int64)),
                question_dim=dim,
                learnable_dim=hyper.learnable_dim,
                hidden=hyper.hidden,
                length_head=f"{first}length.out.weight" in state,
            )
            for p in prefixes
        ]
    net = RTREnsemble(members)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return net.eval()
