"""Training the predictor's networks: seeds and validation parts, the losses, the fit loop.

torch is imported inside the functions, so importing this module stays torch-free.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.predictor.calibration import PlattCalibration, member_validation_logits
from langchain_rtr.predictor.encoder import QuestionEncoder, default_encoder
from langchain_rtr.predictor.extras import require
from langchain_rtr.predictor.features import with_question_features
from langchain_rtr.predictor.members import MemberData, default_workers, train_members
from langchain_rtr.predictor.types import (
    Pair,
    PredictorError,
    ProgressFn,
    TrainConfig,
    TrainingSummary,
)
from langchain_rtr.quantiles import LengthQuantiles

if TYPE_CHECKING:
    import torch

    from langchain_rtr.predictor.model import RTREnsemble, RTRNet


def unique(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, in order of first appearance."""
    return list(dict.fromkeys(items))


def description_texts(
    names: Sequence[str], descriptions: Mapping[str, str], kind: str
) -> list[str]:
    """The description of each name, in order; a missing one is a :class:`PredictorError`."""
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


@dataclass
class TrainedEnsemble:
    """What :func:`train_ensemble` returns: the networks and what a predictor keeps beside them."""

    net: RTREnsemble
    pairs: list[Pair]
    models: list[str]
    strategies: list[str]
    encoder: QuestionEncoder
    length_scale: float | None
    summary: TrainingSummary
    length_quantiles: LengthQuantiles | None
    calibration: PlattCalibration | None


def train_ensemble(
    train: OutcomeMatrix,
    model_descriptions: Mapping[str, str],
    strategy_descriptions: Mapping[str, str],
    *,
    encoder: QuestionEncoder | None,
    config: TrainConfig,
    progress: ProgressFn | None,
) -> TrainedEnsemble:
    """The body of :meth:`RTRPredictor.train <langchain_rtr.predictor.RTRPredictor.train>`."""
    require("torch", "training a predictor")
    from langchain_rtr.predictor.model import RTREnsemble

    if not train.pairs:
        raise PredictorError("the training matrix has no (model, strategy) pairs")
    n_pairs = len(train.pairs)
    if train.score.shape != (len(train.questions), n_pairs):
        raise PredictorError(
            f"score has shape {train.score.shape}; expected "
            f"({len(train.questions)}, {n_pairs}) for the matrix's questions and pairs"
        )
    pairs: list[Pair] = [(m, s) for m, s in train.pairs]
    models = unique([m for m, _ in pairs])
    strategies = unique([s for _, s in pairs])
    model_texts = description_texts(models, model_descriptions, "model")
    strategy_texts = description_texts(strategies, strategy_descriptions, "strategy")

    score = np.asarray(train.score, np.float32)
    observed = np.isfinite(score)
    rows = np.flatnonzero(observed.any(axis=1))
    if rows.size == 0:
        raise PredictorError("the training matrix has no observed outcome")
    tokens = np.asarray(train.output_tokens, np.float32)
    has_lengths = bool(np.isfinite(tokens[rows]).any())

    encoder = encoder if encoder is not None else default_encoder()
    texts = [train.questions[i] for i in rows]
    questions = encoder.encode(texts)
    if config.question_features:
        questions = with_question_features(questions, texts)
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
    return TrainedEnsemble(
        RTREnsemble([run.net for run in runs]),
        pairs=pairs,
        models=models,
        strategies=strategies,
        encoder=encoder,
        length_scale=length_scale,
        summary=summary,
        length_quantiles=LengthQuantiles.calibrate(
            np.concatenate([p for p, _ in held_out]), np.concatenate([r for _, r in held_out])
        )
        if held_out
        else None,
        calibration=calibration,
    )


def predicted_tokens(net: RTRNet, questions: torch.Tensor, length_scale: float) -> np.ndarray:
    """One network's point estimates of output tokens ``[n, P]`` (for calibration)."""
    import torch

    with torch.no_grad():
        _, length = net(questions)
    assert length is not None
    tokens: np.ndarray = np.expm1(length.numpy().astype(np.float64) * length_scale)
    return tokens


def network_losses(
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
class NetworkFit:
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
) -> NetworkFit:
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

    summary = NetworkFit()
    best_state: dict[str, torch.Tensor] | None = None
    best_loss, stale = math.inf, 0
    for epoch in range(1, config.max_epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(train_idx))
        losses: list[float] = []
        for batch in torch.split(order, config.batch_size):
            optimiser.zero_grad(set_to_none=True)
            lb = length[batch] if length is not None else None
            loss = total(*network_losses(net, questions[batch], score[batch], lb))
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        net.eval()
        val_loss = math.nan
        if len(val_idx):
            with torch.no_grad():
                lv = length[val_t] if length is not None else None
                val_loss = float(total(*network_losses(net, questions[val_t], score[val_t], lv)))
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
