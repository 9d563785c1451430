"""Routing speed end to end, on GSM8K questions, with an uncached encoder (issue 2, item 9).

Prints figures; asserts nothing about time. Measured, on the machine's cores (2 here):

* one question routed end to end (``router.route``: encode, score every pair, Tradeoff
  policy, the Decision), median and p90 over distinct questions; target median < 15 ms;
* 1,000 questions as one ``router.route_batch``, encoding included; target >= 150 q/s;
* scoring alone (encoding excluded): ``predict_embeddings`` + cost model + policy on
  precomputed vectors, with the router's 9 pairs and with wider synthetic pair sets (random
  weights: speed does not depend on training); target >= 100,000 pairs/s. Both the array path
  and the full ``decide`` (one Decision object per question) are shown;
* peak RSS of a routing process: a subprocess that loads the saved router and routes the
  1,000 questions, against a subprocess that only loads the raw sentence-transformers model
  and encodes the same questions.

Baselines in the same process, interleaved with the measured calls so that load on the shared
machine hits both alike: the raw ``SentenceTransformer.encode`` of the same questions (one at a
time and as a batch). The load average is printed next to every figure.

The embedding cache is bypassed (``predictor.encoder.uncached``): with it, a repeated question
costs a SQLite lookup and the figures would say nothing about encoding.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_routing.py            # ~1-2 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_routing.py --quick    # run_all.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_routing.py --router rtr-out/router
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_routing.py --profile  # where time goes

Questions: ``../shared/data/routellm/gsm8k_responses.csv`` relative to the repository (or
``$RTR_GSM8K_CSV``).
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GSM8K = Path(
    os.environ.get(
        "RTR_GSM8K_CSV", str(ROOT.parent / "shared" / "data" / "routellm" / "gsm8k_responses.csv")
    )
)


def load() -> str:
    """The 1-, 5- and 15-minute load averages, for printing next to a figure."""
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def gsm8k_questions(n: int) -> list[str]:
    """``n`` distinct GSM8K prompts (numbered copies if the file has fewer)."""
    csv.field_size_limit(sys.maxsize)
    with GSM8K.open(newline="", encoding="utf-8") as fh:
        out = list(dict.fromkeys(row["prompt"] for row in csv.DictReader(fh)))
    base = list(out)
    while len(out) < n:
        out += [f"{q} ({len(out) + i})" for i, q in enumerate(base[: n - len(out)])]
    return out[:n]


def train_router(quick: bool, backend: str | None) -> Any:
    """A router on the bundled LLMRouter set (9 models), briefly trained: speed only."""
    from langchain_rtr.predictor import TrainConfig
    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.workflow import fit_router, load_data, split

    rs = load_data("llmrouter")
    train, _ = split(rs, seed=0)
    t = time.perf_counter()
    router = fit_router(
        rs,
        train,
        encoder=make_encoder(backend),  # cached: training encodes 4.5k questions once
        config=TrainConfig(seed=0, max_epochs=2 if quick else 5),
    )
    print(f"trained a router on llmrouter in {time.perf_counter() - t:.1f} s ({load()})")
    return router


def raw_model(encoder: Any) -> Any:
    """The ``SentenceTransformer`` under an encoder, or ``None`` for another backend."""
    from langchain_rtr.predictor.encoder import SentenceTransformerEncoder

    return encoder._load() if isinstance(encoder, SentenceTransformerEncoder) else None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# ----------------------------------------------------------------------------- one question


def bench_single(router: Any, st: Any, questions: list[str]) -> dict[str, float]:
    """Interleaved: route(q), then the raw encode of the same q, for each question."""
    routed, raw = [], []
    for q in questions[:5]:  # warm-up (first calls allocate)
        router.route(q)
        if st is not None:
            st.encode([q], convert_to_numpy=True, show_progress_bar=False)
    for q in questions:
        t = time.perf_counter()
        router.route(q)
        routed.append(1e3 * (time.perf_counter() - t))
        if st is not None:
            t = time.perf_counter()
            st.encode([q], convert_to_numpy=True, show_progress_bar=False)
            raw.append(1e3 * (time.perf_counter() - t))
    out = {
        "n": len(questions),
        "median_ms": statistics.median(routed),
        "p90_ms": pct(routed, 90),
    }
    line = (
        f"one question end to end (route: encode + score {len(router.pairs)} pairs + policy), "
        f"{len(questions)} distinct questions: median {out['median_ms']:.2f} ms, "
        f"p90 {out['p90_ms']:.2f} ms"
    )
    if raw:
        out["raw_encode_median_ms"] = statistics.median(raw)
        out["raw_encode_p90_ms"] = pct(raw, 90)
        line += (
            f" | raw SentenceTransformer.encode median {out['raw_encode_median_ms']:.2f} ms "
            f"(route / raw {out['median_ms'] / out['raw_encode_median_ms']:.2f}x)"
        )
    print(f"{line}  target median < 15 ms  [{load()}]")
    return out


# ----------------------------------------------------------------------------- batch


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_batch(router: Any, st: Any, questions: list[str], repeats: int) -> dict[str, float]:
    """``route_batch`` of all questions vs the raw batched encode, alternating, best of N."""
    routed, raw = [], []
    for _ in range(repeats):
        routed.append(best_of(lambda: router.route_batch(questions), 1))
        if st is not None:
            raw.append(
                best_of(
                    lambda: st.encode(
                        questions, batch_size=64, convert_to_numpy=True, show_progress_bar=False
                    ),
                    1,
                )
            )
    n = len(questions)
    out = {"n": n, "qps": n / min(routed)}
    line = f"{n:,} questions as one route_batch (encoding included): {out['qps']:,.0f} q/s"
    if raw:
        out["raw_encode_qps"] = n / min(raw)
        line += (
            f" | raw SentenceTransformer.encode(batch_size=64) {out['raw_encode_qps']:,.0f} q/s "
            f"(route / raw {out['qps'] / out['raw_encode_qps']:.2f}x)"
        )
    print(f"{line}  target >= 150 q/s  [{load()}]")
    return out


# ----------------------------------------------------------------------------- scoring alone


def synthetic_router(n_models: int, n_strategies: int) -> Any:
    """A router over a random-weight predictor of the default size, with a length head."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_predictor import random_predictor  # the same helper as bench_predictor's figures

    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.specs import ModelSpec

    predictor = random_predictor(n_models, n_strategies)
    specs = {
        f"m{i}": ModelSpec(name=f"m{i}", input_price=0.1 * (i + 1), output_price=0.2 * (i + 1))
        for i in range(n_models)
    }
    return RTRRouter(predictor, specs, cost_unit="usd", cost_scale=1e-3)


