"""What a routing choice realises on held-out data, and the baselines RTR is compared with.

Every method here ends in the same thing: one chosen column per test question. The
:class:`Outcomes` of the test set turn that into accuracy, cost, $ and tokens, overall and per
source, so all methods are measured by one piece of code.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.routing import CostModel, CostUnit, Pair, RoutingError, Tradeoff
from langchain_rtr.specs import ModelSpec

COST_BASIS_OBSERVED = "observed $"
COST_BASIS_TOKENS = "output tokens x prices"
COST_BASIS_MEAN_PRICE = "mean price per call ($/M tokens)"


@dataclass(frozen=True)
class Metrics:
    """What one method realised on a set of questions."""

    accuracy: float
    cost: float
    usd: float
    output_tokens: float | None
    n: int
    pair_share: dict[str, float] = field(default_factory=dict)
    per_source: dict[str, dict[str, float | None]] = field(default_factory=dict)


def pair_label(pair: Pair) -> str:
    """``model/strategy`` (``model`` alone for the implicit ``direct`` of model-only sets)."""
    return f"{pair[0]}/{pair[1]}"


@dataclass(frozen=True)
class Outcomes:
    """True per-question outcomes of every pair on the evaluation questions.

    Attributes:
        score: ``[n, P]`` observed score, NaN where unobserved.
        observed: ``[n, P]`` whether the cell was observed (methods only choose among these).
        usd: ``[n, P]`` realised $ of each call (see ``cost_basis``).
        output_tokens: ``[n, P]`` realised output tokens, or ``None`` when the set has none.
        cost: ``[n, P]`` in ``unit``: ``usd`` or ``output_tokens``.
        cost_basis: How $ was obtained: the observed cost, output tokens priced with the model
            specs, or (sets without lengths or costs, e.g. LLMRouter) the model's mean price per
            call.
    """

    questions: list[str]
    sources: list[str]
    pairs: list[Pair]
    score: np.ndarray
    observed: np.ndarray
    usd: np.ndarray
    output_tokens: np.ndarray | None
    cost: np.ndarray
    unit: CostUnit
    cost_basis: str

    @classmethod
    def from_matrix(
        cls,
        matrix: OutcomeMatrix,
        models: Mapping[str, ModelSpec],
        unit: CostUnit = "usd",
        strategy_overhead_tokens: Mapping[str, int] | None = None,
    ) -> Outcomes:
        """Realised costs of every observed cell.

        $: the observed cost where recorded; else output tokens priced with the model specs
        (input tokens as observed, or estimated from the question as the router does); else,
        for sets without lengths, the model's mean price per call. Observed cells that lack a
        token count get the pair's mean over the set.
        """
        score = np.asarray(matrix.score, dtype=np.float64)
        observed = np.isfinite(score)
        pricing = CostModel(matrix.pairs, models, "usd", strategy_overhead_tokens)
        tokens: np.ndarray | None = None
        if matrix.has_lengths:
            tokens = np.asarray(matrix.output_tokens, dtype=np.float64).copy()
            tokens = _fill_missing(tokens, observed)
        usd = np.asarray(matrix.cost, dtype=np.float64).copy()
        have_cost = np.isfinite(usd)
        basis = COST_BASIS_OBSERVED
        if not have_cost[observed].all():
            if tokens is not None:
                inputs = np.asarray(matrix.input_tokens, dtype=np.float64)
                estimate = pricing.input_tokens(matrix.questions)
                inputs = np.where(np.isfinite(inputs), inputs, estimate)
                priced = pricing.usd(tokens, inputs)
                basis = COST_BASIS_TOKENS if not have_cost.any() else COST_BASIS_OBSERVED
            else:
                priced = np.broadcast_to(pricing.mean_price, usd.shape)
                basis = COST_BASIS_MEAN_PRICE if not have_cost.any() else COST_BASIS_OBSERVED
            usd = np.where(have_cost, usd, priced)
        if unit == "tokens":
            if tokens is None:
                raise RoutingError('cost_unit="tokens" needs a set with output-token counts')
            cost = tokens
        else:
            cost = usd
        return cls(
            questions=list(matrix.questions),
            sources=list(matrix.sources),
            pairs=list(matrix.pairs),
            score=score,
            observed=observed,
            usd=usd,
            output_tokens=tokens,
            cost=cost,
            unit=unit,
            cost_basis=basis,
        )

    def __len__(self) -> int:
        return len(self.questions)

    def metrics(self, index: np.ndarray) -> Metrics:
        """What choosing column ``index[i]`` for question ``i`` realises (all must be observed)."""
        idx = np.asarray(index, dtype=np.int64)
        rows = np.arange(len(idx))
        if len(idx) != len(self) or (idx < 0).any() or not self.observed[rows, idx].all():
            raise RoutingError("every question needs an observed pair to be measured")
        score = self.score[rows, idx]
        cost = self.cost[rows, idx]
        usd = self.usd[rows, idx]
        tok = None if self.output_tokens is None else self.output_tokens[rows, idx]
        counts = np.bincount(idx, minlength=len(self.pairs)) / max(len(idx), 1)
        sources = np.asarray(self.sources, dtype=object)
        per_source: dict[str, dict[str, float | None]] = {}
        for source in sorted(set(self.sources)):
            m = sources == source
            per_source[source] = {
                "n": float(m.sum()),
                "accuracy": float(score[m].mean()),
                "cost": float(cost[m].mean()),
                "usd": float(usd[m].mean()),
                "output_tokens": None if tok is None else float(tok[m].mean()),
            }
        return Metrics(
            accuracy=float(score.mean()) if len(score) else float("nan"),
            cost=float(cost.mean()) if len(cost) else float("nan"),
            usd=float(usd.mean()) if len(usd) else float("nan"),
            output_tokens=None if tok is None else float(tok.mean()),
            n=len(idx),
            pair_share={
                pair_label(p): float(s) for p, s in zip(self.pairs, counts, strict=True) if s > 0
            },
            per_source=per_source,
        )

    def single_metrics(self, column: int) -> Metrics:
        """Always choosing one pair, measured on the questions where it was observed."""
        rows = np.flatnonzero(self.observed[:, column])
        sub = self.subset(rows)
        return sub.metrics(np.full(len(rows), column, dtype=np.int64))

    def subset(self, rows: Sequence[int] | np.ndarray) -> Outcomes:
        """The given question rows."""
        r = np.asarray(rows, dtype=np.int64)
        return Outcomes(
            questions=[self.questions[i] for i in r],
            sources=[self.sources[i] for i in r],
            pairs=self.pairs,
            score=self.score[r],
            observed=self.observed[r],
            usd=self.usd[r],
            output_tokens=None if self.output_tokens is None else self.output_tokens[r],
            cost=self.cost[r],
            unit=self.unit,
            cost_basis=self.cost_basis,
        )


def _fill_missing(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Observed cells without a value get their column's mean (else the overall mean)."""
    missing = observed & ~np.isfinite(values)
    if not missing.any():
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        col_mean = np.nanmean(values, axis=0)
    overall = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
    col_mean = np.where(np.isfinite(col_mean), col_mean, overall)
    return np.where(missing, col_mean[None, :], values)


