"""Keeping a router current: adding a model from a few outcomes, refitting on new outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor import PredictorError, RTRPredictor, TrainConfig
from langchain_rtr.predictor.adapt import AddModelConfig, add_model
from langchain_rtr.quantiles import MIN_PAIR_RESIDUALS
from langchain_rtr.routing import RTRRouter
from langchain_rtr.specs import ModelSpec
from langchain_rtr.upkeep import add_model as add_model_to_router
from tests.unit.test_predictor import TOPICS, TopicEncoder

MODELS = {
    "m1": "A model that is good at alpha.",
    "m2": "A model that is good at beta.",
    "m3": "Another model that is good at alpha.",
}
STRATEGIES = {"direct": "Answer at once.", "cot": "Reason step by step, then answer."}
BASE_TOKENS = {"direct": 40.0, "cot": 400.0}
GOOD_AT = {"m1": "alpha", "m2": "beta", "m3": "alpha", "new": "beta"}
LENGTH_FACTOR = {"m1": 1.0, "m2": 2.5, "m3": 0.5, "new": 2.0}
FIT = AddModelConfig(lr=0.1, steps=500, prior=0.0)
"""Fits the toy's planted lengths closely (the defaults, chosen on real sets, fit more gently)."""
FAST = TrainConfig(hidden=64, learnable_dim=8, max_epochs=60, patience=8, lr=3e-3, ensemble=2)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path / "rtr-cache"))


def outcomes(models: list[str], n: int, seed: int) -> OutcomeMatrix:
    """Each model solves only its topic; its lengths are the strategy's times its factor."""
    rng = np.random.default_rng(seed)
    pairs = [(m, s) for m in models for s in STRATEGIES]
    questions = [f"{TOPICS[i % 2]} question {seed}-{i}" for i in range(n)]
    score = np.array(
        [[float(GOOD_AT[m] == TOPICS[i % 2]) for m, _ in pairs] for i in range(n)], np.float32
    )
    tokens = np.array(
        [
            [BASE_TOKENS[s] * LENGTH_FACTOR[m] * rng.uniform(0.8, 1.25) for m, s in pairs]
            for _ in range(n)
        ],
        np.float32,
    )
    nan = np.full(score.shape, np.nan, np.float32)
    return OutcomeMatrix(
        questions, [TOPICS[i % 2] for i in range(n)], pairs, score, tokens, nan, nan.copy()
    )


@pytest.fixture(scope="module")
def base() -> RTRPredictor:
    return RTRPredictor.train(
        outcomes(list(MODELS), 240, seed=1),
        MODELS,
        STRATEGIES,
        encoder=TopicEncoder(),
        config=FAST,
    )


def new_columns(predictor: RTRPredictor, model: str = "new") -> list[int]:
    return [j for j, (m, _) in enumerate(predictor.pairs) if m == model]


def test_added_model_learns_its_topic_and_lengths_and_old_pairs_do_not_move(
    base: RTRPredictor,
) -> None:
    held_out = outcomes(["m1"], 60, seed=9)
    before = base.predict(held_out.questions)
    blank = add_model(base, "new", "A new model.")
    fitted = add_model(base, "new", "A new model.", outcomes(["new"], 40, seed=2), config=FIT)
    for predictor in (blank, fitted):
        after = predictor.predict(held_out.questions)
        old = slice(0, len(base.pairs))
        np.testing.assert_array_equal(after.correctness[:, old], before.correctness)
        assert after.output_tokens is not None and before.output_tokens is not None
        np.testing.assert_array_equal(after.output_tokens[:, old], before.output_tokens)
    beta = np.array([s == "beta" for s in held_out.sources])
    cols = new_columns(fitted)
    p = fitted.predict(held_out.questions)
    assert p.correctness[beta][:, cols].mean() > 0.7
    assert p.correctness[~beta][:, cols].mean() < 0.3
    p0 = blank.predict(held_out.questions)
    assert p.output_tokens is not None and p0.output_tokens is not None
    for k, (_, strategy) in enumerate(fitted.pairs[c] for c in cols):
        planted = BASE_TOKENS[strategy] * LENGTH_FACTOR["new"]
        err_fitted = abs(np.log(np.median(p.output_tokens[:, cols[k]]) / planted))
        err_blank = abs(np.log(np.median(p0.output_tokens[:, cols[k]]) / planted))
        assert err_fitted < err_blank and err_fitted < np.log(1.5), (strategy, err_fitted)