def bench_scoring(
    router: Any, embeddings: np.ndarray, questions: list[str], label: str, repeats: int
) -> dict[str, float]:
    """Pairs/s of (a) scores + costs + policy arrays, (b) the same plus ``decide`` objects."""
    from langchain_rtr.routing import Tradeoff

    policy = Tradeoff(0.9)
    mask = router.allowed_mask(None)
    scale = router.cost_scale or 1.0

    def arrays() -> None:
        pred = router.predictor.predict_embeddings(embeddings)
        costs = router.cost_model.predicted(pred, questions)
        policy.choose(pred.correctness, pred.output_tokens, costs.cost / scale, mask)

    def full() -> None:
        pred = router.predictor.predict_embeddings(embeddings)
        router.decide(router.tables_from_prediction(pred, questions), policy, mask)

    def score_only() -> None:
        router.predictor.predict_embeddings(embeddings)

    arrays()
    full()
    n_pairs = len(router.pairs) * len(questions)
    t_score = best_of(score_only, repeats)
    t_arrays = best_of(arrays, repeats)
    t_full = best_of(full, repeats)
    out = {
        "pairs": len(router.pairs),
        "questions": len(questions),
        "score_only_pairs_per_s": n_pairs / t_score,
        "arrays_pairs_per_s": n_pairs / t_arrays,
        "decide_pairs_per_s": n_pairs / t_full,
    }
    print(
        f"scoring alone, {label}: {len(router.pairs)} pairs x {len(questions):,} questions: "
        f"predict_embeddings {out['score_only_pairs_per_s']:,.0f} pairs/s; + costs + policy "
        f"{out['arrays_pairs_per_s']:,.0f} pairs/s; + Decision objects (decide) "
        f"{out['decide_pairs_per_s']:,.0f} pairs/s  target >= 100,000  [{load()}]"
    )
    return out


# ----------------------------------------------------------------------------- peak RSS

CHILD_PRELUDE = r"""
import json, resource, sys, time
def hwm_mb():
    # VmHWM is this process's own peak: ru_maxrss also counts the parent's RSS at fork time,
    # which Linux carries across exec (a vforked child shares the parent's memory until exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

CHILD_ROUTE = (
    CHILD_PRELUDE
    + r"""
