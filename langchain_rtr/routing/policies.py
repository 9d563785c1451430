"""Policies: pick one pair per question from predicted correctness, tokens and cost."""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal

import numpy as np

from langchain_rtr.errors import KnobTypeError, NotCalibratedError, RoutingError
from langchain_rtr.quantiles import LengthQuantiles
from langchain_rtr.routing.costs import check_cost_unit
from langchain_rtr.routing.tables import tokens_at
from langchain_rtr.routing.types import (
    DEFAULT_LAMBDA,
    STATUS_BELOW_FLOOR,
    STATUS_NO_ALLOWED_PAIR,
    STATUS_NO_PAIR_FITS,
    STATUS_OK,
    STATUS_OVER_BUDGET,
    CostUnit,
)


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
class _Inputs:
    """One call's checked ``[n, P]`` arrays, and the length quantiles if the table has them."""

    a: np.ndarray
    t: np.ndarray | None
    c: np.ndarray
    allowed: np.ndarray
    quantiles: LengthQuantiles | None


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
    def _keys(self, x: _Inputs) -> _Keys: ...

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
        k = self._keys(_Inputs(a, t, c, mask, length_quantiles))
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

    def _keys(self, x: _Inputs) -> _Keys:
        score = self.lam * x.a - (1.0 - self.lam) * x.c
        return _Keys([score, x.a, -x.c], x.allowed, _status(x.a.shape[0]))


def _check_budget(budget: Any, policy: str) -> None:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise KnobTypeError(f"{policy} max_tokens: expected a number of tokens, got {budget!r}")
    if not (math.isfinite(budget) and float(budget) >= 0):
        raise RoutingError(f"{policy} max_tokens: expected a finite number >= 0, got {budget!r}")


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
    """Probability that the chosen pair's answer fits ``max_tokens`` (in (0, 1)); it needs
    the routing table's length quantiles. None: the predicted (mean) length must fit."""
    name: ClassVar[str] = "token_budget"

    def __post_init__(self) -> None:
        _check_budget(self.max_tokens, "TokenBudget")
        if self.on_no_fit not in ("none", "fewest_tokens", "best_bet"):
            raise RoutingError(
                f"on_no_fit must be 'none', 'fewest_tokens' or 'best_bet', got {self.on_no_fit!r}"
            )
        c = self.confidence
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, numbers.Real):
                raise KnobTypeError(f"TokenBudget confidence: expected a number, got {c!r}")
            if not 0.0 < c < 1.0:
                raise RoutingError(f"TokenBudget confidence: expected a value in (0, 1), got {c!r}")

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
            tokens = tokens_at(np.asarray(tokens), length_quantiles, self.confidence)
        if self.on_no_fit != "best_bet" or point is None:
            return super().choose(correctness, tokens, cost, allowed)
        if length_quantiles is None:
            raise RoutingError('TokenBudget(on_no_fit="best_bet") needs length quantiles')
        choice = replace(self, on_no_fit="none").choose(
            correctness, point, cost, allowed, length_quantiles
        )
        stuck = (choice.index < 0) & (choice.status != STATUS_NO_ALLOWED_PAIR)
        if not stuck.any():
            return choice
        bet = BestBet(self.max_tokens).choose(correctness, point, cost, allowed, length_quantiles)
        index, status = choice.index.copy(), choice.status.copy()
        ranking, n_ranked = choice.ranking.copy(), choice.n_ranked.copy()
        index[stuck], ranking[stuck], n_ranked[stuck] = (
            bet.index[stuck],
            bet.ranking[stuck],
            bet.n_ranked[stuck],
        )
        status[stuck] = STATUS_OVER_BUDGET
        return Choice(index=index, status=status, ranking=ranking, n_ranked=n_ranked)

    def _keys(self, x: _Inputs) -> _Keys:
        a, t, c, allowed = x.a, x.t, x.c, x.allowed
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
class BestBet(Policy):
    """The pair likeliest to give a right answer that ``max_tokens`` does not cut off.

    Every allowed pair is ranked by ``P(correct) x P(real output tokens <= max_tokens)``, the
    second factor read from the routing table's length quantiles. Where a :class:`TokenBudget`
    admits a pair on whether its length fits (its point estimate, or its quantile at a stated
    confidence) and then takes the most likely correct, this weighs the two: a long pair that
    is usually right can beat a short one that is often wrong, and a pair whose answer would
    often be cut off loses to one that finishes. It states no bound on how many answers are
    cut off; ``TokenBudget(max_tokens, confidence=c)`` does. The call is capped at
    ``max_tokens`` like a token budget's.

    The status is ``"ok"``, or ``"over_budget"`` where no allowed pair fits at even the lowest
    stored level (every bet is 0: the most accurate, then the shortest, is chosen).
    """

    max_tokens: float
    name: ClassVar[str] = "best_bet"

    def __post_init__(self) -> None:
        _check_budget(self.max_tokens, "BestBet")

    def _keys(self, x: _Inputs) -> _Keys:
        a, t, allowed, quantiles = x.a, x.t, x.allowed, x.quantiles
        if t is None:
            raise RoutingError(
                "BestBet needs output-token predictions; this predictor has no length head"
            )
        if quantiles is None:
            raise RoutingError(
                "BestBet needs length quantiles; this predictor has none (retrain it: "
                "training calibrates them)"
            )
        fit = quantiles.fit_probability(t, self.max_tokens)
        status = _status(a.shape[0])
        status[allowed.any(axis=1) & ~(allowed & (fit > 0)).any(axis=1)] = STATUS_OVER_BUDGET
        return _Keys([a * fit, a, -t], allowed, status)


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

    def _keys(self, x: _Inputs) -> _Keys:
        a, c = x.a, x.c
        meets = x.allowed & (a >= self.floor)
        status = _status(a.shape[0])
        status[~meets.any(axis=1) & x.allowed.any(axis=1)] = STATUS_BELOW_FLOOR
        keys = [meets.astype(np.float64), np.where(meets, -c, a), np.where(meets, a, -c)]
        return _Keys(keys, x.allowed, status)


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
        check_cost_unit(self.unit)
        if not (float(self.target) >= 0):
            raise RoutingError(f"AverageBudget target must be >= 0, got {self.target!r}")
        if self.lam is not None and not (0.0 <= self.lam <= 1.0):
            raise RoutingError(f"AverageBudget lam must be in [0, 1], got {self.lam!r}")

    @property
    def calibrated(self) -> bool:
        """Whether λ has been fitted."""
        return self.lam is not None

    def _keys(self, x: _Inputs) -> _Keys:
        if self.lam is None:
            raise NotCalibratedError(
                "AverageBudget is not calibrated: call router.calibrate(policy, "
                "validation_questions) first"
            )
        return Tradeoff(self.lam)._keys(x)

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
    cls.name: cls for cls in (Tradeoff, TokenBudget, BestBet, AccuracyFloor, AverageBudget)
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
