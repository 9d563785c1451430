"""Encoder backends: speed of routing, process cost, and routing quality, per backend.

    .venv/bin/python benchmarks/bench_encoders.py speed      # latency, q/s, import time, RSS
    .venv/bin/python benchmarks/bench_encoders.py quality    # AIQ / max accuracy per fold
    .venv/bin/python benchmarks/bench_encoders.py quality --projection   # + the ridge experiment

speed: GSM8K questions (/work/shared/data/routellm/gsm8k_responses.csv, or $RTR_GSM8K_CSV).
  * one question routed end to end (encode uncached + score all pairs + Tradeoff policy),
    median over distinct questions;
  * batched: 1,000 questions encoded uncached and routed in one call, questions per second;
  * a fresh routing process per backend (subprocess): import + load time and peak RSS, and
    whether torch was imported;
  * the same for the static>onnx-int8 cascade at each --cascade-share (of training questions
    sent on), with the share of these questions it sent to int8.
  Every router is the default ensemble trained for one epoch (scoring costs the same after any
  epoch; the cascade's share of escalated GSM8K questions is printed, as it depends on them).
  Ratios are against sentence-transformers measured in the same run (the machine is shared);
  the load average is printed at the start and the end.
quality: `rtr encoder compare`'s protocols (langchain_rtr/cli/encoder.py) on --data: a random
  held-out 20 % per seed, and each record source held out in turn (llmrouter: its clusters;
  faithful-cot: its data sets); RTR's AIQ and maximum accuracy on its λ sweep per backend and
  cascade share. --projection adds an experiment kept out of the package: the static vectors
  mapped by a ridge regression onto the MiniLM vectors of the training questions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


BACKENDS = ("sentence-transformers", "onnx", "onnx-int8", "static")
CASCADE = "static>onnx-int8"
"""The cascade rows: static first, the least certain share of questions re-scored on int8."""
GSM8K = Path(os.environ.get("RTR_GSM8K_CSV", "/work/shared/data/routellm/gsm8k_responses.csv"))


def gsm8k_questions(n: int) -> list[str]:
    with GSM8K.open(newline="", encoding="utf-8") as fh:
        questions = [row["prompt"] for row in csv.DictReader(fh)]
    out = list(dict.fromkeys(questions))
    while len(out) < n:  # make more distinct texts if the file is short
        out += [f"{q} ({len(out)})" for q in out[: n - len(out)]]
    return out[:n]


def cascade_name(share: float) -> str:
    return f"{CASCADE}@{share:g}"


def train_router(out: Path, shares: list[float]) -> None:
    """A router per backend, and the static>onnx-int8 cascade over two of them per share."""
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.predictor.cascade import CascadePredictor
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.workflow import fit_router, load_data, split

    rs = load_data("llmrouter")
    train, _ = split(rs, seed=0)
    routers = {}
    for backend in BACKENDS:
        config = TrainConfig(seed=0, max_epochs=1)  # scoring costs the same after any epoch
        routers[backend] = fit_router(rs, train, encoder=make_encoder(backend), config=config)
        routers[backend].save(out / backend)
    fast, full_predictor = routers["static"].predictor, routers["onnx-int8"].predictor
    for share in shares:
        chain = CascadePredictor.fit(fast, full_predictor, train.questions, share=share)
        cascade = RTRRouter(chain, rs.models, cost_unit=routers["static"].cost_unit)
        cascade.fit_cost_scale(train.questions)
        cascade.save(out / cascade_name(share))


def load_uncached(name: str, path: Path, build: bool = True) -> Any:
    """A saved router whose encoder(s) skip the embedding cache (each question costs its encode)."""
    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.routing import RTRRouter

    if name.startswith(CASCADE):
        fast, full = (make_encoder(b, cache=False, build=build) for b in CASCADE.split(">"))
        return RTRRouter.load(path, fast_encoder=fast, full_encoder=full)
    return RTRRouter.load(path, encoder=make_encoder(name, cache=False, build=build))


CHILD = r"""
import json, os, statistics, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[5])
from bench_encoders import load_uncached
backend, path, question = sys.argv[1], sys.argv[2], sys.argv[3]
more = json.loads(sys.argv[4])
router = load_uncached(backend, path, build=False)
t1 = time.perf_counter()
router.route(question)
t2 = time.perf_counter()
times = []
for q in more:
    t = time.perf_counter()
    router.route(q)
    times.append(time.perf_counter() - t)
# VmHWM (peak RSS since exec); ru_maxrss would carry the parent's peak over from the fork.
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"import_load_s": t1 - t0, "first_route_s": t2 - t1,
                  "fresh_single_ms": 1000 * statistics.median(times),
                  "rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "torch": "torch" in sys.modules}))
