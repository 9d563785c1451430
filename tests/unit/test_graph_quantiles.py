"""The LangGraph node with a confidence: shares and fits on the length quantiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from langchain_rtr.graph import Budget, create_rtr_node
from langchain_rtr.quantiles import LengthQuantiles

try:
    from test_graph_fakes import FakePredictor, make_rtr
except ImportError:  # tests/unit imported as a package
    from tests.unit.test_graph_fakes import FakePredictor, make_rtr  # type: ignore[no-redef]

# Pairs: big/cot, big/direct, small/cot, small/direct. At 0.9 the first three run up to 3x
# their estimate (log1p offset ln 3), small/direct barely past it.
SPREAD = LengthQuantiles(
    levels=np.array([0.9]),
    offsets=np.array([[math.log(3)], [math.log(3)], [math.log(3)], [0.05]]),
    counts=np.full(4, 100),
    pooled=np.zeros(4, bool),
)


@dataclass
class _Prediction:
    correctness: np.ndarray
    output_tokens: np.ndarray | None
    length_quantiles: LengthQuantiles | None


class QuantilePredictor(FakePredictor):
    def predict(self, questions: Sequence[str]) -> _Prediction:  # type: ignore[override]
        base = super().predict(questions)
        return _Prediction(base.correctness, base.output_tokens, SPREAD)


TABLE = {
    "q": ([0.9, 0.8, 0.7, 0.4], [80.0, 80.0, 80.0, 30.0]),
    "easy": ([0.9, 0.9, 0.9, 0.9], [10.0, 10.0, 10.0, 10.0]),
    "hard": ([0.9, 0.9, 0.9, 0.9], [90.0, 90.0, 90.0, 90.0]),
}


def test_with_a_confidence_only_pairs_whose_quantile_fits_are_called() -> None:
    rtr, _ = make_rtr(QuantilePredictor(TABLE))
    point = create_rtr_node(rtr, budget=Budget(tokens=100)).invoke({"subtasks": ["q"]})
    assert (point["answers"][0]["model"], point["answers"][0]["strategy"]) == ("big", "cot")
    sure = create_rtr_node(rtr, budget=Budget(tokens=100), confidence=0.9)
    answer = sure.invoke({"subtasks": ["q"]})["answers"][0]
    assert answer["status"] == "ok"
    assert (answer["model"], answer["strategy"]) == ("small", "direct")


def test_weighted_shares_follow_the_quantile() -> None:
    rtr, _ = make_rtr(QuantilePredictor(TABLE))
    node = create_rtr_node(
        rtr, budget=Budget(tokens=1_000), allotment="weighted", max_concurrency=2, confidence=0.9
    )
    easy, hard = node.invoke({"subtasks": ["easy", "hard"]})["answers"]
    # The router picks big/cot for both (most accurate): bounds 3 x 11 - 1 = 32 and 272.
    assert easy["allotted"]["tokens"] == math.floor(1_000 * 32 / 304)
    assert hard["allotted"]["tokens"] == math.floor(1_000 * 272 / 304)
