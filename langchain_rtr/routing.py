"""Routing tables and the policies that pick one (model, strategy) pair from them.

For each question the predictor gives every pair a predicted correctness ``â`` and (when the
training data had lengths) a predicted number of output tokens ``l̂``. This module turns those
into a :class:`RoutingTable` with a predicted cost per pair, and a :class:`Policy` picks a pair.

Costs:
    ``cost_unit="usd"``: ``(input_tokens x input_price + l̂ x output_price) / 1e6`` from the
    :class:`~langchain_rtr.specs.ModelSpec` prices. Input tokens are *estimated* from the text:
    ``ceil(len(question) / 4)`` (the usual ~4 characters per token of English BPE vocabularies)
    plus a fixed chat-template overhead (:data:`PROMPT_OVERHEAD_TOKENS`) plus the strategy's
    prompt overhead where the caller gives one. The estimate only has to rank pairs, and the
    input term is the same for every strategy of a model, so its error moves little.
    When the predictor has no length head (the data had no lengths), a call costs the model's
    mean price ``(input_price + output_price) / 2`` -- the LLMRouter definition of cost.
    ``cost_unit="tokens"``: the predicted output tokens.

Cost normalisation (why one λ means the same on any data):
    :class:`Tradeoff` scores ``λ·â − (1−λ)·cost/scale``. ``scale`` is fitted once
    (:meth:`RTRRouter.fit_cost_scale`) as the mean predicted cost of the *most expensive pair*
    over a set of questions, and stored with the router. Normalised costs then lie around
    [0, 1] whatever the unit or price level, so λ/(1−λ) reads the same everywhere: it is how many
    "typical calls of the priciest pair" one unit of correctness probability is worth. At λ=0.9
    a pair that costs the priciest pair's full price must be at least 1/9 ≈ 11 points more likely
    to be correct than a free one to win.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, cast, get_args

import numpy as np
from rich.table import Table

from langchain_rtr.quantiles import SHOWN_LEVELS, LengthQuantiles, QuantileError
from langchain_rtr.specs import ModelSpec

Pair = tuple[str, str]
CostUnit = Literal["usd", "tokens"]
PairSelector = Pair | str
"""A pair ``(model, strategy)``, or a bare model name meaning every strategy of that model."""

CHARS_PER_TOKEN = 4.0
"""Characters per input token used to estimate a question's prompt length."""

PROMPT_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around one user turn (role markers, BOS/EOS)."""

DEFAULT_LAMBDA = 0.9
"""The trade-off used when no policy is given (see the module docstring for its meaning)."""

ROUTER_FORMAT = "langchain-rtr/router"
ROUTER_FORMAT_VERSION = 1

# Decision statuses.
STATUS_OK = "ok"
STATUS_NO_PAIR_FITS = "no_pair_fits"
"""TokenBudget: no allowed pair's predicted tokens fit the budget; no pair was chosen."""
STATUS_OVER_BUDGET = "over_budget"
"""TokenBudget with ``on_no_fit="fewest_tokens"``: nothing fits, the shortest pair was chosen."""
STATUS_NO_ALLOWED_PAIR = "no_allowed_pair"
"""The allowed mask of that question selects no pair (only reachable through raw arrays)."""
STATUS_BELOW_FLOOR = "below_floor"
"""AccuracyFloor: no allowed pair reaches the floor; the most accurate one was chosen."""


class RoutingError(ValueError):
    """A routing input is unusable: an unknown pair, a policy that cannot run on these inputs."""


class NotCalibratedError(RoutingError):
    """A policy or router needs fitting on validation questions before it can route."""


# --------------------------------------------------------------------------------------------
# What routing needs from the predictor (a Protocol so that this module never imports torch).
# --------------------------------------------------------------------------------------------


class PredictionLike(Protocol):
    """The predictor's output for ``n`` questions over its ``P`` pairs."""

    @property
    def correctness(self) -> np.ndarray:
        """float32 ``[n, P]``: probability that the pair answers correctly."""
        ...

    @property
    def output_tokens(self) -> np.ndarray | None:
        """float32 ``[n, P]`` predicted output tokens, or ``None`` without a length head."""
        ...


