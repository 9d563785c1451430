"""Routing tables: one row per pair with its predicted correctness, tokens and cost."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from langchain_rtr.errors import RoutingError
from langchain_rtr.quantiles import SHOWN_LEVELS, LengthQuantiles, QuantileError
from langchain_rtr.routing.costs import CostModel
from langchain_rtr.routing.types import CostUnit, Pair, PredictionLike

SortKey = Literal["correctness", "output_tokens", "usd", "cost", "pair"]


@dataclass(frozen=True, slots=True)
class TableRow:
    """One pair's predictions for one question."""

    model: str
    strategy: str
    correctness: float
    output_tokens: float | None
    usd: float
    cost: float
    output_token_quantiles: dict[str, float] | None = None
    """Output tokens at the :data:`~langchain_rtr.quantiles.SHOWN_LEVELS`, keyed ``"p90"``..."""

    @property
    def pair(self) -> Pair:
        """``(model, strategy)``."""
        return (self.model, self.strategy)


@dataclass(frozen=True)
class RoutingTable:
    """Every pair's predicted correctness, output tokens and cost for one question.

    Arrays are ``[P]`` in the order of ``pairs``; ``cost`` is in ``cost_unit``;
    ``length_quantiles`` (per pair, ``None`` without them) bound ``output_tokens`` at a
    confidence.
    """

    question: str
    pairs: list[Pair]
    correctness: np.ndarray
    output_tokens: np.ndarray | None
    usd: np.ndarray
    cost: np.ndarray
    cost_unit: CostUnit
    length_quantiles: LengthQuantiles | None = None

    def output_tokens_at(self, confidence: float) -> np.ndarray | None:
        """``[P]`` output tokens real output stays under with probability ``confidence``."""
        return tokens_at(self.output_tokens, self.length_quantiles, confidence)

    def __len__(self) -> int:
        return len(self.pairs)

    def order(self, by: SortKey = "correctness", descending: bool | None = None) -> np.ndarray:
        """Row indices sorted by ``by`` (correctness high-to-low, costs low-to-high by default)."""
        if by == "pair":
            keys: np.ndarray = np.array([f"{m}\x00{s}" for m, s in self.pairs])
            idx = np.argsort(keys, kind="stable")
            return idx[::-1] if descending else idx
        if by == "output_tokens":
            if self.output_tokens is None:
                raise RoutingError("this table has no output-token predictions to sort by")
            values = self.output_tokens
        elif by in ("correctness", "usd", "cost"):
            values = getattr(self, by)
        else:
            raise RoutingError(f"cannot sort a routing table by {by!r}")
        if descending is None:
            descending = by == "correctness"
        return np.argsort(-values if descending else values, kind="stable")

    def rows(
        self, sort_by: SortKey | None = None, descending: bool | None = None
    ) -> list[TableRow]:
        """The rows, in pair order or sorted by ``sort_by``."""
        idx = range(len(self.pairs)) if sort_by is None else self.order(sort_by, descending)
        tok = self.output_tokens
        shown: dict[str, np.ndarray] = {}
        if tok is not None and self.length_quantiles is not None:
            shown = {
                f"p{round(c * 100)}": self.length_quantiles.upper(tok, c) for c in SHOWN_LEVELS
            }
        return [
            TableRow(
                model=self.pairs[j][0],
                strategy=self.pairs[j][1],
                correctness=float(self.correctness[j]),
                output_tokens=None if tok is None else float(tok[j]),
                usd=float(self.usd[j]),
                cost=float(self.cost[j]),
                output_token_quantiles={k: float(v[j]) for k, v in shown.items()} or None,
            )
            for j in idx
        ]

    def sorted(self, by: SortKey = "correctness", descending: bool | None = None) -> RoutingTable:
        """A copy with rows reordered."""
        idx = self.order(by, descending)
        q = self.length_quantiles
        return replace(
            self,
            pairs=[self.pairs[j] for j in idx],
            correctness=self.correctness[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            usd=self.usd[idx],
            cost=self.cost[idx],
            length_quantiles=None
            if q is None
            else replace(q, offsets=q.offsets[idx], counts=q.counts[idx], pooled=q.pooled[idx]),
        )

    def to_dicts(self, sort_by: SortKey | None = None) -> list[dict[str, Any]]:
        """Rows as plain dicts (JSON-ready)."""
        return [asdict(r) for r in self.rows(sort_by)]


@dataclass(frozen=True)
class RoutingTables:
    """Routing tables of a batch of questions as ``[n, P]`` arrays."""

    questions: list[str]
    pairs: list[Pair]
    correctness: np.ndarray
    output_tokens: np.ndarray | None
    usd: np.ndarray
    cost: np.ndarray
    cost_unit: CostUnit
    length_quantiles: LengthQuantiles | None = None

    def output_tokens_at(self, confidence: float) -> np.ndarray | None:
        """``[n, P]`` output tokens real output stays under with probability ``confidence``."""
        return tokens_at(self.output_tokens, self.length_quantiles, confidence)

    @classmethod
    def from_prediction(
        cls, prediction: PredictionLike, questions: Sequence[str], cost_model: CostModel
    ) -> RoutingTables:
        """Combine a prediction with the cost model; refuse one that is not finite everywhere."""
        costs = cost_model.predicted(prediction, questions)
        correctness = np.asarray(prediction.correctness, dtype=np.float64)
        bad = ~np.isfinite(correctness).all(axis=1)
        if costs.output_tokens is not None:
            bad |= ~np.isfinite(costs.output_tokens).all(axis=1)
        quantiles = getattr(prediction, "length_quantiles", None)
        if bad.any():
            raise RoutingError(
                f"the predictor returned non-finite values (NaN or infinity) for question(s) "
                f"{np.flatnonzero(bad)[:10].tolist()} of {len(questions)}; refusing to route on "
                "them (a damaged checkpoint or encoder?)"
            )
        return cls(
            questions=list(questions),
            pairs=list(cost_model.pairs),
            correctness=correctness,
            output_tokens=costs.output_tokens,
            usd=costs.usd,
            cost=costs.cost,
            cost_unit=cost_model.unit,
            length_quantiles=quantiles if isinstance(quantiles, LengthQuantiles) else None,
        )

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> RoutingTable:
        return RoutingTable(
            question=self.questions[i],
            pairs=self.pairs,
            correctness=self.correctness[i],
            output_tokens=None if self.output_tokens is None else self.output_tokens[i],
            usd=self.usd[i],
            cost=self.cost[i],
            cost_unit=self.cost_unit,
            length_quantiles=self.length_quantiles,
        )

    def __iter__(self) -> Iterator[RoutingTable]:
        return (self[i] for i in range(len(self)))


def tokens_at(
    tokens: np.ndarray | None, quantiles: LengthQuantiles | None, confidence: float
) -> np.ndarray | None:
    """``tokens`` raised to their ``confidence``-quantile; a clear error without quantiles."""
    if tokens is None:
        return None
    if quantiles is None:
        raise RoutingError(
            f"no length quantiles to bound output tokens at confidence {confidence}: the "
            "predictor has none (a checkpoint saved before they existed); "
            "retrain it, or route on the point estimate"
        )
    try:
        return quantiles.upper(tokens, confidence)
    except QuantileError as exc:
        raise RoutingError(str(exc)) from exc
