"""Length accuracy as the RTR paper reports it, beside a constant-per-pair baseline.

The paper's ablation gives the share of length predictions within ±100, ±200 and ±600 tokens
of the real output, per model. A prediction is only worth something where it beats the
cheapest guess, so the same shares are given for predicting each pair's median training length
for every question. Where the predictor has length quantiles, the share of real outputs at or
under each pair's ``c``-quantile (its coverage) is given too: a token budget with confidence
``c`` relies on it being about ``c``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.quantiles import LengthQuantiles
from langchain_rtr.routing import RTRRouter

TOLERANCES: tuple[int, ...] = (100, 200, 600)
COVERAGE_LEVELS: tuple[float, ...] = (0.8, 0.9, 0.95)


@dataclass(frozen=True)
class ModelLengthAccuracy:
    """One model's length accuracy over all its observed test cells (every strategy)."""

    model: str
    cells: int
    within: dict[int, float]
    baseline_within: dict[int, float]
    coverage: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LengthAccuracyReport:
    """Per-model length accuracy (:func:`length_accuracy`)."""

    models: list[ModelLengthAccuracy]
    tolerances: tuple[int, ...] = TOLERANCES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "tolerances": list(self.tolerances),
            "models": [
                {
                    "model": m.model,
                    "cells": m.cells,
                    "within": {str(t): v for t, v in m.within.items()},
                    "baseline_within": {str(t): v for t, v in m.baseline_within.items()},
                    "coverage": {str(c): v for c, v in m.coverage.items()},
                }
                for m in self.models
            ],
        }

    def __rich__(self) -> Table:
        levels = sorted({c for m in self.models for c in m.coverage})
        table = Table(
            title="Output-length accuracy (share within ± tokens; baseline: each pair's "
            "median training length)",
            title_justify="left",
        )
        table.add_column("model")
        table.add_column("cells", justify="right")
        for t in self.tolerances:
            table.add_column(f"RTR ±{t}", justify="right")
            table.add_column(f"base ±{t}", justify="right")
        for c in levels:
            table.add_column(f"≤ q{round(c * 100)}", justify="right")
        for m in self.models:
            table.add_row(
                m.model,
                str(m.cells),
                *(
                    text
                    for t in self.tolerances
                    for text in (f"{m.within[t]:.3f}", f"{m.baseline_within[t]:.3f}")
                ),
                *(f"{m.coverage[c]:.3f}" if c in m.coverage else "-" for c in levels),
            )
        return table


def length_accuracy(
    predicted: np.ndarray,
    test: OutcomeMatrix,
    train: OutcomeMatrix,
    pairs: Sequence[tuple[str, str]],
    *,
    quantiles: LengthQuantiles | None = None,
    tolerances: Sequence[int] = TOLERANCES,
) -> LengthAccuracyReport | None:
    """Shares of predictions within each tolerance, per model, beside the median baseline.

    Args:
        predicted: ``[n_test, P]`` predicted output tokens, columns in ``pairs`` order.
        test: The held-out outcomes (real lengths).
        train: The training outcomes (the baseline's medians).
        pairs: The columns of ``predicted``; ``test`` and ``train`` are read in this order.
        quantiles: The predictor's length quantiles, for the coverage columns.
        tolerances: Token tolerances.

    Returns:
        The report, or ``None`` when the test part records no lengths.
    """
    real = _columns(test, pairs)
    observed = np.isfinite(real) & np.isfinite(predicted)
    if not observed.any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair with no training length
        medians = np.nanmedian(_columns(train, pairs), axis=0)
    baseline = np.broadcast_to(medians, real.shape)
    bounds = {c: quantiles.upper(predicted, c) for c in COVERAGE_LEVELS} if quantiles else {}
    rows: list[ModelLengthAccuracy] = []
    for model in dict.fromkeys(m for m, _ in pairs):
        cols = np.array([m == model for m, _ in pairs])
        cells = observed & cols[None, :]
        base_cells = cells & np.isfinite(baseline)
        if not cells.any():
            continue
        err = np.abs(predicted - real)[cells]
        base_err = np.abs(baseline - real)[base_cells]
        rows.append(
            ModelLengthAccuracy(
                model=model,
                cells=int(cells.sum()),
                within={t: float(np.mean(err <= t)) for t in tolerances},
                baseline_within={
                    t: float(np.mean(base_err <= t)) if base_err.size else float("nan")
                    for t in tolerances
                },
                coverage={c: float(np.mean(real[cells] <= b[cells])) for c, b in bounds.items()},
            )
        )
    return LengthAccuracyReport(models=rows, tolerances=tuple(tolerances))


def _columns(matrix: OutcomeMatrix, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    index = {tuple(p): j for j, p in enumerate(matrix.pairs)}
    out = np.full((len(matrix.questions), len(pairs)), np.nan)
    tokens = np.asarray(matrix.output_tokens, dtype=np.float64)
    for k, pair in enumerate(pairs):
        j = index.get(tuple(pair))
        if j is not None:
            out[:, k] = tokens[:, j]
    return out


def router_length_accuracy(
    router: RTRRouter, test: OutcomeMatrix, train: OutcomeMatrix
) -> LengthAccuracyReport | None:
    """:func:`length_accuracy` of a router's predictor on ``test`` (``None`` without lengths)."""
    prediction = router.predictor.predict(list(test.questions))
    if prediction.output_tokens is None:
        return None
    quantiles = getattr(prediction, "length_quantiles", None)
    return length_accuracy(
        np.asarray(prediction.output_tokens, dtype=np.float64),
        test,
        train,
        router.pairs,
        quantiles=quantiles if isinstance(quantiles, LengthQuantiles) else None,
    )
