from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rich.console import Console

from langchain_rtr.cli.render import routing_table_view
from langchain_rtr.errors import UnknownPairError
from langchain_rtr.routing import (
    STATUS_BELOW_FLOOR,
    STATUS_NO_PAIR_FITS,
    STATUS_OK,
    STATUS_OVER_BUDGET,
    AccuracyFloor,
    AverageBudget,
    CostModel,
    NotCalibratedError,
    RoutingError,
    RTRRouter,
    TokenBudget,
    Tradeoff,
    estimate_input_tokens,
    fit_cost_scale,
    policy_from_dict,
)
from langchain_rtr.routing.persistence import trained_models
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec

PAIRS = [("small", "direct"), ("small", "cot"), ("big", "direct"), ("big", "cot")]
MODELS = {
    "small": ModelSpec(name="small", input_price=0.1, output_price=0.2),
    "big": ModelSpec(name="big", input_price=2.0, output_price=8.0, api_key="secret-key"),
}


@dataclass
class FakePrediction:
    correctness: np.ndarray
    output_tokens: np.ndarray | None


class FakeEncoder:
    id = "fake"
    dim = 4

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([[len(t), t.count("?"), 1.0, 0.0] for t in texts], dtype=np.float32)


class FakePredictor:
    """Looks the question up in a table; unknown questions get the first row."""

    def __init__(
        self,
        table: dict[str, tuple[list[float], list[float] | None]],
        pairs: list[tuple[str, str]] = PAIRS,
    ) -> None:
        self.table = table
        self.pairs = list(pairs)
        self.encoder = FakeEncoder()
        self.calls = 0

    def predict(self, questions: Sequence[str]) -> FakePrediction:
        self.calls += 1
        first = next(iter(self.table.values()))
        rows = [self.table.get(q, first) for q in questions]
        correctness = np.array([r[0] for r in rows], dtype=np.float32)
        if rows and rows[0][1] is None:
            return FakePrediction(correctness, None)
        tokens = np.array([r[1] for r in rows], dtype=np.float32)
        return FakePrediction(correctness, tokens)

    def predict_embeddings(self, embeddings: np.ndarray) -> FakePrediction:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "fake.json").write_text(
            json.dumps({"table": self.table, "pairs": self.pairs}), encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: str | Path) -> FakePredictor:
        data = json.loads((Path(directory) / "fake.json").read_text(encoding="utf-8"))
        return cls(
            {k: (v[0], v[1]) for k, v in data["table"].items()}, [tuple(p) for p in data["pairs"]]
        )


# correctness and tokens per pair, in PAIRS order
EASY = ([0.90, 0.95, 0.97, 0.99], [20.0, 200.0, 30.0, 300.0])
HARD = ([0.10, 0.40, 0.50, 0.90], [40.0, 500.0, 60.0, 800.0])


def make_router(**kw: object) -> RTRRouter:
    predictor = FakePredictor({"easy": EASY, "hard": HARD})
    router = RTRRouter(predictor, MODELS, **kw)  # type: ignore[arg-type]
    router.fit_cost_scale(["easy", "hard"])
    return router


# ---------------------------------------------------------------- cost model and tables


def test_cost_model_prices_predicted_tokens() -> None:
    model = CostModel(PAIRS, MODELS, "usd")
    pred = FakePrediction(np.array([EASY[0]]), np.array([EASY[1]]))
    costs = model.predicted(pred, ["easy"])
    inp = estimate_input_tokens(["easy"])[0]
    expected_big_cot = (inp * 2.0 + 300.0 * 8.0) / 1e6
    assert costs.usd[0, 3] == pytest.approx(expected_big_cot)
    assert costs.cost is costs.usd or np.allclose(costs.cost, costs.usd)


def test_cost_model_without_lengths_uses_mean_price_per_call() -> None:
    model = CostModel(PAIRS, MODELS, "usd")
    pred = FakePrediction(np.array([EASY[0], HARD[0]]), None)
    costs = model.predicted(pred, ["easy", "hard"])
    assert costs.output_tokens is None
    assert np.allclose(costs.usd[:, 0], MODELS["small"].mean_price)
    assert np.allclose(costs.usd[:, 2], MODELS["big"].mean_price)
    with pytest.raises(RoutingError, match="length head"):
        CostModel(PAIRS, MODELS, "tokens").predicted(pred, ["easy", "hard"])