class EncoderLike(Protocol):
    """The question encoder the predictor was trained with."""

    @property
    def id(self) -> str:
        """A stable identity of the vectors."""
        ...

    @property
    def dim(self) -> int:
        """The vector size."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]``."""
        ...


class PredictorLike(Protocol):
    """What :class:`RTRRouter` uses of ``langchain_rtr.predictor.RTRPredictor``."""

    @property
    def pairs(self) -> list[Pair]:
        """The (model, strategy) column order of every prediction."""
        ...

    @property
    def encoder(self) -> EncoderLike:
        """The question encoder."""
        ...

    def predict(self, questions: Sequence[str]) -> PredictionLike:
        """Predict for question texts."""
        ...

    def predict_embeddings(self, embeddings: np.ndarray) -> PredictionLike:
        """Predict for already encoded questions."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint into ``directory``."""
        ...


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------


def estimate_input_tokens(questions: Sequence[str]) -> np.ndarray:
    """Estimated prompt tokens of each question: ``ceil(chars / 4) + PROMPT_OVERHEAD_TOKENS``."""
    lengths = np.fromiter((len(q) for q in questions), dtype=np.float64, count=len(questions))
    return np.ceil(lengths / CHARS_PER_TOKEN) + PROMPT_OVERHEAD_TOKENS


def _check_unit(unit: str) -> CostUnit:
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
        self.unit: CostUnit = _check_unit(unit)
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


