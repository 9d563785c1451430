"""Predictor speed: scoring, encoding, end-to-end routing and training, on 2 CPU threads.

Prints figures; asserts nothing about time. Baselines run in the same process:
- scoring: the factorised scorer vs the same MLP applied to every concatenated [q; pair] row;
- encoding: uncached encoder vs cache hits.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_predictor.py [--train] [--train-real]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.predictor import (
    CachedEncoder,
    RTRPredictor,
    SentenceTransformerEncoder,
    TrainConfig,
)
from langchain_rtr.predictor.model import RTREnsemble, RTRNet

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K = DATA / "routellm" / "gsm8k_responses.csv"
LLMROUTER = DATA / "llmrouter" / "dcrouter_train.json"
LAMBDA_TOKENS = 2.5e-5  # the paper's published tables fit â − 2.5e-5·l̂


def gsm8k_rows() -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with GSM8K.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def route(correctness: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """A stand-in policy (the real ones live in routing.py): argmax of â − λ·l̂."""
    utility = correctness if tokens is None else correctness - LAMBDA_TOKENS * tokens
    return np.argmax(utility, axis=1)


def random_predictor(n_models: int, n_strategies: int, dim: int = 384) -> RTRPredictor:
    """A predictor of the default size (``TrainConfig().ensemble`` networks) with random weights:
    speed does not depend on training."""
    torch.manual_seed(0)
    pairs = [(f"m{i}", f"s{j}") for i in range(n_models) for j in range(n_strategies)]
    config = TrainConfig()
    members = [
        RTRNet(
            torch.randn(n_models, dim),
            torch.randn(n_strategies, dim),
            torch.tensor([i for i in range(n_models) for _ in range(n_strategies)]),
            torch.tensor([j for _ in range(n_models) for j in range(n_strategies)]),
            question_dim=dim,
            learnable_dim=config.learnable_dim,
            hidden=config.hidden,
            length_head=True,
        )
        for _ in range(config.ensemble)
    ]
    return RTRPredictor(
        RTREnsemble(members),
        pairs=pairs,
        encoder=_NoEncoder(dim),
        config=config,
        length_scale=6.0,
        model_descriptions={},
        strategy_descriptions={},
    )


class _NoEncoder:
    def __init__(self, dim: int) -> None:
        self.id, self.dim = "none", dim

    def encode(self, texts: object, **_: object) -> np.ndarray:
        raise NotImplementedError


def naive_scores(predictor: RTRPredictor, q: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """The paper's formulation: each member's full MLP on every concatenated [q; m; s] row
    (both heads), the members' logits averaged."""
    members = list(predictor.net.members)
    logits = np.zeros((q.shape[0], len(predictor.pairs)), np.float32)
    qt = torch.from_numpy(q)
    with torch.inference_mode():
        for net in members:
            pairs = net.pair_features()
            n_pairs = pairs.shape[0]
            fulls = []
            for head in (net.correctness, net.length):
                full = torch.nn.Linear(
                    head.question.in_features + head.pair.in_features, head.pair.out_features
                )
                full.weight.copy_(torch.cat([head.question.weight, head.pair.weight], 1))
                full.bias.copy_(head.pair.bias)
                fulls.append((full, head.out))
            rows = max(1, chunk // n_pairs)
            for start in range(0, q.shape[0], rows):
                qb = qt[start : start + rows]
                x = torch.cat([qb.repeat_interleave(n_pairs, 0), pairs.repeat(qb.shape[0], 1)], 1)
                (c_full, c_out), (l_full, l_out) = fulls
                l_out(torch.relu(l_full(x)))  # the length head costs the same; computed, unused
                block = c_out(torch.relu(c_full(x))).view(qb.shape[0], n_pairs)
                logits[start : start + rows] += block.numpy() / len(members)
    return 1.0 / (1.0 + np.exp(-logits))


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def calibrate() -> None:
    """How fast this machine is right now: a shared, busy machine can be several times slower."""
    a, b = torch.randn(1000, 384), torch.randn(384, 1536)
    seconds = best_of(lambda: a @ b, repeats=10)
    print(
        f"machine: 1000x384x1536 float32 GEMM {2 * 1000 * 384 * 1536 / seconds / 1e9:.1f} GFLOP/s"
    )


def bench_scoring() -> None:
    print("== scoring alone (encoding excluded), 1,000 questions, both heads ==")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1000, 384)).astype(np.float32)
    for n_models, n_strategies in ((9, 1), (6, 4), (11, 4)):
        predictor = random_predictor(n_models, n_strategies)
        n_pairs = len(predictor.pairs)
        fast = best_of(lambda p=predictor: p.predict_embeddings(q))
        naive = best_of(lambda p=predictor: naive_scores(p, q), repeats=3)
        same = np.allclose(
            predictor.predict_embeddings(q).correctness, naive_scores(predictor, q), atol=1e-5
        )
        pairs = 1000 * n_pairs
        one = [q[i : i + 1] for i in range(200)]
        latencies = []
        for row in one:
            t = time.perf_counter()
            predictor.predict_embeddings(row)
            latencies.append(time.perf_counter() - t)
        print(
            f"{n_models} models x {n_strategies} strategies ({n_pairs} pairs): "
            f"factorised {pairs / fast:,.0f} pairs/s, concatenated MLP {pairs / naive:,.0f} "
            f"pairs/s, ratio {naive / fast:.1f}x (same outputs: {same}); "
            f"one question {statistics.median(latencies) * 1e3:.3f} ms median"
        )