def test_strategy_overhead_adds_input_tokens() -> None:
    model = CostModel(PAIRS, MODELS, "usd", strategy_overhead_tokens={"cot": 30})
    inp = model.input_tokens(["a question"])
    assert inp[0, 1] - inp[0, 0] == 30
    assert inp[0, 3] - inp[0, 2] == 30


def test_cost_model_names_missing_specs() -> None:
    with pytest.raises(RoutingError, match="big"):
        CostModel(PAIRS, {"small": MODELS["small"]})


def test_routing_table_rows_sort_and_render() -> None:
    router = make_router(cost_unit="tokens")
    table = router.table("hard")
    assert [r.pair for r in table.rows()] == PAIRS
    by_acc = table.rows("correctness")
    assert [r.correctness for r in by_acc] == sorted((r.correctness for r in by_acc), reverse=True)
    by_cost = table.sorted("cost")
    assert list(by_cost.cost) == sorted(table.cost)
    dicts = table.to_dicts()
    assert dicts[3]["model"] == "big" and dicts[3]["output_tokens"] == pytest.approx(800)
    json.dumps(dicts)
    console = Console(record=True, width=120)
    console.print(routing_table_view(table))
    text = console.export_text()
    assert "big" in text and "hard" in text


def test_batch_tables_match_single_tables() -> None:
    router = make_router()
    tables = router.tables(["easy", "hard"])
    assert len(tables) == 2
    one = router.table("hard")
    assert np.allclose(tables[1].usd, one.usd)
    assert [t.question for t in tables] == ["easy", "hard"]


# ---------------------------------------------------------------- policies on arrays

A = np.array([[0.2, 0.6, 0.7, 0.9], [0.95, 0.96, 0.97, 0.99]])
T = np.array([[50.0, 400.0, 60.0, 900.0], [10.0, 100.0, 20.0, 300.0]])
C = np.array([[0.01, 0.1, 0.5, 1.0], [0.01, 0.05, 0.3, 0.6]])


def test_tradeoff_extremes_and_middle() -> None:
    assert list(Tradeoff(1.0).choose(A, T, C).index) == [3, 3]
    assert list(Tradeoff(0.0).choose(A, T, C).index) == [0, 0]
    # λ=0.5: score = 0.5 a − 0.5 c -> row 0: [0.095, 0.25, 0.1, -0.05] -> pair 1
    idx = Tradeoff(0.5).choose(A, T, C).index
    assert idx[0] == 1
    scores = 0.5 * A[1] - 0.5 * C[1]
    assert idx[1] == int(np.argmax(scores))


def test_tradeoff_ranking_is_score_order() -> None:
    choice = Tradeoff(0.5).choose(A, T, C)
    scores = 0.5 * A[0] - 0.5 * C[0]
    assert list(choice.ranking[0]) == list(np.argsort(-scores))


def test_allowed_restriction() -> None:
    allowed = np.array([True, False, True, False])
    choice = Tradeoff(1.0).choose(A, T, C, allowed)
    assert list(choice.index) == [2, 2]
    assert set(choice.ranking[0, : choice.n_ranked[0]]) == {0, 2}


def test_token_budget_picks_best_that_fits() -> None:
    choice = TokenBudget(100).choose(A, T, C)
    assert list(choice.index) == [2, 3 if T[1, 3] <= 100 else 2]
    assert T[0, choice.index[0]] <= 100


def test_token_budget_no_fit_is_explicit() -> None:
    choice = TokenBudget(5).choose(A, T, C)
    assert list(choice.index) == [-1, -1]
    assert list(choice.status) == [STATUS_NO_PAIR_FITS] * 2
    assert list(choice.n_ranked) == [0, 0]
    fallback = TokenBudget(5, on_no_fit="fewest_tokens").choose(A, T, C)
    assert list(fallback.index) == [0, 0]
    assert list(fallback.status) == [STATUS_OVER_BUDGET] * 2


def test_token_budget_needs_lengths() -> None:
    with pytest.raises(RoutingError, match="length"):
        TokenBudget(100).choose(A, None, C)