# --------------------------------------------------------------------------------------------
# Routing tables
# --------------------------------------------------------------------------------------------

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
        return _tokens_at(self.output_tokens, self.length_quantiles, confidence)

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
        return replace(
            self,
            pairs=[self.pairs[j] for j in idx],
            correctness=self.correctness[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            usd=self.usd[idx],
            cost=self.cost[idx],
        )

    def to_dicts(self, sort_by: SortKey | None = None) -> list[dict[str, Any]]:
        """Rows as plain dicts (JSON-ready)."""
        return [asdict(r) for r in self.rows(sort_by)]

    def __rich__(self) -> Table:
        title = self.question if len(self.question) <= 80 else self.question[:77] + "..."
        table = Table(title=title, title_justify="left")
        rows = self.rows("correctness")
        levels = list(rows[0].output_token_quantiles or {}) if rows else []
        columns = [("model", "left"), ("strategy", "left"), ("P(correct)", "right")]
        columns += [("out tokens", "right")] + [(f"tokens {k}", "right") for k in levels]
        for name, justify in [*columns, ("$", "right")]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for r in rows:
            quantiles = r.output_token_quantiles or {}
            table.add_row(
                r.model,
                r.strategy,
                f"{r.correctness:.3f}",
                "-" if r.output_tokens is None else f"{r.output_tokens:,.0f}",
                *(_tokens_text(quantiles[k]) for k in levels),
                f"{r.usd:.3g}",
            )
        return table


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
        return _tokens_at(self.output_tokens, self.length_quantiles, confidence)

    @classmethod
    def from_prediction(
        cls, prediction: PredictionLike, questions: Sequence[str], cost_model: CostModel
    ) -> RoutingTables:
        """Combine a prediction with the cost model."""
        costs = cost_model.predicted(prediction, questions)
        quantiles = getattr(prediction, "length_quantiles", None)
        return cls(
            questions=list(questions),
            pairs=list(cost_model.pairs),
            correctness=np.asarray(prediction.correctness, dtype=np.float64),
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


def _tokens_at(
    tokens: np.ndarray | None, quantiles: LengthQuantiles | None, confidence: float
) -> np.ndarray | None:
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


def _tokens_text(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "inf"


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A policy's pick for ``n`` questions.

    Attributes:
        index: ``[n]`` column of the chosen pair, ``-1`` where none was chosen.
        status: ``[n]`` status strings (``"ok"``, ``"no_pair_fits"``, ...).
        ranking: ``[n, P]`` columns in the policy's order of preference; only the first
            ``n_ranked[i]`` entries of row ``i`` are eligible (the rest are padding).
        n_ranked: ``[n]`` how many pairs each row ranks.
    """

    index: np.ndarray
    status: np.ndarray
    ranking: np.ndarray
    n_ranked: np.ndarray


@dataclass(frozen=True)
class _Keys:
    """Sort keys (most significant first, higher is better) over eligible cells."""

    keys: list[np.ndarray]
    eligible: np.ndarray
    status: np.ndarray


def _as_arrays(
    correctness: np.ndarray,
    tokens: np.ndarray | None,
    cost: np.ndarray,
    allowed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    a = np.atleast_2d(np.asarray(correctness, dtype=np.float64))
    c = np.atleast_2d(np.asarray(cost, dtype=np.float64))
    t = None if tokens is None else np.atleast_2d(np.asarray(tokens, dtype=np.float64))
    if c.shape != a.shape or (t is not None and t.shape != a.shape):
        raise RoutingError(
            f"correctness {a.shape}, tokens {None if t is None else t.shape} and cost {c.shape} "
            "must have the same [n_questions, n_pairs] shape"
        )
    if allowed is None:
        mask = np.ones(a.shape, dtype=bool)
    else:
        mask = np.asarray(allowed, dtype=bool)
        if mask.ndim == 1:
            mask = np.broadcast_to(mask, a.shape)
        if mask.shape != a.shape:
            raise RoutingError(f"allowed mask {mask.shape} does not match {a.shape}")
    return a, t, c, mask


class Policy(ABC):
    """Picks one pair per question from predicted correctness, tokens and (normalised) cost.

    Subclasses are frozen dataclasses; :meth:`choose` is the vectorised core used both by the
    router (one question) and by offline evaluation (thousands at once).
    """

    name: ClassVar[str]
    needs_cost_scale: ClassVar[bool] = False

    @abstractmethod
    def _keys(
        self, a: np.ndarray, t: np.ndarray | None, c: np.ndarray, allowed: np.ndarray
    ) -> _Keys: ...

    def choose(
        self,
        correctness: np.ndarray,
        tokens: np.ndarray | None,
        cost: np.ndarray,
        allowed: np.ndarray | None = None,
        length_quantiles: LengthQuantiles | None = None,
    ) -> Choice:
        """Pick a pair per row.

        Args:
            correctness: ``[n, P]`` predicted probability of a correct answer.
            tokens: ``[n, P]`` predicted output tokens, or ``None`` (token budgets need them).
            cost: ``[n, P]`` predicted cost in the router's unit divided by its cost scale.
            allowed: ``[P]`` or ``[n, P]`` boolean mask of candidate pairs (default: all).
            length_quantiles: Per-pair quantiles of ``tokens`` (a budget with a confidence
                needs them; other policies ignore them).

        Returns:
            The chosen columns, statuses and the full preference ranking.
        """
        a, t, c, mask = _as_arrays(correctness, tokens, cost, allowed)
        k = self._keys(a, t, c, mask)
        # np.lexsort sorts ascending by the *last* key first: eligible cells first, then
        # each key high-to-low; ties keep column order.
        sort_keys = [-key for key in reversed(k.keys)] + [~k.eligible]
        ranking = np.lexsort(sort_keys, axis=-1) if a.size else np.zeros(a.shape, np.int64)
        n_ranked = k.eligible.sum(axis=1)
        status = k.status
        status[(n_ranked == 0) & (status == STATUS_OK)] = STATUS_NO_ALLOWED_PAIR
        index = np.where(n_ranked > 0, ranking[:, 0] if a.shape[1] else -1, -1)
        return Choice(
            index=index.astype(np.int64),
            status=status,
            ranking=ranking.astype(np.int64),
            n_ranked=n_ranked.astype(np.int64),
        )

    def params(self) -> dict[str, Any]:
        """The policy's parameters (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """``{"policy": name, **params}``; :func:`policy_from_dict` reads it back."""
        return {"policy": self.name, **self.params()}


def _status(n: int, value: str = STATUS_OK) -> np.ndarray:
    return np.full(n, value, dtype=object)


@dataclass(frozen=True)
class Tradeoff(Policy):
    """Best ``lam·â − (1−lam)·cost/scale``: lam=1 is most accurate, lam=0 is cheapest.

    Ties go to the more accurate, then cheaper, then earlier pair.
    """

    lam: float = DEFAULT_LAMBDA
    name: ClassVar[str] = "tradeoff"
    needs_cost_scale: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.lam) <= 1.0):
            raise RoutingError(f"Tradeoff lam must be in [0, 1], got {self.lam!r}")

    def _keys(
        self, a: np.ndarray, t: np.ndarray | None, c: np.ndarray, allowed: np.ndarray
    ) -> _Keys:
        score = self.lam * a - (1.0 - self.lam) * c
        return _Keys([score, a, -c], allowed, _status(a.shape[0]))


@dataclass(frozen=True)
class TokenBudget(Policy):
    """Most likely correct pair whose predicted output tokens fit ``max_tokens``.

    With ``confidence=c`` a pair fits only when its ``c``-quantile of output tokens does
    (:class:`~langchain_rtr.quantiles.LengthQuantiles`): the budget then truncates about a
    share ``1 - c`` of the calls it admits, where the point estimate (``confidence=None``,
    the default) truncates about half of those predicted near the budget.

    When nothing fits: with ``on_no_fit="none"`` (default) no pair is chosen and the status is
    ``"no_pair_fits"``; with ``"fewest_tokens"`` the shortest pair (by the tokens the budget
    is checked on) is chosen with status ``"over_budget"``; with ``"best_bet"`` (needs length
    quantiles) the pair with the highest ``P(correct) x P(real tokens <= max_tokens)``, the
    likeliest to give a right answer that is not cut off, with status ``"over_budget"``. The
    chosen pair's predicted tokens (its quantile, with a confidence) never exceed the budget
    otherwise.
    """

    max_tokens: float
    on_no_fit: Literal["none", "fewest_tokens", "best_bet"] = "none"
    confidence: float | None = None
    name: ClassVar[str] = "token_budget"

    def __post_init__(self) -> None:
        if not (float(self.max_tokens) >= 0):
            raise RoutingError(f"TokenBudget max_tokens must be >= 0, got {self.max_tokens!r}")
        if self.on_no_fit not in ("none", "fewest_tokens", "best_bet"):
            raise RoutingError(
                f"on_no_fit must be 'none', 'fewest_tokens' or 'best_bet', got {self.on_no_fit!r}"
            )
        c = self.confidence
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, int | float) or not 0.0 < float(c) < 1.0
        ):
            raise RoutingError(f"TokenBudget confidence must be in (0, 1) or None, got {c!r}")

    def choose(
        self,
        correctness: np.ndarray,
        tokens: np.ndarray | None,
        cost: np.ndarray,
        allowed: np.ndarray | None = None,
        length_quantiles: LengthQuantiles | None = None,
    ) -> Choice:
        """As :meth:`Policy.choose`, on the ``confidence``-quantile of tokens when one is set."""
        point = tokens
        if self.confidence is not None and tokens is not None:
            tokens = _tokens_at(np.asarray(tokens), length_quantiles, self.confidence)
        if self.on_no_fit != "best_bet" or point is None:
            return super().choose(correctness, tokens, cost, allowed)
        if length_quantiles is None:
            raise RoutingError('TokenBudget(on_no_fit="best_bet") needs length quantiles')
        choice = replace(self, on_no_fit="none").choose(
            correctness, point, cost, allowed, length_quantiles
        )
        a, t, _, mask = _as_arrays(correctness, point, cost, allowed)
        assert t is not None
        stuck = (choice.index < 0) & mask.any(axis=1)
        if not stuck.any():
            return choice
        bet = np.where(mask, a * length_quantiles.fit_probability(t, self.max_tokens), -np.inf)
        order = np.lexsort((t, -a, -bet), axis=-1)  # best bet, then more accurate, shorter
        index, status = choice.index.copy(), choice.status.copy()
        ranking, n_ranked = choice.ranking.copy(), choice.n_ranked.copy()
        index[stuck] = order[stuck, 0]
        status[stuck] = STATUS_OVER_BUDGET
        ranking[stuck] = order[stuck]
        n_ranked[stuck] = mask[stuck].sum(axis=1)
        return Choice(index=index, status=status, ranking=ranking, n_ranked=n_ranked)

    def _keys(
        self, a: np.ndarray, t: np.ndarray | None, c: np.ndarray, allowed: np.ndarray
    ) -> _Keys:
        if t is None:
            raise RoutingError(
                "TokenBudget needs output-token predictions; this predictor has no length head"
            )
        fits = allowed & (t <= self.max_tokens)
        none_fit: np.ndarray = np.logical_not(fits.any(axis=1))
        status = _status(a.shape[0])
        status[none_fit & allowed.any(axis=1)] = STATUS_NO_PAIR_FITS
        if self.on_no_fit == "fewest_tokens":
            fallback = none_fit[:, None]
            eligible = np.where(fallback, allowed, fits)
            keys = [np.where(fallback, -t, a), np.where(fallback, a, -t), -c]
            status[none_fit & allowed.any(axis=1)] = STATUS_OVER_BUDGET
        else:
            eligible = fits
            keys = [a, -t, -c]
        return _Keys(keys, eligible, status)


