"""The cost model: predicted $ (or tokens) of every pair for a batch of questions.

See the package docstring for how input tokens are estimated and why costs are normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast, get_args

import numpy as np

from langchain_rtr.errors import RoutingError
from langchain_rtr.routing.types import (
    CHARS_PER_TOKEN,
    PROMPT_OVERHEAD_TOKENS,
    CostUnit,
    Pair,
    PredictionLike,
)
from langchain_rtr.specs import ModelSpec


def estimate_input_tokens(questions: Sequence[str]) -> np.ndarray:
    """Estimated prompt tokens of each question: ``ceil(chars / 4) + PROMPT_OVERHEAD_TOKENS``."""
    lengths = np.fromiter((len(q) for q in questions), dtype=np.float64, count=len(questions))
    return np.ceil(lengths / CHARS_PER_TOKEN) + PROMPT_OVERHEAD_TOKENS


def check_cost_unit(unit: str) -> CostUnit:
    """``unit`` as a `CostUnit`, or a `RoutingError` naming the valid ones."""
    if unit not in get_args(CostUnit):
        raise RoutingError(f"cost unit must be one of {get_args(CostUnit)}, got {unit!r}")
    return cast(CostUnit, unit)


@dataclass(frozen=True)
class PredictedCosts:
    """Predicted tokens and costs of every pair for ``n`` questions (arrays ``[n, P]``)."""

    output_tokens: np.ndarray | None
    usd: np.ndarray
    cost: np.ndarray
    """In the cost model's unit: ``usd`` or ``output_tokens``."""


class CostModel:
    """Turns predicted output tokens into predicted cost per (question, pair), vectorised.

    Args:
        pairs: The column order.
        models: A spec (with prices) for every model named in ``pairs``.
        unit: ``"usd"`` or ``"tokens"``.
        strategy_overhead_tokens: Extra input tokens a strategy's prompt adds (e.g. the CoT
            instruction); strategies not named add none.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        models: Mapping[str, ModelSpec],
        unit: CostUnit = "usd",
        strategy_overhead_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.pairs: list[Pair] = [(str(m), str(s)) for m, s in pairs]
        self.unit: CostUnit = check_cost_unit(unit)
        missing = sorted({m for m, _ in self.pairs} - set(models))
        if missing:
            raise RoutingError(
                f"no ModelSpec (prices) for model(s) {missing}; the predictor's pairs name "
                f"them and the router was given specs for {sorted(models)}"
            )
        self.models: dict[str, ModelSpec] = dict(models)
        self.strategy_overhead_tokens: dict[str, int] = dict(strategy_overhead_tokens or {})
        specs = [self.models[m] for m, _ in self.pairs]
        self.input_price = np.array([s.input_price for s in specs], dtype=np.float64)
        self.output_price = np.array([s.output_price for s in specs], dtype=np.float64)
        self.mean_price = np.array([s.mean_price for s in specs], dtype=np.float64)
        self.pair_overhead = np.array(
            [self.strategy_overhead_tokens.get(s, 0) for _, s in self.pairs], dtype=np.float64
        )

    def input_tokens(self, questions: Sequence[str]) -> np.ndarray:
        """Estimated input tokens ``[n, P]`` (question estimate + the strategy's overhead)."""
        return estimate_input_tokens(questions)[:, None] + self.pair_overhead[None, :]

    def usd(self, output_tokens: np.ndarray | None, input_tokens: np.ndarray) -> np.ndarray:
        """Dollars per call ``[n, P]``; the model's mean price per call without lengths."""
        if output_tokens is None:
            return np.broadcast_to(self.mean_price, input_tokens.shape).copy()
        out = np.asarray(output_tokens, dtype=np.float64)
        return (input_tokens * self.input_price + out * self.output_price) / 1e6

    def predicted(self, prediction: PredictionLike, questions: Sequence[str]) -> PredictedCosts:
        """Predicted tokens, $ and cost (in :attr:`unit`) for these questions."""
        correctness = np.asarray(prediction.correctness)
        n = len(questions)
        if correctness.shape != (n, len(self.pairs)):
            raise RoutingError(
                f"prediction has shape {correctness.shape}, expected ({n}, {len(self.pairs)}) "
                "for these questions and pairs"
            )
        tokens = prediction.output_tokens
        tok = None if tokens is None else np.asarray(tokens, dtype=np.float64)
        usd = self.usd(tok, self.input_tokens(questions))
        if self.unit == "tokens":
            if tok is None:
                raise RoutingError(
                    'cost_unit="tokens" needs output-token predictions, and this predictor has '
                    "no length head (its training data had no lengths); use cost_unit='usd'"
                )
            cost = tok
        else:
            cost = usd
        return PredictedCosts(output_tokens=tok, usd=usd, cost=cost)