def test_accuracy_floor_cheapest_above_else_most_accurate() -> None:
    choice = AccuracyFloor(0.65).choose(A, T, C)
    # row 0: pairs 2 (0.7, c .5) and 3 (0.9, c 1.) meet -> 2; row 1: all meet -> cheapest 0
    assert list(choice.index) == [2, 0]
    assert list(choice.status) == [STATUS_OK, STATUS_OK]
    # ranking: the pairs above the floor first, cheapest first; then the rest by accuracy
    assert list(choice.ranking[0]) == [2, 3, 1, 0]
    below = AccuracyFloor(0.995).choose(A, T, C)
    assert list(below.index) == [3, 3]
    assert list(below.status) == [STATUS_BELOW_FLOOR] * 2


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(
    data=st.data(),
    n=st.integers(1, 6),
    p=st.integers(1, 7),
    budget=st.floats(0, 2000, allow_nan=False),
    fallback=st.sampled_from(["none", "fewest_tokens"]),
)
def test_budget_never_exceeded(
    data: st.DataObject, n: int, p: int, budget: float, fallback: str
) -> None:
    probs = data.draw(hnp.arrays(np.float32, (n, p), elements=st.floats(0, 1, width=32)))
    tokens32 = data.draw(hnp.arrays(np.float32, (n, p), elements=st.floats(0, 4000, width=32)))
    # compare exactly (in float64): NumPy would round the budget to float32 against a float32 array
    tokens = tokens32.astype(np.float64)
    cost = data.draw(hnp.arrays(np.float64, (n, p), elements=st.floats(0, 10)))
    allowed = data.draw(hnp.arrays(np.bool_, p))
    choice = TokenBudget(budget, on_no_fit=fallback).choose(  # type: ignore[arg-type]
        probs, tokens32, cost, allowed
    )
    for i in range(n):
        j = choice.index[i]
        fits = allowed & (tokens[i] <= budget)
        if choice.status[i] == STATUS_OK:
            assert j >= 0 and allowed[j]
            assert tokens[i, j] <= budget
            assert probs[i, j] == probs[i][fits].max()
        else:
            assert not fits.any()
            if fallback == "none" or not allowed.any():
                assert j == -1
            else:
                assert tokens[i, j] == tokens[i][allowed].min()
        ranked = choice.ranking[i, : choice.n_ranked[i]]
        assert all(allowed[k] for k in ranked)
        if choice.status[i] == STATUS_OK:
            assert all(tokens[i, k] <= budget for k in ranked)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(
    data=st.data(),
    n=st.integers(1, 5),
    p=st.integers(1, 6),
    lam=st.floats(0, 1),
)
def test_tradeoff_choice_maximises_score(data: st.DataObject, n: int, p: int, lam: float) -> None:
    probs = data.draw(hnp.arrays(np.float64, (n, p), elements=st.floats(0, 1)))
    cost = data.draw(hnp.arrays(np.float64, (n, p), elements=st.floats(0, 5)))
    choice = Tradeoff(lam).choose(probs, None, cost)
    score = lam * probs - (1 - lam) * cost
    assert np.allclose(score[np.arange(n), choice.index], score.max(axis=1))


# ---------------------------------------------------------------- average budget


def _validation(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.9, size=(n, 1))
    a = np.clip(base + np.array([-0.3, 0.0, 0.1, 0.25]) + rng.normal(0, 0.05, (n, 4)), 0, 1)
    t = np.array([50.0, 400.0, 80.0, 900.0]) * rng.uniform(0.5, 1.5, (n, 4))
    usd = t * np.array([0.2, 0.2, 8.0, 8.0]) / 1e6
    return a, t, usd


@pytest.mark.parametrize("target", [150.0, 300.0, 500.0])
def test_average_budget_calibration_hits_target(target: float) -> None:
    a, t, usd = _validation()
    cost = t / fit_cost_scale(t)
    policy = AverageBudget(target, unit="tokens").calibrate(a, t, usd, cost)
    assert policy.calibrated and policy.lam is not None
    idx = policy.choose(a, t, cost).index
    mean = t[np.arange(len(t)), idx].mean()
    assert mean <= target
    assert policy.validation_mean == pytest.approx(mean)
    # tight: a slightly larger λ would overshoot, and the budget is mostly used
    above = Tradeoff(min(1.0, policy.lam + 1e-6)).choose(a, t, cost).index
    assert t[np.arange(len(t)), above].mean() > target
    assert mean > 0.8 * target