@dataclass(frozen=True)
class AccuracyFloor(Policy):
    """Cheapest pair whose predicted correctness is at least ``floor``.

    When no allowed pair reaches it, the most accurate allowed pair is chosen and the status is
    ``"below_floor"``. The ranking lists pairs above the floor (cheapest first), then the rest
    (most accurate first).
    """

    floor: float
    name: ClassVar[str] = "accuracy_floor"

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.floor) <= 1.0):
            raise RoutingError(f"AccuracyFloor floor must be in [0, 1], got {self.floor!r}")

    def _keys(
        self, a: np.ndarray, t: np.ndarray | None, c: np.ndarray, allowed: np.ndarray
    ) -> _Keys:
        meets = allowed & (a >= self.floor)
        status = _status(a.shape[0])
        status[~meets.any(axis=1) & allowed.any(axis=1)] = STATUS_BELOW_FLOOR
        keys = [meets.astype(np.float64), np.where(meets, -c, a), np.where(meets, a, -c)]
        return _Keys(keys, allowed, status)


@dataclass(frozen=True)
class AverageBudget(Policy):
    """Keep the *average* cost over a workload at ``target`` (RouteLLM-style calibration).

    It is a :class:`Tradeoff` whose λ is calibrated on validation predictions by bisection so
    that the mean chosen cost (output tokens or $, by ``unit``) is at most ``target``. Build it
    uncalibrated and call :meth:`RTRRouter.calibrate` (or :meth:`calibrate` on arrays); routing
    with an uncalibrated one raises :class:`NotCalibratedError`.

    Attributes:
        target: Mean output tokens or $ per question to stay under.
        unit: ``"tokens"`` or ``"usd"``.
        lam: The calibrated λ (``None`` until calibrated).
        validation_mean: The mean cost the calibrated λ reached on the validation questions.
    """

    target: float
    unit: CostUnit = "tokens"
    lam: float | None = None
    validation_mean: float | None = None
    name: ClassVar[str] = "average_budget"
    needs_cost_scale: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if not (float(self.target) >= 0):
            raise RoutingError(f"AverageBudget target must be >= 0, got {self.target!r}")
        if self.lam is not None and not (0.0 <= self.lam <= 1.0):
            raise RoutingError(f"AverageBudget lam must be in [0, 1], got {self.lam!r}")

    @property
    def calibrated(self) -> bool:
        """Whether λ has been fitted."""
        return self.lam is not None

    def _keys(
        self, a: np.ndarray, t: np.ndarray | None, c: np.ndarray, allowed: np.ndarray
    ) -> _Keys:
        if self.lam is None:
            raise NotCalibratedError(
                "AverageBudget is not calibrated: call router.calibrate(policy, "
                "validation_questions) first"
            )
        return Tradeoff(self.lam)._keys(a, t, c, allowed)

    def calibrate(
        self,
        correctness: np.ndarray,
        tokens: np.ndarray | None,
        usd: np.ndarray,
        cost: np.ndarray,
        allowed: np.ndarray | None = None,
        iterations: int = 60,
    ) -> AverageBudget:
        """Fit λ on validation predictions (arrays ``[n, P]``).

        Args:
            correctness: Predicted correctness.
            tokens: Predicted output tokens (needed when ``unit="tokens"``).
            usd: Predicted $ per call.
            cost: Normalised cost the trade-off scores with (router unit / cost scale).
            allowed: Candidate mask, as at routing time.
            iterations: Bisection steps on λ.

        Returns:
            A calibrated copy: the largest λ found whose mean chosen cost is ``<= target``.

        Raises:
            RoutingError: Even the cheapest choice (λ=0) averages above the target.
        """
        if self.unit == "tokens":
            if tokens is None:
                raise RoutingError(
                    'AverageBudget(unit="tokens") needs output-token predictions; '
                    "this predictor has no length head"
                )
            measure = np.atleast_2d(np.asarray(tokens, dtype=np.float64))
        else:
            measure = np.atleast_2d(np.asarray(usd, dtype=np.float64))
        rows = np.arange(measure.shape[0])

        def mean_at(lam: float) -> float:
            idx = Tradeoff(lam).choose(correctness, tokens, cost, allowed).index
            if (idx < 0).any():
                raise RoutingError("some validation questions have no allowed pair")
            return float(measure[rows, idx].mean())

        if measure.shape[0] == 0:
            raise RoutingError("AverageBudget.calibrate needs at least one validation question")
        hi_mean = mean_at(1.0)
        if hi_mean <= self.target:
            return replace(self, lam=1.0, validation_mean=hi_mean)
        lo, lo_mean = 0.0, mean_at(0.0)
        if lo_mean > self.target:
            raise RoutingError(
                f"AverageBudget target {self.target:g} {self.unit} is below what even the "
                f"cheapest pairs average on these {measure.shape[0]} questions ({lo_mean:.4g})"
            )
        hi = 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            m = mean_at(mid)
            if m <= self.target:
                lo, lo_mean = mid, m
            else:
                hi = mid
        return replace(self, lam=lo, validation_mean=lo_mean)


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Tradeoff, TokenBudget, AccuracyFloor, AverageBudget)
}


