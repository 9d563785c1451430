"""The cascade: a fast predictor hands its least certain questions to a full one."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.errors import QuestionTypeError
from langchain_rtr.evaluation import evaluate_router
from langchain_rtr.predictor import CheckpointError, PredictorError, RTRPredictor, TrainConfig
from langchain_rtr.predictor.cascade import (
    CASCADE_FILE,
    CascadePredictor,
    load_predictor,
    uncertainty,
)
from langchain_rtr.predictor.digests import DIGEST_FILE
from langchain_rtr.routing import RTRRouter
from langchain_rtr.specs import ModelSpec
from tests.unit.test_predictor import MODELS, STRATEGIES, TOPICS, TopicEncoder, planted_matrix

CONFIG = TrainConfig(hidden=32, learnable_dim=4, max_epochs=60, patience=8, lr=3e-3, seed=0)


class BlindEncoder(TopicEncoder):
    """A ``TopicEncoder`` that cannot see the topic of texts containing ``blind_to``."""

    def __init__(self, encoder_id: str, blind_to: str | None = None) -> None:
        super().__init__(dim=16, encoder_id=encoder_id, noise=0.1)
        self.blind_to = blind_to

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        out = super().encode(texts)
        for i, text in enumerate(texts):
            if self.blind_to is not None and self.blind_to in text:
                out[i, : len(TOPICS)] = 0.0
        return out


def topic_matrix(n: int, seed: int) -> OutcomeMatrix:
    """The planted topics (m1 solves alpha, m2 beta); a quarter of the questions are "vague"."""
    matrix = planted_matrix(n, seed)
    vague = [
        q.replace(" question", " vague question") if i % 8 in (0, 1) else q
        for i, q in enumerate(matrix.questions)
    ]
    return dataclasses.replace(matrix, questions=vague)


@pytest.fixture(scope="module")
def halves() -> tuple[RTRPredictor, RTRPredictor, OutcomeMatrix]:
    """A predictor blind to "vague" questions' topic, one that sees every topic, their data."""
    train = topic_matrix(240, seed=1)
    fast = RTRPredictor.train(
        train, MODELS, STRATEGIES, encoder=BlindEncoder("fake:blind", "vague"), config=CONFIG
    )
    full = RTRPredictor.train(
        train, MODELS, STRATEGIES, encoder=BlindEncoder("fake:sighted"), config=CONFIG
    )
    return fast, full, train


def fresh(predictor: RTRPredictor) -> RTRPredictor:
    """The same predictor with a new call log on its encoder."""
    assert isinstance(predictor.encoder, TopicEncoder)
    predictor.encoder.calls.clear()
    return predictor


def best_model_is_right(correctness: np.ndarray, pairs: list[tuple[str, str]], sources: list[str]):
    m1 = [j for j, (m, _) in enumerate(pairs) if m == "m1"]
    m2 = [j for j, (m, _) in enumerate(pairs) if m == "m2"]
    picks_m1 = correctness[:, m1].mean(1) > correctness[:, m2].mean(1)
    return picks_m1 == np.array([s == "alpha" for s in sources])


def test_the_doubtful_questions_and_only_they_go_to_the_full_predictor(halves) -> None:
    fast, full, train = halves
    cascade = CascadePredictor.fit(fast, full, train.questions, share=0.25)
    test = topic_matrix(80, seed=2)
    vague = np.array(["vague" in q for q in test.questions])
    quick = fast.predict(test.questions)
    u = uncertainty(quick.correctness)
    assert u[vague].mean() > u[~vague].max()

    prediction = cascade.predict(test.questions)
    sent = uncertainty(quick.correctness) > cascade.threshold
    assert sent[vague].mean() >= 0.9 and sent[~vague].mean() <= 0.05
    expected = full.predict([q for q, s in zip(test.questions, sent, strict=True) if s])
    np.testing.assert_array_equal(prediction.correctness[sent], expected.correctness)
    np.testing.assert_array_equal(prediction.correctness[~sent], quick.correctness[~sent])
    assert prediction.output_tokens is not None and expected.output_tokens is not None
    np.testing.assert_array_equal(prediction.output_tokens[sent], expected.output_tokens)
    assert cascade.stats.escalated == int(sent.sum()) and cascade.stats.questions == 80

    right_fast = best_model_is_right(quick.correctness, fast.pairs, test.sources)
    right_cascade = best_model_is_right(prediction.correctness, fast.pairs, test.sources)
    assert right_fast[vague].mean() < 0.8 and right_cascade[vague].mean() >= 0.95


def test_share_sets_the_threshold_on_training_questions(halves) -> None:
    fast, full, train = halves
    u = uncertainty(fast.predict(train.questions).correctness)
    for share in (0.1, 0.25, 0.5):
        cascade = CascadePredictor.fit(fast, full, train.questions, share=share)
        assert (u > cascade.threshold).mean() == pytest.approx(share, abs=0.02)


def test_share_zero_never_runs_the_full_encoder_and_one_always_does(halves) -> None:
    fast, full, train = halves
    test = topic_matrix(20, seed=3)
    never = CascadePredictor.fit(fast, fresh(full), train.questions, share=0.0)
    np.testing.assert_array_equal(
        never.predict(test.questions).correctness, fast.predict(test.questions).correctness
    )
    assert full.encoder.calls == []  # type: ignore[attr-defined]
    always = CascadePredictor.fit(fast, full, [], share=1.0)
    np.testing.assert_array_equal(
        always.predict(test.questions).correctness, full.predict(test.questions).correctness
    )
    for bad in (-0.1, 1.5):
        with pytest.raises(PredictorError, match="share"):
            CascadePredictor.fit(fast, full, train.questions, share=bad)
    with pytest.raises(PredictorError, match="training questions"):
        CascadePredictor.fit(fast, full, [], share=0.3)