def test_average_budget_in_dollars_and_unreachable_targets() -> None:
    a, t, usd = _validation()
    cost = usd / fit_cost_scale(usd)
    cheapest = usd.min(axis=1).mean()
    policy = AverageBudget(cheapest * 3, unit="usd").calibrate(a, t, usd, cost)
    idx = policy.choose(a, t, cost).index
    assert usd[np.arange(len(usd)), idx].mean() <= cheapest * 3
    loose = AverageBudget(1e9, unit="usd").calibrate(a, t, usd, cost)
    assert loose.lam == 1.0
    with pytest.raises(RoutingError, match="below what even the cheapest"):
        AverageBudget(cheapest / 2, unit="usd").calibrate(a, t, usd, cost)


def test_uncalibrated_average_budget_refuses() -> None:
    with pytest.raises(NotCalibratedError):
        AverageBudget(100).choose(A, T, C)


def test_router_calibrate_and_route_average_budget() -> None:
    router = make_router(cost_unit="tokens")
    questions = ["easy", "hard"] * 10
    policy = router.calibrate(AverageBudget(200, unit="tokens"), questions)
    decisions = router.route_batch(questions, policy)
    assert np.mean([d.output_tokens for d in decisions]) <= 200
    assert decisions[0].policy["lam"] == policy.lam


# ---------------------------------------------------------------- router


def test_route_returns_full_decision() -> None:
    router = make_router()
    d = router.route("hard", Tradeoff(1.0))
    assert d.pair == ("big", "cot") and d.status == STATUS_OK and d.chosen
    assert d.correctness == pytest.approx(0.9)
    assert d.output_tokens == pytest.approx(800)
    assert d.policy == {"policy": "tradeoff", "lam": 1.0}
    assert d.ranking[0] == d.pair and len(d.ranking) == 4
    assert d.cost == pytest.approx(d.usd)
    json.dumps(d.to_dict())


def test_route_allowed_by_model_and_pair() -> None:
    router = make_router()
    d = router.route("hard", Tradeoff(1.0), allowed=["small"])
    assert d.model == "small" and set(d.ranking) == {("small", "direct"), ("small", "cot")}
    d = router.route("hard", Tradeoff(1.0), allowed=[("big", "direct"), ("small", "direct")])
    assert d.pair == ("big", "direct")


def test_route_unknown_allowed_is_a_clear_error() -> None:
    router = make_router()
    with pytest.raises(RoutingError, match="'huge'"):
        router.route("hard", allowed=["huge"])
    with pytest.raises(RoutingError, match=r"\('big', 'pal'\)"):
        router.route("hard", allowed=[("big", "pal")])
    with pytest.raises(RoutingError, match="no pair"):
        router.route("hard", allowed=[])


def test_route_token_budget_no_fit_decision() -> None:
    router = make_router()
    d = router.route("hard", TokenBudget(10))
    assert not d.chosen and d.status == STATUS_NO_PAIR_FITS and d.ranking == ()
    d = router.route("hard", TokenBudget(100))
    assert d.output_tokens is not None and d.output_tokens <= 100
    assert d.pair == ("big", "direct")


def test_route_batch_matches_route() -> None:
    router = make_router()
    policy = Tradeoff(0.95)
    batch = router.route_batch(["easy", "hard"], policy)
    assert [d.pair for d in batch] == [router.route(q, policy).pair for q in ("easy", "hard")]


def test_cost_scale_makes_lambda_unit_free() -> None:
    """The same λ picks the same pairs whether costs are in $ or scaled $."""
    router = make_router()
    cheap_models = {
        name: spec.model_copy(
            update={
                "input_price": spec.input_price / 1000,
                "output_price": spec.output_price / 1000,
            }
        )
        for name, spec in MODELS.items()
    }
    cheap = RTRRouter(FakePredictor({"easy": EASY, "hard": HARD}), cheap_models)
    cheap.fit_cost_scale(["easy", "hard"])
    assert cheap.cost_scale == pytest.approx(router.cost_scale / 1000)  # type: ignore[operator]
    for lam in (0.2, 0.8, 0.9, 0.97, 0.99):
        a = [d.pair for d in router.route_batch(["easy", "hard"], Tradeoff(lam))]
        b = [d.pair for d in cheap.route_batch(["easy", "hard"], Tradeoff(lam))]
        assert a == b