def policy_from_dict(spec: Mapping[str, Any]) -> Policy:
    """Build a policy from ``{"policy": name, **params}`` (the form :meth:`Policy.to_dict` writes).

    Raises:
        RoutingError: Unknown policy name or parameters.
    """
    params = dict(spec)
    name = params.pop("policy", None)
    cls = POLICIES.get(str(name))
    if cls is None:
        raise RoutingError(f"unknown policy {name!r}; expected one of {sorted(POLICIES)}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise RoutingError(f"policy {name!r} takes {sorted(known)}, got unknown {unknown}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise RoutingError(f"policy {name!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Decisions and the router
# --------------------------------------------------------------------------------------------


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
            predictor.pairs, models, _check_unit(cost_unit), strategy_overhead_tokens
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
        """Predict and build the routing tables of a batch."""
        questions = list(questions)
        return self.tables_from_prediction(self.predictor.predict(questions), questions)

    def table(self, question: str) -> RoutingTable:
        """Predict and build one question's routing table."""
        return self.tables([question])[0]

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
        mask = self.allowed_mask(allowed)  # validate before paying for predict()
        return self.decide(self.tables([question]), policy, mask)[0]

    def route_batch(
        self,
        questions: Sequence[str],
        policy: Policy | None = None,
        allowed: Iterable[PairSelector] | None = None,
    ) -> list[Decision]:
        """Pick a pair for each question (one predictor call for the batch)."""
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

    # -- persistence -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """What ``router.json`` holds."""
        return {
            "format": ROUTER_FORMAT,
            "version": ROUTER_FORMAT_VERSION,
            "pairs": [list(p) for p in self.pairs],
            "cost_unit": self.cost_unit,
            "cost_scale": self.cost_scale,
            "default_policy": self.default_policy.to_dict(),
            "strategy_overhead_tokens": self.cost_model.strategy_overhead_tokens,
            "input_token_estimate": {
                "chars_per_token": CHARS_PER_TOKEN,
                "prompt_overhead_tokens": PROMPT_OVERHEAD_TOKENS,
            },
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``predictor/`` (the checkpoint), ``models.json`` and ``router.json``.

        API keys are never written: supply them again with ``load(..., models=...)`` or the
        environment.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.predictor.save(root / "predictor")
        models = {
            name: spec.model_dump(mode="json", exclude={"api_key"})
            for name, spec in sorted(self.models.items())
        }
        (root / "models.json").write_text(json.dumps(models, indent=2) + "\n", encoding="utf-8")
        (root / "router.json").write_text(
            json.dumps(self.config(), indent=2) + "\n", encoding="utf-8"
        )
        return root

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        models: Mapping[str, ModelSpec] | None = None,
        predictor_loader: Callable[[Path], PredictorLike] | None = None,
        **predictor_kw: Any,
    ) -> RTRRouter:
        """Read a router written by :meth:`save`.

        Args:
            directory: The directory.
            models: Specs that replace the saved ones by name (to add endpoints or API keys).
            predictor_loader: Reads ``directory/predictor``; default
                ``langchain_rtr.predictor.load_predictor`` (a single predictor or a cascade).
            **predictor_kw: Passed to the default loader.
        """
        root = Path(directory)
        config = _read_json(root / "router.json")
        if config.get("format") != ROUTER_FORMAT:
            raise RoutingError(f"{root / 'router.json'}: not a langchain-rtr router file")
        if int(config.get("version", 0)) > ROUTER_FORMAT_VERSION:
            raise RoutingError(
                f"{root / 'router.json'}: format version {config.get('version')} is newer than "
                f"this library reads ({ROUTER_FORMAT_VERSION})"
            )
        saved = _read_json(root / "models.json")
        try:
            specs = {name: ModelSpec.model_validate(spec) for name, spec in saved.items()}
        except ValueError as exc:
            raise RoutingError(f"{root / 'models.json'}: {exc}") from exc
        specs.update(models or {})
        if predictor_loader is None:
            # Imported here: routing itself needs neither the predictor package nor safetensors.
            load = importlib.import_module("langchain_rtr.predictor.cascade").load_predictor

            def predictor_loader(path: Path) -> PredictorLike:
                return cast(PredictorLike, load(path, **predictor_kw))

        predictor = predictor_loader(root / "predictor")
        pairs = [tuple(p) for p in config.get("pairs", [])]
        if pairs and [tuple(p) for p in predictor.pairs] != pairs:
            raise RoutingError(
                f"{root}: the predictor's pairs {predictor.pairs} differ from router.json's {pairs}"
            )
        return cls(
            predictor,
            specs,
            cost_unit=config.get("cost_unit", "usd"),
            cost_scale=config.get("cost_scale"),
            default_policy=policy_from_dict(config["default_policy"])
            if config.get("default_policy")
            else None,
            strategy_overhead_tokens=config.get("strategy_overhead_tokens") or None,
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RoutingError(f"{path}: missing") from exc
    except json.JSONDecodeError as exc:
        raise RoutingError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise RoutingError(f"{path}: expected a JSON object")
    return data