def average_metrics(runs: Sequence[Metrics]) -> Metrics:
    """The mean of several runs' metrics (for the random baseline)."""
    if not runs:
        raise ValueError("average_metrics needs at least one run")

    def mean(values: Sequence[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return None if not vals else float(np.mean(vals))

    shares: dict[str, float] = {}
    for r in runs:
        for k, v in r.pair_share.items():
            shares[k] = shares.get(k, 0.0) + v / len(runs)
    per_source: dict[str, dict[str, float | None]] = {}
    for source in runs[0].per_source:
        keys = runs[0].per_source[source].keys()
        per_source[source] = {k: mean([r.per_source[source][k] for r in runs]) for k in keys}
    return Metrics(
        accuracy=float(np.mean([r.accuracy for r in runs])),
        cost=float(np.mean([r.cost for r in runs])),
        usd=float(np.mean([r.usd for r in runs])),
        output_tokens=mean([r.output_tokens for r in runs]),
        n=runs[0].n,
        pair_share=dict(sorted(shares.items())),
        per_source=per_source,
    )


# ------------------------------------------------------------------------------ baselines


def random_choices(observed: np.ndarray, seed: int) -> np.ndarray:
    """A uniformly random observed pair per question."""
    rng = np.random.default_rng(seed)
    keys = rng.random(observed.shape)
    keys[~observed] = -1.0
    return np.asarray(np.argmax(keys, axis=1), dtype=np.int64)


def random_metrics(outcomes: Outcomes, seeds: int = 50, seed: int = 0) -> Metrics:
    """The random router: mean of ``seeds`` runs (the RTR paper uses 50)."""
    return average_metrics(
        [outcomes.metrics(random_choices(outcomes.observed, seed + s)) for s in range(seeds)]
    )


def oracle_choices(outcomes: Outcomes) -> np.ndarray:
    """The best observed score per question, the cheapest pair among those that reach it.

    With 0/1 scores this is "the cheapest correct pair; if none is correct, the cheapest pair".
    """
    score = np.where(outcomes.observed, outcomes.score, -np.inf)
    best = score.max(axis=1, keepdims=True)
    cost = np.where(score >= best, outcomes.cost, np.inf)
    return np.asarray(np.argmin(cost, axis=1), dtype=np.int64)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norms > 0, norms, 1.0))


