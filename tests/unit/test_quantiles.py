"""Length quantiles: conformal calibration, checkpoint, table and TokenBudget(confidence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from langchain_rtr.cli.render import routing_table_view
from langchain_rtr.errors import KnobTypeError
from langchain_rtr.knobs import policy_budget
from langchain_rtr.quantiles import LengthQuantiles, QuantileError
from langchain_rtr.routing import (
    STATUS_NO_ALLOWED_PAIR,
    STATUS_NO_PAIR_FITS,
    STATUS_OK,
    STATUS_OVER_BUDGET,
    BestBet,
    RoutingError,
    RoutingTable,
    TokenBudget,
    policy_from_dict,
)
from tests.unit.test_predictor import planted_matrix, train_fake


def lognormal_lengths(
    rng: np.random.Generator, n: int, medians: list[float], sigmas: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates (the medians) and real lengths spread lognormally around them."""
    predicted = np.tile(np.asarray(medians, dtype=np.float64), (n, 1))
    noise = rng.standard_normal((n, len(medians))) * np.asarray(sigmas)
    real = np.expm1(np.log1p(predicted) + noise)
    return predicted, real


def test_calibrated_bounds_cover_fresh_questions_at_their_level() -> None:
    rng = np.random.default_rng(0)
    predicted, real = lognormal_lengths(rng, 2_000, [50.0, 400.0], [0.2, 0.8])
    quantiles = LengthQuantiles.calibrate(predicted, real)
    fresh_predicted, fresh_real = lognormal_lengths(rng, 20_000, [50.0, 400.0], [0.2, 0.8])
    for c in (0.8, 0.9, 0.95):
        covered = (fresh_real <= quantiles.upper(fresh_predicted, c)).mean(axis=0)
        assert np.all(np.abs(covered - c) < 0.02), (c, covered)
    # The wider pair gets the wider bound.
    offsets = quantiles.offset(0.9)
    assert offsets[1] > 2 * offsets[0] > 0


def test_unobserved_cells_are_left_out_and_sparse_pairs_pool() -> None:
    rng = np.random.default_rng(1)
    predicted, real = lognormal_lengths(rng, 200, [100.0, 100.0], [0.3, 0.3])
    real[10:, 1] = np.nan  # pair 1 keeps only 10 residuals of its own
    quantiles = LengthQuantiles.calibrate(predicted, real, min_pair_residuals=30)
    assert quantiles.pooled.tolist() == [False, True]
    assert quantiles.counts.tolist() == [200, 210]
    assert np.isfinite(quantiles.offsets[:, quantiles.levels <= 0.99]).all()


def test_a_level_beyond_what_the_residuals_can_state_has_no_finite_bound() -> None:
    predicted = np.full((9, 1), 10.0)
    real = np.arange(1.0, 10.0)[:, None]
    quantiles = LengthQuantiles.calibrate(predicted, real, min_pair_residuals=1)
    # n = 9: the 0.9 level needs the ceil(10 x 0.9) = 9th residual, 0.95 a 10th.
    assert np.isfinite(quantiles.upper(predicted[:1], 0.9)).all()
    assert np.isinf(quantiles.upper(predicted[:1], 0.95)).all()
    assert quantiles.upper(predicted[:1], 0.9)[0, 0] == pytest.approx(9.0)


def test_bad_confidences_and_shapes_are_refused() -> None:
    rng = np.random.default_rng(2)
    quantiles = LengthQuantiles.calibrate(*lognormal_lengths(rng, 50, [10.0, 20.0], [0.1, 0.1]))
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(QuantileError, match="confidence"):
            quantiles.offset(bad)
    with pytest.raises(QuantileError, match="highest calibrated level"):
        quantiles.offset(0.9995)
    with pytest.raises(QuantileError, match="expected"):
        quantiles.upper(np.ones((3, 5)), 0.9)
    with pytest.raises(QuantileError, match="must both be"):
        LengthQuantiles.calibrate(np.ones((3, 2)), np.ones((3, 3)))


def test_round_trip_and_malformed_dicts() -> None:
    rng = np.random.default_rng(3)
    quantiles = LengthQuantiles.calibrate(*lognormal_lengths(rng, 20, [10.0, 20.0], [0.1, 0.1]))
    text = json.dumps(quantiles.to_dict(), allow_nan=True)
    back = LengthQuantiles.from_dict(json.loads(text), n_pairs=2)
    np.testing.assert_array_equal(back.offsets, quantiles.offsets)
    with pytest.raises(QuantileError, match="expected 3"):
        LengthQuantiles.from_dict(json.loads(text), n_pairs=3)
    broken = json.loads(text)
    del broken["levels"]
    with pytest.raises(QuantileError, match="malformed"):
        LengthQuantiles.from_dict(broken, n_pairs=2)
    broken = json.loads(text)
    broken["levels"] = broken["levels"][::-1]
    with pytest.raises(QuantileError, match="increase"):
        LengthQuantiles.from_dict(broken, n_pairs=2)


