"""Length accuracy beside the per-pair median baseline, per model (rtr eval's length table)."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.evaluation.lengths import length_accuracy
from langchain_rtr.quantiles import LengthQuantiles

PAIRS = [("a", "direct"), ("a", "cot"), ("b", "direct")]


def matrix(tokens: np.ndarray) -> OutcomeMatrix:
    n = tokens.shape[0]
    nan = np.full(tokens.shape, np.nan, np.float32)
    return OutcomeMatrix(
        questions=[f"q{i}" for i in range(n)],
        sources=["s"] * n,
        pairs=list(PAIRS),
        score=np.ones(tokens.shape, np.float32),
        output_tokens=tokens.astype(np.float32),
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )


def test_shares_within_each_tolerance_per_model_and_the_baseline() -> None:
    train = matrix(np.array([[100.0, 1000.0, 50.0]] * 3))  # medians 100, 1000, 50
    real = np.array([[150.0, 1150.0, 50.0], [400.0, 1000.0, 900.0]])
    predicted = np.array([[120.0, 1000.0, 60.0], [390.0, 1300.0, 60.0]])
    report = length_accuracy(predicted, matrix(real), train, PAIRS)
    assert report is not None
    a, b = report.models
    assert (a.model, a.cells, b.model, b.cells) == ("a", 4, "b", 2)
    # a's errors: 30, 150, 10, 300 -> 2 of 4 within 100, 3 within 200, all within 600.
    assert (a.within[100], a.within[200], a.within[600]) == (0.5, 0.75, 1.0)
    # a's baseline errors: 50, 150, 300, 0 -> 2/4, 3/4, 4/4; b's: 0, 850.
    assert (a.baseline_within[100], a.baseline_within[200]) == (0.5, 0.75)
    assert (b.within[600], b.baseline_within[100], b.baseline_within[600]) == (0.5, 0.5, 0.5)
    assert a.coverage == {}
    console = Console(width=200, record=True)
    console.print(report)
    assert "RTR ±600" in console.export_text()


def test_unobserved_cells_are_left_out_and_coverage_is_reported() -> None:
    train = matrix(np.array([[100.0, 100.0, 100.0]] * 2))
    real = np.array([[100.0, np.nan, 100.0], [300.0, np.nan, 100.0]])
    predicted = np.full((2, 3), 100.0)
    quantiles = LengthQuantiles(
        levels=np.array([0.8, 0.9, 0.95]),
        offsets=np.full((3, 3), np.log(2.0)),
        counts=np.full(3, 50),
        pooled=np.zeros(3, bool),
    )
    report = length_accuracy(predicted, matrix(real), train, PAIRS, quantiles=quantiles)
    assert report is not None
    a = report.models[0]
    assert a.cells == 2
    assert a.coverage[0.9] == 0.5  # bound 201: 100 under it, 300 over
    assert report.to_dict()["models"][0]["coverage"]["0.9"] == 0.5
    nothing = matrix(np.full((2, 3), np.nan))
    assert length_accuracy(predicted, nothing, train, PAIRS) is None
