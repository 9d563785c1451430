"""Keeping a trained predictor current: add a model from a few outcomes, refit on new ones.

RTR represents a model as its description's encoding plus a learnable embedding, and the two
heads are shared by every pair. A new model's pairs are therefore scored by the trained heads as
soon as it has a description and an embedding: :func:`add_model` starts the embedding at the
mean of the trained models' embeddings and fits only that vector (one per ensemble member) on
the new model's outcomes, every other weight frozen, so no old pair's prediction moves.

:func:`refit` fine-tunes every weight from the current ones on new outcomes (a traffic log:
lengths from every call, correctness where a score arrived), with early stopping on a part held
out of those outcomes, so a drift in one model's behaviour is learnt without starting over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.predictor.calibration import PlattCalibration
from langchain_rtr.predictor.checkpoint import net_from_state
from langchain_rtr.predictor.predictor import RTRPredictor
from langchain_rtr.predictor.scoring import member_prefixes
from langchain_rtr.predictor.training import (
    fit_network,
    masked_losses,
    member_seeds,
    predicted_tokens,
    torch_threads,
    validation_split,
)
from langchain_rtr.predictor.types import Pair, PredictorError, ProgressFn
from langchain_rtr.quantiles import MIN_PAIR_RESIDUALS, LengthQuantiles

if TYPE_CHECKING:
    import torch

    from langchain_rtr.predictor.model import RTRNet


@dataclass(frozen=True)
class AddModelConfig:
    """How :func:`add_model` fits the new model's embedding.

    The defaults are the most frequent choice, knob by knob, of validation carved from the
    training part over four held-out models on ``faithful-cot`` and ``llmrouter``
    (``scripts/measure_add_model.py``; docs/quality.md).

    Attributes:
        lr: Adam's learning rate on the embedding.
        steps: Full-batch Adam steps (the outcomes are few, so every step sees them all).
        prior: Weight of ``||v - v_start||²`` in outcomes: the loss adds
            ``prior / n_outcomes · ||v - v_start||²``, so few outcomes move the model vector
            little and many move it freely.
        fit_text: Fit the new model's description encoding too (it starts as the encoding
            and is stored in its place): the learnable embedding alone reaches only the
            directions the trained models' embeddings taught the heads.
        folds: Cross-fitting folds for the new pairs' length quantiles (each fold's lengths
            are predicted by embeddings fitted without it).
        seed: Seeds the folds.
    """

    lr: float = 3e-2
    steps: int = 200
    prior: float = 0.0
    fit_text: bool = False
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [
            f"{name}={getattr(self, name)!r}"
            for name, ok in {
                "lr": self.lr > 0,
                "steps": self.steps >= 0,
                "prior": self.prior >= 0,
                "folds": self.folds >= 2,
            }.items()
            if not ok
        ]
        if bad:
            raise PredictorError("invalid AddModelConfig: " + ", ".join(bad))


def add_model(
    predictor: RTRPredictor,
    name: str,
    description: str,
    outcomes: OutcomeMatrix | None = None,
    *,
    strategies: Sequence[str] | None = None,
    config: AddModelConfig | None = None,
) -> RTRPredictor:
    """A predictor over the old pairs and ``(name, s)`` for each strategy ``s``.

    Args:
        predictor: The trained predictor (left unchanged).
        name: The new model's name (not one the predictor knows).
        description: Its text description (what the predictor encodes).
        outcomes: Its outcomes, columns ``(name, s)``; ``None`` or empty: the embedding stays
            at its start (the mean of the trained models'), and the description alone sets
            the new model apart.
        strategies: The strategies to add pairs for; default the outcomes' strategies, or
            every strategy the predictor knows when there are none.
        config: Fitting knobs; default :class:`AddModelConfig()`.

    Raises:
        PredictorError: A known model name, an unknown strategy, or outcomes of other models.
    """
    config = config or AddModelConfig()
    if name in predictor.models:
        raise PredictorError(f"model {name!r} is already one of this predictor's models")
    strategies = _new_strategies(predictor, name, outcomes, strategies)
    pairs = [(name, s) for s in strategies]
    score, tokens, questions = _outcome_arrays(predictor, outcomes, pairs)
    state = _extended_state(predictor, description.strip() or name, strategies)
    new_index = len(predictor.models)
    length_scale = predictor.length_scale if predictor.has_length_head else None

    with torch_threads(predictor.config.num_threads):
        fitter = _EmbeddingFitter(
            state, [*predictor.pairs, *pairs], predictor, new_index, questions, score, tokens
        )
        rows = np.arange(score.shape[0])
        vectors = fitter.fit(rows, config)
        residual_quantiles = None
        if length_scale is not None and fitter.length is not None:
            predicted = _cross_fitted_tokens(fitter, config, length_scale)
            residual_quantiles = LengthQuantiles.calibrate(predicted, tokens)
    for prefix, vector in zip(member_prefixes(state), vectors, strict=True):
        text_dim = state[f"{prefix}model_text"].shape[1]
        state[f"{prefix}model_text"][new_index] = vector[:text_dim]
        state[f"{prefix}model_learn"][new_index] = vector[text_dim:]

    return RTRPredictor(
        None,
        pairs=[*predictor.pairs, *pairs],
        encoder=predictor.encoder,
        config=predictor.config,
        length_scale=predictor.length_scale,
        model_descriptions={**predictor.model_descriptions, name: description},
        strategy_descriptions=predictor.strategy_descriptions,
        summary=predictor.summary,
        state=state,
        length_quantiles=_extended_quantiles(predictor.length_quantiles, residual_quantiles, pairs),
        calibration=_extended_calibration(predictor.calibration, len(pairs)),
    )


def _new_strategies(
    predictor: RTRPredictor,
    name: str,
    outcomes: OutcomeMatrix | None,
    strategies: Sequence[str] | None,
) -> list[str]:
    if outcomes is not None:
        others = sorted({m for m, _ in outcomes.pairs if m != name})
        if others:
            raise PredictorError(f"outcomes for {name!r} also name models {others}")
    if strategies is None:
        seen = {s for _, s in outcomes.pairs} if outcomes is not None and len(outcomes) else set()
        strategies = [s for s in predictor.strategies if s in seen] or list(predictor.strategies)
        strategies += sorted(seen - set(strategies))
    unknown = sorted(set(strategies) - set(predictor.strategies))
    if unknown:
        raise PredictorError(
            f"strategies {unknown} are not among the predictor's {predictor.strategies}; a new "
            "strategy needs a retrained predictor"
        )
    if not strategies:
        raise PredictorError(f"no strategy to add {name!r} with")
    return list(dict.fromkeys(strategies))


def _outcome_arrays(
    predictor: RTRPredictor, outcomes: OutcomeMatrix | None, pairs: Sequence[Pair]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score and tokens ``[n, S]`` in ``pairs`` order, and the questions' vectors ``[n, d]``."""
    dim = predictor.question_dim
    if outcomes is None or not len(outcomes):
        empty = np.zeros((0, len(pairs)), np.float32)
        return empty, empty.copy(), np.zeros((0, dim), np.float32)
    columns = {p: j for j, p in enumerate(outcomes.pairs)}
    n = len(outcomes)
    score = np.full((n, len(pairs)), np.nan, np.float32)
    tokens = np.full((n, len(pairs)), np.nan, np.float32)
    for j, pair in enumerate(pairs):
        if pair in columns:
            score[:, j] = outcomes.score[:, columns[pair]]
            tokens[:, j] = outcomes.output_tokens[:, columns[pair]]
    keep = np.isfinite(score).any(axis=1)
    texts = [outcomes.questions[i] for i in np.flatnonzero(keep)]
    questions = predictor.question_vectors(texts)
    return score[keep], tokens[keep], np.asarray(questions, np.float32)


def _extended_state(
    predictor: RTRPredictor, description: str, strategies: Sequence[str]
) -> dict[str, np.ndarray]:
    """The weights with one more model row and its pairs (embedding: the trained ones' mean)."""
    text = np.asarray(predictor.encoder.encode([description]), np.float32)[0]
    strategy_index = {s: i for i, s in enumerate(predictor.strategies)}
    new_index = len(predictor.models)
    state = {k: np.array(v) for k, v in predictor.state_dict().items()}
    for p in member_prefixes(state):
        learn = state[f"{p}model_learn"]
        state[f"{p}model_text"] = np.vstack([state[f"{p}model_text"], text[None, :]])
        state[f"{p}model_learn"] = np.vstack([learn, learn.mean(axis=0, keepdims=True)])
        state[f"{p}pair_model"] = np.concatenate(
            [state[f"{p}pair_model"], np.full(len(strategies), new_index, np.int64)]
        )
        state[f"{p}pair_strategy"] = np.concatenate(
            [state[f"{p}pair_strategy"], [strategy_index[s] for s in strategies]]
        ).astype(np.int64)
    return state


class _EmbeddingFitter:
    """Fits the new model's embedding in each member, every other weight frozen."""

    def __init__(
        self,
        state: dict[str, np.ndarray],
        pairs: Sequence[Pair],
        predictor: RTRPredictor,
        new_index: int,
        questions: np.ndarray,
        score: np.ndarray,
        tokens: np.ndarray,
    ) -> None:
        import torch

        net = net_from_state(state, pairs, predictor.config).requires_grad_(False)
        self.members: list[RTRNet] = list(net.members)  # type: ignore[arg-type]
        self.new_index = new_index
        self.columns = slice(len(pairs) - score.shape[1], len(pairs))
        self.questions = torch.from_numpy(np.ascontiguousarray(questions))
        self.score = torch.from_numpy(score)
        scale = predictor.length_scale
        self.length = None
        if predictor.has_length_head and scale and np.isfinite(tokens).any():
            with np.errstate(invalid="ignore"):
                log_tokens = np.log1p(np.maximum(tokens, 0.0)) / scale
            self.length = torch.from_numpy(log_tokens.astype(np.float32))
        self.length_weight = predictor.config.length_weight
        with torch.no_grad():  # the question blocks W_q q never change: computed once
            self.projected = [
                (
                    member.correctness.question(self.questions),
                    None if member.length is None else member.length.question(self.questions),
                )
                for member in self.members
            ]

    def start(self, index: int) -> torch.Tensor:
        """Member ``index``'s starting model vector ``[text; learnable]``."""
        import torch

        member = self.members[index]
        return torch.cat(
            [member.model_text[self.new_index], member.model_learn[self.new_index]]
        ).clone()

    def _features(self, member: RTRNet, vector: torch.Tensor) -> torch.Tensor:
        import torch

        strategy = member.pair_strategy[self.columns]
        count = int(strategy.numel())
        text_dim = int(member.model_text.shape[1])
        return torch.cat(
            [
                vector[:text_dim].expand(count, -1),
                member.strategy_text[strategy],
                vector[text_dim:].expand(count, -1),
                member.strategy_learn[strategy],
            ],
            dim=1,
        )

    def raw(
        self, index: int, vector: torch.Tensor, rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Member ``index``'s correctness logits and raw lengths of the new pairs on ``rows``."""
        member = self.members[index]
        correct_q, length_q = self.projected[index]
        features = self._features(member, vector)
        logits = member.correctness.from_projected(
            correct_q[rows], member.correctness.pair_bias(features)
        )
        length = None
        if member.length is not None and length_q is not None and self.length is not None:
            length = member.length.from_projected(length_q[rows], member.length.pair_bias(features))
        return logits, length

    def fit(self, rows: np.ndarray, config: AddModelConfig) -> list[np.ndarray]:
        """Each member's fitted model vector ``[text; learnable]``, from ``rows`` only."""
        return [self._fit_member(i, rows, config) for i in range(len(self.members))]

    def _fit_member(self, index: int, rows: np.ndarray, config: AddModelConfig) -> np.ndarray:
        import torch

        start = self.start(index)
        text_dim = int(self.members[index].model_text.shape[1])
        fitted = torch.nn.Parameter((start if config.fit_text else start[text_dim:]).clone())

        def vector() -> torch.Tensor:
            return fitted if config.fit_text else torch.cat([start[:text_dim], fitted])

        score = self.score[rows]
        n_outcomes = int(torch.isfinite(score).sum())
        if not (n_outcomes and config.steps):
            return start.numpy().copy()
        length = self.length[rows] if self.length is not None else None
        optimiser = torch.optim.Adam([fitted], lr=config.lr)
        for _ in range(config.steps):
            optimiser.zero_grad(set_to_none=True)
            current = vector()
            logits, raw_length = self.raw(index, current, rows)
            predicted = None if raw_length is None else torch.nn.functional.softplus(raw_length)
            bce, mse = masked_losses(logits, predicted, score, length)
            loss = bce + config.prior / n_outcomes * ((current - start) ** 2).sum()
            if mse is not None:
                loss = loss + self.length_weight * mse
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        out: np.ndarray = vector().detach().numpy().copy()
        return out

    def tokens(self, vectors: list[np.ndarray], rows: np.ndarray, scale: float) -> np.ndarray:
        """The ensemble's predicted tokens ``[len(rows), S]`` with these model vectors."""
        import torch

        with torch.no_grad():
            raws = [self.raw(i, torch.from_numpy(v), rows)[1] for i, v in enumerate(vectors)]
        mean = torch.stack([r for r in raws if r is not None]).mean(0)
        log = torch.nn.functional.softplus(mean).numpy().astype(np.float64)
        tokens: np.ndarray = np.expm1(log * scale)
        return tokens


def _cross_fitted_tokens(
    fitter: _EmbeddingFitter, config: AddModelConfig, scale: float
) -> np.ndarray:
    """Each outcome row's predicted tokens from embeddings fitted on the other folds."""
    n = int(fitter.score.shape[0])
    predicted = np.full((n, int(fitter.score.shape[1])), np.nan)
    if n < 2:
        return predicted
    order = np.random.default_rng(config.seed).permutation(n)
    for held in np.array_split(order, min(config.folds, n)):
        rest = np.setdiff1d(order, held)
        predicted[held] = fitter.tokens(fitter.fit(rest, config), held, scale)
    return predicted


def _extended_quantiles(
    old: LengthQuantiles | None, new: LengthQuantiles | None, pairs: Sequence[Pair]
) -> LengthQuantiles | None:
    """The old rows, then the new pairs' rows.

    New pairs get their own cross-fitted quantiles (pooled over the new model's pairs where a
    pair has too few); with fewer than ``MIN_PAIR_RESIDUALS`` residuals in all, the widest old
    row at each level, a bound that holds for every trained pair.
    """
    if old is None:
        return None
    if new is not None and int(new.counts.max(initial=0)) >= MIN_PAIR_RESIDUALS:
        rows, counts, pooled = new.offsets, new.counts, new.pooled
    else:
        rows = np.repeat(old.offsets.max(axis=0, keepdims=True), len(pairs), axis=0)
        counts = np.zeros(len(pairs), np.int64)
        pooled = np.ones(len(pairs), bool)
    return LengthQuantiles(
        levels=old.levels,
        offsets=np.vstack([old.offsets, rows]),
        counts=np.concatenate([old.counts, counts]),
        pooled=np.concatenate([old.pooled, pooled]),
    )


def _extended_calibration(old: PlattCalibration | None, n_new: int) -> PlattCalibration | None:
    """The shared Platt map carried over to the new pairs (it never reorders pairs)."""
    if old is None:
        return None
    return PlattCalibration(
        np.concatenate([old.slope, np.full(n_new, float(old.slope.mean()))]),
        np.concatenate([old.intercept, np.full(n_new, float(old.intercept.mean()))]),
    )


# --------------------------------------------------------------------------- refitting


@dataclass(frozen=True)
class RefitConfig:
    """How :func:`refit` fine-tunes from the current weights.

    Attributes:
        lr: Adam's learning rate (a tenth of training's: the weights start close).
        max_epochs: Upper bound on passes over the new outcomes.
        patience: Epochs without a better validation loss before stopping.
        validation_fraction: Share of the new outcomes' questions held out per member, for
            early stopping and the quantiles of the pairs they cover.
        seed: Seeds the validation parts and the batch order.
    """

    lr: float = 1e-4
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.2
    seed: int = 0


def refit(
    predictor: RTRPredictor,
    outcomes: OutcomeMatrix,
    *,
    embeddings: np.ndarray | None = None,
    config: RefitConfig | None = None,
    progress: ProgressFn | None = None,
) -> RTRPredictor:
    """A predictor fine-tuned from ``predictor``'s weights on ``outcomes``.

    Cells that are NaN are left out of the losses: a call with a measured length and no score
    trains the length head only. Length quantiles are recalibrated for the pairs the held-out
    outcomes cover with at least ``MIN_PAIR_RESIDUALS`` lengths and kept for the others; the
    correctness calibration is kept.

    Args:
        predictor: The current predictor (left unchanged).
        outcomes: New outcomes on pairs the predictor knows.
        embeddings: The questions' vectors ``[len(outcomes), question_dim]`` as the heads read
            them (:meth:`RTRPredictor.question_vectors`; a traffic log keeps what they are
            made of); default: made from ``outcomes.questions``.
        config: Fine-tuning knobs; default :class:`RefitConfig()`.
        progress: Called after each epoch with ``(epoch, train_loss, validation_loss)``.

    Raises:
        PredictorError: Unknown pairs, no observed outcome, or embeddings of the wrong shape.
    """
    import torch

    config = config or RefitConfig()
    index = {p: j for j, p in enumerate(predictor.pairs)}
    unknown = sorted(set(map(tuple, outcomes.pairs)) - set(index))
    if unknown:
        raise PredictorError(f"outcomes name pairs {unknown} this predictor was not trained on")
    n, n_pairs = len(outcomes), len(predictor.pairs)
    score = np.full((n, n_pairs), np.nan, np.float32)
    tokens = np.full((n, n_pairs), np.nan, np.float32)
    for j, pair in enumerate(outcomes.pairs):
        score[:, index[pair]] = outcomes.score[:, j]
        tokens[:, index[pair]] = outcomes.output_tokens[:, j]
    if not (np.isfinite(score).any() or np.isfinite(tokens).any()):
        raise PredictorError("the outcomes hold neither a score nor a length to refit on")
    if embeddings is None:
        embeddings = predictor.question_vectors(outcomes.questions)
    questions = np.ascontiguousarray(embeddings, np.float32)
    if questions.shape != (n, predictor.question_dim):
        raise PredictorError(
            f"embeddings have shape {questions.shape}; expected ({n}, {predictor.question_dim})"
        )
    scale = predictor.length_scale if predictor.has_length_head else None
    length_t = None
    if scale:
        with np.errstate(invalid="ignore"):
            length_t = torch.from_numpy(
                (np.log1p(np.maximum(tokens, 0.0)) / scale).astype(np.float32)
            )
    train_config = replace(
        predictor.config,
        lr=config.lr,
        max_epochs=config.max_epochs,
        patience=config.patience,
        validation_fraction=config.validation_fraction,
    )
    question_t, score_t = torch.from_numpy(questions), torch.from_numpy(score)
    held_out: list[tuple[np.ndarray, np.ndarray]] = []
    with torch_threads(predictor.config.num_threads):
        net = net_from_state(predictor.state_dict(), predictor.pairs, predictor.config)
        members: list[RTRNet] = list(net.members)  # type: ignore[arg-type]
        done = 0
        for member, seed in zip(members, member_seeds(config.seed, len(members)), strict=True):
            rng = np.random.default_rng(seed)
            train_idx, val_idx = validation_split(n, config.validation_fraction, rng)
            on_epoch = (
                None
                if progress is None
                else lambda epoch, tl, vl, done=done: progress(done + epoch, tl, vl)
            )
            fit = fit_network(
                member,
                questions=question_t,
                score=score_t,
                length=length_t,
                train_idx=train_idx,
                val_idx=val_idx,
                config=train_config,
                rng=rng,
                progress=on_epoch,
            )
            done += fit.epochs
            if scale and len(val_idx):
                val = torch.from_numpy(val_idx)
                held_out.append((predicted_tokens(member, question_t[val], scale), tokens[val_idx]))
    quantiles = predictor.length_quantiles
    if quantiles is not None and held_out:
        fresh = LengthQuantiles.calibrate(
            np.concatenate([p for p, _ in held_out]), np.concatenate([r for _, r in held_out])
        )
        own = ~fresh.pooled
        quantiles = LengthQuantiles(
            levels=quantiles.levels,
            offsets=np.where(own[:, None], fresh.offsets, quantiles.offsets),
            counts=np.where(own, fresh.counts, quantiles.counts),
            pooled=np.where(own, False, quantiles.pooled),
        )
    return RTRPredictor(
        net,
        pairs=predictor.pairs,
        encoder=predictor.encoder,
        config=predictor.config,
        length_scale=predictor.length_scale,
        model_descriptions=predictor.model_descriptions,
        strategy_descriptions=predictor.strategy_descriptions,
        summary=predictor.summary,
        length_quantiles=quantiles,
        calibration=predictor.calibration,
    )