def test_fit_probability_rises_with_the_budget() -> None:
    rng = np.random.default_rng(4)
    quantiles = LengthQuantiles.calibrate(*lognormal_lengths(rng, 500, [100.0], [0.5]))
    point = np.array([[100.0]])
    probabilities = [float(quantiles.fit_probability(point, b)[0, 0]) for b in (5, 60, 100, 300)]
    assert probabilities == sorted(probabilities)
    assert probabilities[0] == 0.0 and probabilities[-1] > 0.95
    assert 0.4 <= probabilities[2] <= 0.6


# -------------------------------------------------------------------- TokenBudget(confidence)

# Pair 0: most accurate, point estimate 200 tokens but a wide spread; pair 1: 150 tokens, tight;
# pair 2: least accurate and short.
CORRECT = np.array([[0.9, 0.7, 0.4]])
TOKENS = np.array([[200.0, 150.0, 40.0]])
COST = np.zeros((1, 3))


@pytest.fixture
def spread() -> LengthQuantiles:
    rng = np.random.default_rng(5)
    return LengthQuantiles.calibrate(
        *lognormal_lengths(rng, 4_000, [200.0, 150.0, 40.0], [0.6, 0.05, 0.05])
    )


def test_confidence_admits_only_pairs_whose_quantile_fits(spread: LengthQuantiles) -> None:
    point = TokenBudget(250).choose(CORRECT, TOKENS, COST, length_quantiles=spread)
    assert point.index[0] == 0  # its point estimate fits
    sure = TokenBudget(250, confidence=0.9).choose(CORRECT, TOKENS, COST, length_quantiles=spread)
    assert spread.upper(TOKENS, 0.9)[0, 0] > 250 >= spread.upper(TOKENS, 0.9)[0, 1]
    assert sure.index[0] == 1 and sure.status[0] == STATUS_OK
    none = TokenBudget(30, confidence=0.9).choose(CORRECT, TOKENS, COST, length_quantiles=spread)
    assert none.index[0] == -1 and none.status[0] == STATUS_NO_PAIR_FITS


def test_best_bet_weighs_accuracy_by_the_chance_to_fit(spread: LengthQuantiles) -> None:
    # At 160 tokens nothing fits at 0.99. Pair 0 fits about 36 % of the time (bet 0.9 x 0.36),
    # pair 1 about 90 % (0.7 x 0.9), pair 2 about 97 % (0.4 x 0.97): the best bet is pair 1,
    # where the fewest tokens at that confidence would take pair 2.
    tokens = np.array([[200.0, 150.0, 145.0]])
    bet = TokenBudget(160, confidence=0.99, on_no_fit="best_bet")
    choice = bet.choose(CORRECT, tokens, COST, length_quantiles=spread)
    assert choice.index[0] == 1 and choice.status[0] == STATUS_OVER_BUDGET
    fewest = TokenBudget(160, confidence=0.99, on_no_fit="fewest_tokens")
    assert fewest.choose(CORRECT, tokens, COST, length_quantiles=spread).index[0] == 2
    assert choice.n_ranked[0] == 3 and choice.ranking[0].tolist() == [1, 2, 0]


def test_best_bet_weighs_both_chances_where_the_budget_only_checks_the_fit(
    spread: LengthQuantiles,
) -> None:
    # At 250 tokens pair 0 (0.9 correct, median 200, wide) finishes about 64 % of the time:
    # 0.9 x 0.64 = 0.58 loses to pair 1's 0.7 x 1.0; the point budget takes pair 0 (200 fits).
    bet = BestBet(250).choose(CORRECT, TOKENS, COST, length_quantiles=spread)
    assert bet.index[0] == 1 and bet.status[0] == STATUS_OK
    assert bet.ranking[0].tolist() == [1, 0, 2] and bet.n_ranked[0] == 3
    assert TokenBudget(250).choose(CORRECT, TOKENS, COST, length_quantiles=spread).index[0] == 0
    # At 600 pair 0 finishes about 97 % of the time: 0.87 beats 0.7.
    assert BestBet(600).choose(CORRECT, TOKENS, COST, length_quantiles=spread).index[0] == 0
    # A pair whose point estimate is over the budget can still be the best bet: 0.9 x 0.47
    # against 0.3 x 1.0 for the only pair that fits.
    weak = np.array([[0.9, 0.3, 0.2]])
    over = np.array([[260.0, 150.0, 40.0]])
    assert BestBet(250).choose(weak, over, COST, length_quantiles=spread).index[0] == 0
    assert TokenBudget(250).choose(weak, over, COST, length_quantiles=spread).index[0] == 1


