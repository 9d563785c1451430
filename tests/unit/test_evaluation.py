from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.evaluation import (
    CurveError,
    Outcomes,
    aiq,
    apgr,
    cost_to_reach,
    evaluate_router,
    evaluate_routing,
    knn_estimates,
    non_decreasing_hull,
    oracle_choices,
    random_metrics,
    upper_hull,
)
from langchain_rtr.evaluation.baselines import COST_BASIS_MEAN_PRICE, COST_BASIS_TOKENS
from langchain_rtr.routing import RTRRouter, estimate_input_tokens
from langchain_rtr.specs import ModelSpec


@dataclass
class Pred:
    correctness: np.ndarray
    output_tokens: np.ndarray | None


# ------------------------------------------------------------------------------ AIQ / APGR


def test_aiq_of_a_straight_line_is_its_mean() -> None:
    xs = np.linspace(0, 1, 11)
    ys = 0.2 + 0.6 * xs
    assert aiq(xs, ys, [0.0, 1.0], [0.2, 0.8]) == pytest.approx(0.5)


def test_aiq_of_a_step_ignores_points_under_the_hull_and_decreases() -> None:
    # hull: (0, .2) [cheapest single] -> (.2, .9), then flat at .9
    router_cost = [0.2, 0.5, 0.8, 1.0]
    router_acc = [0.9, 0.3, 0.85, 0.5]
    value = aiq(router_cost, router_acc, [0.0, 1.0], [0.2, 0.8])
    assert value == pytest.approx(0.2 * (0.2 + 0.9) / 2 + 0.8 * 0.9)


def test_aiq_interpolates_a_router_cheaper_than_every_single() -> None:
    # singles span [0.1, 1.1]; router points (0.05, .7) and (0.6, .9)
    value = aiq([0.05, 0.6], [0.7, 0.9], [0.1, 1.1], [0.5, 0.9])
    at_lo = 0.7 + 0.2 * (0.05 / 0.55)
    assert value == pytest.approx((0.5 * (at_lo + 0.9) / 2 + 0.5 * 0.9) / 1.0)


def test_aiq_adds_the_cheapest_single_point() -> None:
    # a router whose only point is the priciest single: hull from the cheapest single to it
    assert aiq([1.0], [0.8], [0.0, 1.0], [0.2, 0.8]) == pytest.approx(0.5)


def test_aiq_needs_a_cost_range() -> None:
    with pytest.raises(CurveError):
        aiq([1.0], [0.5], [1.0, 1.0], [0.4, 0.6])


def test_hulls() -> None:
    hull = upper_hull([0, 1, 2, 3, 1], [0, 2, 1, 3, 0.5])
    assert hull.tolist() == [[0, 0], [1, 2], [3, 3]]
    nd = non_decreasing_hull([0, 1, 2], [0.5, 0.9, 0.7])
    assert nd.tolist() == [[0, 0.5], [1, 0.9]]


def test_apgr_line_step_and_endpoints() -> None:
    weak, strong = 0.4, 0.8
    xs = np.linspace(0, 1, 11)
    assert apgr(xs, weak + (strong - weak) * xs, weak, strong) == pytest.approx(0.5)
    # all the gap recovered at 20% strong calls
    assert apgr([0.0, 0.2, 1.0], [weak, strong, strong], weak, strong) == pytest.approx(0.9)
    # a single middle point: the ends (all weak, all strong) are added
    assert apgr([0.5], [0.6], weak, strong) == pytest.approx(0.5)
    # a router better than the strong model at 50% gets above 1 there
    assert apgr([0.5], [1.0], weak, strong) == pytest.approx(0.5 * (0 + 1.5) / 2 + 0.5 * 1.25)
    with pytest.raises(CurveError):
        apgr([0.5], [0.5], 0.5, 0.5)


def test_cost_to_reach() -> None:
    assert cost_to_reach([1, 2, 3], [0.5, 0.7, 0.9], 0.7) == 2
    assert cost_to_reach([1, 2, 3], [0.5, 0.7, 0.9], 0.95) is None


# ------------------------------------------------------------------------------ tiny matrix

MODELS = {
    "cheap": ModelSpec(name="cheap", input_price=0.0, output_price=1.0),
    "mid": ModelSpec(name="mid", input_price=0.0, output_price=5.0),
    "dear": ModelSpec(name="dear", input_price=0.0, output_price=20.0),
}
PAIRS = [("cheap", "direct"), ("mid", "direct"), ("dear", "direct")]