def test_new_pairs_are_calibrated_and_covered_by_quantiles(base: RTRPredictor) -> None:
    blank = add_model(base, "new", "A new model.")
    fitted = add_model(base, "new", "A new model.", outcomes(["new"], 40, seed=2))
    assert base.length_quantiles is not None and base.calibration is not None
    for predictor in (blank, fitted):
        assert predictor.length_quantiles is not None and predictor.calibration is not None
        assert predictor.length_quantiles.n_pairs == len(predictor.pairs) == len(base.pairs) + 2
        assert predictor.calibration.slope.shape == (len(predictor.pairs),)
    # no outcomes: the widest trained row, a bound that holds for every trained pair
    widest = base.length_quantiles.offsets.max(axis=0)
    for j in new_columns(blank):
        np.testing.assert_array_equal(blank.length_quantiles.offsets[j], widest)  # type: ignore[union-attr]
    # 40 questions x 2 strategies of cross-fitted residuals: the new pairs' own quantiles
    quantiles = fitted.length_quantiles
    assert quantiles is not None
    cols = new_columns(fitted)
    assert (quantiles.counts[cols] >= MIN_PAIR_RESIDUALS).all()
    assert not quantiles.pooled[cols].any()
    # and they hold: 90 % bounds cover about 90 % of fresh outcomes of the new model
    fresh = outcomes(["new"], 100, seed=11)
    predicted = fitted.predict(fresh.questions).output_tokens_at(0.9)
    assert predicted is not None
    assert np.mean(fresh.output_tokens <= predicted[:, cols]) >= 0.8


def test_router_with_added_model_round_trips_and_routes_to_it(
    base: RTRPredictor, tmp_path: Path
) -> None:
    specs = {
        m: ModelSpec(name=m, description=d, input_price=1.0, output_price=1.0)
        for m, d in MODELS.items()
    }
    router = RTRRouter(base, specs, cost_unit="tokens", cost_scale=100.0)
    spec = ModelSpec(name="new", description="A new model.", input_price=0.1, output_price=0.1)
    records = [
        RoutingRecord(
            question=q, source="beta", model="new", strategy="direct", score=1.0, output_tokens=120
        )
        for q in (f"beta question r-{i}" for i in range(30))
    ]
    added = add_model_to_router(router, spec, records)
    assert ("new", "direct") in added.pairs and ("new", "cot") not in added.pairs
    assert added.cost_scale == router.cost_scale and added.cost_unit == "tokens"
    added.save(tmp_path / "router")
    loaded = RTRRouter.load(tmp_path / "router", encoder=TopicEncoder())
    assert loaded.pairs == added.pairs
    table = loaded.table("beta question x")
    assert table.pairs[int(np.argmax(table.correctness))][0] in {"new", "m2"}


def test_add_model_refuses_what_it_cannot_do(base: RTRPredictor) -> None:
    with pytest.raises(PredictorError, match="already"):
        add_model(base, "m1", "again")
    with pytest.raises(PredictorError, match="strategies"):
        add_model(base, "new", "x", strategies=["pal"])
    with pytest.raises(PredictorError, match="also name models"):
        add_model(base, "new", "x", outcomes(["new", "m1"], 4, seed=3))
    router = RTRRouter(base, {m: ModelSpec(name=m, description=d) for m, d in MODELS.items()})
    other = RoutingRecord(question="q", source="s", model="m1", strategy="direct", score=1.0)
    with pytest.raises(ConfigError, match="m1"):
        add_model_to_router(router, ModelSpec(name="new", description="x"), [other])
    with pytest.raises(PredictorError, match="AddModelConfig"):
        AddModelConfig(folds=1)