def test_best_bet_gets_more_uncut_right_answers_than_either_budget_rule() -> None:
    # Simulated outcomes drawn from the very probabilities the policies see: then ranking by
    # P(correct) x P(fits) maximises right answers that are not cut off.
    rng = np.random.default_rng(6)
    n, medians, sigmas = 4_000, [60.0, 120.0, 240.0], [0.1, 0.4, 0.5]
    quantiles = LengthQuantiles.calibrate(*lognormal_lengths(rng, 4_000, medians, sigmas))
    point, real = lognormal_lengths(rng, n, medians, sigmas)
    scale = np.exp(rng.uniform(-0.7, 0.7, (n, 1)))  # questions of every length
    point, real = point * scale, real * scale
    correct = np.sort(rng.uniform(0.2, 0.95, (n, 3)), axis=1)  # longer pairs more often right
    right = rng.uniform(size=(n, 3)) < correct
    cost = np.zeros((n, 3))

    def uncut_right(policy: TokenBudget | BestBet, budget: float) -> float:
        pick = policy.choose(correct, point, cost, length_quantiles=quantiles).index
        rows = np.arange(n)
        return float(np.mean(right[rows, pick] & (real[rows, pick] <= budget)))

    for budget in (100.0, 150.0, 250.0):
        best = uncut_right(BestBet(budget), budget)
        point_rule = uncut_right(TokenBudget(budget, on_no_fit="fewest_tokens"), budget)
        sure = uncut_right(TokenBudget(budget, confidence=0.9, on_no_fit="best_bet"), budget)
        assert best > point_rule + 0.01 and best > sure + 0.01


def test_best_bet_when_nothing_can_fit_or_nothing_is_allowed(spread: LengthQuantiles) -> None:
    nothing_fits = BestBet(1).choose(CORRECT, TOKENS, COST, length_quantiles=spread)
    assert nothing_fits.index[0] == 0 and nothing_fits.status[0] == STATUS_OVER_BUDGET
    only_two = BestBet(250).choose(
        CORRECT, TOKENS, COST, np.array([True, False, True]), length_quantiles=spread
    )
    assert only_two.index[0] == 0 and only_two.ranking[0, :2].tolist() == [0, 2]
    assert only_two.n_ranked[0] == 2
    none = BestBet(250).choose(CORRECT, TOKENS, COST, np.zeros(3, bool), length_quantiles=spread)
    assert none.index[0] == -1 and none.status[0] == STATUS_NO_ALLOWED_PAIR


def test_best_bet_needs_lengths_and_a_budget() -> None:
    with pytest.raises(RoutingError, match="needs length quantiles"):
        BestBet(250).choose(CORRECT, TOKENS, COST)
    with pytest.raises(RoutingError, match="no length head"):
        BestBet(250).choose(CORRECT, None, COST)
    with pytest.raises(KnobTypeError, match="BestBet max_tokens"):
        BestBet("250")  # type: ignore[arg-type]
    with pytest.raises(RoutingError, match="BestBet max_tokens"):
        BestBet(-1)
    assert policy_from_dict(BestBet(250).to_dict()) == BestBet(250)
    assert policy_budget(BestBet(250)) == 250


def test_confidence_without_quantiles_is_a_clear_error() -> None:
    with pytest.raises(RoutingError, match="no length quantiles"):
        TokenBudget(250, confidence=0.9).choose(CORRECT, TOKENS, COST)
    with pytest.raises(RoutingError, match="needs length quantiles"):
        TokenBudget(250, on_no_fit="best_bet").choose(CORRECT, TOKENS, COST)


@pytest.mark.parametrize("bad", [0.0, 1.0, 2, -0.5])
def test_confidence_is_validated(bad: object) -> None:
    with pytest.raises(RoutingError, match="confidence"):
        TokenBudget(100, confidence=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, "0.9"])
def test_confidence_of_the_wrong_type_is_a_type_error(bad: object) -> None:
    with pytest.raises(KnobTypeError, match="confidence"):
        TokenBudget(100, confidence=bad)  # type: ignore[arg-type]


def test_confidence_survives_the_policy_dict() -> None:
    policy = TokenBudget(300, confidence=0.9, on_no_fit="best_bet")
    assert policy_from_dict(policy.to_dict()) == policy


