"""Platt calibration of P(correct), its checkpoint round trip, and the report's reliability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.predictor.calibration import (
    CalibrationError,
    PlattCalibration,
    logit,
    member_validation_logits,
    reliability,
)
from tests.unit.test_predictor import TopicEncoder, planted_matrix, train_fake


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_platt_recovers_a_planted_miscalibration_and_lowers_the_ece() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(3000, 2))
    labels = (rng.random(z.shape) < _sigmoid(0.5 * z + 0.7)).astype(float)
    labels[:100, 1] = np.nan  # unobserved cells are left out
    calibration = PlattCalibration.fit(z, labels)
    np.testing.assert_allclose(calibration.slope, [0.5, 0.5], atol=0.05)
    np.testing.assert_allclose(calibration.intercept, [0.7, 0.7], atol=0.08)
    raw = _sigmoid(z)
    assert reliability(calibration.apply(raw), labels).ece < 0.3 * reliability(raw, labels).ece


def test_one_map_for_all_pairs_keeps_every_ranking() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, size=(500, 3))
    labels = (rng.random(z.shape) < _sigmoid(np.array([0.3, 1.0, 2.5]) * z)).astype(float)
    p = _sigmoid(z)
    calibrated = PlattCalibration.fit(z, labels).apply(p)
    np.testing.assert_array_equal(calibrated.argmax(1), p.argmax(1))
    for j in range(3):
        np.testing.assert_array_equal(np.argsort(calibrated[:, j]), np.argsort(p[:, j]))


def test_too_few_outcomes_leave_the_identity() -> None:
    z = np.array([[0.3, 1.0], [-1.0, 2.0]])
    labels = np.array([[1.0, np.nan], [np.nan, np.nan]])
    calibration = PlattCalibration.fit(z, labels)
    assert (calibration.slope == 1.0).all() and (calibration.intercept == 0.0).all()


def test_reliability_bins_by_hand() -> None:
    p = np.array([[0.05, 0.15], [0.05, np.nan], [0.95, 0.95]])
    y = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, np.nan]])
    r = reliability(p, y, bins=10)
    # bins: 0.0-0.1 has p=(0.05, 0.05) y=(0, 1); 0.1-0.2 has p=0.15 y=1; 0.9-1.0 has p=0.95 y=1
    assert r.counts == [2, 1, 1]
    assert r.ece == pytest.approx((2 * 0.45 + 1 * 0.85 + 1 * 0.05) / 4)


def test_member_validation_logits_average_only_the_members_that_held_a_row_out() -> None:
    held = member_validation_logits(
        [(np.array([0, 2]), np.array([[1.0], [3.0]])), (np.array([2]), np.array([[5.0]]))], 3, 1
    )
    assert held[0, 0] == 1.0 and np.isnan(held[1, 0]) and held[2, 0] == 4.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(CalibrationError, match="finite"):
        PlattCalibration(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(CalibrationError, match="expected 3"):
        PlattCalibration.from_dict({"method": "platt", "slope": [1.0], "intercept": [0.0]}, 3)
    with pytest.raises(CalibrationError, match="expected"):
        PlattCalibration(np.ones(2), np.zeros(2)).apply(np.full((1, 3), 0.5))


def test_logit_is_finite_at_zero_and_one() -> None:
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()


# ------------------------------------------------------------------- in the predictor


def raw_correctness(predictor: RTRPredictor, questions: list[str]) -> np.ndarray:
    """The network's own probabilities: the same predictor with its calibration taken off."""
    calibration, predictor.calibration = predictor.calibration, None
    try:
        return predictor.predict(questions).correctness
    finally:
        predictor.calibration = calibration


CONFIG = TrainConfig(hidden=32, learnable_dim=4, max_epochs=8, ensemble=2, validation_fraction=0.3)


def test_the_predictor_serves_calibrated_probabilities_and_saves_them(tmp_path: Path) -> None:
    predictor = train_fake(planted_matrix(120, seed=3, nan_fraction=0.1), CONFIG)
    assert predictor.calibration is not None
    questions = planted_matrix(20, seed=4).questions
    calibrated = predictor.predict(questions).correctness
    raw = raw_correctness(predictor, questions)
    np.testing.assert_allclose(calibrated, predictor.calibration.apply(raw), rtol=1e-5)
    assert not np.allclose(calibrated, raw)

    predictor.save(tmp_path / "ckpt")
    loaded = RTRPredictor.load(tmp_path / "ckpt", encoder=TopicEncoder())
    np.testing.assert_array_equal(loaded.predict(questions).correctness, calibrated)


def test_a_checkpoint_saved_without_calibration_loads_with_raw_probabilities(
    tmp_path: Path,
) -> None:
    predictor = train_fake(planted_matrix(80, seed=5), CONFIG)
    predictor.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["calibration"]  # what checkpoints written before calibration look like
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt" / "digests.json").unlink()  # an edit by hand, not a damaged save
    loaded = RTRPredictor.load(tmp_path / "ckpt", encoder=TopicEncoder())
    assert loaded.calibration is None
    questions = planted_matrix(10, seed=6).questions
    raw = raw_correctness(predictor, questions)
    np.testing.assert_allclose(loaded.predict(questions).correctness, raw, rtol=1e-6)


def test_calibrate_off_or_no_validation_part_means_no_calibration() -> None:
    from dataclasses import replace

    matrix = planted_matrix(60, seed=7)
    assert train_fake(matrix, replace(CONFIG, calibrate=False)).calibration is None
    assert train_fake(matrix, replace(CONFIG, validation_fraction=0.0)).calibration is None
