"""The router: predictor + cost model + policy, one question or a batch at a time."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr.errors import NotCalibratedError, RoutingError
from langchain_rtr.inputs import check_question, check_questions
from langchain_rtr.routing.costs import CostModel, check_cost_unit
from langchain_rtr.routing.policies import AverageBudget, Policy, Tradeoff
from langchain_rtr.routing.tables import RoutingTable, RoutingTables
from langchain_rtr.routing.types import (
    DEFAULT_LAMBDA,
    CostUnit,
    Pair,
    PairSelector,
    PredictionLike,
    PredictorLike,
)
from langchain_rtr.specs import ModelSpec


@dataclass(frozen=True)
class Decision:
    """The router's pick for one question.

    Attributes:
        question: The question routed.
        model: The chosen model, or ``None`` when the policy chose nothing (see ``status``).
        strategy: The chosen strategy, or ``None``.
        correctness: Predicted probability that the pair answers correctly.
        output_tokens: Predicted output tokens (``None`` without a length head).
        cost: Predicted cost in ``cost_unit``.
        usd: Predicted $ of the call.
        cost_unit: ``"usd"`` or ``"tokens"``.
        policy: The policy and its parameters (``Policy.to_dict()``).
        status: ``"ok"``, ``"no_pair_fits"``, ``"over_budget"`` or ``"below_floor"``.
        ranking: The allowed pairs in the policy's order of preference; a dispatcher whose call
            to the chosen pair fails falls back along it. Empty when nothing was chosen.
    """

    question: str
    model: str | None
    strategy: str | None
    correctness: float | None
    output_tokens: float | None
    cost: float | None
    usd: float | None
    cost_unit: CostUnit
    policy: dict[str, Any]
    status: str
    ranking: tuple[Pair, ...] = field(default_factory=tuple)

    @property
    def pair(self) -> Pair | None:
        """``(model, strategy)`` or ``None``."""
        if self.model is None or self.strategy is None:
            return None
        return (self.model, self.strategy)

    @property
    def chosen(self) -> bool:
        """Whether a pair was chosen."""
        return self.model is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for run metadata)."""
        out = asdict(self)
        out["ranking"] = [list(p) for p in self.ranking]
        return out


def _finite_or_none(x: float) -> float | None:
    return None if not math.isfinite(x) else x