def knn_estimates(
    train_embeddings: np.ndarray,
    train_score: np.ndarray,
    train_cost: np.ndarray,
    test_embeddings: np.ndarray,
    k: int = 10,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the mean score and mean cost of the ``k`` most cosine-similar training questions.

    Args:
        train_embeddings: ``[m, d]``.
        train_score: ``[m, P]`` observed scores (NaN unobserved).
        train_cost: ``[m, P]`` realised costs (NaN unobserved).
        test_embeddings: ``[n, d]`` from the same encoder.
        k: Neighbours.
        chunk: Test rows per similarity block (bounds memory).

    Returns:
        ``(accuracy [n, P], cost [n, P])``; a pair no neighbour observed gets its training mean.
    """
    train = _normalise_rows(train_embeddings)
    test = _normalise_rows(test_embeddings)
    if train.shape[1] != test.shape[1]:
        raise RoutingError(
            f"train embeddings have dim {train.shape[1]}, test {test.shape[1]}: "
            "KNN needs vectors from the same encoder"
        )
    m = train.shape[0]
    if m == 0:
        raise RoutingError("KNN needs training questions")
    k = min(k, m)
    score = np.asarray(train_score, dtype=np.float64)
    cost = np.asarray(train_cost, dtype=np.float64)
    seen = np.isfinite(score)
    score0, cost0 = np.where(seen, score, 0.0), np.where(seen & np.isfinite(cost), cost, 0.0)
    cost_seen = seen & np.isfinite(cost)
    with np.errstate(invalid="ignore", divide="ignore"):
        global_acc = score0.sum(0) / seen.sum(0)
        global_cost = cost0.sum(0) / cost_seen.sum(0)
    acc_out = np.empty((test.shape[0], score.shape[1]))
    cost_out = np.empty_like(acc_out)
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T
        nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = score0[nb].sum(1) / seen[nb].sum(1)
            cst = cost0[nb].sum(1) / cost_seen[nb].sum(1)
        acc_out[start : start + chunk] = np.where(np.isfinite(acc), acc, global_acc)
        cost_out[start : start + chunk] = np.where(np.isfinite(cst), cst, global_cost)
    return acc_out, cost_out


@dataclass(frozen=True)
class SweepCurve:
    """A λ sweep of the trade-off ``λ·accuracy − (1−λ)·cost/scale``: one point per λ."""

    name: str
    lambdas: list[float]
    accuracy: list[float]
    cost: list[float]
    usd: list[float]
    output_tokens: list[float] | None
    strong_fraction: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "lambdas": self.lambdas,
            "accuracy": self.accuracy,
            "cost": self.cost,
            "usd": self.usd,
            "output_tokens": self.output_tokens,
            "strong_fraction": self.strong_fraction,
        }


def default_lambdas(points: int = 161) -> list[float]:
    """λ for a sweep: μ = (1−λ)/λ log-spaced over [1e-4, 1e4], plus λ = 0 and 1.

    Costs are normalised to ~[0, 1], so μ (the price of a unit of accuracy) in that range
    covers everything from "accuracy only" to "cost only".
    """
    mu = np.logspace(-4, 4, points)
    lams = np.concatenate([[0.0, 1.0], 1.0 / (1.0 + mu)])
    return [float(x) for x in np.unique(lams)]


def switch_lambdas(
    accuracy: np.ndarray, cost_norm: np.ndarray, allowed: np.ndarray, max_points: int = 400
) -> list[float]:
    """The λ at which some question's :class:`Tradeoff` pick changes, thinned to quantiles.

    A fixed grid can jump over most of a curve when the predictions are close together (with
    two pairs each question flips at one λ of its own, and a coarse grid sees only a few flips).
    Sweeping just past each flip traces every distinct routing the scores allow, so AIQ and
    APGR measure the predictor rather than the grid.
    """
    cols = accuracy.shape[1]
    points: list[np.ndarray] = []
    for i in range(cols):
        for j in range(i + 1, cols):
            both = allowed[:, i] & allowed[:, j]
            d_acc = accuracy[both, i] - accuracy[both, j]
            d_cost = cost_norm[both, i] - cost_norm[both, j]
            denom = d_acc + d_cost
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = d_cost / denom
            points.append(lam[np.isfinite(lam) & (lam > 0) & (lam < 1)])
    flips = np.unique(np.concatenate(points)) if points else np.empty(0)
    if flips.size == 0:
        return []
    if flips.size > max_points:
        flips = np.quantile(flips, np.linspace(0, 1, max_points))
    # just past each flip on both sides, so the two routings it separates are both seen
    eps = 1e-9
    return [float(x) for x in np.unique(np.clip(np.concatenate([flips - eps, flips + eps]), 0, 1))]


def tradeoff_choices(
    accuracy: np.ndarray, cost_norm: np.ndarray, allowed: np.ndarray, lam: float
) -> np.ndarray:
    """The :class:`~langchain_rtr.routing.Tradeoff` pick per row (must exist)."""
    idx = Tradeoff(lam).choose(accuracy, None, cost_norm, allowed).index
    if (idx < 0).any():
        raise RoutingError("a question has no allowed pair")
    return idx


def sweep(
    name: str,
    outcomes: Outcomes,
    accuracy: np.ndarray,
    cost_norm: np.ndarray,
    lambdas: Sequence[float],
    strong_column: int | None = None,
) -> SweepCurve:
    """Route the outcomes' questions at every λ (among observed pairs) and measure each."""
    acc, cost, usd, tok, strong = [], [], [], [], []
    for lam in lambdas:
        idx = tradeoff_choices(accuracy, cost_norm, outcomes.observed, lam)
        m = outcomes.metrics(idx)
        acc.append(m.accuracy)
        cost.append(m.cost)
        usd.append(m.usd)
        tok.append(m.output_tokens)
        if strong_column is not None:
            strong.append(float(np.mean(idx == strong_column)))
    return SweepCurve(
        name=name,
        lambdas=[float(x) for x in lambdas],
        accuracy=acc,
        cost=cost,
        usd=usd,
        output_tokens=None if outcomes.output_tokens is None else [float(t or 0) for t in tok],
        strong_fraction=strong if strong_column is not None else None,
    )