def bench_encoding_and_routing() -> None:
    print("== encoding and end-to-end routing, GSM8K prompts, MiniLM ==")
    prompts = [row["prompt"] for row in gsm8k_rows()]
    plain = SentenceTransformerEncoder()
    t = time.perf_counter()
    plain.encode(["warm-up"])
    print(f"encoder load + first encode: {time.perf_counter() - t:.2f} s")
    predictor = random_predictor(9, 1)
    predictor.encoder = plain

    singles = prompts[1000:1100]
    encode_ms, route_ms = [], []
    for text in singles:
        t0 = time.perf_counter()
        emb = plain.encode([text])
        t1 = time.perf_counter()
        pred = predictor.predict_embeddings(emb)
        route(pred.correctness, pred.output_tokens)
        t2 = time.perf_counter()
        encode_ms.append((t1 - t0) * 1e3)
        route_ms.append((t2 - t0) * 1e3)
    print(
        f"one question: encode {statistics.median(encode_ms):.2f} ms median, "
        f"end to end (encode, score 9 pairs, policy) {statistics.median(route_ms):.2f} ms median "
        f"(p90 {np.percentile(route_ms, 90):.2f} ms)"
    )

    with tempfile.TemporaryDirectory() as cache_dir:
        cached = CachedEncoder(plain, cache_dir)
        predictor.encoder = cached
        miss_ms, hit_ms = [], []
        for text in singles[:50]:
            t = time.perf_counter()
            pred = predictor.predict([text])
            route(pred.correctness, pred.output_tokens)
            miss_ms.append((time.perf_counter() - t) * 1e3)
        for text in singles[:50]:
            t = time.perf_counter()
            pred = predictor.predict([text])
            route(pred.correctness, pred.output_tokens)
            hit_ms.append((time.perf_counter() - t) * 1e3)
        print(
            f"one question through predict() with the disk cache: miss "
            f"{statistics.median(miss_ms):.2f} ms, hit {statistics.median(hit_ms):.3f} ms median"
        )

        batch = prompts[:1000]
        for batch_size in (16, 64):
            t = time.perf_counter()
            emb = plain.encode(batch, batch_size=batch_size)
            pred = predictor.predict_embeddings(emb)
            route(pred.correctness, pred.output_tokens)
            elapsed = time.perf_counter() - t
            print(
                f"1,000 questions as a batch (encode batch_size={batch_size}, score, policy): "
                f"{1000 / elapsed:,.0f} q/s"
            )
        cached.encode(batch)
        t = time.perf_counter()
        pred = predictor.predict(batch)
        route(pred.correctness, pred.output_tokens)
        print(f"1,000 questions, all cache hits: {1000 / (time.perf_counter() - t):,.0f} q/s")


def llmrouter_matrix() -> tuple[OutcomeMatrix, dict[str, str]]:
    rows = json.loads(LLMROUTER.read_text("utf-8"))
    models = sorted({m for row in rows for m in row["scores"]})
    score = np.full((len(rows), len(models)), np.nan, np.float32)
    for i, row in enumerate(rows):
        for j, m in enumerate(models):
            if row["scores"].get(m) is not None:
                score[i, j] = float(row["scores"][m])
    nan = np.full(score.shape, np.nan, np.float32)
    matrix = OutcomeMatrix(
        questions=[row["question"] for row in rows],
        sources=["llmrouter"] * len(rows),
        pairs=[(m, "direct") for m in models],
        score=score,
        output_tokens=nan,
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )
    info = json.loads((LLMROUTER.parent / "default_llm.json").read_text("utf-8"))
    descriptions = {m: str(info.get(m, {}).get("feature", m)) for m in models}
    return matrix, descriptions


