"""Calibration of the predicted P(correct): Platt scaling fitted on validation data.

The router trades ``λ·P(correct)`` against cost, so λ means what it says only if the
probabilities are real ones. A network trained to early stopping is not calibrated: it is
sure of itself on the questions it has seen and of the sources it has seen. Every logit is
therefore mapped through ``sigmoid(slope · logit + intercept)``, the two numbers fitted on
outcomes the networks did not train on (each ensemble member's own validation part), pulled
towards the identity by a small ridge.

One slope and one intercept for all pairs, not two per pair: a shared increasing map never
changes which pair a question is likeliest to get right, nor how questions rank for a pair. Per
pair maps were measured and dropped: fitted on single members' validation logits they reorder
the pairs and lowered RouteLLM GSM8K's APGR from 0.649 to 0.616 (docs/quality.md).

numpy only: the calibration is applied at routing time, where torch is not imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from langchain_rtr.errors import RTRError

_EPS = 1e-6


class CalibrationError(RTRError, ValueError):
    """Calibration parameters or data that do not fit (shapes, values)."""


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _fit_one(
    z: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 50
) -> tuple[float, float]:
    """Newton's method on the mean BCE of ``sigmoid(a z + b)`` plus ``ridge ((a-1)² + b²)``."""
    a, b = 1.0, 0.0
    n = max(len(z), 1)
    for _ in range(iterations):
        p = _sigmoid(a * z + b)
        r = p - y
        w = p * (1.0 - p)
        grad = np.array([(r * z).sum() / n + 2 * ridge * (a - 1.0), r.sum() / n + 2 * ridge * b])
        hess = np.array(
            [
                [(w * z * z).sum() / n + 2 * ridge, (w * z).sum() / n],
                [(w * z).sum() / n, w.sum() / n + 2 * ridge],
            ]
        )
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if np.abs(step).max() < 1e-8:
            break
    return a, b


@dataclass(frozen=True)
class PlattCalibration:
    """``P = sigmoid(slope[j] · logit(p) + intercept[j])`` for pair column ``j``.

    :meth:`fit` gives every column the same two numbers; the stored form allows one per pair.
    """

    slope: np.ndarray  # float64 [P]
    intercept: np.ndarray  # float64 [P]

    def __post_init__(self) -> None:
        if self.slope.shape != self.intercept.shape or self.slope.ndim != 1:
            raise CalibrationError(
                f"slope {self.slope.shape} and intercept {self.intercept.shape} must be equal 1-d"
            )
        if not (np.isfinite(self.slope).all() and np.isfinite(self.intercept).all()):
            raise CalibrationError("calibration parameters must be finite")

    @classmethod
    def fit(
        cls, logits: np.ndarray, labels: np.ndarray, *, ridge: float = 1e-3
    ) -> PlattCalibration:
        """One slope and intercept for all columns, fitted where label and logit are finite.

        Soft labels in [0, 1] are fine. Fewer than two such cells: the identity.
        """
        z = np.asarray(logits, np.float64)
        y = np.asarray(labels, np.float64)
        if z.shape != y.shape or z.ndim != 2:
            raise CalibrationError(f"logits {z.shape} and labels {y.shape} must be equal [n, P]")
        seen = np.isfinite(y) & np.isfinite(z)
        a, b = (1.0, 0.0)
        if seen.sum() >= 2:
            a, b = _fit_one(z[seen], np.clip(y[seen], 0, 1), ridge)
        return cls(np.full(z.shape[1], a), np.full(z.shape[1], b))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[n, P]`` (float32) from raw ones ``[n, P]``."""
        p = np.asarray(probabilities)
        if p.ndim != 2 or p.shape[1] != self.slope.size:
            raise CalibrationError(f"probabilities {p.shape}; expected (n, {self.slope.size})")
        return _sigmoid(self.slope * logit(p) + self.intercept).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the checkpoint's config."""
        return {
            "method": "platt",
            "slope": self.slope.tolist(),
            "intercept": self.intercept.tolist(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], n_pairs: int) -> PlattCalibration:
        """Read :meth:`to_dict`'s output; the pair count must match the checkpoint's."""
        if values.get("method") != "platt":
            raise CalibrationError(f"unknown calibration method {values.get('method')!r}")
        slope = np.asarray(values["slope"], np.float64)
        intercept = np.asarray(values["intercept"], np.float64)
        if slope.shape != (n_pairs,):
            raise CalibrationError(f"calibration has {slope.size} pairs; expected {n_pairs}")
        return cls(slope, intercept)


@dataclass(frozen=True)
class Reliability:
    """Expected calibration error and the reliability curve behind it.

    Attributes:
        ece: ``Σ_b (n_b / n) · |mean predicted − mean observed|`` over equal-width bins.
        predicted: Mean predicted probability of each non-empty bin.
        observed: Mean observed score of each non-empty bin.
        counts: Outcomes in each non-empty bin.
    """

    ece: float
    predicted: list[float]
    observed: list[float]
    counts: list[int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "ece": self.ece,
            "predicted": self.predicted,
            "observed": self.observed,
            "counts": self.counts,
        }


def reliability(probabilities: np.ndarray, scores: np.ndarray, *, bins: int = 10) -> Reliability:
    """ECE of ``probabilities`` against ``scores`` over their observed (finite) cells."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(scores, np.float64)
    if p.shape != y.shape:
        raise CalibrationError(f"probabilities {p.shape} and scores {y.shape} differ")
    seen = np.isfinite(y) & np.isfinite(p)
    p, y = p[seen], y[seen]
    if p.size == 0:
        return Reliability(float("nan"), [], [], [])
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    predicted: list[float] = []
    observed: list[float] = []
    counts: list[int] = []
    ece = 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if not n:
            continue
        mp, my = float(p[mask].mean()), float(y[mask].mean())
        predicted.append(mp)
        observed.append(my)
        counts.append(n)
        ece += n / p.size * abs(mp - my)
    return Reliability(ece, predicted, observed, counts)


def member_validation_logits(
    member_logits: Sequence[tuple[np.ndarray, np.ndarray]], n_rows: int, n_pairs: int
) -> np.ndarray:
    """Out-of-member logits ``[n_rows, P]``: each row's mean over the members it validated.

    ``member_logits`` holds, per member, its validation rows and its logits on them; rows no
    member held out stay NaN.
    """
    total = np.zeros((n_rows, n_pairs))
    count = np.zeros((n_rows, 1))
    for rows, logits in member_logits:
        total[rows] += logits
        count[rows] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