"""


def process_cost(
    backend: str, router_dir: Path, question: str, more: list[str]
) -> dict[str, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            backend,
            str(router_dir),
            question,
            json.dumps(more),
            str(Path(__file__).resolve().parent),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def speed(args: argparse.Namespace) -> None:
    questions = gsm8k_questions(args.batch + args.single)
    root = Path(tempfile.mkdtemp(prefix="rtr-bench-enc-"))
    print(f"load average at the start: {load()}", flush=True)
    print(f"training a router per backend into {root} ...", flush=True)
    train_router(root, args.cascade_share)
    rows = []
    for backend in (*BACKENDS, *map(cascade_name, args.cascade_share)):
        router = load_uncached(backend, root / backend)
        router.route("warm up")
        singles = []
        for q in questions[args.batch : args.batch + args.single]:
            t = time.perf_counter()
            router.route(q)
            singles.append(time.perf_counter() - t)
        batch = questions[: args.batch]
        t = time.perf_counter()
        router.route_batch(batch)
        batched = len(batch) / (time.perf_counter() - t)
        proc = process_cost(
            backend, root / backend, questions[0], questions[args.batch : args.batch + 100]
        )
        sent = ""
        if backend.startswith(CASCADE):
            stats = router.predictor.stats
            sent = f" ({stats.escalated / stats.questions:.0%} to int8)"
        rows.append(
            {
                "backend": backend + sent,
                "single_ms": 1000 * statistics.median(singles),
                "single_mean_ms": 1000 * statistics.fmean(singles),
                "batched_qps": batched,
                **proc,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(
        f"\n{len(router.pairs)} pairs; load average at the end {load()}; "
        f"{os.cpu_count()} cores; RTR_ENCODER_THREADS={os.environ.get('RTR_ENCODER_THREADS')}"
    )
    print(
        "| backend | one question (median) | vs ST | same, fresh process | batched q/s | vs ST "
        "| import+load | peak RSS | torch imported |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['single_ms']:.2f} ms | "
            f"{base['single_ms'] / r['single_ms']:.1f}x | {r['fresh_single_ms']:.2f} ms | "
            f"{r['batched_qps']:.0f} | "
            f"{r['batched_qps'] / base['batched_qps']:.1f}x | {r['import_load_s']:.2f} s | "
            f"{r['rss_mb']:.0f} MB | {r['torch']} |"
        )


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


class Projected:
    """Static vectors mapped into another encoder's space by a fitted linear map, normalised."""

    def __init__(self, inner: Any, weight: Any, encoder_id: str) -> None:
        self.inner, self.weight, self.id = inner, weight, encoder_id
        self.dim = int(weight.shape[1])

    def encode(self, texts: Any, *, batch_size: int = 64, show_progress: bool = False) -> Any:
        import numpy as np

        v = np.asarray(self.inner.encode(list(texts)), np.float32) @ self.weight
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def projection_rows(data: str, seeds: list[int], alpha: float = 0.1) -> Any:
    """The static vectors ridge-mapped (penalty ``alpha``) onto the MiniLM vectors of the
    training questions (teacher targets, no labels), heads trained on the mapped vectors."""
    import numpy as np

    from langchain_rtr.cli.encoder import QualityRow, random_folds
    from langchain_rtr.evaluation import evaluate_routing
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.workflow import fit_router, load_data

    routing_set = load_data(data)
    static, teacher = make_encoder("static"), make_encoder("sentence-transformers")
    row = QualityRow("static, projected onto MiniLM's space (experiment)", "random")
    for fold in random_folds(routing_set, seeds, 0.2):
        train, test = fold.train, fold.test
        xs, xt = static.encode(train.questions), teacher.encode(train.questions)
        gram = xs.T @ xs + alpha * np.eye(xs.shape[1], dtype=np.float32)
        weight = np.linalg.solve(gram, xs.T @ xt).astype(np.float32)
        projected = Projected(static, weight, f"static-projected:{fold.seed}")
        router = fit_router(
            routing_set, train, encoder=projected, config=TrainConfig(seed=fold.seed)
        )
        p_test, p_train = projected.encode(test.questions), projected.encode(train.questions)
        report = evaluate_routing(
            test,
            router.predictor.predict_embeddings(p_test, test.questions),
            p_test,
            train,
            p_train,
            router.models,
            cost_unit=router.cost_unit,
            cost_scale=router.cost_scale,
        )
        row.folds.append(fold.name)
        row.aiq.append(float(report.aiq["rtr"]))
        row.max_accuracy.append(float(max(report.curves["rtr"].accuracy)))
        print(f"  {row.name}, {fold.name}: AIQ {row.aiq[-1]:.4f}", flush=True)
    return row


def quality(args: argparse.Namespace) -> None:
    from langchain_rtr.cli.encoder import compare_backends, quality_markdown

    print(f"load average at the start: {load()}", flush=True)
    rows = compare_backends(
        args.data,
        backends=args.backends,
        protocols=args.protocol,
        seeds=args.seeds,
        cascade=args.cascade,
        ensemble=args.ensemble,
        echo=lambda m: print(m, flush=True),
    )
    if args.projection:
        rows.append(projection_rows(args.data, args.seeds))
    print(f"\n{args.data}; load average at the end: {load()}")
    print(quality_markdown(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--batch", type=int, default=1000)
    sp.add_argument("--single", type=int, default=200)
    sp.add_argument("--cascade-share", type=float, nargs="*", default=[0.25, 0.15, 0.1])
    qp = sub.add_parser("quality")
    qp.add_argument("--data", default="llmrouter")
    qp.add_argument("--backends", nargs="+", default=list(BACKENDS))
    qp.add_argument("--protocol", nargs="+", default=["random", "group-out"])
    qp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    qp.add_argument("--cascade", type=float, nargs="*", default=[0.1, 0.15, 0.25])
    qp.add_argument("--ensemble", type=int, help="networks per predictor (default: 5)")
    qp.add_argument("--projection", action="store_true")
    args = parser.parse_args()
    speed(args) if args.what == "speed" else quality(args)


if __name__ == "__main__":
    main()
