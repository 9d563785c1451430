"""Length quantiles: how far a pair's real output runs past the length head's estimate.

The length head gives one number per (question, pair); a token budget that admits a pair on
that number truncates about half the answers whose estimate sits near the budget. Conformal
calibration turns the point estimate into a stated bound: on questions a network did not train
on, the residual ``r = log1p(real) - log1p(predicted)`` is collected per pair, and its
finite-sample ``c``-quantile ``q_c`` (the ``ceil((n + 1) c)``-th smallest of ``n``) makes
``expm1(log1p(predicted) + q_c)`` a bound real output stays under with probability at least
``c`` on exchangeable questions. Residuals are taken in log space because length errors grow
with the length; a pair with too few residuals of its own uses those of all pairs pooled.

Numpy only, so routing can use the quantiles without importing the predictor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from langchain_rtr.errors import RTRError

LEVELS: tuple[float, ...] = (*(round(k / 100, 2) for k in range(1, 100)), 0.995, 0.999)
"""Confidence levels stored; a confidence between two of them uses the next one up."""

MIN_PAIR_RESIDUALS = 30
"""A pair with fewer residuals than this is calibrated on all pairs' residuals pooled."""

SHOWN_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)
"""Levels a routing table lists for each pair."""


class QuantileError(RTRError, ValueError):
    """Length quantiles that cannot be built or read (shapes, levels, stored values)."""