class RTRRouter:
    """Routes questions to (model, strategy) pairs with a predictor, a cost model and a policy.

    Args:
        predictor: An ``RTRPredictor`` (or anything with its ``pairs``/``predict`` surface).
        models: A :class:`ModelSpec` for every model the predictor knows (prices, endpoints).
        cost_unit: ``"usd"`` (prices) or ``"tokens"`` (predicted output tokens).
        cost_scale: The normaliser of :class:`Tradeoff` costs; fit it with
            :meth:`fit_cost_scale` on training or validation questions, or give it. When
            costs do not depend on predictions (``usd`` without a length head: the mean price
            per call), it defaults to the priciest model's mean price.
        default_policy: Used when ``route`` gets none (default ``Tradeoff(0.9)``).
        strategy_overhead_tokens: Extra input tokens of each strategy's prompt.
    """

    def __init__(
        self,
        predictor: PredictorLike,
        models: Mapping[str, ModelSpec],
        *,
        cost_unit: CostUnit = "usd",
        cost_scale: float | None = None,
        default_policy: Policy | None = None,
        strategy_overhead_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.predictor = predictor
        self.cost_model = CostModel(
            predictor.pairs, models, check_cost_unit(cost_unit), strategy_overhead_tokens
        )
        self.pairs: list[Pair] = list(self.cost_model.pairs)
        self._pair_index = {p: j for j, p in enumerate(self.pairs)}
        self._model_columns: dict[str, list[int]] = {}
        for j, (m, _) in enumerate(self.pairs):
            self._model_columns.setdefault(m, []).append(j)
        self.default_policy: Policy = default_policy or Tradeoff(DEFAULT_LAMBDA)
        self.cost_scale: float | None = None
        if cost_scale is not None:
            self.set_cost_scale(cost_scale)

    # -- configuration -------------------------------------------------------------------

    @property
    def models(self) -> dict[str, ModelSpec]:
        """The model specs, by name."""
        return self.cost_model.models

    @property
    def cost_unit(self) -> CostUnit:
        """``"usd"`` or ``"tokens"``."""
        return self.cost_model.unit

    def set_cost_scale(self, scale: float) -> None:
        """Set the cost normaliser directly (must be finite and > 0)."""
        if not (math.isfinite(scale) and scale > 0):
            raise RoutingError(f"cost scale must be a finite positive number, got {scale!r}")
        self.cost_scale = float(scale)

    def fit_cost_scale(
        self,
        questions: Sequence[str] | None = None,
        *,
        prediction: PredictionLike | None = None,
    ) -> float:
        """Fit the cost normaliser: the mean predicted cost of the most expensive pair.

        Args:
            questions: Training or validation questions (texts are needed for input tokens).
            prediction: Their prediction, if already computed (else it is computed).

        Returns:
            The scale, also stored on the router and saved with it.
        """
        if questions is None:
            raise RoutingError(
                "fit_cost_scale needs the questions (and optionally their prediction)"
            )
        if prediction is None:
            prediction = self.predictor.predict(list(questions))
        costs = self.cost_model.predicted(prediction, list(questions))
        scale = fit_cost_scale(costs.cost)
        self.set_cost_scale(scale)
        return scale

    def _scale(self, tables: RoutingTables) -> float:
        if self.cost_scale is not None:
            return self.cost_scale
        if self.cost_unit == "usd" and tables.output_tokens is None:
            # Without lengths every call of a model costs its mean price whatever the question,
            # so fitting on any data gives this same value.
            return fit_cost_scale(self.cost_model.mean_price[None, :])
        raise NotCalibratedError(
            "the router has no cost scale: call router.fit_cost_scale(training_questions) "
            "or pass cost_scale="
        )

    def allowed_mask(self, allowed: Iterable[PairSelector] | None) -> np.ndarray:
        """``[P]`` boolean mask from pairs ``(model, strategy)`` or bare model names.

        Raises:
            RoutingError: An unknown model or pair, or an empty selection.
        """
        mask = np.zeros(len(self.pairs), dtype=bool)
        if allowed is None:
            mask[:] = True
            return mask
        if isinstance(allowed, str):
            allowed = [allowed]
        unknown: list[str] = []
        for item in allowed:
            if isinstance(item, str):
                cols = self._model_columns.get(item)
                if cols is None:
                    unknown.append(repr(item))
                else:
                    mask[cols] = True
            else:
                pair = tuple(item)
                j = self._pair_index.get(pair)  # type: ignore[arg-type]
                if j is None:
                    unknown.append(repr(pair))
                else:
                    mask[j] = True
        if unknown:
            raise RoutingError(
                f"unknown pair(s) or model(s) in allowed: {', '.join(unknown)}; this router "
                f"knows models {sorted(self._model_columns)} and pairs {self.pairs}"
            )
        if not mask.any():
            raise RoutingError("allowed selects no pair; give at least one pair or model")
        return mask

    # -- tables ----------------------------------------------------------------------------

    def tables_from_prediction(
        self, prediction: PredictionLike, questions: Sequence[str]
    ) -> RoutingTables:
        """Routing tables from an existing prediction (no predictor call)."""
        return RoutingTables.from_prediction(prediction, questions, self.cost_model)

    def tables(self, questions: Sequence[str]) -> RoutingTables:
        """Predict and build the routing tables of a batch (every question checked first)."""
        questions = check_questions(questions, where="questions")
        return self.tables_from_prediction(self.predictor.predict(questions), questions)

    def table(self, question: str) -> RoutingTable:
        """Predict and build one question's routing table."""
        return self.tables([check_question(question, where="question")])[0]

    # -- routing ---------------------------------------------------------------------------

    def decide(
        self,
        tables: RoutingTables,
        policy: Policy | None = None,
        allowed: Iterable[PairSelector] | np.ndarray | None = None,
    ) -> list[Decision]:
        """Apply a policy to routing tables (the part of routing after ``predict``)."""
        policy = policy or self.default_policy
        mask = allowed if isinstance(allowed, np.ndarray) else self.allowed_mask(allowed)
        scale = self._scale(tables) if policy.needs_cost_scale else (self.cost_scale or 1.0)
        choice = policy.choose(
            tables.correctness,
            tables.output_tokens,
            tables.cost / scale,
            mask,
            tables.length_quantiles,
        )
        spec = policy.to_dict()
        decisions: list[Decision] = []
        tok = tables.output_tokens
        for i, question in enumerate(tables.questions):
            j = int(choice.index[i])
            ranking = tuple(self.pairs[k] for k in choice.ranking[i, : choice.n_ranked[i]])
            if j < 0:
                decisions.append(
                    Decision(
                        question=question,
                        model=None,
                        strategy=None,
                        correctness=None,
                        output_tokens=None,
                        cost=None,
                        usd=None,
                        cost_unit=tables.cost_unit,
                        policy=dict(spec),
                        status=str(choice.status[i]),
                        ranking=(),
                    )
                )
                continue
            model, strategy = self.pairs[j]
            decisions.append(
                Decision(
                    question=question,
                    model=model,
                    strategy=strategy,
                    correctness=float(tables.correctness[i, j]),
                    output_tokens=None if tok is None else _finite_or_none(float(tok[i, j])),
                    cost=float(tables.cost[i, j]),
                    usd=float(tables.usd[i, j]),
                    cost_unit=tables.cost_unit,
                    policy=dict(spec),
                    status=str(choice.status[i]),
                    ranking=ranking,
                )
            )
        return decisions

    def route(
        self,
        question: str,
        policy: Policy | None = None,
        allowed: Iterable[PairSelector] | None = None,
    ) -> Decision:
        """Pick a pair for one question."""
        question = check_question(question, where="RTRRouter.route question")
        mask = self.allowed_mask(allowed)  # validate before paying for predict()
        return self.decide(self.tables([question]), policy, mask)[0]

    def route_batch(
        self,
        questions: Sequence[str],
        policy: Policy | None = None,
        allowed: Iterable[PairSelector] | None = None,
    ) -> list[Decision]:
        """Pick a pair for each question (one predictor call for the batch)."""
        questions = check_questions(questions, where="RTRRouter.route_batch questions")
        mask = self.allowed_mask(allowed)
        return self.decide(self.tables(questions), policy, mask)

    def calibrate(
        self,
        policy: AverageBudget,
        questions: Sequence[str],
        *,
        prediction: PredictionLike | None = None,
        allowed: Iterable[PairSelector] | None = None,
    ) -> AverageBudget:
        """Calibrate an :class:`AverageBudget` on validation questions; returns a fitted copy."""
        questions = list(questions)
        mask = self.allowed_mask(allowed)
        if prediction is None:
            prediction = self.predictor.predict(questions)
        tables = self.tables_from_prediction(prediction, questions)
        return policy.calibrate(
            tables.correctness,
            tables.output_tokens,
            tables.usd,
            tables.cost / self._scale(tables),
            mask,
        )

    # -- persistence (see `langchain_rtr.routing.persistence`) ----------------------------

    def config(self) -> dict[str, Any]:
        """What ``router.json`` holds."""
        from langchain_rtr.routing.persistence import router_config

        return router_config(self)

    def save(self, directory: str | Path) -> Path:
        """Write ``predictor/``, ``models.json`` and ``router.json`` (API keys never)."""
        from langchain_rtr.routing.persistence import save_router

        return save_router(self, directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        models: Mapping[str, ModelSpec] | None = None,
        predictor_loader: Callable[[Path], PredictorLike] | None = None,
        **predictor_kw: Any,
    ) -> RTRRouter:
        """Read a router written by :meth:`save` (see `persistence.load_router`)."""
        from langchain_rtr.routing.persistence import load_router

        return load_router(
            directory, models=models, predictor_loader=predictor_loader, **predictor_kw
        )


def fit_cost_scale(cost: np.ndarray) -> float:
    """The cost normaliser: the largest per-pair mean of ``cost`` ``[n, P]`` (1.0 if all zero).

    Normalised costs ``cost / scale`` are then ~1 for the priciest pair whatever the unit.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0:
        raise RoutingError(f"fit_cost_scale needs a non-empty [n, P] cost array, got {c.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite cost
        per_pair = np.nanmean(c, axis=0)
    scale = float(np.nanmax(per_pair)) if np.isfinite(per_pair).any() else float("nan")
    if not math.isfinite(scale):
        raise RoutingError("fit_cost_scale: no finite cost to fit on")
    return scale if scale > 0 else 1.0