def matrix(
    scores: list[list[float | None]],
    tokens: list[list[int]] | None = None,
    costs: list[list[float]] | None = None,
    sources: list[str] | None = None,
    prefix: str = "q",
) -> OutcomeMatrix:
    records = []
    for i, row in enumerate(scores):
        for j, s in enumerate(row):
            if s is None:
                continue
            records.append(
                RoutingRecord(
                    question=f"{prefix}{i} " + "x" * (4 * i),
                    source=(sources or ["s"] * len(scores))[i],
                    model=PAIRS[j][0],
                    strategy=PAIRS[j][1],
                    score=s,
                    output_tokens=None if tokens is None else tokens[i][j],
                    cost=None if costs is None else costs[i][j],
                )
            )
    return OutcomeMatrix.from_records(records, pairs=PAIRS)


def test_outcomes_cost_bases() -> None:
    no_len = Outcomes.from_matrix(matrix([[1, 0, 1]]), MODELS)
    assert no_len.cost_basis == COST_BASIS_MEAN_PRICE
    assert no_len.usd[0].tolist() == [0.5, 2.5, 10.0]
    assert no_len.output_tokens is None
    with_len = Outcomes.from_matrix(matrix([[1, 0, 1]], tokens=[[100, 200, 300]]), MODELS)
    assert with_len.cost_basis == COST_BASIS_TOKENS
    assert with_len.usd[0, 2] == pytest.approx(300 * 20.0 / 1e6)
    observed = Outcomes.from_matrix(
        matrix([[1, 0, 1]], tokens=[[1, 2, 3]], costs=[[0.1, 0.2, 0.3]]), MODELS, "tokens"
    )
    assert observed.usd[0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert observed.cost[0].tolist() == [1, 2, 3]


def test_oracle_cheapest_correct_else_cheapest() -> None:
    out = Outcomes.from_matrix(matrix([[0, 1, 1], [1, 1, 1], [0, 0, 0], [None, 0, 1]]), MODELS)
    assert oracle_choices(out).tolist() == [1, 0, 0, 2]
    m = out.metrics(oracle_choices(out))
    assert m.accuracy == pytest.approx(0.75)


def test_random_mean_of_seeds() -> None:
    # one observed pair per question: every seed must choose it
    out = Outcomes.from_matrix(matrix([[1, None, None], [None, 0, None]]), MODELS)
    m = random_metrics(out, seeds=50)
    assert m.accuracy == pytest.approx(0.5)
    assert m.usd == pytest.approx((0.5 + 2.5) / 2)
    # three pairs, scores 1,0,0 everywhere: about a third right
    out = Outcomes.from_matrix(matrix([[1, 0, 0]] * 30), MODELS)
    assert random_metrics(out, seeds=50).accuracy == pytest.approx(1 / 3, abs=0.05)


def test_knn_estimates_average_the_nearest_training_questions() -> None:
    train_emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    train_score = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1], [0, np.nan, 1]])
    train_cost = np.array([[1.0, 5, 20], [1, 5, 20], [2, 6, 22], [2, np.nan, 22]])
    test_emb = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    acc, cost = knn_estimates(train_emb, train_score, train_cost, test_emb, k=2)
    assert acc.tolist() == [[1, 0.5, 1], [0, 0, 1]]
    assert cost.tolist() == [[1, 5, 20], [2, 6, 22]]
    acc1, _ = knn_estimates(train_emb, train_score, train_cost, test_emb[:1], k=1)
    assert acc1.tolist() == [[1, 0, 1]]


# ------------------------------------------------------------------------------ end to end


