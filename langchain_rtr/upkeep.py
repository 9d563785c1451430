"""Keeping a router current: add a model to it, and refit it on the traffic it routed.

The router-level face of :mod:`langchain_rtr.predictor.adapt`: these functions take and return
`RTRRouter` objects (specs, cost unit, cost scale and default policy carried over), so the CLI
(`rtr add-model`, `rtr train --update`) and Python callers share one recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor import RTRPredictor
from langchain_rtr.predictor.adapt import AddModelConfig, RefitConfig, refit
from langchain_rtr.predictor.adapt import add_model as add_model_to_predictor
from langchain_rtr.routing import RTRRouter
from langchain_rtr.specs import ModelSpec


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