def _conformal(residuals: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """The ``ceil((n + 1) c)``-th smallest residual for each level (+inf past the n-th)."""
    r = np.sort(residuals[np.isfinite(residuals)])
    n = r.size
    out = np.full(len(levels), math.inf)
    if n == 0:
        return out
    for i, c in enumerate(levels):
        k = math.ceil((n + 1) * c)
        if k <= n:
            out[i] = r[max(k, 1) - 1]
    return out


@dataclass(frozen=True)
class LengthQuantiles:
    """Per-pair quantiles of the log-length residual, at :attr:`levels`.

    Attributes:
        levels: ``[L]`` increasing confidence levels in (0, 1).
        offsets: ``[P, L]`` residual quantiles ``q_c`` (``inf`` where too few residuals to
            state that level: no finite bound).
        counts: ``[P]`` residuals each pair's row was computed from.
        pooled: ``[P]`` whether that row used all pairs' residuals (too few of its own).
    """

    levels: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    pooled: np.ndarray

    def __post_init__(self) -> None:
        levels = np.asarray(self.levels, dtype=np.float64)
        if levels.ndim != 1 or levels.size == 0:
            raise QuantileError(f"levels must be a non-empty 1-d array, got shape {levels.shape}")
        if not (np.all((levels > 0) & (levels < 1)) and np.all(np.diff(levels) > 0)):
            raise QuantileError(f"levels must increase strictly within (0, 1), got {levels}")
        offsets = np.asarray(self.offsets, dtype=np.float64)
        if offsets.ndim != 2 or offsets.shape[1] != levels.size:
            raise QuantileError(
                f"offsets must be [pairs, {levels.size}] for {levels.size} levels, "
                f"got shape {offsets.shape}"
            )
        if np.isnan(offsets).any():
            raise QuantileError("offsets must not be NaN (inf marks a level that cannot be met)")
        n_pairs = offsets.shape[0]
        counts = np.asarray(self.counts, dtype=np.int64)
        pooled = np.asarray(self.pooled, dtype=bool)
        if counts.shape != (n_pairs,) or pooled.shape != (n_pairs,):
            raise QuantileError(
                f"counts {counts.shape} and pooled {pooled.shape} must be [{n_pairs}]"
            )
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "pooled", pooled)

    @property
    def n_pairs(self) -> int:
        """Pairs (columns) covered."""
        return int(self.offsets.shape[0])

    @classmethod
    def calibrate(
        cls,
        predicted: np.ndarray,
        real: np.ndarray,
        *,
        levels: Sequence[float] = LEVELS,
        min_pair_residuals: int = MIN_PAIR_RESIDUALS,
    ) -> LengthQuantiles:
        """Quantiles from held-out point estimates and real lengths, both ``[n, P]`` tokens.

        Cells where either is NaN (not observed) are left out.
        """
        p = np.asarray(predicted, dtype=np.float64)
        y = np.asarray(real, dtype=np.float64)
        if p.ndim != 2 or p.shape != y.shape:
            raise QuantileError(
                f"predicted {p.shape} and real {y.shape} must both be [n_questions, n_pairs]"
            )
        with np.errstate(invalid="ignore"):
            residual = np.log1p(np.maximum(y, 0.0)) - np.log1p(np.maximum(p, 0.0))
        all_residuals = residual[np.isfinite(residual)]
        rows, counts, pooled = [], [], []
        for j in range(p.shape[1]):
            own = residual[:, j][np.isfinite(residual[:, j])]
            use_pool = own.size < min_pair_residuals
            chosen = all_residuals if use_pool else own
            rows.append(_conformal(chosen, levels))
            counts.append(chosen.size)
            pooled.append(use_pool)
        return cls(
            levels=np.asarray(levels, dtype=np.float64),
            offsets=np.asarray(rows, dtype=np.float64).reshape(p.shape[1], len(levels)),
            counts=np.asarray(counts),
            pooled=np.asarray(pooled),
        )

    def offset(self, confidence: float) -> np.ndarray:
        """``[P]`` residual quantiles at ``confidence`` (the next stored level up).

        Raises:
            QuantileError: ``confidence`` outside (0, 1) or above the highest stored level.
        """
        c = float(confidence)
        if not 0.0 < c < 1.0:
            raise QuantileError(f"confidence must be in (0, 1), got {confidence!r}")
        i = int(np.searchsorted(self.levels, c - 1e-12, side="left"))
        if i >= self.levels.size:
            raise QuantileError(
                f"confidence {c} is above the highest calibrated level {self.levels[-1]}"
            )
        offsets: np.ndarray = self.offsets[:, i]
        return offsets

    def upper(self, tokens: np.ndarray, confidence: float) -> np.ndarray:
        """The ``confidence``-quantile of output tokens, from point estimates ``[..., P]``."""
        t = np.asarray(tokens, dtype=np.float64)
        if t.shape[-1:] != (self.n_pairs,):
            raise QuantileError(
                f"tokens have shape {t.shape}; expected [..., {self.n_pairs}] for these pairs"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            out: np.ndarray = np.expm1(np.log1p(np.maximum(t, 0.0)) + self.offset(confidence))
        bound: np.ndarray = np.maximum(out, 0.0)
        return bound

    def fit_probability(self, tokens: np.ndarray, budget: float) -> np.ndarray:
        """``[..., P]`` the highest stored level whose bound fits ``budget`` (0 where none does).

        A conservative reading of ``P(real output <= budget)`` from point estimates ``tokens``.
        """
        t = np.asarray(tokens, dtype=np.float64)
        if t.shape[-1:] != (self.n_pairs,):
            raise QuantileError(
                f"tokens have shape {t.shape}; expected [..., {self.n_pairs}] for these pairs"
            )
        with np.errstate(invalid="ignore"):
            room = np.log1p(max(float(budget), 0.0)) - np.log1p(np.maximum(t, 0.0))
        met = (self.offsets <= room[..., None]).sum(axis=-1)  # offsets rise with the level
        levels = np.concatenate([[0.0], self.levels])
        out: np.ndarray = levels[met]
        return out

    def wider(self, other: LengthQuantiles) -> LengthQuantiles:
        """Per pair and level the larger offset of the two: a bound that holds for both.

        For a prediction whose rows come from two predictors (a cascade).
        """
        if other.n_pairs != self.n_pairs or not np.array_equal(other.levels, self.levels):
            raise QuantileError("length quantiles over other pairs or levels cannot be combined")
        return LengthQuantiles(
            levels=self.levels,
            offsets=np.maximum(self.offsets, other.offsets),
            counts=np.minimum(self.counts, other.counts),
            pooled=self.pooled | other.pooled,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``inf`` stays ``Infinity``, as the checkpoint's JSON writes it)."""
        return {
            "target": "log1p(real output tokens) - log1p(predicted)",
            "levels": self.levels.tolist(),
            "offsets": self.offsets.tolist(),
            "counts": self.counts.tolist(),
            "pooled": self.pooled.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], n_pairs: int) -> LengthQuantiles:
        """Read :meth:`to_dict`'s form back, for ``n_pairs`` pairs.

        Raises:
            QuantileError: Missing keys, wrong shapes or values.
        """
        try:
            quantiles = cls(
                levels=np.asarray(data["levels"], dtype=np.float64),
                offsets=np.asarray(data["offsets"], dtype=np.float64),
                counts=np.asarray(data["counts"], dtype=np.int64),
                pooled=np.asarray(data["pooled"], dtype=bool),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, QuantileError):
                raise
            raise QuantileError(f"malformed length quantiles ({exc!r})") from exc
        if quantiles.n_pairs != n_pairs:
            raise QuantileError(
                f"length quantiles cover {quantiles.n_pairs} pairs; expected {n_pairs}"
            )
        return quantiles
