"""Question features: what they count, that the heads use them, and the checkpoints and logs
from before them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.predictor.features import QUESTION_FEATURES, question_features
from langchain_rtr.routing import RTRRouter
from langchain_rtr.specs import ModelSpec
from langchain_rtr.traffic import TrafficLog, read_rows, write_rows
from langchain_rtr.upkeep import log_outcomes
from tests.unit.test_predictor import FAST, MODELS, STRATEGIES, TopicEncoder
from tests.unit.test_traffic import logged_call

FEATURED = replace(FAST, question_features=True)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path / "rtr-cache"))


def test_features_count_words_numbers_and_sentences() -> None:
    text = "Janet has 16 eggs and sells 1,250.5 grams. She eats 3. How many are left?"
    features = question_features([text, ""])
    assert features.shape == (2, len(QUESTION_FEATURES)) and features.dtype == np.float32
    offsets = np.array([3.5, 1.5, 1.5])
    # 15 words; 16, 1,250.5 and 3; three full stops (one a decimal point) and a question mark
    np.testing.assert_allclose(features[0], np.log1p([15, 3, 4]) - offsets, rtol=1e-6)
    np.testing.assert_allclose(features[1], -offsets, rtol=1e-6)  # an empty text counts nothing
    assert question_features([]).shape == (0, len(QUESTION_FEATURES))


def counted_matrix(n: int, seed: int) -> OutcomeMatrix:
    """Every answer is 30 tokens per number in the question; the fake encoder cannot see them."""
    rng = np.random.default_rng(seed)
    pairs = [(m, s) for m in MODELS for s in STRATEGIES]
    questions, counts = [], []
    for i in range(n):
        k = int(rng.integers(1, 9))
        counts.append(k)
        numbers = " ".join(str(int(x)) for x in rng.integers(10, 99, size=k))
        questions.append(f"alpha question {seed}-{i}: add {numbers}")
    tokens = np.array([[30.0 * k] * len(pairs) for k in counts], np.float32)
    score = np.ones((n, len(pairs)), np.float32)
    nan = np.full(score.shape, np.nan, np.float32)
    return OutcomeMatrix(
        questions=questions,
        sources=["alpha"] * n,
        pairs=pairs,
        score=score,
        output_tokens=tokens,
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )


class NumberBlindEncoder(TopicEncoder):
    """The topic direction and noise from the question's words alone, never its numbers."""

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        words = [" ".join(w for w in t.split() if not w.isdigit()) for t in texts]
        return super().encode(words, batch_size=batch_size, show_progress=show_progress)


def test_the_length_head_reads_what_the_vector_cannot() -> None:
    train, test = counted_matrix(300, seed=1), counted_matrix(60, seed=2)
    real = test.output_tokens[:, 0]

    def error(config: TrainConfig) -> float:
        predictor = RTRPredictor.train(
            train, MODELS, STRATEGIES, encoder=NumberBlindEncoder(), config=config
        )
        tokens = predictor.predict(test.questions).output_tokens
        assert tokens is not None
        return float(np.median(np.abs(np.log1p(tokens[:, 0]) - np.log1p(real))))

    with_features, without = error(FEATURED), error(FAST)
    assert with_features < 0.5 * without, (with_features, without)


def test_a_checkpoint_from_before_the_features_loads_without_them(tmp_path: Path) -> None:
    old = RTRPredictor.train(
        counted_matrix(80, seed=3),
        MODELS,
        STRATEGIES,
        encoder=TopicEncoder(),
        config=replace(FAST, max_epochs=3, question_features=False),
    )
    old.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["hyperparameters"]["question_features"]  # what such a checkpoint holds
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt" / "digests.json").unlink()  # an edit by hand, not a damaged save
    loaded = RTRPredictor.load(tmp_path / "ckpt", encoder=TopicEncoder())
    assert loaded.config.question_features is False
    assert loaded.question_dim == loaded.encoder_dim == TopicEncoder().dim
    questions = counted_matrix(5, seed=4).questions
    np.testing.assert_array_equal(
        loaded.predict(questions).correctness, old.predict(questions).correctness
    )
    # Embeddings alone are enough for it, as before.
    assert loaded.predict_embeddings(TopicEncoder().encode(questions)).correctness.shape == (5, 4)


def test_a_log_keeps_the_features_that_a_refit_reads_without_the_texts(tmp_path: Path) -> None:
    encoder = TopicEncoder()
    predictor = RTRPredictor.train(
        counted_matrix(80, seed=5), MODELS, STRATEGIES, encoder=encoder, config=FEATURED
    )
    specs = {m: ModelSpec(name=m, description=d) for m, d in MODELS.items()}
    router = RTRRouter(predictor, specs, cost_unit="tokens", cost_scale=100.0)
    questions = counted_matrix(6, seed=6).questions
    log = TrafficLog(tmp_path / "calls.jsonl", encoder=encoder)
    for i, q in enumerate(questions):
        log.submit(logged_call(q, ("m1", "direct"), 90, f"c{i}"))
    log.close()
    rows = read_rows(tmp_path / "calls.jsonl")
    assert all(r["question"].startswith("sha256:") for r in rows)  # no text kept
    np.testing.assert_allclose([r["question_features"] for r in rows], question_features(questions))

    outcomes = log_outcomes(tmp_path / "calls.jsonl", router)
    expected = predictor.question_vectors(questions)
    np.testing.assert_allclose(outcomes.embeddings, expected, rtol=1e-6)
    np.testing.assert_allclose(
        predictor.predict_embeddings(outcomes.embeddings).output_tokens,
        predictor.predict(questions).output_tokens,
        rtol=1e-5,
    )

    # A log written before the features, without the texts, cannot feed this router.
    older = tmp_path / "older.jsonl"
    write_rows(older, [{**r, "question_features": None} for r in rows])
    with pytest.raises(ConfigError, match="no question features, no question text"):
        log_outcomes(older, router)