def gsm8k_matrix() -> OutcomeMatrix:
    rows = gsm8k_rows()
    models = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]
    score = np.array([[row[m] == "True" for m in models] for row in rows], np.float32)
    # Words x 4/3 as a token proxy: the benchmark needs lengths, not exact counts.
    tokens = np.array(
        [[len(row[f"{m}_response"].split()) * 4 / 3 for m in models] for row in rows], np.float32
    )
    nan = np.full(score.shape, np.nan, np.float32)
    return OutcomeMatrix(
        questions=[row["prompt"] for row in rows],
        sources=["gsm8k"] * len(rows),
        pairs=[(m, "direct") for m in models],
        score=score,
        output_tokens=tokens,
        input_tokens=nan,
        cost=nan.copy(),
    )


class TableEncoder:
    """Pre-computed vectors by text: times training alone, with no encoder in the way."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.id, self.dim = "bench:table", vectors.shape[1]
        self.index = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors
        self.fallback = np.zeros(vectors.shape[1], np.float32)

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        return np.stack(
            [self.vectors[self.index[t]] if t in self.index else self.fallback for t in texts]
        )


def synthetic_matrix(
    n: int, n_pairs: int, lengths: bool, seed: int = 0
) -> tuple[OutcomeMatrix, TableEncoder]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w = rng.standard_normal((384, n_pairs)).astype(np.float32) * 3
    score = (rng.random((n, n_pairs)) < 1 / (1 + np.exp(-q @ w))).astype(np.float32)
    tokens = rng.lognormal(5, 1, (n, n_pairs)).astype(np.float32)
    nan = np.full((n, n_pairs), np.nan, np.float32)
    questions = [f"q{i}" for i in range(n)]
    matrix = OutcomeMatrix(
        questions=questions,
        sources=["synthetic"] * n,
        pairs=[(f"m{j}", "direct") for j in range(n_pairs)],
        score=score,
        output_tokens=tokens if lengths else nan,
        input_tokens=nan.copy(),
        cost=nan.copy(),
    )
    return matrix, TableEncoder(questions + ["d"], np.vstack([q, q[:1]]))


def time_training(
    name: str, matrix: OutcomeMatrix, descriptions: dict[str, str], encoder: object
) -> None:
    strategies = {"direct": "Answer the question directly."}
    train, test = matrix.split([0.8, 0.2], seed=0)
    t = time.perf_counter()
    predictor = RTRPredictor.train(train, descriptions, strategies, encoder=encoder)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t
    pred = predictor.predict(test.questions)
    seen = np.isfinite(test.score)
    acc = float(((pred.correctness > 0.5) == (test.score > 0.5))[seen].mean())
    s = predictor.summary
    print(
        f"{name}: {s.train_questions} + {s.validation_questions} validation questions x "
        f"{len(train.pairs)} pairs: {elapsed:.1f} s, {sum(s.epochs)} epochs over "
        f"{len(s.epochs)} networks ({elapsed / sum(s.epochs):.2f} s/epoch, best "
        f"{s.best_epochs}), length head "
        f"{predictor.has_length_head}, held-out cell accuracy {acc:.3f}"
    )


def bench_training(real: bool) -> None:
    print("== training, default TrainConfig (encoding excluded) ==")
    for n, n_pairs, lengths in ((5608, 9, False), (1319, 2, True)):
        matrix, encoder = synthetic_matrix(n, n_pairs, lengths)
        desc = {m: "d" for m, _ in matrix.pairs}
        time_training(f"synthetic {n} x {n_pairs}, lengths {lengths}", matrix, desc, encoder)
    if not real:
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        encoder = CachedEncoder(SentenceTransformerEncoder(), cache_dir)
        llm, descriptions = llmrouter_matrix()
        gsm = gsm8k_matrix()
        gsm_desc = {m: m for m, _ in gsm.pairs}
        t = time.perf_counter()
        encoder.encode(llm.questions + gsm.questions)
        print(f"(encoding {len(llm) + len(gsm)} questions once: {time.perf_counter() - t:.1f} s)")
        time_training("LLMRouter (real, MiniLM)", llm, descriptions, encoder)
        time_training("RouteLLM GSM8K (real, MiniLM, word-count lengths)", gsm, gsm_desc, encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", action="store_true", help="also time training (synthetic)")
    parser.add_argument(
        "--train-real", action="store_true", help="also train on LLMRouter and GSM8K (encodes 6.9k)"
    )
    parser.add_argument("--skip-encoder", action="store_true", help="scoring figures only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    calibrate()
    bench_scoring()
    if not args.skip_encoder:
        bench_encoding_and_routing()
    if args.train or args.train_real:
        bench_training(real=args.train_real)


if __name__ == "__main__":
    main()
