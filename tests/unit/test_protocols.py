"""Evaluation protocols: leave-one-source-out splits and the best-strategy-per-model baseline."""

from __future__ import annotations

import numpy as np
import pytest

from langchain_rtr.data.matrix import OutcomeMatrix, RoutingSet
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.errors import ConfigError
from langchain_rtr.evaluation import evaluate_routing
from langchain_rtr.evaluation.report import KIND_MODEL_BEST, KIND_SOURCE_BEST, MethodResult
from langchain_rtr.specs import ModelSpec
from langchain_rtr.workflow import (
    TrainingInfo,
    load_data,
    sources_of,
    split_by_source,
    split_for,
)


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def faithful() -> RoutingSet:
    return load_data("faithful-cot")


@pytest.mark.parametrize("held_out", ["MultiArith", "ASDiv", "GSM8K"])
def test_no_question_of_the_held_out_source_reaches_training(
    faithful: RoutingSet, held_out: str
) -> None:
    train, test = split_by_source(faithful, held_out)
    assert set(test.sources) == {held_out}
    assert held_out not in set(train.sources)
    assert not set(train.keys) & set(test.keys)
    assert not {_normalised(q) for q in train.questions} & {_normalised(q) for q in test.questions}
    every = faithful.matrix()
    assert len(test) == every.sources.count(held_out)


def test_questions_shared_across_sources_are_dropped_from_training(faithful: RoutingSet) -> None:
    train, test = split_by_source(faithful, "MultiArith")
    every = faithful.matrix()
    others = sum(1 for s in every.sources if s != "MultiArith")
    assert len(train) < others  # ASDiv repeats some MultiArith questions word for word


def test_the_folds_are_the_seven_data_sets(faithful: RoutingSet) -> None:
    folds = sources_of(faithful)
    assert folds == sorted(["AQUA", "ASDiv", "CLUTRR", "GSM8K", "MultiArith", "SVAMP", "saycan"])
    with pytest.raises(ConfigError, match="no source"):
        split_by_source(faithful, "gsm8k")


def test_a_saved_leave_one_out_router_is_evaluated_on_its_source(faithful: RoutingSet) -> None:
    info = TrainingInfo("faithful-cot", 0.2, 0, "usd", held_out_source="saycan")
    train, test = split_for(faithful, info)
    assert set(test.sources) == {"saycan"} and "saycan" not in train.sources
    random_info = TrainingInfo("faithful-cot", 0.2, 1, "usd")
    train, test = split_for(faithful, random_info)
    assert len(test) == round(0.2 * len(faithful.matrix()))


# ------------------------------------------------------------------------------ baseline

PAIRS = [("m1", "a"), ("m1", "b"), ("m2", "a"), ("m2", "b")]
SPECS = {
    "m1": ModelSpec(name="m1", input_price=0.0, output_price=1.0),
    "m2": ModelSpec(name="m2", input_price=0.0, output_price=2.0),
}


def _matrix(scores: np.ndarray, prefix: str, sources: list[str] | None = None) -> OutcomeMatrix:
    records = [
        RoutingRecord(
            question=f"{prefix} question {i}",
            source=sources[i] if sources else "s",
            model=model,
            strategy=strategy,
            score=float(scores[i, j]),
            output_tokens=10 * (j + 1),
        )
        for i in range(scores.shape[0])
        for j, (model, strategy) in enumerate(PAIRS)
    ]
    return OutcomeMatrix.from_records(records, pairs=PAIRS)


class _Prediction:
    def __init__(self, correctness: np.ndarray, tokens: np.ndarray) -> None:
        self.correctness = correctness
        self.output_tokens = tokens


def test_best_strategy_per_model_is_chosen_on_training_data() -> None:
    rng = np.random.default_rng(0)
    n = 40
    # training: m1 is right with a, wrong with b; m2 the other way round. Test: reversed.
    train_scores = np.tile([1.0, 0.0, 0.0, 1.0], (n, 1))
    test_scores = 1.0 - train_scores
    train, test = _matrix(train_scores, "train"), _matrix(test_scores, "test")
    report = evaluate_routing(
        test,
        _Prediction(np.full((n, 4), 0.5), test.output_tokens.copy()),
        rng.normal(size=(n, 3)),
        train,
        rng.normal(size=(n, 3)),
        SPECS,
    )
    rows = {m.name: m for m in report.methods if m.kind == KIND_MODEL_BEST}
    assert set(rows) == {"m1, best strategy (a)", "m2, best strategy (b)"}
    assert all(m.accuracy == 0.0 for m in rows.values())  # the test part is not peeked at
    assert rows["m1, best strategy (a)"].params["train_accuracy"] == 1.0
    assert KIND_MODEL_BEST in report.aiq


def test_best_pair_per_source_is_chosen_on_training_data() -> None:
    rng = np.random.default_rng(2)
    n = 40
    sources = ["s1" if i % 2 == 0 else "s2" for i in range(n)]
    # m1/a is right on s1 only, m2/b on s2 only: no single pair beats 0.5, the source does
    scores = np.array(
        [[1.0, 0.0, 0.0, 0.0] if s == "s1" else [0.0, 0.0, 0.0, 1.0] for s in sources]
    )
    train, test = _matrix(scores, "train", sources), _matrix(scores, "test", sources)

    def evaluated(test_part: OutcomeMatrix) -> list[MethodResult]:
        report = evaluate_routing(
            test_part,
            _Prediction(np.full((len(test_part), 4), 0.5), test_part.output_tokens.copy()),
            rng.normal(size=(len(test_part), 3)),
            train,
            rng.normal(size=(n, 3)),
            SPECS,
        )
        return [m for m in report.methods if m.kind == KIND_SOURCE_BEST]

    (row,) = evaluated(test)
    assert row.accuracy == 1.0
    assert row.params["pairs"] == {"s1": "m1/a", "s2": "m2/b"}
    # reversed test outcomes: the choice is made on training, so it is now always wrong
    (row,) = evaluated(_matrix(1.0 - scores, "test", sources))
    assert row.accuracy == 0.0
    # one test source (as under leave one source out): nothing to show
    only_s1 = [i for i, s in enumerate(sources) if s == "s1"]
    assert evaluated(_matrix(scores[only_s1], "test", ["s1"] * len(only_s1))) == []


def test_model_only_sets_have_no_best_strategy_rows() -> None:
    rng = np.random.default_rng(1)
    pairs = [("m1", "a"), ("m2", "a")]
    records = [
        RoutingRecord(
            question=f"q{i}", source="s", model=m, strategy=s, score=float(i % 2), output_tokens=5
        )
        for i in range(20)
        for m, s in pairs
    ]
    m = OutcomeMatrix.from_records(records, pairs=pairs)
    report = evaluate_routing(
        m,
        _Prediction(np.full((20, 2), 0.5), m.output_tokens.copy()),
        rng.normal(size=(20, 3)),
        m,
        rng.normal(size=(20, 3)),
        SPECS,
    )
    assert not [x for x in report.methods if x.kind == KIND_MODEL_BEST]
    assert KIND_MODEL_BEST not in report.aiq