def test_tradeoff_without_scale_needs_fitting_when_costs_vary() -> None:
    router = RTRRouter(FakePredictor({"easy": EASY}), MODELS, cost_unit="tokens")
    with pytest.raises(NotCalibratedError, match="fit_cost_scale"):
        router.route("easy")
    # token budgets and floors do not need it
    assert router.route("easy", TokenBudget(100)).chosen
    # without lengths a call costs the mean price, so the scale is known up front
    no_len = RTRRouter(FakePredictor({"easy": (EASY[0], None)}), MODELS)
    d = no_len.route("easy", Tradeoff(0.5))
    assert d.usd == pytest.approx(MODELS[d.model].mean_price)  # type: ignore[index]


def test_policy_dict_round_trip() -> None:
    for policy in (
        Tradeoff(0.7),
        TokenBudget(300, on_no_fit="fewest_tokens"),
        AccuracyFloor(0.8),
        AverageBudget(500, "tokens", lam=0.93, validation_mean=480.0),
    ):
        assert policy_from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    with pytest.raises(RoutingError, match="unknown policy"):
        policy_from_dict({"policy": "magic"})
    with pytest.raises(RoutingError, match="unknown"):
        policy_from_dict({"policy": "tradeoff", "lambda": 0.3})
    with pytest.raises(RoutingError):
        Tradeoff(1.5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    router = make_router(default_policy=AccuracyFloor(0.5))
    path = router.save(tmp_path / "router")
    saved_models = json.loads((path / "models.json").read_text())
    assert "api_key" not in saved_models["big"]
    assert not list(path.rglob("*.pkl"))
    loaded = RTRRouter.load(path, predictor_loader=FakePredictor.load)
    assert loaded.cost_scale == router.cost_scale
    assert loaded.default_policy == AccuracyFloor(0.5)
    assert loaded.pairs == router.pairs
    for q in ("easy", "hard"):
        assert loaded.route(q).to_dict() == router.route(q).to_dict()
    keyed = RTRRouter.load(path, predictor_loader=FakePredictor.load, models={"big": MODELS["big"]})
    assert keyed.models["big"].api_key == "secret-key"


def test_trained_models_reads_a_saved_routers_models_without_loading_it(tmp_path: Path) -> None:
    router = make_router()
    path = router.save(tmp_path / "router")
    assert trained_models(path) == {m for m, _ in router.pairs}
    config = json.loads((path / "router.json").read_text())
    config["pairs"] = [["big"]]
    (path / "router.json").write_text(json.dumps(config))
    with pytest.raises(RoutingError, match=r"router\.json: pairs must be \[model, strategy\]"):
        trained_models(path)
    del config["pairs"]
    (path / "router.json").write_text(json.dumps(config))
    with pytest.raises(RoutingError, match=r"router\.json: no pairs"):
        trained_models(path)
    with pytest.raises(RoutingError, match="router.json"):
        trained_models(tmp_path / "nowhere")


def test_load_keeps_a_spec_of_an_untrained_model_for_the_runnable_to_refuse(
    tmp_path: Path,
) -> None:
    """A model the router never saw is not dropped in silence (a typo would go unnoticed)."""
    path = make_router().save(tmp_path / "router")
    extra = ModelSpec(name="other", base_url="http://other/v1")
    loaded = RTRRouter.load(path, predictor_loader=FakePredictor.load, models={"other": extra})
    assert loaded.models["other"] == extra
    with pytest.raises(UnknownPairError, match=r"\['other'\].*retrain the router"):
        RTRRunnable(router=loaded)


def test_load_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="missing"):
        RTRRouter.load(tmp_path, predictor_loader=FakePredictor.load)
    (tmp_path / "router.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RoutingError, match=r"router.json:1"):
        RTRRouter.load(tmp_path, predictor_loader=FakePredictor.load)
