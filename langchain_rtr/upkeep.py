"""Keeping a router current: add a model to it, and refit it on the traffic it routed.

The router-level face of :mod:`langchain_rtr.predictor.adapt`: these functions take and return
`RTRRouter` objects (specs, cost unit, cost scale and default policy carried over), so the CLI
(`rtr add-model`, `rtr train --update`) and Python callers share one recipe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor import RTRPredictor
from langchain_rtr.predictor.adapt import AddModelConfig, RefitConfig, refit
from langchain_rtr.predictor.adapt import add_model as add_model_to_predictor
from langchain_rtr.predictor.features import question_features
from langchain_rtr.routing import RTRRouter
from langchain_rtr.specs import ModelSpec
from langchain_rtr.traffic import TRAFFIC_SOURCE, read_rows


def _predictor_of(router: RTRRouter) -> RTRPredictor:
    predictor = router.predictor
    if not isinstance(predictor, RTRPredictor):
        raise ConfigError(
            f"this router's predictor is a {type(predictor).__name__}; adding a model or "
            "refitting works on a single RTRPredictor (not a cascade)"
        )
    return predictor


def _same_router(
    router: RTRRouter, predictor: RTRPredictor, specs: dict[str, ModelSpec]
) -> RTRRouter:
    """A router like ``router`` (cost unit, scale, policy, overheads) over another predictor."""
    return RTRRouter(
        predictor,
        specs,
        cost_unit=router.cost_unit,
        cost_scale=router.cost_scale,
        default_policy=router.default_policy,
        strategy_overhead_tokens=router.cost_model.strategy_overhead_tokens or None,
    )


def add_model(
    router: RTRRouter,
    spec: ModelSpec,
    outcomes: Iterable[RoutingRecord] | OutcomeMatrix = (),
    *,
    strategies: Sequence[str] | None = None,
    config: AddModelConfig | None = None,
) -> RTRRouter:
    """A router over the old models and ``spec``'s, fitted on a few of its outcomes.

    Only the new model's learnable embedding is fitted (every other weight is frozen), so the
    old pairs' predictions are those of ``router``; the cost scale is kept, so λ keeps its
    meaning. The new pairs' length quantiles come from its outcomes (cross-fitted) and the
    shared correctness calibration covers them.

    Args:
        router: The trained router (left unchanged).
        spec: The new model: name, description (what the predictor encodes), prices, endpoint.
        outcomes: Its outcomes: routing records (``rtr collect``'s output; failed calls are
            left out) or an outcome matrix; none: the description alone places it.
        strategies: Strategies to route it with (default: those of its outcomes, else all).
        config: Fitting knobs (:class:`AddModelConfig`).

    Raises:
        ConfigError: A cascade router, or records of another model.
        PredictorError: A known model name or a strategy the predictor does not know.
    """
    predictor = _predictor_of(router)
    if isinstance(outcomes, OutcomeMatrix):
        matrix = outcomes
    else:
        records = list(outcomes)
        others = sorted({r.model for r in records} - {spec.name})
        if others:
            raise ConfigError(f"outcomes of {spec.name!r} also hold records of models {others}")
        matrix = OutcomeMatrix.from_records(records)
    added = add_model_to_predictor(
        predictor, spec.name, spec.description, matrix, strategies=strategies, config=config
    )
    return _same_router(router, added, {**router.models, spec.name: spec})


def refit_router(
    router: RTRRouter,
    outcomes: OutcomeMatrix,
    *,
    embeddings: np.ndarray | None = None,
    config: RefitConfig | None = None,
) -> RTRRouter:
    """``router`` with its predictor fine-tuned on ``outcomes`` (see `adapt.refit`)."""
    updated = refit(_predictor_of(router), outcomes, embeddings=embeddings, config=config)
    return _same_router(router, updated, dict(router.models))


@dataclass(frozen=True)
class LogOutcomes:
    """A traffic log as outcomes: one row per usable call, in the router's pairs.

    Attributes:
        matrix: Scores (NaN where no feedback came) and measured output tokens (NaN where the
            answer was cut at ``max_tokens`` or continued by another model).
        embeddings: ``[len(matrix), question_dim]``: the questions' vectors as the router's
            heads read them (its encoder's, with the question features where it reads those).
        calls: Calls read; ``scored``: those with feedback.
        skipped: Calls left out, by reason.
    """

    matrix: OutcomeMatrix
    embeddings: np.ndarray
    calls: int
    scored: int
    skipped: dict[str, int]


def log_outcomes(path: str | Path, router: RTRRouter) -> LogOutcomes:
    """Read a traffic log (and its feedback) into outcomes ``router`` can be refitted on.

    A call's vector is its logged embedding when the log's encoder is the router's; else its
    question is encoded again where the log kept the text (``store_questions=True``).

    Raises:
        TrafficLogError: The log cannot be read.
        ConfigError: No call of the log can be used (with the reasons).
    """
    predictor = _predictor_of(router)
    encoder, wants_features = predictor.encoder, predictor.config.question_features
    rows = read_rows(path)
    scores = {r["call_id"]: r["score"] for r in rows if r["kind"] == "feedback"}
    index = {p: j for j, p in enumerate(router.pairs)}
    skipped: Counter[str] = Counter()
    kept: list[tuple[dict[str, Any], int, np.ndarray | None]] = []
    to_encode: list[int] = []
    calls = [r for r in rows if r["kind"] == "call"]
    for row in calls:
        pair = (row.get("model"), row.get("strategy"))
        if row.get("error") is not None or pair not in index:
            skipped["failed call" if row.get("error") else "pair not in the router"] += 1
            continue
        vector = None
        hidden = str(row["question"]).startswith("sha256:")
        if wants_features and row.get("question_features") is None and hidden:
            skipped["no question features, no question text"] += 1  # a log from before them
            continue
        if row.get("embedding") is not None and row.get("encoder") == encoder.id:
            vector = np.asarray(row["embedding"], np.float32)
        elif hidden:
            skipped["no embedding of the router's encoder, no question text"] += 1
            continue
        else:
            to_encode.append(len(kept))
        kept.append((row, index[pair], vector))
    if not kept:
        raise ConfigError(f"{path}: no usable call among {len(calls)} ({dict(skipped)})")
    encoded: Any = encoder.encode([kept[i][0]["question"] for i in to_encode]) if to_encode else []
    vectors = [v for _, _, v in kept]
    for i, vector in zip(to_encode, encoded, strict=True):
        vectors[i] = np.asarray(vector, np.float32)
    if wants_features:  # the heads read them beside the vector
        for i, (row, _, _) in enumerate(kept):
            logged = row.get("question_features")
            features = (
                np.asarray(logged, np.float32)
                if logged is not None
                else question_features([str(row["question"])])[0]
            )
            vectors[i] = np.concatenate([np.asarray(vectors[i], np.float32), features])
    n, n_pairs = len(kept), len(router.pairs)
    score = np.full((n, n_pairs), np.nan, np.float32)
    tokens = np.full((n, n_pairs), np.nan, np.float32)
    for i, (row, j, _) in enumerate(kept):
        feedback = scores.get(row["call_id"])
        if feedback is not None:
            score[i, j] = feedback
        out, cap = row.get("output_tokens"), row.get("max_tokens")
        cut = cap is not None and out is not None and out >= cap
        if out is not None and not cut and not row.get("continued"):
            tokens[i, j] = out
    nan = np.full((n, n_pairs), np.nan, np.float32)
    matrix = OutcomeMatrix(
        questions=[str(r["question"]) for r, _, _ in kept],
        sources=[TRAFFIC_SOURCE] * n,
        pairs=list(router.pairs),
        score=score,
        output_tokens=tokens,
        input_tokens=nan,
        cost=nan.copy(),
        keys=[str(r["call_id"]) for r, _, _ in kept],
    )
    return LogOutcomes(
        matrix=matrix,
        embeddings=np.stack(vectors).astype(np.float32),  # type: ignore[arg-type]
        calls=len(calls),
        scored=int(np.isfinite(score).any(axis=1).sum()),
        skipped=dict(skipped),
    )


def length_error(predicted: np.ndarray, real: np.ndarray) -> float:
    """Median ``|log((1 + predicted) / (1 + real))|`` where both are known (NaN if none)."""
    seen = np.isfinite(predicted) & np.isfinite(real)
    if not seen.any():
        return float("nan")
    return float(np.median(np.abs(np.log1p(predicted[seen]) - np.log1p(real[seen]))))


def held_out_figures(router: RTRRouter, log: LogOutcomes, rows: np.ndarray) -> dict[str, Any]:
    """How well ``router`` predicts the logged calls ``rows``: length error and Brier score.

    ``length_error`` is the median ``|log((1 + predicted) / (1 + real))|`` of output tokens
    (overall and per model); ``brier`` the mean squared error of P(correct) on scored calls.
    """
    prediction = _predictor_of(router).predict_embeddings(log.embeddings[rows])
    real = log.matrix.output_tokens[rows]
    score = log.matrix.score[rows]
    out: dict[str, Any] = {"calls": int(len(rows))}
    if prediction.output_tokens is not None:
        tokens = np.asarray(prediction.output_tokens, np.float64)
        out["length_error"] = length_error(tokens, real)
        for model in router.models:
            cols = [j for j, (m, _) in enumerate(router.pairs) if m == model]
            if cols and np.isfinite(real[:, cols]).any():
                out[f"length_error {model}"] = length_error(tokens[:, cols], real[:, cols])
    seen = np.isfinite(score)
    out["scored"] = int(seen.any(axis=1).sum())
    if seen.any():
        diff = np.asarray(prediction.correctness, np.float64)[seen] - score[seen]
        out["brier"] = float(np.mean(diff * diff))
    return out


@dataclass(frozen=True)
class UpdateReport:
    """What `update_from_log` did: the refitted router and the held-out figures before/after."""

    router: RTRRouter
    log: LogOutcomes
    before: dict[str, Any]
    after: dict[str, Any]


def update_from_log(
    router: RTRRouter,
    path: str | Path,
    *,
    held_out_fraction: float = 0.2,
    config: RefitConfig | None = None,
) -> UpdateReport:
    """Refit ``router`` on a traffic log, measured on a share of its calls kept out of it.

    Lengths come from every call, correctness from the calls with feedback; the refit starts
    from the current weights (`adapt.refit`).
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ConfigError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    log = log_outcomes(path, router)
    n = len(log.matrix)
    if n < 2:
        raise ConfigError(f"{path}: {n} usable call; at least 2 are needed to refit and measure")
    seed = (config or RefitConfig()).seed
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(max(1, round(held_out_fraction * n)), n - 1)
    held, fit_rows = np.sort(order[:n_held]), np.sort(order[n_held:])
    updated = refit_router(
        router, log.matrix.subset(fit_rows), embeddings=log.embeddings[fit_rows], config=config
    )
    return UpdateReport(
        router=updated,
        log=log,
        before=held_out_figures(router, log, held),
        after=held_out_figures(updated, log, held),
    )