t0 = time.perf_counter()
from langchain_rtr.predictor.backends import make_encoder
from langchain_rtr.routing import RTRRouter
path, qfile, backend = sys.argv[1], sys.argv[2], sys.argv[3] or None
questions = json.load(open(qfile))
router = RTRRouter.load(path, encoder=make_encoder(backend, cache=False))
t1 = time.perf_counter()
router.route_batch(questions)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "route_s": t2 - t1, "torch": "torch" in sys.modules,
                  "rss_mb": hwm_mb()}))
"""
)

CHILD_ENCODE = (
    CHILD_PRELUDE
    + r"""
t0 = time.perf_counter()
from langchain_rtr.predictor.encoder import SentenceTransformerEncoder
questions = json.load(open(sys.argv[1]))
enc = SentenceTransformerEncoder()
enc.dim
t1 = time.perf_counter()
enc._load().encode(questions, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "route_s": t2 - t1, "torch": "torch" in sys.modules,
                  "rss_mb": hwm_mb()}))
"""
)


def child(code: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child process failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_memory(router_dir: Path, questions: list[str], backend: str | None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(questions, fh)
        qfile = fh.name
    try:
        base = child(CHILD_ENCODE, qfile)
        routed = child(CHILD_ROUTE, str(router_dir), qfile, backend or "")
    finally:
        os.unlink(qfile)
    print(
        f"peak RSS of a routing process (load the saved router, route_batch {len(questions):,} "
        f"questions): {routed['rss_mb']:.0f} MB (load {routed['load_s']:.1f} s, route "
        f"{routed['route_s']:.1f} s, torch imported {routed['torch']}) | a process that only "
        f"loads SentenceTransformer and encodes them: {base['rss_mb']:.0f} MB "
        f"(ratio {routed['rss_mb'] / base['rss_mb']:.2f}x)  [{load()}]"
    )
    return {"route": routed, "raw_encode": base}


# ----------------------------------------------------------------------------- profile


def profile_single(router: Any, questions: list[str]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for q in questions:
        router.route(q)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    print(f"== profile of {len(questions)} single-question routes (cumulative) ==")
    print(buf.getvalue())


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", type=Path, help="a saved router directory (default: train)")
    parser.add_argument("--quick", action="store_true", help="fewer questions and repeats")
    parser.add_argument("--backend", default=None, help="encoder backend (default: the default)")
    parser.add_argument("--single", type=int, default=None, help="questions routed one by one")
    parser.add_argument("--batch", type=int, default=1000, help="questions in the batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--profile", action="store_true", help="cProfile single routes")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    n_single = args.single or (50 if args.quick else 200)
    repeats = 1 if args.quick else 3

    import torch

    from langchain_rtr.predictor.backends import make_encoder
    from langchain_rtr.routing import RTRRouter

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{load()}"
    )
    questions = gsm8k_questions(args.batch + n_single)
    batch_q, single_q = questions[: args.batch], questions[args.batch :]

    tmp = tempfile.TemporaryDirectory(prefix="rtr-bench-routing-")
    encoder = make_encoder(args.backend, cache=False)
    if args.router is not None:
        router_dir = args.router
        router = RTRRouter.load(router_dir, encoder=encoder)
    else:
        router = train_router(args.quick, args.backend)
        router_dir = router.save(Path(tmp.name) / "router")
        router.predictor.encoder = encoder  # uncached from here on
    print(f"router: {len(router.pairs)} pairs, encoder {encoder!r} (no cache)")
    t = time.perf_counter()
    router.route("warm up: load the encoder")
    print(f"first route (loads the encoder): {time.perf_counter() - t:.2f} s")
    st = raw_model(encoder)

    results: dict[str, Any] = {"load_before": os.getloadavg(), "threads": args.threads}
    results["single"] = bench_single(router, st, single_q)
    results["batch"] = bench_batch(router, st, batch_q, repeats)

    embeddings = encoder.encode(batch_q)
    results["scoring"] = [bench_scoring(router, embeddings, batch_q, "trained router", repeats)]
    for n_models, n_strategies in ((11, 4), (25, 4)):
        results["scoring"].append(
            bench_scoring(
                synthetic_router(n_models, n_strategies),
                embeddings,
                batch_q,
                f"synthetic {n_models} models x {n_strategies} strategies",
                repeats,
            )
        )
    if args.profile:
        profile_single(router, single_q[:50])
    if not args.no_memory:
        results["memory"] = bench_memory(router_dir, batch_q, args.backend)
    results["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
