"""The RTR predictor: planted signals, checkpoints, the embedding cache, repeatability."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.errors import ConfigError, QuestionTypeError
from langchain_rtr.predictor import (
    DEFAULT_ENCODER_ID,
    FORMAT_VERSION,
    SENTENCE_TRANSFORMERS_ID,
    CachedEncoder,
    CheckpointError,
    FactorisedHead,
    PredictorError,
    QuestionEncoder,
    RTRPredictor,
    SentenceTransformerEncoder,
    TrainConfig,
    default_encoder,
)
from langchain_rtr.predictor.digests import DIGEST_FILE
from langchain_rtr.predictor.encoder import text_key
from langchain_rtr.predictor.training import member_seeds

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ("alpha", "beta")


class TopicEncoder:
    """Deterministic and fast: a topic direction plus per-text noise from a hash of the text."""

    def __init__(self, dim: int = 32, encoder_id: str = "fake:topic", noise: float = 0.3) -> None:
        self.id = encoder_id
        self.dim = dim
        self.noise = noise
        self.calls: list[list[str]] = []

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = self.noise * np.random.default_rng(seed).standard_normal(self.dim)
            for t, topic in enumerate(TOPICS):
                if topic in text:
                    out[i, t] += 1.0
        return out


MODELS = {"m1": "A model that is good at alpha.", "m2": "A model that is good at beta."}
STRATEGIES = {"direct": "Answer at once.", "cot": "Reason step by step, then answer."}
PLANTED_TOKENS = {"direct": 40.0, "cot": 400.0}


def planted_matrix(
    n: int, seed: int, *, lengths: bool = True, nan_fraction: float = 0.0, texts: bool = False
) -> OutcomeMatrix:
    """Topic alpha is solved only by m1, topic beta only by m2; lengths depend on the strategy."""
    rng = np.random.default_rng(seed)
    pairs = [(m, s) for m in MODELS for s in STRATEGIES]
    questions, sources = [], []
    score = np.zeros((n, len(pairs)), np.float32)
    tokens = np.zeros((n, len(pairs)), np.float32)
    for i in range(n):
        topic = TOPICS[i % 2]
        if texts:
            questions.append(real_question(topic, seed * 100_000 + i))
        else:
            questions.append(f"{topic} question {seed}-{i}")
        sources.append(topic)
        for j, (m, s) in enumerate(pairs):
            score[i, j] = float((m == "m1") == (topic == "alpha"))
            tokens[i, j] = PLANTED_TOKENS[s] * rng.uniform(0.8, 1.25)
    if nan_fraction:
        hide = rng.random(score.shape) < nan_fraction
        score[hide] = np.nan
        tokens[hide] = np.nan
    nan = np.full(score.shape, np.nan, np.float32)
    return OutcomeMatrix(
        questions=questions,
        sources=sources,
        pairs=pairs,
        score=score,
        output_tokens=tokens if lengths else nan.copy(),
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )


ARITHMETIC = ["What is {a} plus {b}?", "Compute {a} times {b}.", "Solve for x: x - {a} = {b}."]
HISTORY = [
    "In which year did the reign of king number {a} of the old dynasty end?",
    "Which empire fought the battle of {a} in the century {b}?",
    "Who signed the treaty of the {a} kingdoms after the war?",
]


def real_question(topic: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    templates = ARITHMETIC if topic == "alpha" else HISTORY
    template = templates[int(rng.integers(len(templates)))]
    return template.format(a=int(rng.integers(2, 999)), b=int(rng.integers(2, 999)))


FAST = TrainConfig(hidden=64, learnable_dim=8, max_epochs=60, patience=8, lr=3e-3, seed=0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "rtr-cache"
    monkeypatch.setenv("RTR_CACHE_DIR", str(cache))
    return cache


def train_fake(
    matrix: OutcomeMatrix, config: TrainConfig = FAST, encoder: QuestionEncoder | None = None
) -> RTRPredictor:
    return RTRPredictor.train(
        matrix, MODELS, STRATEGIES, encoder=encoder or TopicEncoder(), config=config
    )


def column(predictor: RTRPredictor, model: str, strategy: str) -> int:
    return predictor.pairs.index((model, strategy))


def check_planted(predictor: RTRPredictor, held_out: OutcomeMatrix) -> None:
    pred = predictor.predict(held_out.questions)
    alpha = np.array([src == "alpha" for src in held_out.sources])
    m1 = [column(predictor, "m1", s) for s in STRATEGIES]
    m2 = [column(predictor, "m2", s) for s in STRATEGIES]
    best_is_m1 = pred.correctness[:, m1].mean(1) > pred.correctness[:, m2].mean(1)
    assert (best_is_m1 == alpha).mean() >= 0.95
    assert pred.correctness[alpha][:, m1].mean() > 0.8
    assert pred.correctness[alpha][:, m2].mean() < 0.2
    assert pred.correctness[~alpha][:, m2].mean() > 0.8
    assert pred.output_tokens is not None
    for s, planted in PLANTED_TOKENS.items():
        cols = [column(predictor, m, s) for m in MODELS]
        median = float(np.median(pred.output_tokens[:, cols]))
        assert planted / 1.5 < median < planted * 1.5, (s, median)


# ------------------------------------------------------------------- planted signal


def test_planted_signal_recovered_with_real_minilm() -> None:
    train = planted_matrix(160, seed=1, texts=True)
    held_out = planted_matrix(60, seed=2, texts=True)
    assert not set(train.questions) & set(held_out.questions)
    encoder = default_encoder()
    predictor = RTRPredictor.train(
        train, MODELS, STRATEGIES, encoder=encoder, config=TrainConfig(hidden=128, seed=0)
    )
    assert predictor.encoder.id == DEFAULT_ENCODER_ID
    assert predictor.encoder.dim == 384
    check_planted(predictor, held_out)


def test_planted_signal_recovered_with_unobserved_cells() -> None:
    train = planted_matrix(300, seed=3, nan_fraction=0.4)
    predictor = train_fake(train)
    assert predictor.has_length_head
    check_planted(predictor, planted_matrix(80, seed=4))


def test_fractional_scores_are_learned_as_probabilities() -> None:
    train = planted_matrix(300, seed=5, lengths=False)
    train.score[:] = np.where(np.array(train.sources)[:, None] == "alpha", 0.75, 0.25)
    predictor = train_fake(train, TrainConfig(hidden=64, learnable_dim=8, lr=3e-3, seed=0))
    pred = predictor.predict(planted_matrix(40, seed=6).questions)
    assert abs(float(pred.correctness[0::2].mean()) - 0.75) < 0.08
    assert abs(float(pred.correctness[1::2].mean()) - 0.25) < 0.08


def test_no_lengths_means_no_length_head(tmp_path: Path) -> None:
    predictor = train_fake(planted_matrix(100, seed=7, lengths=False))
    assert not predictor.has_length_head
    assert not predictor.net.has_length_head
    pred = predictor.predict(["alpha one", "beta two"])
    assert pred.output_tokens is None
    assert pred.correctness.shape == (2, 4) and pred.correctness.dtype == np.float32
    predictor.save(tmp_path / "ckpt")
    loaded = RTRPredictor.load(tmp_path / "ckpt", encoder=TopicEncoder())
    assert not loaded.has_length_head
    assert loaded.predict(["alpha one"]).output_tokens is None


def test_missing_descriptions_are_named() -> None:
    matrix = planted_matrix(20, seed=8)
    with pytest.raises(PredictorError, match=r"model\(s\) \['m2'\]"):
        RTRPredictor.train(matrix, {"m1": "x"}, STRATEGIES, encoder=TopicEncoder(), config=FAST)
    with pytest.raises(PredictorError, match=r"strategy\(s\) \['cot'\]"):
        RTRPredictor.train(matrix, MODELS, {"direct": "x"}, encoder=TopicEncoder(), config=FAST)


def test_bad_config_and_inputs_are_rejected() -> None:
    with pytest.raises(PredictorError, match="batch_size=0"):
        TrainConfig(batch_size=0)
    predictor = train_fake(planted_matrix(40, seed=9), TrainConfig(hidden=16, max_epochs=2))
    with pytest.raises(PredictorError, match="expected"):
        predictor.predict_embeddings(np.zeros((3, 5), np.float32))
    with pytest.raises(QuestionTypeError, match="sequence"):  # the one input gate
        predictor.predict("alpha")  # type: ignore[arg-type]
    single = predictor.predict_embeddings(np.zeros(32, np.float32))
    assert single.correctness.shape == (1, 4)
    # The encoder's vectors alone are not what a predictor with question features reads.
    predictor = train_fake(
        planted_matrix(40, seed=9), TrainConfig(hidden=16, max_epochs=2, question_features=True)
    )
    with pytest.raises(PredictorError, match="no questions for 1 embeddings"):
        predictor.predict_embeddings(np.zeros(32, np.float32))
    with pytest.raises(PredictorError, match="2 questions for 1 embeddings"):
        predictor.predict_embeddings(np.zeros(32, np.float32), ["a", "b"])
    single = predictor.predict_embeddings(np.zeros(32, np.float32), ["alpha one"])
    assert single.correctness.shape == (1, 4)
    ready = predictor.predict_embeddings(predictor.question_vectors(["alpha one"]))
    np.testing.assert_array_equal(ready.correctness, predictor.predict(["alpha one"]).correctness)


# ----------------------------------------------------------------- the scorer itself


def test_factorised_head_equals_the_concatenated_mlp() -> None:
    torch.manual_seed(0)
    head = FactorisedHead(question_dim=12, pair_dim=7, hidden=16)
    q, p = torch.randn(5, 12), torch.randn(3, 7)
    factorised = head(q, head.pair_bias(p))
    full = torch.nn.Linear(19, 16)
    with torch.no_grad():
        full.weight.copy_(torch.cat([head.question.weight, head.pair.weight], dim=1))
        full.bias.copy_(head.pair.bias)
    x = torch.cat([q.unsqueeze(1).expand(5, 3, 12), p.unsqueeze(0).expand(5, 3, 7)], dim=2)
    concatenated = head.out(torch.relu(full(x))).squeeze(-1)
    torch.testing.assert_close(factorised, concatenated, rtol=1e-5, atol=1e-6)


def test_fast_inference_path_matches_the_network() -> None:
    config = TrainConfig(hidden=32, max_epochs=3, calibrate=False)  # the network alone
    predictor = train_fake(planted_matrix(60, seed=18), config)
    embeddings = predictor.question_vectors(planted_matrix(50, seed=19).questions)
    pred = predictor.predict_embeddings(embeddings)
    with torch.no_grad():
        logits, log_length = predictor.net(torch.from_numpy(embeddings))
    assert log_length is not None and pred.output_tokens is not None
    np.testing.assert_allclose(pred.correctness, torch.sigmoid(logits).numpy(), rtol=1e-5)
    tokens = torch.expm1(log_length * predictor.length_scale).numpy()
    np.testing.assert_allclose(pred.output_tokens, tokens, rtol=1e-4)


def test_batched_prediction_matches_one_by_one() -> None:
    predictor = train_fake(planted_matrix(60, seed=10), TrainConfig(hidden=32, max_epochs=3))
    questions = planted_matrix(20, seed=11).questions
    batch = predictor.predict(questions)
    for i, question in enumerate(questions[:5]):
        one = predictor.predict([question])
        np.testing.assert_allclose(one.correctness[0], batch.correctness[i], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ ensembles


def test_an_ensemble_averages_its_members_raw_outputs() -> None:
    config = TrainConfig(
        hidden=32, learnable_dim=4, max_epochs=4, seed=3, ensemble=3, calibrate=False
    )
    predictor = train_fake(planted_matrix(80, seed=20), config)
    members = list(predictor.net.members)
    assert len(members) == 3
    q = torch.from_numpy(predictor.question_vectors(planted_matrix(30, seed=21).questions))
    with torch.no_grad():
        raws = [member.raw(q) for member in members]
    logits = torch.stack([r[0] for r in raws]).mean(0)
    raw_length = torch.stack([r[1] for r in raws]).mean(0)
    assert not torch.allclose(raws[0][0], raws[1][0])  # members really differ
    pred = predictor.predict_embeddings(q.numpy())
    np.testing.assert_allclose(pred.correctness, torch.sigmoid(logits).numpy(), rtol=1e-5)
    tokens = torch.expm1(torch.nn.functional.softplus(raw_length) * predictor.length_scale)
    assert pred.output_tokens is not None
    np.testing.assert_allclose(pred.output_tokens, tokens.numpy(), rtol=1e-4)


def test_member_zero_is_the_single_network_of_the_same_seed() -> None:
    matrix = planted_matrix(80, seed=22)
    base = TrainConfig(hidden=32, learnable_dim=4, max_epochs=4, seed=7)
    single = train_fake(matrix, TrainConfig(**{**base.__dict__, "ensemble": 1}))
    trio = train_fake(matrix, TrainConfig(**{**base.__dict__, "ensemble": 3}))
    for (name, a), (_, b) in zip(
        single.net.members[0].state_dict().items(),
        trio.net.members[0].state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name


def test_member_seeds_are_distinct_within_and_across_seeds() -> None:
    zero, one = member_seeds(0, 5), member_seeds(1, 5)
    assert zero[0] == 0 and one[0] == 1
    assert len(set(zero) | set(one)) == 10
    assert member_seeds(0, 5) == zero  # deterministic


def test_a_checkpoint_missing_a_member_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    config = TrainConfig(hidden=16, learnable_dim=4, max_epochs=2, ensemble=2)
    train_fake(planted_matrix(40, seed=23), config).save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("members.1.")}
    save_file(tensors, str(weights))
    (tmp_path / "ckpt" / DIGEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"missing \['members\.1\."):
        RTRPredictor.load(tmp_path / "ckpt", encoder=TopicEncoder())


# ------------------------------------------------------------------- repeatability


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    matrix = planted_matrix(120, seed=12)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a = train_fake(matrix)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads
    b = train_fake(matrix)
    for (name, wa), (_, wb) in zip(
        a.net.state_dict().items(), b.net.state_dict().items(), strict=True
    ):
        assert torch.equal(wa, wb), name
    questions = planted_matrix(10, seed=13).questions
    np.testing.assert_array_equal(
        a.predict(questions).correctness, b.predict(questions).correctness
    )
    c = train_fake(matrix, TrainConfig(**{**FAST.__dict__, "seed": 1}))
    assert not np.array_equal(a.predict(questions).correctness, c.predict(questions).correctness)


def test_members_trained_in_parallel_processes_equal_those_trained_in_turn() -> None:
    matrix = planted_matrix(80, seed=24)
    base = TrainConfig(hidden=32, learnable_dim=4, max_epochs=6, seed=3, ensemble=3)
    epochs: dict[int, list[int]] = {1: [], 2: []}
    trained = {
        workers: RTRPredictor.train(
            matrix,
            MODELS,
            STRATEGIES,
            encoder=TopicEncoder(),
            config=TrainConfig(**{**base.__dict__, "workers": workers}),
            progress=lambda epoch, tl, vl, workers=workers: epochs[workers].append(epoch),
        )
        for workers in (1, 2)
    }
    one, two = trained[1], trained[2]
    for (name, a), (_, b) in zip(
        one.net.state_dict().items(), two.net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert one.summary == two.summary
    assert epochs[1] == epochs[2] == list(range(1, sum(one.summary.epochs) + 1))
    assert one.length_quantiles is not None and two.length_quantiles is not None
    np.testing.assert_array_equal(one.length_quantiles.offsets, two.length_quantiles.offsets)
    questions = planted_matrix(10, seed=25).questions
    np.testing.assert_array_equal(
        one.predict(questions).correctness, two.predict(questions).correctness
    )


def test_members_train_in_turn_when_the_job_is_small() -> None:
    from langchain_rtr.predictor.members import PARALLEL_MIN_CELLS, default_workers

    config = TrainConfig(ensemble=5)
    assert default_workers(config, PARALLEL_MIN_CELLS - 1) == 1
    assert default_workers(TrainConfig(ensemble=5, workers=8), 10) == 5
    assert default_workers(TrainConfig(ensemble=1), 10**7) == 1
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=0)


def test_early_stopping_keeps_the_best_epoch() -> None:
    matrix = planted_matrix(120, seed=14, lengths=False)
    rng = np.random.default_rng(0)
    matrix.score[:] = (rng.random(matrix.score.shape) < 0.5).astype(np.float32)  # pure noise
    seen: list[tuple[int, float, float]] = []
    config = TrainConfig(hidden=256, lr=1e-2, max_epochs=100, patience=3, seed=0, ensemble=2)
    predictor = train_fake(matrix, config)
    predictor_again = RTRPredictor.train(
        matrix,
        MODELS,
        STRATEGIES,
        encoder=TopicEncoder(),
        config=config,
        progress=lambda e, t, v: seen.append((e, t, v)),
    )
    summary = predictor_again.summary
    # progress counts epochs on across members; the history says whose epoch each was
    assert [e for e, _, _ in seen] == list(range(1, sum(summary.epochs) + 1))
    assert [(t, v) for _, t, v in seen] == [(t, v) for _, _, t, v in summary.history]
    assert len(summary.epochs) == len(summary.best_epochs) == 2
    for member in (0, 1):
        rows = [row for row in summary.history if row[0] == member]
        assert summary.epochs[member] == len(rows) < 100  # noise overfits: validation stalls
        assert summary.epochs[member] - summary.best_epochs[member] == 3
        assert summary.best_validation_losses[member] == min(v for *_, v in rows)
    assert summary.validation_questions == 12 and summary.train_questions == 108
    q = ["alpha x", "beta y"]
    np.testing.assert_array_equal(
        predictor.predict(q).correctness, predictor_again.predict(q).correctness
    )


# --------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    predictor = train_fake(planted_matrix(120, seed=15), TrainConfig(hidden=32, max_epochs=5))
    predictor.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "digests.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["encoder"] == {"id": "fake:topic", "dim": 32}
    assert config["models"] == ["m1", "m2"] and config["strategies"] == ["direct", "cot"]
    assert config["length_normalisation"]["scale"] == pytest.approx(predictor.length_scale)
    counting = TopicEncoder()
    loaded = RTRPredictor.load(
        tmp_path / "ckpt",
        encoder=counting,
        expected_models=["m2", "m1"],
        expected_strategies=["cot", "direct"],
    )
    assert counting.calls == []  # descriptions come from the checkpoint, not re-encoded
    assert loaded.pairs == predictor.pairs
    assert loaded.config == predictor.config
    questions = planted_matrix(30, seed=16).questions
    before, after = predictor.predict(questions), loaded.predict(questions)
    np.testing.assert_array_equal(before.correctness, after.correctness)
    assert before.output_tokens is not None and after.output_tokens is not None
    np.testing.assert_array_equal(before.output_tokens, after.output_tokens)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    predictor = train_fake(planted_matrix(40, seed=17), TrainConfig(hidden=16, max_epochs=2))
    predictor.save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    (path / DIGEST_FILE).unlink(missing_ok=True)  # hand-edited, so without digests


def test_load_rejects_another_format_version(checkpoint: Path) -> None:
    edit_config(checkpoint, format_version=99)
    with pytest.raises(CheckpointError, match=rf"version 99.*expected .*version {FORMAT_VERSION}"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder())


def test_load_rejects_other_models_or_strategies(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"models \['m1', 'm2'\].*missing \['m3'\]"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder(), expected_models=["m1", "m2", "m3"])
    with pytest.raises(CheckpointError, match=r"strategies .*unexpected \['cot'\]"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder(), expected_strategies=["direct"])


def test_load_rejects_a_different_encoder(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'fake:topic'.*given is 'fake:other'"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder(encoder_id="fake:other"))
    with pytest.raises(CheckpointError, match=r"expects 32-d .* makes 16-d"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder(dim=16))
    with pytest.raises(CheckpointError, match="pass encoder="):
        RTRPredictor.load(checkpoint)  # a fake encoder cannot be rebuilt from its id


def test_load_rejects_broken_checkpoints(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        RTRPredictor.load(tmp_path / "nowhere", encoder=TopicEncoder())
    edit_config(checkpoint, models=["m1", "m2", "m3"])
    with pytest.raises(CheckpointError, match="do not match"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder())
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder())
    (checkpoint / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        RTRPredictor.load(checkpoint, encoder=TopicEncoder())


def test_load_never_unpickles(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    RTRPredictor.load(checkpoint, encoder=TopicEncoder())


# --------------------------------------------------------------------- the cache


def test_cache_second_encode_never_calls_the_encoder(tmp_path: Path) -> None:
    inner = TopicEncoder()
    cached = CachedEncoder(inner, tmp_path / "c")
    texts = ["alpha a", "beta b", "alpha a", "gamma"]
    first = cached.encode(texts)
    assert inner.calls == [["alpha a", "beta b", "gamma"]]  # duplicates encoded once
    np.testing.assert_array_equal(first, TopicEncoder().encode(texts))
    second = cached.encode(texts)
    assert len(inner.calls) == 1
    np.testing.assert_array_equal(first, second)
    # A fresh wrapper on the same directory (as another process would) hits too.
    other_inner = TopicEncoder()
    np.testing.assert_array_equal(CachedEncoder(other_inner, tmp_path / "c").encode(texts), first)
    assert other_inner.calls == []


def test_cache_encodes_only_the_misses(tmp_path: Path) -> None:
    inner = TopicEncoder()
    cached = CachedEncoder(inner, tmp_path / "c")
    cached.encode(["alpha 1", "alpha 2"])
    out = cached.encode(["alpha 2", "beta 3", "alpha 1"])
    assert inner.calls[-1] == ["beta 3"]
    np.testing.assert_array_equal(out, TopicEncoder().encode(["alpha 2", "beta 3", "alpha 1"]))
    assert cached.encode([]).shape == (0, 32)


def test_cache_entries_are_per_encoder_id(tmp_path: Path) -> None:
    a, b = TopicEncoder(encoder_id="fake:a"), TopicEncoder(encoder_id="fake:b", dim=8)
    CachedEncoder(a, tmp_path / "c").encode(["alpha"])
    out = CachedEncoder(b, tmp_path / "c").encode(["alpha"])
    assert b.calls == [["alpha"]]
    assert out.shape == (1, 8)


def test_cache_default_dir_follows_env(_cache_dir: Path) -> None:
    cached = CachedEncoder(TopicEncoder())
    cached.encode(["alpha"])
    assert cached.path.parent == _cache_dir and cached.path.is_file()


def test_unusable_cache_dir_warns_and_still_encodes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cached = CachedEncoder(TopicEncoder(), blocker / "sub")  # a file where a directory must be
    with pytest.warns(RuntimeWarning, match="without a cache"):
        out = cached.encode(["alpha"])
    assert out.shape == (1, 32)


def _rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])


def test_the_cache_keeps_its_bound_and_drops_the_oldest_first(tmp_path: Path) -> None:
    inner = TopicEncoder()
    cached = CachedEncoder(inner, tmp_path / "c", max_entries=10)
    batches = [[f"alpha {b} {i}" for i in range(4)] for b in range(5)]
    for batch in batches:
        cached.encode(batch)
    assert _rows(cached.path) <= 10
    calls = len(inner.calls)
    np.testing.assert_array_equal(cached.encode(batches[-1]), TopicEncoder().encode(batches[-1]))
    assert len(inner.calls) == calls  # the newest are kept
    cached.encode(batches[0])
    assert inner.calls[-1] == batches[0]  # the oldest were dropped


def test_a_cache_file_from_before_the_bound_is_upgraded(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    path = tmp_path / "c" / "embeddings.sqlite3"
    old = TopicEncoder()
    vector = old.encode(["alpha old"])[0].astype("<f4").tobytes()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE embeddings (encoder TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER"
            " NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (encoder, key)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO embeddings VALUES (?, ?, ?, ?)",
            (old.id, text_key("alpha old"), 32, vector),
        )
    inner = TopicEncoder()
    cached = CachedEncoder(inner, tmp_path / "c", max_entries=3)
    cached.encode(["alpha old"])
    assert inner.calls == []  # its rows still read
    cached.encode(["beta 1", "beta 2", "beta 3"])
    cached.encode(["alpha old"])
    assert inner.calls[-1] == ["alpha old"]  # rows of the old file go first


@pytest.mark.parametrize("bad", [0, -1, True, "5", 2.5])
def test_a_bad_cache_bound_is_refused(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_entries"):
        CachedEncoder(TopicEncoder(), tmp_path, max_entries=bad)  # type: ignore[arg-type]


def test_the_cache_bound_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTR_CACHE_MAX_ENTRIES", "7")
    assert CachedEncoder(TopicEncoder(), tmp_path).max_entries == 7
    monkeypatch.setenv("RTR_CACHE_MAX_ENTRIES", "many")
    with pytest.raises(ConfigError, match=r"\$RTR_CACHE_MAX_ENTRIES"):
        CachedEncoder(TopicEncoder(), tmp_path)


def _encode_in_child(directory: str, start: int) -> None:
    cached = CachedEncoder(TopicEncoder(), directory)
    for k in range(5):
        cached.encode([f"text {i}" for i in range(start + 20 * k, start + 20 * k + 40)])


def test_cache_is_safe_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    children = [
        ctx.Process(target=_encode_in_child, args=(str(tmp_path / "c"), s)) for s in (0, 10, 20)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    inner = TopicEncoder()
    texts = [f"text {i}" for i in range(140)]
    out = CachedEncoder(inner, tmp_path / "c").encode(texts)
    assert inner.calls == []
    np.testing.assert_array_equal(out, TopicEncoder().encode(texts))


# ----------------------------------------------------------- the default encoder


def test_default_encoder_is_minilm_offline() -> None:
    plain = default_encoder(cache=False, backend="sentence-transformers")
    assert isinstance(plain, SentenceTransformerEncoder)
    assert plain.id == SENTENCE_TRANSFORMERS_ID
    by_path = SentenceTransformerEncoder(plain.source)
    assert by_path.id == SENTENCE_TRANSFORMERS_ID  # the bundled copy given by path is the same
    vectors = plain.encode(["What is 2 + 2?", "Who wrote Hamlet?"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert isinstance(default_encoder(), CachedEncoder)
    assert isinstance(plain, QuestionEncoder)


def spy_on_model_encode(
    encoder: SentenceTransformerEncoder, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, object]]:
    """Record, per call of the underlying ``SentenceTransformer.encode``, its batch size and
    whether oneDNN was on."""
    model = encoder._load()
    calls: list[dict[str, object]] = []
    real = model.encode

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(
            {"batch_size": kwargs.get("batch_size"), "onednn": torch.backends.mkldnn.enabled}
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    return calls


def test_sentence_transformer_encodes_with_onednn_off_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # oneDNN caches a kernel per input shape without bound (RSS grew ~5 KB per routed request)
    encoder = SentenceTransformerEncoder()
    calls = spy_on_model_encode(encoder, monkeypatch)
    before = torch.backends.mkldnn.enabled
    vectors = encoder.encode(["How many legs do three spiders have?"])
    assert [c["onednn"] for c in calls] == [False]
    assert torch.backends.mkldnn.enabled == before
    assert vectors.shape == (1, encoder.dim)


def test_sentence_transformer_encodes_small_batches_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_rtr.predictor.encoder import CPU_BATCH_SIZE

    encoder = SentenceTransformerEncoder()
    calls = spy_on_model_encode(encoder, monkeypatch)
    texts = [real_question(("alpha", "beta")[i % 2], i) for i in range(CPU_BATCH_SIZE + 5)]
    together = encoder.encode(texts, batch_size=64)
    assert [c["batch_size"] for c in calls] == [CPU_BATCH_SIZE]
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    encoder.encode(texts, batch_size=4)
    assert calls[-1]["batch_size"] == 4  # smaller requests are kept