# -------------------------------------------------------------------- predictor and table


def test_training_calibrates_quantiles_that_the_checkpoint_keeps(tmp_path: Path) -> None:
    predictor = train_fake(planted_matrix(200, seed=3))
    quantiles = predictor.length_quantiles
    assert quantiles is not None and quantiles.n_pairs == len(predictor.pairs)
    held_out = planted_matrix(200, seed=4)
    prediction = predictor.predict(held_out.questions)
    bound = prediction.output_tokens_at(0.9)
    assert bound is not None and prediction.output_tokens is not None
    assert np.all(bound >= prediction.output_tokens)
    assert (held_out.output_tokens <= bound).mean() >= 0.85
    predictor.save(tmp_path / "ckpt")
    loaded = type(predictor).load(tmp_path / "ckpt", encoder=predictor.encoder)
    assert loaded.length_quantiles is not None
    np.testing.assert_array_equal(loaded.length_quantiles.offsets, quantiles.offsets)
    again = loaded.predict(held_out.questions).output_tokens_at(0.9)
    np.testing.assert_allclose(again, bound, rtol=1e-5)


def test_a_checkpoint_without_quantiles_still_loads(tmp_path: Path) -> None:
    predictor = train_fake(planted_matrix(40, seed=5))
    predictor.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["length_quantiles"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt" / "digests.json").unlink()  # an edit by hand, not a damaged save
    loaded = type(predictor).load(tmp_path / "ckpt", encoder=predictor.encoder)
    assert loaded.length_quantiles is None
    assert loaded.predict(["alpha question"]).length_quantiles is None


def test_broken_quantiles_in_a_checkpoint_are_named(tmp_path: Path) -> None:
    from langchain_rtr.predictor import CheckpointError

    predictor = train_fake(planted_matrix(40, seed=6))
    predictor.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["length_quantiles"]["offsets"] = [[0.0]]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt" / "digests.json").unlink()  # an edit by hand, not a damaged save
    with pytest.raises(CheckpointError, match="length_quantiles"):
        type(predictor).load(tmp_path / "ckpt", encoder=predictor.encoder)


def test_the_routing_table_shows_the_quantiles(spread: LengthQuantiles) -> None:
    table = RoutingTable(
        question="q",
        pairs=[("a", "x"), ("b", "x"), ("c", "x")],
        correctness=CORRECT[0],
        output_tokens=TOKENS[0],
        usd=np.zeros(3),
        cost=np.zeros(3),
        cost_unit="tokens",
        length_quantiles=spread,
    )
    row = table.rows()[0]
    assert row.output_token_quantiles is not None
    assert row.output_token_quantiles["p90"] == pytest.approx(spread.upper(TOKENS, 0.9)[0, 0])
    assert row.output_token_quantiles["p50"] < row.output_token_quantiles["p95"]
    console = Console(width=200, record=True)
    console.print(routing_table_view(table))
    assert "tokens p90" in console.export_text()
    assert table.to_dicts()[0]["output_token_quantiles"]["p95"] > 0


def test_wider_bounds_hold_for_both_and_refuse_other_pairs() -> None:
    rng = np.random.default_rng(7)
    narrow = LengthQuantiles.calibrate(*lognormal_lengths(rng, 500, [100.0, 100.0], [0.1, 0.5]))
    wide = LengthQuantiles.calibrate(*lognormal_lengths(rng, 500, [100.0, 100.0], [0.5, 0.1]))
    both = narrow.wider(wide)
    for c in (0.5, 0.9):
        assert np.all(both.offset(c) >= np.maximum(narrow.offset(c), wide.offset(c)) - 1e-12)
        assert np.all(both.offset(c) <= np.maximum(narrow.offset(c), wide.offset(c)) + 1e-12)
    one = LengthQuantiles.calibrate(*lognormal_lengths(rng, 50, [100.0], [0.1]))
    with pytest.raises(QuantileError, match="cannot be combined"):
        narrow.wider(one)


def test_a_cascade_prediction_carries_bounds_for_both_predictors() -> None:
    from langchain_rtr.predictor.cascade import CascadePredictor

    train = planted_matrix(120, seed=8)
    fast, full = train_fake(train), train_fake(train)
    assert fast.length_quantiles is not None and full.length_quantiles is not None
    cascade = CascadePredictor.fit(fast, full, train.questions, share=1.0)
    prediction = cascade.predict(planted_matrix(20, seed=9).questions)
    assert prediction.length_quantiles is not None
    expected = fast.length_quantiles.wider(full.length_quantiles)
    np.testing.assert_array_equal(prediction.length_quantiles.offsets, expected.offsets)