def test_a_question_is_routed_the_same_alone_or_in_a_batch(halves) -> None:
    fast, full, train = halves
    cascade = CascadePredictor.fit(fast, full, train.questions, share=0.25)
    test = topic_matrix(12, seed=4)
    batch = cascade.predict(test.questions).correctness
    for i, question in enumerate(test.questions):
        np.testing.assert_allclose(cascade.predict([question]).correctness[0], batch[i], atol=1e-6)


def test_embeddings_alone_suffice_only_when_nothing_is_sent_on(halves) -> None:
    fast, full, train = halves
    test = topic_matrix(8, seed=5)
    emb = fast.question_vectors(test.questions)  # what the fast heads read, features included
    cascade = CascadePredictor.fit(fast, full, train.questions, share=0.25)
    with pytest.raises(PredictorError, match="pass the 8 questions"):
        cascade.predict_embeddings(emb)
    never = CascadePredictor.fit(fast, full, train.questions, share=0.0)
    for chain in (cascade, never):
        with pytest.raises(PredictorError, match="3 questions for 8 embeddings"):
            chain.predict_embeddings(emb, test.questions[:3])
    assert never.predict_embeddings(emb).correctness.shape == (8, 4)
    with pytest.raises(QuestionTypeError, match="got one str"):
        cascade.predict("alpha question")


def test_halves_must_cover_the_same_pairs(halves) -> None:
    fast, _, train = halves
    direct = [j for j, (_, s) in enumerate(train.pairs) if s == "direct"]
    narrow = OutcomeMatrix(
        questions=train.questions,
        sources=train.sources,
        pairs=[train.pairs[j] for j in direct],
        score=train.score[:, direct],
        output_tokens=train.output_tokens[:, direct],
        input_tokens=train.input_tokens[:, direct],
        cost=train.cost[:, direct],
    )
    other = RTRPredictor.train(
        narrow,
        MODELS,
        {"direct": STRATEGIES["direct"]},
        encoder=BlindEncoder("fake:sighted"),
        config=TrainConfig(hidden=8, learnable_dim=2, max_epochs=1, seed=0),
    )
    with pytest.raises(PredictorError, match="same pairs"):
        CascadePredictor(fast, other, threshold=0.1, share=0.25)


def router_over(predictor: object) -> RTRRouter:
    specs = {m: ModelSpec(name=m, description=d) for m, d in MODELS.items()}
    router = RTRRouter(predictor, specs, cost_unit="tokens")  # type: ignore[arg-type]
    router.fit_cost_scale(topic_matrix(40, seed=6).questions)
    return router


def test_a_saved_cascade_router_loads_and_routes_identically(halves, tmp_path: Path) -> None:
    fast, full, train = halves
    router = router_over(CascadePredictor.fit(fast, full, train.questions, share=0.25))
    router.save(tmp_path / "router")
    saved = json.loads((tmp_path / "router" / "predictor" / CASCADE_FILE).read_text())
    assert saved["share"] == 0.25 and saved["threshold"] == pytest.approx(
        router.predictor.threshold  # type: ignore[attr-defined]
    )
    encoders = {"fast_encoder": fast.encoder, "full_encoder": full.encoder}
    loaded = RTRRouter.load(tmp_path / "router", **encoders)
    assert isinstance(loaded.predictor, CascadePredictor)
    test = topic_matrix(30, seed=7)
    before = router.route_batch(test.questions)
    after = loaded.route_batch(test.questions)
    assert [d.pair for d in before] == [d.pair for d in after]
    np.testing.assert_array_equal(
        router.predictor.predict(test.questions).correctness,
        loaded.predictor.predict(test.questions).correctness,
    )
    # infinity survives JSON
    never = CascadePredictor.fit(fast, full, train.questions, share=0.0)
    never.save(tmp_path / "never")
    assert load_predictor(tmp_path / "never", **encoders).threshold == math.inf  # type: ignore[union-attr]


def test_loading_a_cascade_refuses_what_it_cannot_honour(halves, tmp_path: Path) -> None:
    fast, full, train = halves
    CascadePredictor.fit(fast, full, train.questions, share=0.25).save(tmp_path / "c")
    with pytest.raises(CheckpointError, match="cascade of two predictors"):
        load_predictor(tmp_path / "c", encoder=fast.encoder)
    with pytest.raises(CheckpointError, match="fake:blind"):  # a fake id cannot be rebuilt
        load_predictor(tmp_path / "c")
    path = tmp_path / "c" / CASCADE_FILE
    config = json.loads(path.read_text())
    (tmp_path / "c" / DIGEST_FILE).unlink()  # hand-edited below: the checks past the digests
    path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        load_predictor(tmp_path / "c", fast_encoder=fast.encoder, full_encoder=full.encoder)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=str(path)):
        load_predictor(tmp_path / "c", fast_encoder=fast.encoder, full_encoder=full.encoder)
    path.write_text(json.dumps({k: v for k, v in config.items() if k != "threshold"}))
    with pytest.raises(CheckpointError, match="threshold"):
        load_predictor(tmp_path / "c", fast_encoder=fast.encoder, full_encoder=full.encoder)


def test_evaluating_a_cascade_router_sends_its_doubtful_questions_on(halves) -> None:
    fast, full, train = halves
    cascade = CascadePredictor.fit(fast, full, train.questions, share=0.25)
    test = topic_matrix(60, seed=8)
    with_cascade = evaluate_router(router_over(cascade), test, train)
    fast_only = evaluate_router(router_over(fast), test, train)
    assert 0 < cascade.stats.escalated < cascade.stats.questions
    assert max(with_cascade.curves["rtr"].accuracy) > max(fast_only.curves["rtr"].accuracy)