def synthetic(n: int, seed: int, two: bool = False) -> tuple[OutcomeMatrix, np.ndarray]:
    """Questions of two kinds (easy/hard, in the embedding); the dear model solves hard ones."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    emb = np.where(hard[:, None], [0.0, 1.0], [1.0, 0.0]) + rng.normal(0, 0.1, (n, 2))
    scores: list[list[float | None]] = []
    tokens: list[list[int]] = []
    for h in hard:
        p = [0.2, 0.5, 0.9] if h else [0.9, 0.92, 0.95]
        row: list[float | None] = [float(rng.random() < q) for q in p]
        if two:
            row[1] = None
        scores.append(row)
        tokens.append([100, 200, 400])
    m = matrix(scores, tokens=tokens, sources=["hard" if h else "easy" for h in hard])
    return m, emb.astype(np.float32)


def perfect_prediction(m: OutcomeMatrix) -> Pred:
    return Pred(np.nan_to_num(m.score, nan=0.0), m.output_tokens.copy())


def test_evaluate_routing_report(tmp_path: Path) -> None:
    train, train_emb = synthetic(200, 0)
    test, test_emb = synthetic(100, 1)
    report = evaluate_routing(
        test, perfect_prediction(test), test_emb, train, train_emb, MODELS, name="synthetic"
    )
    names = [m.name for m in report.methods]
    for expected in ("cheap/direct", "mid/direct", "dear/direct", "random", "oracle", "rtr", "knn"):
        assert expected in names
    oracle = report.method("oracle")
    # a perfect predictor at λ=1 is the oracle
    rtr = report.curves["rtr"]
    top = rtr.lambdas.index(1.0)
    assert rtr.accuracy[top] == pytest.approx(oracle.accuracy)
    assert rtr.cost[top] == pytest.approx(oracle.cost)
    # KNN sees the easy/hard structure: it beats random and the cheapest single
    assert report.method("knn").accuracy > report.method("random").accuracy
    assert report.aiq["rtr"] >= report.aiq["knn"] >= report.aiq["singles"] - 1e-9
    assert report.apgr is None  # three pairs
    assert report.best_single == "dear/direct"
    assert report.match_best["rtr"] is not None
    assert report.match_best["rtr"]["cost_ratio"] < 1
    assert set(report.method("rtr").metrics.per_source) == {"easy", "hard"}
    # tokens are known in this set
    assert report.method("rtr").metrics.output_tokens is not None

    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["best_single"] == "dear/direct" and len(data["curves"]["rtr"]["lambdas"]) > 10

    console = Console(record=True, width=160)
    console.print(report)
    text = console.export_text()
    assert "oracle" in text and "AIQ" in text and "accuracy per source" in text

    png = report.plot(tmp_path / "plots" / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_evaluate_two_model_set_has_apgr() -> None:
    train, train_emb = synthetic(200, 2, two=True)
    test, test_emb = synthetic(120, 3, two=True)
    report = evaluate_routing(
        test, perfect_prediction(test), test_emb, train, train_emb, MODELS, cost_unit="tokens"
    )
    assert report.apgr is not None
    # a perfect predictor recovers more of the gap than a random mix (0.5) and than KNN
    assert report.apgr["rtr"] > 0.5
    assert report.apgr["rtr"] >= report.apgr["knn"] - 1e-9
    assert report.cost_unit == "tokens"
    # the unobserved middle pair is never chosen
    assert "mid/direct" not in report.method("rtr").metrics.pair_share


def test_apgr_ranks_by_accuracy_alone_and_reports_the_cost_aware_curve_beside() -> None:
    train, train_emb = synthetic(200, 2, two=True)
    test, test_emb = synthetic(120, 3, two=True)
    plain = perfect_prediction(test)
    skewed = perfect_prediction(test)
    # predicted lengths that make the strong model look dearest exactly where it is needed
    gain = np.nan_to_num(test.score[:, 2] - test.score[:, 0])
    assert skewed.output_tokens is not None
    skewed.output_tokens[:, 2] = np.where(gain > 0, 40_000.0, 10.0)
    apgrs = []
    for pred in (plain, skewed):
        report = evaluate_routing(
            test, pred, test_emb, train, train_emb, MODELS, cost_unit="tokens"
        )
        assert report.apgr is not None
        assert set(report.apgr) == {"rtr", "knn", "rtr ($ per question)", "knn ($ per question)"}
        apgrs.append(report.apgr)
    # per call, the ranking comes from the accuracy estimates alone: lengths change nothing
    assert apgrs[1]["rtr"] == pytest.approx(apgrs[0]["rtr"])
    assert apgrs[1]["knn"] == pytest.approx(apgrs[0]["knn"])
    # per question, the skewed lengths push the strong model away from where it helps
    assert apgrs[1]["rtr ($ per question)"] < apgrs[1]["rtr"] - 0.2


def test_evaluate_without_lengths_uses_mean_price() -> None:
    train, train_emb = synthetic(100, 4)
    test, test_emb = synthetic(60, 5)
    for m in (train, test):
        m.output_tokens[:] = np.nan
    pred = Pred(np.nan_to_num(test.score, nan=0.0), None)
    report = evaluate_routing(test, pred, test_emb, train, train_emb, MODELS)
    assert report.cost_basis == COST_BASIS_MEAN_PRICE
    assert report.method("rtr").metrics.output_tokens is None
    # the cost scale is the priciest model's mean price per call
    assert report.cost_scale == pytest.approx(MODELS["dear"].mean_price)
    assert report.method("dear/direct").cost == pytest.approx(MODELS["dear"].mean_price)


def test_evaluate_reorders_prediction_columns() -> None:
    train, train_emb = synthetic(100, 6)
    test, test_emb = synthetic(50, 7)
    pred = perfect_prediction(test)
    assert pred.output_tokens is not None
    flipped = Pred(pred.correctness[:, ::-1].copy(), pred.output_tokens[:, ::-1].copy())
    a = evaluate_routing(test, pred, test_emb, train, train_emb, MODELS, random_seeds=2)
    b = evaluate_routing(
        test, flipped, test_emb, train, train_emb, MODELS, pairs=PAIRS[::-1], random_seeds=2
    )
    assert a.curves["rtr"].accuracy == b.curves["rtr"].accuracy


class FakeEncoder:
    id = "fake"
    dim = 2

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


class TablePredictor:
    """Predicts from a lookup of embeddings to true scores (a perfect predictor)."""

    pairs = PAIRS

    def __init__(self, encoder: FakeEncoder, by_question: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.encoder = encoder
        self.by_question = by_question
        self.by_vector = {encoder.vectors[q].tobytes(): v for q, v in by_question.items()}

    def predict(self, questions: Sequence[str]) -> Pred:
        return self.predict_embeddings(self.encoder.encode(questions))

    def predict_embeddings(
        self, embeddings: np.ndarray, questions: Sequence[str] | None = None
    ) -> Pred:
        rows = [self.by_vector[e.astype(np.float32).tobytes()] for e in embeddings]
        return Pred(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))

    def save(self, directory: object) -> None:
        raise NotImplementedError


def test_evaluate_router_uses_its_encoder_and_scale() -> None:
    train, train_emb = synthetic(80, 8)
    test, test_emb = synthetic(40, 9)
    vectors = dict(zip(train.questions, train_emb, strict=True))
    vectors.update(zip(test.questions, test_emb, strict=True))
    truth = {
        q: (np.nan_to_num(test.score[i], nan=0.0), test.output_tokens[i])
        for i, q in enumerate(test.questions)
    }
    predictor = TablePredictor(FakeEncoder(vectors), truth)
    router = RTRRouter(predictor, MODELS, cost_unit="tokens", cost_scale=400.0)
    report = evaluate_router(router, test, train, random_seeds=3, name="router")
    assert report.cost_scale == 400.0 and report.cost_unit == "tokens"
    assert report.n_questions == len(test)
    # input tokens in the router's $ estimate come from the same rule as routing
    assert estimate_input_tokens(["abcd"])[0] > 0


def test_switch_lambdas_trace_every_flip_a_coarse_grid_misses() -> None:
    from langchain_rtr.evaluation.baselines import default_lambdas, switch_lambdas, tradeoff_choices

    rng = np.random.default_rng(0)
    n = 60
    # two pairs: the strong one is slightly more accurate and clearly dearer on every question
    accuracy = np.stack([np.full(n, 0.5), 0.5 + rng.uniform(0.001, 0.01, n)], axis=1)
    cost = np.stack([np.zeros(n), np.full(n, 1.0)], axis=1)
    allowed = np.ones((n, 2), dtype=bool)

    def shares(grid: list[float]) -> set[float]:
        return {float(np.mean(tradeoff_choices(accuracy, cost, allowed, lam) == 1)) for lam in grid}

    coarse = shares(default_lambdas())
    dense = shares(sorted(set(default_lambdas()) | set(switch_lambdas(accuracy, cost, allowed))))
    assert len(dense) == n + 1  # every question switches at its own λ
    assert len(coarse) < len(dense)
